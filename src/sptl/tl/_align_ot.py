"""Numerical core of :func:`sptl.tl.align_slices`: rigid transforms, the initial search, FGW and the anchor path.

Everything here works on plain arrays: ``XA, XB`` expression features (one row per spot), ``PA, PB``
coordinates in one common unit (spot spacings), ``a, b`` spot masses. A rigid transform maps a point
``x`` of slice A to ``x @ R.T + t`` in the frame of slice B.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import ot
from scipy import sparse
from scipy.spatial import cKDTree
from sklearn.cluster import MiniBatchKMeans
from sklearn.neighbors import NearestNeighbors

#: Weight of the distance after the transform (against expression) in the final matching plan.
MATCH_ALPHA = 0.25
#: Distance (spot spacings) beyond which the final matching no longer tells partners apart by position.
MATCH_RADIUS = 4.0
#: A partial-transport alignment replaces the balanced one only when it fits clearly better: its
#: :func:`nearest_cost` is lower by more than this share. A misplaced alignment (a crop spread over the
#: larger slice) fits several times worse (measured cost ratios 0.16-0.44); on consecutive sections that
#: overlap fully, the partial variants fit within ~12% of the balanced one, and the balanced plan is kept.
FIT_MARGIN = 0.25


@dataclass
class PairResult:
    """Result of aligning slice A onto slice B."""

    R: np.ndarray
    t: np.ndarray
    plan: np.ndarray | sparse.csr_matrix
    cost: float
    mode: str
    angle: float = 0.0
    mirror: bool = False
    history: list[dict] = field(default_factory=list)
    #: whether the transform came from partial transport of the smaller slice (a crop) instead of balanced FGW
    partial: bool = False


def spacing(coords: np.ndarray) -> float:
    """Median distance of each spot to its nearest neighbour (the spot spacing of a grid)."""
    if len(coords) < 2:
        return 1.0
    d, _ = cKDTree(coords).query(coords, k=2)
    s = float(np.median(d[:, 1]))
    return s if s > 0 else 1.0


def rotation(angle_deg: float, mirror: bool, dim: int = 2) -> np.ndarray:
    """Rotation by ``angle_deg`` in the xy-plane, after mirroring x when ``mirror``."""
    th = np.deg2rad(angle_deg)
    R = np.eye(dim)
    R[:2, :2] = [[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]
    if mirror:
        F = np.eye(dim)
        F[0, 0] = -1
        R = R @ F
    return R


def procrustes(
    PA: np.ndarray, PB: np.ndarray, plan: np.ndarray | sparse.spmatrix, *, mirror: bool | None
) -> tuple[np.ndarray, np.ndarray]:
    """Rigid transform minimising ``sum_ij plan_ij |R a_i + t - b_j|^2`` (weighted Kabsch).

    ``mirror=None`` lets the fit choose a rotation or a mirror image; ``True`` / ``False`` force one.
    """
    P = sparse.csr_matrix(plan) if not sparse.issparse(plan) else plan.tocsr()
    wa = np.asarray(P.sum(axis=1)).ravel()
    wb = np.asarray(P.sum(axis=0)).ravel()
    total = wa.sum()
    if total <= 0:
        msg = "The transport plan carries no mass: the slices could not be matched."
        raise ValueError(msg)
    ca = wa @ PA / total
    cb = wb @ PB / total
    H = (PA - ca).T @ (P @ (PB - cb))
    U, _, Vt = np.linalg.svd(H)
    D = np.eye(PA.shape[1])
    if mirror is not None and (np.linalg.det(Vt.T @ U.T) < 0) != mirror:
        D[-1, -1] = -1
    R = Vt.T @ D @ U.T
    return R, cb - ca @ R.T


def robust_procrustes(
    PA: np.ndarray, PB: np.ndarray, plan: np.ndarray | sparse.spmatrix, *, mirror: bool | None, n_iter: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Procrustes fit to each spot's best match, refitted without the matches it cannot explain.

    Matches farther than ``max(2.5 x median residual, 1)`` (spot spacings) from their partner after the
    fit are dropped and the fit repeated: spots outside the overlap of two sections are forced onto
    wrong partners, and least squares would follow them.
    """
    W = top_per_row(plan).tocoo()
    keep = np.ones(W.nnz, dtype=bool)
    R, t = procrustes(PA, PB, W, mirror=mirror)
    for _ in range(n_iter):
        res = np.linalg.norm(apply(PA[W.row], R, t) - PB[W.col], axis=1)
        new = res <= max(2.5 * float(np.median(res[keep])), 1.0)
        if new.sum() < 3 or np.array_equal(new, keep):
            break
        keep = new
        sub = sparse.csr_matrix((W.data[keep], (W.row[keep], W.col[keep])), shape=W.shape)
        R, t = procrustes(PA, PB, sub, mirror=mirror)
    return R, t


def apply(P: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Apply the rigid transform to points (rows)."""
    return P @ R.T + t


def _sqdist(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return np.maximum(ot.dist(X, Y, metric="sqeuclidean"), 0)


def expression_scale(XA: np.ndarray, XB: np.ndarray, rng: np.random.Generator, n: int = 2000) -> float:
    """Median squared expression distance between random spots of the two slices (the unit of ``M``)."""
    i = rng.integers(0, len(XA), n)
    j = rng.integers(0, len(XB), n)
    m = float(np.median(((XA[i] - XB[j]) ** 2).sum(axis=1)))
    return m if m > 0 else 1.0


def _fused_linear_cost(M: np.ndarray, PAt: np.ndarray, PB: np.ndarray, alpha: float, radius: float) -> np.ndarray:
    """Expression cost plus squared distance after the transform (in units of ``radius``), mixed by ``alpha``."""
    return (1 - alpha) * M + alpha * np.minimum(_sqdist(PAt, PB) / radius**2, 4.0)


def _transport(a: np.ndarray, b: np.ndarray, C: np.ndarray, overlap: float) -> np.ndarray:
    if overlap >= 1:
        return ot.emd(a, b, C, numItermax=1_000_000)
    return ot.partial.partial_wasserstein(a, b, C, m=overlap * min(a.sum(), b.sum()))


def match_plan(
    M: np.ndarray,
    PAt: np.ndarray,
    PB: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    *,
    one_to_one: bool = True,
    alpha: float = MATCH_ALPHA,
) -> np.ndarray:
    """Exact transport of two slices in one frame on expression plus distance, as a plan of total mass 1.

    The cost mixes expression ``M`` (weight ``1 - alpha``) and the squared distance after the transform
    (weight ``alpha``, in spot spacings, capped at ``MATCH_RADIUS``). With ``one_to_one`` every spot
    carries the same mass (``a`` and ``b`` are ignored), so each spot of the smaller slice is matched
    to exactly one spot of the larger one, which keeps its surplus spots unmatched: balanced transport
    with uniform masses would instead spread the surplus over chains of neighbouring spots, shifting
    matches away from their counterparts. Otherwise balanced transport of the masses ``a`` and ``b``
    (anchors that stand for unequal numbers of spots).
    """
    C = (1 - alpha) * M + alpha * np.minimum(_sqdist(PAt, PB), MATCH_RADIUS**2)
    if not one_to_one:
        return ot.emd(a / a.sum(), b / b.sum(), C, numItermax=1_000_000)
    n, m = M.shape
    a, b = np.full(n, 1 / max(n, m)), np.full(m, 1 / max(n, m))
    G = ot.partial.partial_wasserstein(a, b, C, m=min(a.sum(), b.sum()))
    return G / max(G.sum(), 1e-300)


def expression_pairs(XA: np.ndarray, XB: np.ndarray, k: int = 3) -> np.ndarray:
    """Mutual nearest neighbours in expression space: candidate counterparts, ``(n_pairs, 2)`` indices."""
    k = min(k, len(XA), len(XB))
    ia = NearestNeighbors(n_neighbors=k).fit(XB).kneighbors(XA, return_distance=False)
    ib = NearestNeighbors(n_neighbors=k).fit(XA).kneighbors(XB, return_distance=False)
    rows = np.repeat(np.arange(len(XA)), k)
    cols = ia.ravel()
    mutual = (ib[cols] == rows[:, None]).any(axis=1)
    return np.stack([rows[mutual], cols[mutual]], axis=1)


def consensus(PA: np.ndarray, PB: np.ndarray, pairs: np.ndarray, R: np.ndarray, t: np.ndarray, tol: float) -> int:
    """Number of candidate pairs that the transform brings within ``tol`` spot spacings of each other."""
    if len(pairs) == 0:
        return 0
    res = np.linalg.norm(apply(PA[pairs[:, 0]], R, t) - PB[pairs[:, 1]], axis=1)
    return int((res < tol).sum())


def ransac_starts(
    PA: np.ndarray,
    PB: np.ndarray,
    pairs: np.ndarray,
    rng: np.random.Generator,
    *,
    allow_mirror: bool,
    n_trials: int = 1000,
    tol: float = 1.5,
    n_best: int = 2,
) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """Rigid transforms through two random candidate pairs (RANSAC) that the most other pairs agree with.

    Independent of where the slices' centres lie, so it finds the transform when the sections only
    partly overlap.
    """
    if len(pairs) < 3:
        return []
    src, dst = PA[pairs[:, 0]], PB[pairs[:, 1]]
    s = rng.integers(0, len(pairs), size=(n_trials, 2))
    s = s[s[:, 0] != s[:, 1]]
    found = []
    for mirror in (False, True) if allow_mirror else (False,):
        F = np.diag([-1.0, 1.0]) if mirror else np.eye(2)
        va = (src[s[:, 1]] - src[s[:, 0]]) @ F.T
        vb = dst[s[:, 1]] - dst[s[:, 0]]
        ok = np.linalg.norm(va, axis=1) >= 2 * tol
        th = np.arctan2(vb[:, 1], vb[:, 0]) - np.arctan2(va[:, 1], va[:, 0])
        c, si = np.cos(th), np.sin(th)
        Rs = np.stack([np.stack([c, -si], -1), np.stack([si, c], -1)], -2) @ F  # (trials, 2, 2)
        ts = dst[s[:, 0]] - np.einsum("tij,tj->ti", Rs, src[s[:, 0]])
        moved = np.einsum("tij,pj->tpi", Rs, src) + ts[:, None, :]
        inliers = (np.linalg.norm(moved - dst[None], axis=2) < tol).sum(axis=1)
        inliers[~ok] = -1
        for k in np.argsort(-inliers)[:n_best]:
            if inliers[k] > 0:
                found.append((inliers[k], Rs[k], ts[k], mirror))
    found.sort(key=lambda f: -f[0])
    return [(R, t, m) for _, R, t, m in found[:n_best]]


def rigid_search(
    XA: np.ndarray,
    XB: np.ndarray,
    PA: np.ndarray,
    PB: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    *,
    alpha: float,
    n_rotations: int,
    allow_mirror: bool,
    overlap: float,
    search_size: int,
    rng: np.random.Generator,
    n_iter: int = 6,
    tol: float = 1.5,
) -> tuple[np.ndarray, np.ndarray, float, bool, list[dict]]:
    """Best initial rigid transform of A onto B.

    Starts: ``n_rotations`` angles about the centres of mass (mirrored too when ``allow_mirror``) and
    the best RANSAC transforms through pairs of spots that are mutual nearest neighbours in
    expression. From each start, optimal transport on expression plus spatial distance and a
    Procrustes refit alternate ``n_iter`` times (as in ICP) on at most ``search_size`` spots per slice.
    The start whose result the most expression pairs agree with wins (then the lowest cost); a start
    that more pairs agree with than its ICP result is kept as it is.
    """
    pairs = expression_pairs(XA, XB)
    ia, ib = _subsample(len(PA), search_size, rng), _subsample(len(PB), search_size, rng)
    sa, sb = a[ia] / a[ia].sum(), b[ib] / b[ib].sum()
    XA_, XB_, PA_, PB_ = XA[ia], XB[ib], PA[ia], PB[ib]
    M = _sqdist(XA_, XB_)
    M /= max(float(np.median(M)), 1e-12)
    ca, cb = sa @ PA_, sb @ PB_
    radius = max(np.sqrt(((PB_ - cb) ** 2).sum(axis=1).max()) / 4, 1.0)
    starts = []
    for mirror in (False, True) if allow_mirror else (False,):
        for angle in np.arange(n_rotations) * 360.0 / n_rotations:
            R = rotation(angle, mirror, PA.shape[1])
            starts.append(("grid", R, cb - ca @ R.T, mirror, radius))
    for R, t, mirror in ransac_starts(PA, PB, pairs, rng, allow_mirror=allow_mirror, tol=tol):
        starts.append(("ransac", R, t, mirror, 2.0))
    history = []
    best = None
    for kind, R, t, mirror, r in starts:
        R0, t0, agree0 = R, t, consensus(PA, PB, pairs, R, t, tol)
        for _ in range(n_iter):
            C = _fused_linear_cost(M, apply(PA_, R, t), PB_, alpha, r)
            G = _transport(sa, sb, C, overlap)
            R, t = procrustes(PA_, PB_, G, mirror=mirror)  # keep the handedness of the start
            r = max(r / 2, 1.0)
        C = _fused_linear_cost(M, apply(PA_, R, t), PB_, alpha, 1.0)
        G = _transport(sa, sb, C, overlap)
        cost = float((G * C).sum() / max(G.sum(), 1e-12))
        agree = consensus(PA, PB, pairs, R, t, tol)
        if agree0 > agree:  # ICP on the subsample drifted away from a start the expression pairs agree with
            R, t, agree = R0, t0, agree0
        angle = _rotation_angle(R)
        history.append({"start": kind, "angle": angle, "mirror": mirror, "agreeing_pairs": agree, "cost": cost})
        if best is None or (agree, -cost) > (best[2], -best[3]):
            best = (R, t, agree, cost, mirror, angle)
    R, t, _, _, mirror, angle = best
    return R, t, angle, mirror, history


def _rotation_angle(R: np.ndarray) -> float:
    """Angle (degrees, in [0, 360)) of the rotation part of ``R`` (after undoing a mirror of x)."""
    Rr = R @ np.diag([-1.0, 1.0]) if np.linalg.det(R) < 0 else R
    return float(np.degrees(np.arctan2(Rr[1, 0], Rr[0, 0])) % 360)


def fgw_plan(
    XA: np.ndarray,
    XB: np.ndarray,
    PA: np.ndarray,
    PB: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    G0: np.ndarray,
    *,
    alpha: float,
    overlap: float,
    max_iter: int,
) -> tuple[np.ndarray, float]:
    """Fused Gromov-Wasserstein plan (POT) from the start ``G0``; ``overlap < 1`` uses partial FGW."""
    M = _sqdist(XA, XB)
    CA, CB = ot.dist(PA, PA, metric="euclidean"), ot.dist(PB, PB, metric="euclidean")
    scale = max(CA.max(), CB.max(), 1e-12)
    CA, CB = CA / scale, CB / scale
    M = M / max(M.max(), 1e-12)
    if overlap >= 1:
        G, log = ot.gromov.fused_gromov_wasserstein(
            M, CA, CB, a, b, loss_fun="square_loss", alpha=alpha, G0=G0, log=True, max_iter=max_iter
        )
        return np.asarray(G), float(log["fgw_dist"])
    m = overlap * min(a.sum(), b.sum())
    G, log = ot.gromov.partial_fused_gromov_wasserstein(
        M,
        CA,
        CB,
        a,
        b,
        m=m,
        alpha=alpha,
        G0=G0 * (min(1.0, m / max(G0.sum(), 1e-12)) * (1 - 1e-9)),
        log=True,
        numItermax=max_iter,
        warn=False,
    )
    return np.asarray(G), float(log["partial_fgw_dist"])


def align_exact(
    XA: np.ndarray,
    XB: np.ndarray,
    PA: np.ndarray,
    PB: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    *,
    alpha: float,
    n_rotations: int,
    allow_mirror: bool,
    overlap: float,
    max_iter: int,
    search_size: int,
    n_local: int,
    rng: np.random.Generator,
    one_to_one: bool = True,
    partial_masses: Sequence[float] = (),
) -> PairResult:
    """Rigid search, then FGW on all spots (or local unbalanced transport for partial overlap) and Procrustes.

    ``one_to_one``: the final plan matches spots one to one (:func:`match_plan`); ``False`` for anchors.
    ``partial_masses``: shares of the mass to also try aligning by partial transport (crops, sections
    that overlap in part); such an alignment replaces the balanced one when its :func:`nearest_cost` is
    lower by more than ``FIT_MARGIN`` (exact path only).
    """
    search = {"alpha": 0.5, "n_rotations": n_rotations, "allow_mirror": allow_mirror, "search_size": search_size}
    R, t, angle, mirror, history = rigid_search(XA, XB, PA, PB, a, b, overlap=overlap, rng=rng, **search)
    if overlap < 1:
        R, t, plan, cost = refine_local(
            XA, XB, PA, PB, a, b, R, t, overlap=overlap, n_local=n_local, allow_mirror=allow_mirror, rng=rng
        )
        return PairResult(R=R, t=t, plan=plan, cost=cost, mode="exact", angle=angle, mirror=mirror, history=history)
    M = _sqdist(XA, XB)
    M /= max(float(np.median(M)), 1e-12)
    G0 = _transport(a, b, _fused_linear_cost(M, apply(PA, R, t), PB, 0.5, 1.0), overlap)
    G, cost = fgw_plan(XA, XB, PA, PB, a, b, G0, alpha=alpha, overlap=overlap, max_iter=max_iter)
    R, t = robust_procrustes(PA, PB, G, mirror=None if allow_mirror else False)
    R, t, G = _final_matching(M, PA, PB, a, b, R, t, one_to_one=one_to_one, allow_mirror=allow_mirror)
    best = PairResult(R=R, t=t, plan=G, cost=cost, mode="exact", angle=angle, mirror=mirror, history=history)
    fit = nearest_cost(XA, XB, PA, PB, R, t, n_local) if one_to_one and partial_masses else np.inf
    for mass in partial_masses if one_to_one else ():
        # one slice covers only part of the other (a crop, sections cut from overlapping parts): balanced
        # transport spreads it over the other. Also align with partial transport of this share of the mass
        # and keep the transform under which the spots find closer look-alikes (:func:`nearest_cost`).
        R2, t2, angle2, mirror2, history2 = rigid_search(XA, XB, PA, PB, a, b, overlap=mass, rng=rng, **search)
        R2, t2, _, cost2 = refine_local(
            XA, XB, PA, PB, a, b, R2, t2, overlap=mass, n_local=n_local, allow_mirror=allow_mirror, rng=rng
        )
        # refitting the transform to a one-to-one matching suits a crop (every spot of the smaller slice has
        # a counterpart), not sections that overlap in part (spots on both sides have none, and forced
        # matches pull the fit): try the transform with and without that refit. The plan is a one-to-one
        # matching either way.
        R3, t3, G3 = _final_matching(M, PA, PB, a, b, R2, t2, one_to_one=True, allow_mirror=allow_mirror)
        G2 = match_plan(M, apply(PA, R2, t2), PB, a, b, one_to_one=True)
        for Rc, tc, Gc, costc in ((R3, t3, G3, cost), (R2, t2, G2, cost2)):
            fitc = nearest_cost(XA, XB, PA, PB, Rc, tc, n_local)
            if fitc < fit * (1 - FIT_MARGIN):
                fit = fitc
                best = PairResult(
                    R=Rc,
                    t=tc,
                    plan=Gc,
                    cost=costc,
                    mode="exact",
                    angle=angle2,
                    mirror=mirror2,
                    history=history2,
                    partial=True,
                )
    return best


def _final_matching(
    M: np.ndarray,
    PA: np.ndarray,
    PB: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    *,
    one_to_one: bool,
    allow_mirror: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match on expression plus the distance after the transform, refit it; the transform and the plan.

    With the slices in one frame, distances after the transform tell neighbouring spots apart where the
    Gromov-Wasserstein term (distances within each slice) cannot.
    """
    for _ in range(2):
        G = match_plan(M, apply(PA, R, t), PB, a, b, one_to_one=one_to_one)
        R, t = robust_procrustes(PA, PB, G, mirror=None if allow_mirror else False)
    return R, t, match_plan(M, apply(PA, R, t), PB, a, b, one_to_one=one_to_one)


def refine_local(
    XA: np.ndarray,
    XB: np.ndarray,
    PA: np.ndarray,
    PB: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    *,
    overlap: float,
    n_local: int,
    allow_mirror: bool,
    rng: np.random.Generator,
    n_refine: int = 2,
) -> tuple[np.ndarray, np.ndarray, sparse.csr_matrix, float]:
    """Alternate sparse local transport (:func:`local_plan`) and a robust Procrustes refit of the transform."""
    escale = expression_scale(XA, XB, rng)
    reg_m = None if overlap >= 1 else 1.0
    kw = {"alpha": 0.5, "n_local": n_local, "expr_scale": escale, "radius": 1.0, "reg": 0.05, "reg_m": reg_m}
    for _ in range(n_refine):
        plan, _ = local_plan(XA, XB, apply(PA, R, t), PB, a, b, **kw)
        R, t = robust_procrustes(PA, PB, plan, mirror=None if allow_mirror else False)
    plan, cost = local_plan(XA, XB, apply(PA, R, t), PB, a, b, **kw)
    return R, t, plan, cost


def top_per_row(plan: np.ndarray | sparse.spmatrix) -> sparse.csr_matrix:
    """Keep only each row's largest entry: the best matches, weighted by their mass.

    When the slices differ in size a spot's mass spreads over a few neighbours of its counterpart;
    fitting the transform to the best matches alone keeps that spread from pulling it.
    """
    P = sparse.csr_matrix(plan)
    best = np.asarray(P.argmax(axis=1)).ravel()
    top = np.asarray(P.max(axis=1).todense()).ravel()
    rows = np.flatnonzero(top > 0)
    return sparse.csr_matrix((top[rows], (rows, best[rows])), shape=P.shape)


def _subsample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, k, replace=False))


def anchors(
    X: np.ndarray, P: np.ndarray, w: np.ndarray, n_anchors: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cluster spots into spatially compact anchors (k-means on coordinates).

    Returns each anchor's mean expression, centre, mass and the anchor of every spot.
    """
    km = MiniBatchKMeans(n_clusters=n_anchors, random_state=seed, batch_size=4096, n_init=1, max_iter=50)
    lab = km.fit_predict(P)
    k = n_anchors
    counts = np.bincount(lab, weights=w, minlength=k)
    keep = counts > 0
    S = sparse.csr_matrix((w, (lab, np.arange(len(lab)))), shape=(k, len(lab)))
    Xc = np.asarray(S @ X) / np.maximum(counts, 1e-12)[:, None]
    Pc = np.asarray(S @ P) / np.maximum(counts, 1e-12)[:, None]
    remap = np.cumsum(keep) - 1
    return Xc[keep], Pc[keep], counts[keep], remap[lab]


def local_plan(
    XA: np.ndarray,
    XB: np.ndarray,
    PAt: np.ndarray,
    PB: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    *,
    alpha: float,
    n_local: int,
    expr_scale: float,
    radius: float,
    reg: float,
    reg_m: float | None,
    n_iter: int = 200,
) -> tuple[sparse.csr_matrix, float]:
    """Entropic transport restricted to each A spot's ``n_local`` nearest B spots (sparse Sinkhorn).

    Memory and time grow linearly with the number of spots. ``reg_m`` relaxes the marginals
    (unbalanced transport, for partial overlap); ``None`` keeps them exact.
    """
    k = min(n_local, len(PB))
    d, j = cKDTree(PB).query(PAt, k=k)
    d, j = d.reshape(len(PAt), k), j.reshape(len(PAt), k)
    expr = ((XA[:, None, :] - XB[j]) ** 2).sum(axis=2) / expr_scale
    C = (1 - alpha) * expr + alpha * (d / radius) ** 2
    Kv = np.exp(-(C - C.min(axis=1, keepdims=True)) / reg)  # a constant per row is absorbed by the scaling u
    rows = np.repeat(np.arange(len(PAt)), k)
    K = sparse.csr_matrix((Kv.ravel(), (rows, j.ravel())), shape=(len(PAt), len(PB)))
    KT = K.T.tocsr()
    u, v = np.ones(len(a)), np.ones(len(b))
    power = 1.0 if reg_m is None else reg_m / (reg_m + reg)
    for _ in range(n_iter):
        u = (a / np.maximum(K @ v, 1e-300)) ** power
        v_new = (b / np.maximum(KT @ u, 1e-300)) ** power
        v_new[~np.isfinite(v_new)] = 0
        if np.max(np.abs(v_new - v) / np.maximum(v, 1e-300)) < 1e-6:
            v = v_new
            break
        v = v_new
    u = (a / np.maximum(K @ v, 1e-300)) ** power
    plan = (sparse.diags(u) @ K @ sparse.diags(v)).tocsr()
    Cs = sparse.csr_matrix((C.ravel() + 0, (rows, j.ravel())), shape=K.shape)
    cost = float(plan.multiply(Cs).sum() / max(plan.sum(), 1e-300))
    return plan, cost


def align_anchors(
    XA: np.ndarray,
    XB: np.ndarray,
    PA: np.ndarray,
    PB: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    *,
    alpha: float,
    n_rotations: int,
    allow_mirror: bool,
    overlap: float,
    max_iter: int,
    search_size: int,
    n_anchors: int,
    n_local: int,
    n_refine: int,
    seed: int,
    rng: np.random.Generator,
    partial_masses: Sequence[float] = (),
) -> PairResult:
    """Coarse-to-fine: FGW between anchors gives the rigid transform, sparse local transport refines it.

    ``partial_masses``: as in :func:`align_exact`; the transforms are compared by :func:`nearest_cost`.
    """
    XcA, PcA, wA, _ = anchors(XA, PA, a, min(n_anchors, len(PA)), seed)
    XcB, PcB, wB, _ = anchors(XB, PB, b, min(n_anchors, len(PB)), seed)
    # the anchors' own spacing is the unit of the coarse problem (tolerances are in spot spacings)
    unit = float(np.median([spacing(PcA), spacing(PcB)]))
    coarse_problem = (XcA, XcB, PcA / unit, PcB / unit, wA, wB)
    coarse_kw = {
        "alpha": alpha,
        "n_rotations": n_rotations,
        "allow_mirror": allow_mirror,
        "max_iter": max_iter,
        "search_size": search_size,
        "n_local": n_local,
        "rng": rng,
        "one_to_one": False,
    }
    coarse = align_exact(*coarse_problem, overlap=overlap, **coarse_kw)
    coarse.t = coarse.t * unit
    refine = {"n_local": n_local, "allow_mirror": allow_mirror, "rng": rng, "n_refine": n_refine}
    R, t, plan, cost = refine_local(XA, XB, PA, PB, a, b, coarse.R, coarse.t, overlap=overlap, **refine)
    partial = False
    best = nearest_cost(XA, XB, PA, PB, R, t, n_local) if partial_masses else np.inf
    for mass in partial_masses:
        # a crop: also place the slice by partial transport (see align_exact) and keep the transform
        # under which each spot of the smaller slice finds a closer look-alike nearby
        crop = align_exact(*coarse_problem, overlap=mass, **coarse_kw)
        R2, t2, plan2, cost2 = refine_local(XA, XB, PA, PB, a, b, crop.R, crop.t * unit, overlap=mass, **refine)
        fit = nearest_cost(XA, XB, PA, PB, R2, t2, n_local)
        if fit < best * (1 - FIT_MARGIN):
            best, R, t, plan, cost, coarse, partial = fit, R2, t2, plan2, cost2, crop, True
    return PairResult(
        R=R,
        t=t,
        plan=plan,
        cost=cost,
        mode="anchors",
        angle=coarse.angle,
        mirror=coarse.mirror,
        history=coarse.history,
        partial=partial,
    )


def nearest_cost(
    XA: np.ndarray,
    XB: np.ndarray,
    PA: np.ndarray,
    PB: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    n_local: int,
    trim: float = 0.5,
) -> float:
    """How well a transform fits: each spot's cheapest match among its nearest spots of the other slice.

    The cost of the final matching (expression, weight ``1 - MATCH_ALPHA``, plus the capped squared
    distance) restricted to each spot's ``n_local`` nearest spots of the other slice after the transform
    (memory linear in the spots), for the spots of the smaller slice; the mean over the ``trim`` share of
    them that match best, so spots outside the overlap of two sections, which have no counterpart under
    any transform, do not decide. Comparable between transforms of the same pair.
    """
    PAt = apply(PA, R, t)
    Q, P, XQ, XP = (PAt, PB, XA, XB) if len(PA) <= len(PB) else (PB, PAt, XB, XA)
    dist, idx = cKDTree(P).query(Q, k=min(n_local, len(P)))
    dist, idx = dist.reshape(len(Q), -1), idx.reshape(len(Q), -1)
    scale = expression_scale(XA, XB, np.random.default_rng(0))
    expr = ((XQ[:, None, :] - XP[idx]) ** 2).sum(axis=-1) / scale
    cost = ((1 - MATCH_ALPHA) * expr + MATCH_ALPHA * np.minimum(dist**2, MATCH_RADIUS**2)).min(axis=1)
    return float(np.sort(cost)[: max(1, round(trim * len(cost)))].mean())
