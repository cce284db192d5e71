"""Label transfer from annotated source sections to a target section."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from time import perf_counter

import numpy as np
import pandas as pd
import squidpy as sq
from anndata import AnnData
from scanpy import logging as logg

from .. import _keys, _validate
from .._docs import inject_docs
from ..models._knn import KNNTransfer, _argmax_labels

METHODS = ("knn",)


@inject_docs
def transfer_labels(
    source: AnnData | Sequence[AnnData],
    target: AnnData,
    /,
    *,
    label_key: str,
    method: str = "knn",
    exclude: Sequence[str] = (),
    layer: str | None = None,
    n_genes: int = 3000,
    n_comps: int = 30,
    n_neighbors: int = 15,
    balance: bool = True,
    smooth: float = 0.5,
    spatial_key: str | None = _keys.SPATIAL,
    min_shared_genes: int = 100,
    key_added: str = _keys.TRANSFER,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Transfer labels from annotated source section(s) to a target section.

    Both sides are normalised on the genes they share and embedded jointly (see
    :class:`sptl.models.KNNTransfer`); every target spot takes the vote of its nearest source spots.
    With ``smooth > 0`` the class probabilities are then mixed with those of the spot's spatial
    neighbours (a graph from :func:`squidpy.gr.spatial_neighbors`), since tissue regions are
    contiguous.

    Parameters
    ----------
    {source}
    {target}
    label_key
        Column of ``source.obs`` with the labels to transfer; missing values are ignored.
    method
        Transfer method. ``"knn"``: similarity-weighted k-nearest-neighbour vote in a joint embedding.
    exclude
        Source labels not to transfer (for example ``["undetermined"]``); those spots are ignored.
    {layer}
    n_genes
        Number of highly variable genes used for the embedding.
    n_comps
        Number of principal components of the joint embedding.
    n_neighbors
        Number of source neighbours that vote.
    balance
        Weight votes by the inverse class frequency in the source, so rare classes are not drowned.
    smooth
        Weight in ``[0, 1)`` of the spatial neighbours' probabilities in each spot's final probabilities;
        ``0`` turns smoothing off.
    spatial_key
        Key in ``target.obsm`` with the coordinates used for smoothing; ``None`` turns smoothing off.
    min_shared_genes
        Fewest genes source and target must share.
    {key_added}
    {device}
    {seed}
    {progress}
    {copy}

    Returns
    -------
    ``None``, or the annotated copy of ``target`` if ``copy=True``. Written to the target:

    - ``obs[key_added]``: transferred label (categorical, categories = source classes),
    - ``obs[f"{key_added}_confidence"]``: probability of that label,
    - ``obsm[f"{key_added}_probabilities"]``: DataFrame of class probabilities,
    - ``obsm[f"X_{key_added}"]``: the joint embedding of the target spots,
    - ``uns[key_added]``: ``params`` and the source ``classes``.

    Examples
    --------
    >>> import sptl
    >>> source, target = sptl.datasets.her2st("F1"), sptl.datasets.her2st("D1")
    >>> sptl.tl.transfer_labels(source, target, label_key="label", exclude=["undetermined"], progress=False)
    >>> target.obs["sptl_label"].cat.categories.tolist()
    ['connective tissue', 'immune infiltrate', 'invasive cancer']
    >>> round(float(target.obs["sptl_label_confidence"].mean()), 2) > 0.5
    True
    """
    start = perf_counter()
    # validate everything before computing or writing
    _validate.check_choice(method, "method", METHODS)
    _validate.check_adata(target, "target")
    sources = _validate.as_adata_list(source, "source")
    if not 0 <= smooth < 1:
        msg = f"`smooth` must lie in [0, 1), got {smooth!r}."
        raise ValueError(msg)
    coords = None
    if smooth > 0 and spatial_key is not None:
        coords = _validate.check_spatial(target, spatial_key, "target")
    params = {
        "label_key": label_key,
        "method": method,
        "exclude": list(exclude),
        "layer": layer,
        "n_genes": n_genes,
        "n_comps": n_comps,
        "n_neighbors": n_neighbors,
        "balance": balance,
        "smooth": smooth if coords is not None else 0.0,
        "spatial_key": spatial_key,
        "min_shared_genes": min_shared_genes,
        "n_sources": len(sources),
        "seed": seed,
    }
    logg.info(f"transferring `{label_key}` from {len(sources)} source(s) to {target.n_obs} target spots ({method})")

    model = KNNTransfer(
        n_genes=n_genes, n_comps=n_comps, n_neighbors=n_neighbors, balance=balance, device=device, seed=seed
    )
    model.fit(
        sources,
        label_key=label_key,
        target=target,
        layer=layer,
        exclude=exclude,
        min_shared_genes=min_shared_genes,
        progress=progress,
    )
    embedding = model.transform(target, layer=layer)
    proba = model.predict_proba(target, layer=layer, progress=progress)
    if coords is not None:
        proba = _smooth(proba, coords, smooth)
    labels = _argmax_labels(proba)

    # write everything at once
    adata = target.copy() if copy else target
    adata.obs[key_added] = pd.Categorical(labels.to_numpy(), categories=model.classes_)
    adata.obs[_keys.confidence(key_added)] = proba.max(axis=1).to_numpy().astype(np.float32)
    adata.obsm[_keys.probabilities(key_added)] = proba
    adata.obsm[_keys.embedding(key_added)] = embedding
    adata.uns[key_added] = {"params": params, "classes": list(model.classes_)}
    logg.info(
        f"    finished ({perf_counter() - start:.1f}s): added\n"
        f"    'obs[{key_added!r}]', 'obs[{_keys.confidence(key_added)!r}]',\n"
        f"    'obsm[{_keys.probabilities(key_added)!r}]', 'obsm[{_keys.embedding(key_added)!r}]', 'uns[{key_added!r}]'"
    )
    return adata if copy else None


def _smooth(proba: pd.DataFrame, coords: np.ndarray, weight: float) -> pd.DataFrame:
    """Mix each spot's probabilities with the mean of its spatial neighbours' (squidpy graph)."""
    if len(proba) < 2:
        return proba
    graph = AnnData(obs=pd.DataFrame(index=proba.index))
    graph.obsm[_keys.SPATIAL] = coords
    n_neighs = min(6, len(proba) - 1)
    knn = getattr(sq.gr, "spatial_neighbors_knn", None)  # squidpy >= 1.8; older: spatial_neighbors
    # squidpy logs each graph through spatialdata's logger; keep it to warnings
    sd_logger = logging.getLogger("spatialdata._logging")
    level = sd_logger.level
    sd_logger.setLevel(logging.WARNING)
    try:
        if knn is not None:
            knn(graph, spatial_key=_keys.SPATIAL, n_neighs=n_neighs)
        else:  # pragma: no cover - older squidpy
            sq.gr.spatial_neighbors(graph, spatial_key=_keys.SPATIAL, coord_type="generic", n_neighs=n_neighs)
    finally:
        sd_logger.setLevel(level)
    A = graph.obsp[_keys.connectivities(_keys.SPATIAL)].tocsr().astype(np.float32)
    deg = np.asarray(A.sum(axis=1)).ravel()
    P = proba.to_numpy()
    neigh = (A @ P) / np.maximum(deg, 1)[:, None]
    mixed = np.where(deg[:, None] > 0, (1 - weight) * P + weight * neigh, P)
    return pd.DataFrame(mixed, index=proba.index, columns=proba.columns)
