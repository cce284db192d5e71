"""Numerical core of :func:`sptl.tl.align_slices`: rigid transforms, the initial search, FGW and the anchor path.

Everything here works on plain arrays: ``XA, XB`` expression features (one row per spot), ``PA, PB``
coordinates in one common unit (spot spacings), ``a, b`` spot masses. A rigid transform maps a point
``x`` of slice A to ``x @ R.T + t`` in the frame of slice B.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import ot
from scipy import sparse
from scipy.spatial import cKDTree
from sklearn.cluster import MiniBatchKMeans


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
    n_iter: int = 6,
) -> tuple[np.ndarray, np.ndarray, float, bool, list[dict]]:
    """Best initial rigid transform of A onto B among rotations (and mirror images).

    For each start (``n_rotations`` angles, mirrored or not) the centred slices are matched by optimal
    transport on expression plus spatial distance, the transform is refitted to the matches
    (Procrustes, as in ICP) ``n_iter`` times, and the start with the lowest final cost wins.
    """
    M = _sqdist(XA, XB)
    M /= max(float(np.median(M)), 1e-12)
    ca, cb = a @ PA / a.sum(), b @ PB / b.sum()
    radius = max(np.sqrt(((PB - cb) ** 2).sum(axis=1).max()) / 4, 1.0)
    history = []
    best = None
    for mirror in (False, True) if allow_mirror else (False,):
        for angle in np.arange(n_rotations) * 360.0 / n_rotations:
            R = rotation(angle, mirror, PA.shape[1])
            t = cb - ca @ R.T
            r = radius
            for _ in range(n_iter):
                C = _fused_linear_cost(M, apply(PA, R, t), PB, alpha, r)
                G = _transport(a, b, C, overlap)
                R, t = procrustes(PA, PB, G, mirror=mirror)  # keep the handedness of the start
                r = max(r / 2, 1.0)
            C = _fused_linear_cost(M, apply(PA, R, t), PB, alpha, 1.0)
            G = _transport(a, b, C, overlap)
            cost = float((G * C).sum() / max(G.sum(), 1e-12))
            history.append({"angle": float(angle), "mirror": mirror, "cost": cost})
            if best is None or cost < best[2]:
                best = (R, t, cost, mirror, float(angle))
    R, t, cost, mirror, angle = best
    return R, t, angle, mirror, history


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
        M, CA, CB, a, b, m=m, alpha=alpha, G0=G0 * (m / max(G0.sum(), 1e-12)), log=True, numItermax=max_iter, warn=False
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
    rng: np.random.Generator,
) -> PairResult:
    """Rigid search (on at most ``search_size`` spots per slice), then FGW on all spots and a final Procrustes."""
    ia, ib = _subsample(len(PA), search_size, rng), _subsample(len(PB), search_size, rng)
    sa, sb = a[ia] / a[ia].sum() * a.sum(), b[ib] / b[ib].sum() * b.sum()
    R, t, angle, mirror, history = rigid_search(
        XA[ia],
        XB[ib],
        PA[ia],
        PB[ib],
        sa,
        sb,
        alpha=0.5,
        n_rotations=n_rotations,
        allow_mirror=allow_mirror,
        overlap=overlap,
    )
    M = _sqdist(XA, XB)
    M /= max(float(np.median(M)), 1e-12)
    G0 = _transport(a, b, _fused_linear_cost(M, apply(PA, R, t), PB, 0.5, 1.0), overlap)
    G, cost = fgw_plan(XA, XB, PA, PB, a, b, G0, alpha=alpha, overlap=overlap, max_iter=max_iter)
    R, t = procrustes(PA, PB, G, mirror=None if allow_mirror else False)
    return PairResult(R=R, t=t, plan=G, cost=cost, mode="exact", angle=angle, mirror=mirror, history=history)


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
) -> sparse.csr_matrix:
    """Entropic transport restricted to each A spot's ``n_local`` nearest B spots (sparse Sinkhorn).

    Memory and time grow linearly with the number of spots. ``reg_m`` relaxes the marginals
    (unbalanced transport, for partial overlap); ``None`` keeps them exact.
    """
    k = min(n_local, len(PB))
    d, j = cKDTree(PB).query(PAt, k=k)
    d, j = d.reshape(len(PAt), k), j.reshape(len(PAt), k)
    expr = ((XA[:, None, :] - XB[j]) ** 2).sum(axis=2) / expr_scale
    C = (1 - alpha) * expr + alpha * (d / radius) ** 2
    C -= C.min(axis=1, keepdims=True)  # a constant per row is absorbed by the scaling u
    Kv = np.exp(-C / reg)
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
    return sparse.diags(u) @ K @ sparse.diags(v)


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
) -> PairResult:
    """Coarse-to-fine: FGW between anchors gives the rigid transform, sparse local transport refines it."""
    XcA, PcA, wA, _ = anchors(XA, PA, a, min(n_anchors, len(PA)), seed)
    XcB, PcB, wB, _ = anchors(XB, PB, b, min(n_anchors, len(PB)), seed)
    coarse = align_exact(
        XcA,
        XcB,
        PcA,
        PcB,
        wA,
        wB,
        alpha=alpha,
        n_rotations=n_rotations,
        allow_mirror=allow_mirror,
        overlap=overlap,
        max_iter=max_iter,
        search_size=search_size,
        rng=rng,
    )
    R, t = coarse.R, coarse.t
    escale = expression_scale(XA, XB, rng)
    reg_m = None if overlap >= 1 else 1.0
    radius = 1.0
    plan = None
    for _ in range(max(n_refine, 1)):
        plan = local_plan(
            XA,
            XB,
            apply(PA, R, t),
            PB,
            a,
            b,
            alpha=0.5,
            n_local=n_local,
            expr_scale=escale,
            radius=radius,
            reg=0.05,
            reg_m=reg_m,
        )
        R, t = procrustes(PA, PB, plan, mirror=None if allow_mirror else False)
    plan = local_plan(
        XA,
        XB,
        apply(PA, R, t),
        PB,
        a,
        b,
        alpha=0.5,
        n_local=n_local,
        expr_scale=escale,
        radius=radius,
        reg=0.05,
        reg_m=reg_m,
    )
    return PairResult(
        R=R,
        t=t,
        plan=plan,
        cost=coarse.cost,
        mode="anchors",
        angle=coarse.angle,
        mirror=coarse.mirror,
        history=coarse.history,
    )
