"""Spatial neighbour graphs (built with squidpy)."""

from __future__ import annotations

import logging
from time import perf_counter

import numpy as np
import squidpy as sq
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .. import _keys, _validate
from .._docs import inject_docs

COORD_TYPES = ("generic", "grid")
#: Weight of the spatial neighbours in label spreading for labels that form tissue regions (on the 30
#: cross-patient HER2ST pairs, mean macro-F1 of knn 0.408 without spreading, 0.433 at 0.5, 0.462 at 0.8,
#: 0.463 at 0.85, 0.462 at 0.9); :func:`sptl.tl.transferability` uses it as is.
DEFAULT_SMOOTH = 0.8
#: Label coherence (:func:`label_coherence`) from which labels count as tissue regions: halfway between
#: labels scattered at random (0) and perfectly contiguous ones (1).
REGION_COHERENCE = 0.5
#: Spatial neighbours per observation in the graphs that label spreading and label coherence use.
SMOOTH_NEIGHBORS = 6


@inject_docs
def spatial_graph(
    adata: AnnData,
    /,
    *,
    spatial_key: str = _keys.SPATIAL,
    coord_type: str | None = None,
    n_neighs: int | None = None,
    radius: float | None = None,
    delaunay: bool = False,
    key_added: str = _keys.SPATIAL,
    copy: bool = False,
) -> AnnData | None:
    """Build the spatial neighbour graph that relational transfer passes messages along.

    A thin layer over squidpy's graph builders with defaults chosen by technology: Visium data
    (``uns['spatial']`` present) get the hexagonal grid (6 neighbours, ``coord_type="grid"``); other
    data (ST arrays, single-cell technologies) get the ``n_neighs=6`` nearest neighbours. ``radius``
    or ``delaunay=True`` select the radius or Delaunay graphs instead.

    Parameters
    ----------
    {adata}
    {spatial_key}
    coord_type
        ``"grid"`` (regular arrays such as Visium) or ``"generic"``; chosen from the data when ``None``.
    n_neighs
        Neighbours per observation (grid: neighbours per ring); 6 when ``None``.
    radius
        Connect observations closer than this (in the units of ``obsm[spatial_key]``).
    delaunay
        Use the Delaunay triangulation.
    key_added
        Stem of the keys written (squidpy convention).
    {copy}

    Returns
    -------
    ``None``, or the annotated copy if ``copy=True``. Written:

    - ``obsp[f"{key_added}_connectivities"]``, ``obsp[f"{key_added}_distances"]``,
    - ``uns[f"{key_added}_neighbors"]`` with squidpy's entries and ``params`` (including ``spatial_key``).

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.her2st("B1")
    >>> sptl.pp.spatial_graph(adata)
    >>> adata.obsp["spatial_connectivities"].shape
    (295, 295)
    """
    start = perf_counter()
    _validate.check_adata(adata, "adata")
    coords = _validate.check_spatial(adata, spatial_key, "adata")
    if coord_type is None:
        coord_type = "grid" if _keys.SPATIAL_UNS in adata.uns and radius is None and not delaunay else "generic"
    _validate.check_choice(coord_type, "coord_type", COORD_TYPES)
    if n_neighs is None:
        n_neighs = 6
    if n_neighs < 1 or (coord_type == "generic" and radius is None and not delaunay and n_neighs >= adata.n_obs):
        msg = f"`n_neighs={n_neighs}` must be at least 1 and below the number of observations ({adata.n_obs})."
        raise ValueError(msg)
    conn, dist = build_graph(coords, coord_type=coord_type, n_neighs=n_neighs, radius=radius, delaunay=delaunay)

    out = adata.copy() if copy else adata
    out.obsp[_keys.connectivities(key_added)] = conn
    out.obsp[_keys.distances(key_added)] = dist
    out.uns[_keys.spatial_neighbors(key_added)] = {
        "connectivities_key": _keys.connectivities(key_added),
        "distances_key": _keys.distances(key_added),
        "params": {
            "spatial_key": spatial_key,
            "coord_type": coord_type,
            "n_neighs": n_neighs,
            "radius": radius,
            "delaunay": delaunay,
        },
    }
    logg.info(
        f"spatial graph ({coord_type}) finished ({perf_counter() - start:.1f}s): added "
        f"'obsp[{_keys.connectivities(key_added)!r}]', 'obsp[{_keys.distances(key_added)!r}]'"
    )
    return out if copy else None


def build_graph(
    coords: np.ndarray,
    *,
    coord_type: str = "generic",
    n_neighs: int = 6,
    radius: float | None = None,
    delaunay: bool = False,
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Connectivities and distances of a spatial graph on ``coords`` (squidpy), symmetric CSR."""
    tmp = AnnData(obs={"_": np.zeros(len(coords))})
    tmp.obsm[_keys.SPATIAL] = np.asarray(coords, dtype=float)
    # squidpy logs each graph through spatialdata's logger; keep it to warnings
    sd_logger = logging.getLogger("spatialdata._logging")
    level = sd_logger.level
    sd_logger.setLevel(logging.WARNING)
    try:
        gr = sq.gr
        if delaunay and hasattr(gr, "spatial_neighbors_delaunay"):
            gr.spatial_neighbors_delaunay(tmp, spatial_key=_keys.SPATIAL)
        elif radius is not None and hasattr(gr, "spatial_neighbors_radius"):
            gr.spatial_neighbors_radius(tmp, spatial_key=_keys.SPATIAL, radius=radius)
        elif coord_type == "grid" and hasattr(gr, "spatial_neighbors_grid"):
            gr.spatial_neighbors_grid(tmp, spatial_key=_keys.SPATIAL, n_neighs=n_neighs)
        elif coord_type == "generic" and radius is None and not delaunay and hasattr(gr, "spatial_neighbors_knn"):
            gr.spatial_neighbors_knn(tmp, spatial_key=_keys.SPATIAL, n_neighs=min(n_neighs, len(coords) - 1))
        else:  # pragma: no cover - squidpy < 1.8
            gr.spatial_neighbors(
                tmp,
                spatial_key=_keys.SPATIAL,
                coord_type=coord_type,
                n_neighs=n_neighs,
                radius=radius,
                delaunay=delaunay,
            )
    finally:
        sd_logger.setLevel(level)
    conn = tmp.obsp[_keys.connectivities(_keys.SPATIAL)].tocsr()
    dist = tmp.obsp[_keys.distances(_keys.SPATIAL)].tocsr()
    return conn, dist


def check_graph(adata: AnnData, graph_key: str, coords: np.ndarray, name: str = "adata") -> sparse.csr_matrix:
    """Return ``obsp[f"{graph_key}_connectivities"]`` after checking it fits ``adata`` and ``coords``.

    A graph built on other coordinates (another section, unaligned coordinates) has edges much longer
    than the spacing of neighbouring spots; that is refused.
    """
    key = _keys.connectivities(graph_key)
    if key not in adata.obsp:
        msg = (
            f"`{name}.obsp[{key!r}]` not found: run `sptl.pp.spatial_graph({name}, key_added={graph_key!r})`"
            " or pass `graph_key=None` to build the graph on the fly."
        )
        raise KeyError(msg)
    graph = sparse.csr_matrix(adata.obsp[key])
    if graph.shape != (adata.n_obs, adata.n_obs):
        msg = f"`{name}.obsp[{key!r}]` has shape {graph.shape}, expected ({adata.n_obs}, {adata.n_obs})."
        raise ValueError(msg)
    rows, cols = graph.nonzero()
    if len(rows):
        edge = np.median(np.linalg.norm(coords[rows] - coords[cols], axis=1))
        nn, _ = build_graph(coords, n_neighs=1)
        r, c = nn.nonzero()
        spacing = np.median(np.linalg.norm(coords[r] - coords[c], axis=1))
        if spacing > 0 and edge > 4 * spacing:
            msg = (
                f"`{name}.obsp[{key!r}]` looks built on other coordinates: its median edge is {edge:.3g} while"
                f" neighbouring observations in `obsm` lie {spacing:.3g} apart. Rebuild it with"
                f" `sptl.pp.spatial_graph`."
            )
            raise ValueError(msg)
    return graph


def spread_labels(
    proba: np.ndarray, graph: sparse.spmatrix, alpha: float, *, tol: float = 1e-4, max_iter: int = 200
) -> np.ndarray:
    """Label spreading over a spatial graph: iterate ``F = (1 - alpha) P + alpha S F`` to convergence.

    ``S`` is the row-normalised symmetric adjacency (the mean over a spot's neighbours); spots without
    neighbours keep their own probabilities. Rows of ``F`` stay probability vectors.
    """
    A = sparse.csr_matrix(graph, dtype=np.float32)
    A = ((A + A.T) > 0).astype(np.float32)
    deg = np.asarray(A.sum(axis=1)).ravel()
    S = sparse.diags(1 / np.maximum(deg, 1)) @ A
    P = np.asarray(proba, dtype=np.float32)
    isolated = deg == 0
    F = P.copy()
    for _ in range(max_iter):
        new = (1 - alpha) * P + alpha * (S @ F)
        new[isolated] = P[isolated]
        done = np.abs(new - F).max(initial=0.0) < tol
        F = new
        if done:
            break
    return F


def label_coherence(codes: np.ndarray, graph: sparse.spmatrix) -> float:
    """How much more often spatial neighbours share a label than chance: ``(h - h0) / (1 - h0)``.

    ``h`` is the share of graph edges whose two ends carry the same label (``codes``; ``-1`` = unknown,
    left out), ``h0 = sum_k p_k ** 2`` what labels scattered at random with the same frequencies ``p_k``
    would give (Cohen's kappa of the labels at the two ends of an edge). About 0 for cell types
    intermixed in space (MERFISH hypothalamus cell classes: 0.14-0.18), near 1 for tissue regions
    (HER2ST pathologist regions: 0.60-0.83). ``nan`` when no edge joins two known labels.
    """
    codes = np.asarray(codes)
    A = sparse.coo_matrix(graph)
    known = (codes[A.row] >= 0) & (codes[A.col] >= 0)
    if not known.any():
        return float("nan")
    a, b = codes[A.row[known]], codes[A.col[known]]
    h = float(np.mean(a == b))
    p = np.bincount(codes[codes >= 0]) / (codes >= 0).sum()
    h0 = float((p**2).sum())
    return 0.0 if h0 >= 1 else (h - h0) / (1 - h0)


def auto_smooth(coherence: float) -> float:
    """Spreading weight for labels of a given :func:`label_coherence`: ``0.8 * min(1, coherence / 0.5)``.

    Proportional to the coherence, and the weight validated on tissue regions (:data:`DEFAULT_SMOOTH`)
    from :data:`REGION_COHERENCE` on. Cell types that mix in space (coherence 0.1-0.3) get weak
    spreading (0.2-0.5), tissue regions (HER2ST pathologist regions: 0.60-0.83) 0.8. knn transfer, mean
    macro-F1 with this rule / the former fixed 0.8 / no spreading / the best of 0.2, 0.4, 0.6: MERFISH
    hypothalamus cell classes (both directions) 0.666 / 0.458 / 0.657 / 0.673, its neuron clusters
    0.328 / 0.293 / 0.326 / 0.331, mouse-cortex smFISH clusters (halves) 0.801 / 0.586 / 0.800 / 0.802,
    30 HER2ST pairs 0.462 / 0.462 / 0.408 / -. Also tried on the same data: the coherence itself and
    its square root as the weight (HER2ST 0.456 and 0.456).
    """
    if not np.isfinite(coherence):
        return 0.0
    return float(DEFAULT_SMOOTH * np.clip(coherence / REGION_COHERENCE, 0.0, 1.0))


def choose_smooth(
    source_codes: np.ndarray | None,
    source_graph: sparse.spmatrix | None,
    target_proba: np.ndarray,
    target_graph: sparse.spmatrix,
) -> dict[str, float | str]:
    """The spreading weight ``smooth="auto"`` uses, from the label coherence of the source.

    The coherence (:func:`label_coherence`) is measured on the source labels over the source graph;
    when the source has no coordinates (no edge joins two labelled observations, as for a dissociated
    reference), on the labels predicted for the target (``target_proba`` before spreading) over the
    target graph, which understates it a little (prediction errors scatter at random). Returns
    ``{"alpha": ..., "coherence": ..., "measured_on": "source" | "target predictions"}``.
    """
    kappa = float("nan")
    if source_codes is not None and source_graph is not None:
        kappa = label_coherence(source_codes, source_graph)
    on = "source"
    if not np.isfinite(kappa):
        kappa = label_coherence(np.asarray(target_proba).argmax(axis=1), target_graph)
        on = "target predictions"
    return {
        "alpha": auto_smooth(kappa),
        "coherence": round(kappa, 4) if np.isfinite(kappa) else kappa,
        "measured_on": on,
    }
