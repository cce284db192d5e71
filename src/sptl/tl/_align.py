"""Alignment of consecutive sections into one coordinate frame with fused Gromov-Wasserstein transport."""

from __future__ import annotations

import warnings
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
    section_spacing: float | Sequence[float] | None = None,
    images: bool = True,
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

    Sections that only partly cover each other (a crop, a partial section, two sections cut from
    overlapping parts of a tissue) would be spread over each other by balanced transport. So with the
    default ``overlap=1`` every pair is also aligned by partial transport of a share of the mass (the ratio
    of the two slices' tissue areas, spots times squared spacing, times 1, 0.75 and 0.5), and such an
    alignment replaces the balanced one when it fits clearly better (by more than 25%): each spot of the
    smaller slice finds a cheaper match (expression plus distance) among its nearest spots after the
    transform, averaged over the better-matching half of the spots, so spots outside the overlap do
    not decide. On consecutive sections that overlap fully the balanced alignment is kept.

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
    section_spacing
        Distance between consecutive sections (in the unit of the coordinates), or the height of every
        section (one number per slice). When given, the aligned coordinates with the height as a third
        column are also written to ``obsm[f"{{key_added}}_3d"]`` (a 3-D stack for downstream analyses).
    images
        Move the images of every slice after the first with its spots: for each library of
        ``uns['spatial']`` (scanpy's Visium layout) a new library ``f"{{library_id}}_{{key_added}}"`` holds
        its images resampled into the aligned frame, with the same scale factors, so
        ``sc.pl.spatial(adata, basis=key_added, library_id=f"{{library_id}}_{{key_added}}")`` shows the
        tissue under the aligned spots (the first slice's own library is already in that frame). Parts
        of an image that land at negative coordinates are cut off.
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
    - ``obsm[f"{{key_added}}_3d"]`` with ``section_spacing``: ``(x, y, height)``,
    - ``uns['spatial'][f"{{library_id}}_{{key_added}}"]`` with ``images`` (slices after the first that carry
      images): the moved images,
    - ``uns[key_added]``: ``params``, ``rotation`` and ``translation`` (``x @ rotation.T + translation``
      maps ``obsm[spatial_key]`` to ``obsm[key_added]``), ``mirror``, ``angle`` (degrees, of the rotation
      part), ``slice`` (position in the stack), ``matched_to``, ``cost`` (transport cost of the pair)
      ``mode`` (``"exact"`` or ``"anchors"``), ``area_ratio`` (tissue area of the smaller slice of the pair
      over the larger one's: spots times squared spot spacing) and ``partial`` (``True`` when the pair was
      aligned by partial transport: sections that cover each other only in part, see above).

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
    heights = _heights(section_spacing, len(items))
    genes = _validate.shared_genes(items, names, min_shared_genes)
    spacings = [_align_ot.spacing(c) for c in coords]
    if max(spacings) > 3 * min(spacings):
        lo, hi = int(np.argmin(spacings)), int(np.argmax(spacings))
        warnings.warn(
            f"The spot spacing of `{names[hi]}` ({spacings[hi]:.3g}) is {spacings[hi] / spacings[lo]:.1f}x that of"
            f" `{names[lo]}` ({spacings[lo]:.3g}): are the coordinates in different units (pixels of images at"
            " other resolutions, microns)? `align_slices` expects one unit; rescale `obsm"
            f"[{spatial_key!r}]` of one slice first (e.g. multiply by its microns per pixel).",
            UserWarning,
            stacklevel=2,
        )
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
        "section_spacing": None if heights is None else heights.tolist(),
        "n_slices": len(items),
        "seed": seed,
    }
    logg.info(f"aligning {len(items)} slices ({', '.join(str(ad.n_obs) for ad in items)} spots) on {len(genes)} genes")

    _, _, feats, _ = fit_pca_space(
        items, counts, genes=genes, n_sources=len(items), n_genes=n_genes, n_comps=n_comps, seed=seed
    )
    unit = float(np.median(spacings))
    points = [c / unit for c in coords]
    rng = np.random.default_rng(seed)
    pairs: list[_align_ot.PairResult] = []
    ratios: list[float] = []
    for i in progress_bar(range(1, len(items)), enabled=progress, desc="aligning pairs"):
        XA, XB, PA, PB = feats[i], feats[i - 1], points[i], points[i - 1]
        a, b = np.full(len(PA), 1 / len(PA)), np.full(len(PB), 1 / len(PB))
        ratios.append(_area_ratio(PA, PB))
        common = {
            "alpha": alpha,
            "n_rotations": n_rotations,
            "allow_mirror": allow_mirror,
            "overlap": overlap,
            "partial_masses": _partial_masses(ratios[-1], overlap),
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
            "area_ratio": ratios[max(i - 1, 0)],
            "partial": bool(pair.partial),
        }
        aligned = coords[i] @ R.T + t
        moved = _moved_libraries(ad, R, t, aligned, key_added) if images and i > 0 else {}
        results.append((aligned, match, mass, info, moved))

    # write everything at once
    out = [ad.copy() for ad in items] if copy else items
    for ad, (aligned, match, mass, info, moved) in zip(out, results, strict=True):
        ad.obsm[key_added] = aligned
        ad.obs[_keys.match(key_added)] = pd.Categorical(match)
        ad.obs[_keys.match_mass(key_added)] = mass.astype(np.float32)
        if heights is not None:
            ad.obsm[_keys.aligned_3d(key_added)] = np.column_stack(
                [aligned, np.full(len(aligned), heights[info["slice"]])]
            )
        ad.uns[key_added] = info
        if moved:
            ad.uns["spatial"] = {**ad.uns["spatial"], **moved}
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


def _moved_libraries(ad: AnnData, R: np.ndarray, t: np.ndarray, aligned: np.ndarray, key_added: str) -> dict:
    """The slice's ``uns['spatial']`` libraries with every image resampled into the aligned frame.

    A point ``x`` of the slice's coordinates goes to ``x @ R.T + t``; an image with scale factor ``s``
    (pixel = ``s`` x coordinate) keeps ``s``, so the output pixel ``p`` shows the input pixel
    ``R.T @ p - s R.T t`` (bilinear; numpy images are indexed (row = y, column = x)). Pixels the
    section does not cover get the median colour of its image border (the slide background).
    """
    from scipy import ndimage

    libraries = ad.uns.get("spatial")
    if not isinstance(libraries, dict):
        return {}
    out = {}
    for library_id, library in libraries.items():
        if not isinstance(library, dict) or not library.get("images") or library_id.endswith(f"_{key_added}"):
            continue
        scalefactors = library.get("scalefactors", {})
        moved_images = {}
        for img_key, img in library["images"].items():
            scale = float(scalefactors.get(f"tissue_{img_key}_scalef", 1.0))
            img = np.asarray(img)
            if img.ndim not in (2, 3) or not np.isfinite(scale) or scale <= 0:
                continue
            swap = np.array([[0.0, 1.0], [1.0, 0.0]])
            matrix = swap @ R.T @ swap
            offset = swap @ (-scale * (R.T @ t))
            corners = np.array([[0, 0], [img.shape[1], 0], [0, img.shape[0]], [img.shape[1], img.shape[0]]]) / scale
            extent = np.vstack([corners @ R.T + t, aligned]).max(axis=0) * scale
            shape = (int(np.ceil(extent[1])) + 1, int(np.ceil(extent[0])) + 1)
            planes = img[..., None] if img.ndim == 2 else img
            # fill what the section did not cover with its own background (the median colour of its border)
            border = np.concatenate([planes[0], planes[-1], planes[:, 0], planes[:, -1]])
            fill = np.median(border, axis=0)
            warped = np.stack(
                [
                    ndimage.affine_transform(
                        planes[..., c], matrix, offset, output_shape=shape, order=1, cval=float(fill[c])
                    )
                    for c in range(planes.shape[-1])
                ],
                axis=-1,
            )
            moved_images[img_key] = warped[..., 0] if img.ndim == 2 else warped
        if moved_images:
            out[_keys.aligned_library(library_id, key_added)] = {
                **{k: v for k, v in library.items() if k != "images"},
                "images": moved_images,
            }
    return out


def _heights(section_spacing: float | Sequence[float] | None, n: int) -> np.ndarray | None:
    """Height of every slice from ``section_spacing`` (one distance, or one height per slice)."""
    if section_spacing is None:
        return None
    values = np.atleast_1d(np.asarray(section_spacing, dtype=float))
    if values.ndim != 1 or len(values) not in (1, n) or not np.isfinite(values).all():
        msg = (
            f"`section_spacing` must be one finite distance or {n} finite heights (one per slice),"
            f" got {section_spacing!r}."
        )
        raise ValueError(msg)
    if len(values) == 1:
        if values[0] <= 0:
            msg = f"`section_spacing` must be positive, got {section_spacing!r}."
            raise ValueError(msg)
        return np.arange(n) * values[0]
    return values


#: Shares of the larger slice's tissue (times the area ratio) also tried by partial transport: a crop of
#: one slice (1), and two sections cut from overlapping parts of a tissue (0.75, 0.5). Each costs a
#: rigid search and a local refinement (HER2ST pairs: 1.7 s -> ~8 s); (1, 0.6) alone left a stack of
#: PASTE's breast section 2 drifting 0.7-0.9 spacings (``benchmarks/alignment.py`` part e).
PARTIAL_SHARES = (1.0, 0.75, 0.5)


def _partial_masses(ratio: float, overlap: float) -> list[float]:
    """Partial-transport masses to try besides balanced transport, for a pair with tissue-area ratio ``ratio``."""
    if overlap < 1:  # the user gave the overlap: the partial path is taken anyway
        return []
    return [ratio * f for f in PARTIAL_SHARES if ratio * f < 0.99]


def _area_ratio(PA: np.ndarray, PB: np.ndarray) -> float:
    """Tissue area of the smaller slice over the larger one's: the share of its mass the smaller can meet.

    Every slice carries mass 1 spread over its spots, so when the smaller section covers only part of
    the larger one (a crop, a partial section), moving all of its mass would force the larger slice's
    mass onto it too: its spots would be spread over the whole larger section. Areas are estimated as
    the number of spots times the squared spot spacing of each slice (coordinates in one common unit).
    """
    areas = [len(P) * _align_ot.spacing(P) ** 2 for P in (PA, PB)]
    return float(min(areas) / max(areas))


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
