"""Alignment of consecutive sections into one coordinate frame with fused Gromov-Wasserstein transport."""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .. import _keys, _validate
from .._docs import inject_docs
from .._progress import progress_bar
from ..pp._expression import fit_pca_space
from . import _align_ot

METHODS = ("fgw",)


@inject_docs
def align_slices(
    slices: Sequence[AnnData],
    /,
    *,
    method: str = "fgw",
    alpha: float = 0.1,
    overlap: float = 1.0,
    allow_mirror: bool = True,
    n_rotations: int = 8,
    layer: str | None = None,
    n_genes: int = 2000,
    n_comps: int = 5,
    spatial_key: str = _keys.SPATIAL,
    max_exact: int = 2000,
    n_anchors: int = 1000,
    n_local: int = 10,
    max_iter: int = 200,
    min_shared_genes: int = 50,
    return_plan: bool = False,
    key_added: str = _keys.ALIGN,
    seed: int = 0,
    progress: bool = True,
    copy: bool = False,
) -> list[AnnData] | list[np.ndarray | sparse.csr_matrix] | tuple[list[AnnData], list] | None:
    """Align consecutive sections into the coordinate frame of the first one.

    Each slice ``i > 0`` is aligned onto slice ``i - 1`` and the rigid transforms are chained, so the
    whole stack lands in the frame of ``slices[0]``. One pair is aligned in four steps:

    1. expression features: log-normalised counts on the shared genes, z-scored within each slice
       (which removes a slice-wide shift) and embedded in one PCA;
    2. a search over initial rigid transforms: ``n_rotations`` angles about the centres of mass, each
       also mirrored when ``allow_mirror``, plus RANSAC transforms through pairs of spots that are
       mutual nearest neighbours in expression; from each start, optimal transport on expression plus
       spatial distance and a Procrustes refit alternate (as in ICP), and the start that most
       expression pairs agree with wins;
    3. fused Gromov-Wasserstein transport (POT) from that start, which matches spots on expression
       (weight ``1 - alpha``) and keeps their spatial neighbourhoods (weight ``alpha``); the rigid
       transform is a Procrustes fit to each spot's best match in that plan, refitted without the
       matches it cannot explain;
    4. with both slices in one frame, the final plan is a one-to-one matching (exact transport, every
       spot carrying the same mass) on expression plus the distance after the transform, which tells
       neighbouring spots apart; every spot of the smaller slice gets one partner and the larger
       slice's surplus spots stay unmatched; the transform is refitted.

    With ``overlap < 1`` the sections only partly overlap: the search uses partial transport of that
    share of the mass (RANSAC does not depend on the centres of mass) and steps 3-4 are replaced by
    unbalanced transport restricted to each spot's ``n_local`` nearest spots of the other slice.
    Slices with more than ``max_exact`` spots take a path whose memory grows linearly: steps 2-3
    between ``n_anchors`` spatial clusters (k-means) of each slice give the transform, then entropic
    transport restricted to each spot's ``n_local`` nearest spots of the other slice (sparse
    Sinkhorn) refines it and gives the plan.

    Parameters
    ----------
    slices
        Two or more sections in stacking order, raw counts in ``.X`` (or ``layers[layer]``) and
        coordinates in ``obsm[spatial_key]`` (2-D, same unit in every slice).
    method
        ``"fgw"``: fused Gromov-Wasserstein (the only method for now).
    alpha
        Weight in ``[0, 1]`` of spatial structure against expression in the fused transport.
    overlap
        Share in ``(0, 1]`` of the smaller slice's spots expected to have a counterpart; below 1,
        partial (exact path) or unbalanced (large-slice path) transport.
    allow_mirror
        Also try mirror images (a section placed upside down on the slide).
    n_rotations
        Number of starting angles, evenly spaced over 360 degrees.
    {layer}
    n_genes
        Number of highly variable genes used for the expression features.
    n_comps
        Number of principal components of the expression features. Few components keep the tissue
        domains and drop the spot-to-spot noise that would otherwise pull matches towards spots that
        only look alike. 5 was chosen on consecutive HER2ST sections of patients A and B, where it
        matched the study clusters best of 3, 5, 7, 10, 15 and 30; on the held-out patients C-H it
        did as well as 3 and better than the rest (``benchmarks/alignment.py``). Raise it for tissues
        with many fine domains.
    {spatial_key}
    max_exact
        Slices with more spots than this are aligned through anchors and local transport.
    n_anchors
        Number of anchors per slice on the large-slice path.
    n_local
        Candidate partners per spot in the local transport of the large-slice path.
    max_iter
        Largest number of iterations of the fused Gromov-Wasserstein solver.
    min_shared_genes
        Fewest genes all slices must share.
    return_plan
        Also return the transport plans: plan ``k`` couples the spots of ``slices[k + 1]`` (rows) with
        those of ``slices[k]`` (columns); dense on the exact path (a one-to-one matching of total mass
        1: each spot of the smaller slice carries ``1 / n_spots`` of it), sparse otherwise.
    {key_added}
    {seed}
    {progress}
    copy
        If ``True``, work on copies of the slices and return them; if ``False``, write into the given
        AnnData objects.

    Returns
    -------
    ``None``; the aligned copies if ``copy=True``; the plans if ``return_plan=True``; ``(copies, plans)``
    with both. Written to every slice:

    - ``obsm[key_added]``: coordinates in the frame of ``slices[0]``,
    - ``obs[f"{{key_added}}_match"]``: obs name of the spot's best match in the slice it was aligned with
      (slice ``i - 1``; slice 0 is matched to slice 1); missing where the transport moved no mass (the
      surplus spots of the larger slice of a pair on the exact path; partial overlap),
    - ``obs[f"{{key_added}}_match_mass"]``: share of the spot's mass sent to that match,
    - ``uns[key_added]``: ``params``, ``rotation`` and ``translation`` (``x @ rotation.T + translation``
      maps ``obsm[spatial_key]`` to ``obsm[key_added]``), ``mirror``, ``angle`` (degrees, of the rotation
      part), ``slice`` (position in the stack), ``matched_to``, ``cost`` (transport cost of the pair)
      and ``mode`` (``"exact"`` or ``"anchors"``).

    Examples
    --------
    >>> import numpy as np, sptl
    >>> a, b = sptl.datasets.breast_st(1), sptl.datasets.breast_st(2)
    >>> sptl.tl.align_slices([a, b], progress=False)
    >>> b.obsm["spatial_aligned"].shape
    (251, 2)
    >>> float(b.obs["spatial_aligned_match_mass"].mean()) > 0.5
    True
    """
    start = perf_counter()
    # validate everything before computing or writing
    _validate.check_choice(method, "method", METHODS)
    items = _validate.as_adata_list(slices, "slices")
    if len(items) < 2:
        msg = f"`slices` holds {len(items)} AnnData: alignment needs at least two sections."
        raise ValueError(msg)
    names = _validate.names_of(items, "slices")
    if not 0 <= alpha <= 1:
        msg = f"`alpha` must lie in [0, 1], got {alpha!r}."
        raise ValueError(msg)
    if not 0 < overlap <= 1:
        msg = f"`overlap` must lie in (0, 1], got {overlap!r}."
        raise ValueError(msg)
    if n_rotations < 1:
        msg = f"`n_rotations` must be at least 1, got {n_rotations!r}."
        raise ValueError(msg)
    counts = [_validate.get_counts(ad, layer, n) for ad, n in zip(items, names, strict=True)]
    coords = [_validate.check_spatial(ad, spatial_key, n) for ad, n in zip(items, names, strict=True)]
    for c, n in zip(coords, names, strict=True):
        if c.shape[1] != 2:
            msg = f"`{n}.obsm[{spatial_key!r}]` has {c.shape[1]} columns: `align_slices` aligns 2-D coordinates."
            raise ValueError(msg)
        if len(c) < 3:
            msg = f"`{n}` has {len(c)} spots: alignment needs at least three per slice."
            raise ValueError(msg)
    genes = _validate.shared_genes(items, names, min_shared_genes)
    params = {
        "method": method,
        "alpha": alpha,
        "overlap": overlap,
        "allow_mirror": allow_mirror,
        "n_rotations": n_rotations,
        "layer": layer,
        "n_genes": n_genes,
        "n_comps": n_comps,
        "spatial_key": spatial_key,
        "max_exact": max_exact,
        "n_anchors": n_anchors,
        "n_local": n_local,
        "max_iter": max_iter,
        "min_shared_genes": min_shared_genes,
        "n_slices": len(items),
        "seed": seed,
    }
    logg.info(f"aligning {len(items)} slices ({', '.join(str(ad.n_obs) for ad in items)} spots) on {len(genes)} genes")

    _, _, feats, _ = fit_pca_space(
        items, counts, genes=genes, n_sources=len(items), n_genes=n_genes, n_comps=n_comps, seed=seed
    )
    unit = float(np.median([_align_ot.spacing(c) for c in coords]))
    points = [c / unit for c in coords]
    rng = np.random.default_rng(seed)
    pairs: list[_align_ot.PairResult] = []
    for i in progress_bar(range(1, len(items)), enabled=progress, desc="aligning pairs"):
        XA, XB, PA, PB = feats[i], feats[i - 1], points[i], points[i - 1]
        a, b = np.full(len(PA), 1 / len(PA)), np.full(len(PB), 1 / len(PB))
        common = {
            "alpha": alpha,
            "n_rotations": n_rotations,
            "allow_mirror": allow_mirror,
            "overlap": overlap,
            "max_iter": max_iter,
            "search_size": 300,
            "n_local": n_local,
            "rng": rng,
        }
        if max(len(PA), len(PB)) > max_exact:
            res = _align_ot.align_anchors(XA, XB, PA, PB, a, b, n_anchors=n_anchors, n_refine=2, seed=seed, **common)
        else:
            res = _align_ot.align_exact(XA, XB, PA, PB, a, b, **common)
        pairs.append(res)

    # chain the pairwise transforms into the frame of slice 0 (in coordinate units)
    transforms = [(np.eye(2), np.zeros(2))]
    for res in pairs:
        R_prev, t_prev = transforms[-1]
        transforms.append((R_prev @ res.R, res.t * unit @ R_prev.T + t_prev))
    results = []
    for i, ad in enumerate(items):
        R, t = transforms[i]
        if i == 0:
            plan, other, rows = pairs[0].plan, items[1], False
        else:
            plan, other, rows = pairs[i - 1].plan, items[i - 1], True
        match, mass = _best_match(plan, rows=rows, n_spots=ad.n_obs, partners=other.obs_names)
        pair = pairs[max(i - 1, 0)]
        info = {
            "params": params,
            "rotation": R,
            "translation": t,
            "mirror": bool(np.linalg.det(R) < 0),
            "angle": _align_ot._rotation_angle(R),
            "slice": i,
            "matched_to": 1 if i == 0 else i - 1,
            "cost": float(pair.cost),
            "mode": pair.mode,
        }
        results.append((coords[i] @ R.T + t, match, mass, info))

    # write everything at once
    out = [ad.copy() for ad in items] if copy else items
    for ad, (aligned, match, mass, info) in zip(out, results, strict=True):
        ad.obsm[key_added] = aligned
        ad.obs[_keys.match(key_added)] = pd.Categorical(match)
        ad.obs[_keys.match_mass(key_added)] = mass.astype(np.float32)
        ad.uns[key_added] = info
    logg.info(
        f"    finished ({perf_counter() - start:.1f}s): added to every slice\n"
        f"    'obsm[{key_added!r}]', 'obs[{_keys.match(key_added)!r}]', 'obs[{_keys.match_mass(key_added)!r}]',"
        f" 'uns[{key_added!r}]'"
    )
    plans = [p.plan for p in pairs]
    if copy and return_plan:
        return out, plans
    if return_plan:
        return plans
    return out if copy else None


def _best_match(
    plan: np.ndarray | sparse.spmatrix, *, rows: bool, n_spots: int, partners: pd.Index
) -> tuple[np.ndarray, np.ndarray]:
    """Best partner (name) of each spot and the share of its mass sent there; rows or columns of ``plan``."""
    P = sparse.csr_matrix(plan) if rows else sparse.csr_matrix(plan).T.tocsr()
    best = np.asarray(P.argmax(axis=1)).ravel()
    top = np.asarray(P.max(axis=1).todense()).ravel()
    share = top * n_spots  # every spot carries mass 1 / n_spots
    match = np.asarray(partners[best], dtype=object)
    match[top <= 1e-3 / n_spots] = None
    return match, np.clip(share, 0, 1)
