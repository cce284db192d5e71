"""Label transfer from annotated source sections to a target section."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import perf_counter
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg

from .. import _keys, _validate
from .._docs import inject_docs
from ..models._base import labels_from_proba
from ..models._gnn import RelationalTransfer
from ..models._knn import KNNTransfer
from ..pp._graph import DEFAULT_SMOOTH, build_graph, check_graph, spread_labels

METHODS = ("knn", "gnn")
#: Domain adaptation of ``method="gnn"`` when ``adaptation="auto"``. On the 30 cross-patient HER2ST pairs
#: (``benchmarks/label_transfer.py``), mean macro-F1 0.473 (seeds 1, 2: 0.487, 0.482) against 0.380 without
#: adaptation and 0.462 for ``method="knn"``.
DEFAULT_ADAPTATION = ("dann", "self_training")


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
    batch_key: str | None = None,
    n_genes: int = 3000,
    n_comps: int = 30,
    n_neighbors: int = 15,
    balance: bool = True,
    smooth: float = DEFAULT_SMOOTH,
    adaptation: str | Sequence[str] | None = "auto",
    unassigned_threshold: float | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    spatial_key: str | None = _keys.SPATIAL,
    graph_key: str | None = None,
    min_shared_genes: int = 100,
    weights_key: str | None = None,
    key_added: str = _keys.TRANSFER,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Transfer labels from annotated source section(s) to a target section.

    Both sides are normalised on the genes they share, z-scored within each section and embedded in
    a joint PCA. ``method="knn"`` lets every target spot take the vote of its nearest source spots
    (:class:`sptl.models.KNNTransfer`); ``method="gnn"`` trains a graph neural network over the spatial
    neighbour graphs of the sections (:class:`sptl.models.RelationalTransfer`) with domain adaptation to
    the target: by default DANN plus self-training on target pseudo-labels from a knn teacher spread over
    the target's graph, so the network also learns the target's own relational patterns. With
    ``smooth > 0`` the class probabilities are finally propagated over the target's spatial neighbour
    graph (label spreading), since tissue regions are contiguous.

    Parameters
    ----------
    {source}
    {target}
    label_key
        Column of ``source.obs`` with the labels to transfer; missing values are ignored.
    method
        ``"knn"``: similarity-weighted k-nearest-neighbour vote in the joint embedding. ``"gnn"``: graph
        neural network (GAT by default) trained on the source graph(s).
    exclude
        Source labels not to transfer (for example ``["undetermined"]``); those spots are ignored.
    {layer}
    batch_key
        Column of ``source.obs`` that splits one source AnnData into several sections (each is
        standardised on its own and, for ``"gnn"``, gets its own graph).
    n_genes
        Number of highly variable genes (chosen on the source) used for the embedding.
    n_comps
        Number of principal components of the joint embedding.
    n_neighbors
        Number of source neighbours that vote (``"knn"``).
    balance
        Rebalance classes (``"knn"``: votes divided by class size; ``"gnn"``: class-weighted loss), so
        rare classes are not drowned.
    smooth
        Weight ``alpha`` in ``[0, 1)`` of the spatial neighbours in label spreading: the final
        probabilities ``F`` solve ``F = (1 - alpha) P + alpha S F``, where ``P`` are the model's
        probabilities and ``S`` averages over each spot's spatial neighbours. ``0`` turns it off.
    adaptation
        Domain adaptation for ``"gnn"``: ``"mmd"``, ``"dann"``, ``"self_training"``, a list of them,
        ``None`` (none), or ``"auto"``: DANN plus self-training for ``"gnn"``, nothing for ``"knn"``
        (see :class:`sptl.models.RelationalTransfer`).
    unassigned_threshold
        Open set: spots whose top probability is below this get the label ``"unassigned"``.
    model_kwargs
        Further arguments of the model class (for example ``{"encoder": "sage", "max_epochs": 300}``).
    spatial_key
        Key in ``.obsm`` with the coordinates used for smoothing and graphs; ``None`` turns smoothing
        off (``"knn"`` only).
    graph_key
        Use the graphs in ``obsp[f"{graph_key}_connectivities"]`` of source and target (from
        :func:`sptl.pp.spatial_graph`); ``None`` builds them on the fly.
    min_shared_genes
        Fewest genes source and target must share.
    weights_key
        Column of ``source.obs`` with instance weights, for example from
        :func:`sptl.tl.instance_weights`: source spots that resemble the target count more (the knn
        vote is multiplied by them, the gnn loss weighted). ``None`` weighs all source spots equally.
    {key_added}
    {device}
    {seed}
    {progress}
    {copy}

    Returns
    -------
    ``None``, or the annotated copy of ``target`` if ``copy=True``. Written to the target:

    - ``obs[key_added]``: transferred label (categorical, categories = source classes, plus
      ``"unassigned"`` with ``unassigned_threshold``),
    - ``obs[f"{key_added}_confidence"]``: probability of the most probable class,
    - ``obs[f"{key_added}_entropy"]``: entropy of the class probabilities (nats),
    - ``obsm[f"{key_added}_probabilities"]``: DataFrame of class probabilities,
    - ``obsm[f"X_{key_added}"]``: the embedding of the target spots (joint PCA or GNN embedding),
    - ``uns[key_added]``: ``params``, the source ``classes`` and, for ``"gnn"``, the training ``history``.

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
    if weights_key is not None:
        _validate.check_weights(sources, weights_key, "source")
    if isinstance(adaptation, str) and adaptation == "auto":
        adaptation = list(DEFAULT_ADAPTATION) if method == "gnn" else None
    if not 0 <= smooth < 1:
        msg = f"`smooth` must lie in [0, 1), got {smooth!r}."
        raise ValueError(msg)
    if spatial_key is None and method == "gnn":
        msg = "`method='gnn'` needs coordinates: pass `spatial_key=` (default 'spatial')."
        raise ValueError(msg)
    coords = None
    if spatial_key is not None and (smooth > 0 or method == "gnn"):
        coords = _validate.check_spatial(target, spatial_key, "target")
    smooth_graph = None
    if coords is not None and smooth > 0:
        if graph_key is not None:
            smooth_graph = check_graph(target, graph_key, coords, "target")
        elif target.n_obs > 1:
            smooth_graph = build_graph(coords, n_neighs=min(6, target.n_obs - 1))[0]
    extra = dict(model_kwargs or {})
    params = {
        "label_key": label_key,
        "method": method,
        "exclude": list(exclude),
        "layer": layer,
        "batch_key": batch_key,
        "n_genes": n_genes,
        "n_comps": n_comps,
        "n_neighbors": n_neighbors,
        "balance": balance,
        "smooth": smooth if smooth_graph is not None else 0.0,
        "adaptation": adaptation if isinstance(adaptation, str | None) else list(adaptation),
        "unassigned_threshold": unassigned_threshold,
        "model_kwargs": extra,
        "spatial_key": spatial_key,
        "graph_key": graph_key,
        "min_shared_genes": min_shared_genes,
        "weights_key": weights_key,
        "n_sources": len(sources),
        "seed": seed,
    }
    logg.info(f"transferring `{label_key}` from {len(sources)} source(s) to {target.n_obs} target spots ({method})")

    history = None
    if method == "knn":
        if adaptation is not None:
            msg = "`adaptation` applies to `method='gnn'`; the knn vote already standardises each section."
            raise ValueError(msg)
        if batch_key is not None:
            sources = _validate.split_batches(sources, batch_key, "source")
        model = KNNTransfer(
            n_genes=n_genes,
            n_comps=n_comps,
            n_neighbors=n_neighbors,
            balance=balance,
            device=device,
            seed=seed,
            **extra,
        )
        model.fit(
            sources,
            label_key=label_key,
            target=target,
            layer=layer,
            exclude=exclude,
            min_shared_genes=min_shared_genes,
            weights_key=weights_key,
        )
        embedding = model.transform(target, layer=layer)
        proba = model.proba_from_embedding(embedding, target.obs_names, progress=progress)
    else:
        model = RelationalTransfer(
            n_genes=n_genes,
            n_comps=n_comps,
            balance=balance,
            adaptation=adaptation,
            device=device,
            seed=seed,
            **extra,
        )
        model.fit(
            sources,
            label_key=label_key,
            target=target,
            layer=layer,
            exclude=exclude,
            batch_key=batch_key,
            spatial_key=spatial_key,
            graph_key=graph_key,
            min_shared_genes=min_shared_genes,
            weights_key=weights_key,
            progress=progress,
        )
        probs, embedding = model._forward(
            target, layer=layer, spatial_key=spatial_key, graph_key=graph_key, max_missing_genes=1.0, progress=progress
        )
        proba = pd.DataFrame(probs, index=target.obs_names.copy(), columns=pd.Index(model.classes_))
        history = model.history_
    if smooth_graph is not None:
        proba = _propagate(proba, smooth_graph, smooth)
    labels = labels_from_proba(proba, unassigned_threshold)
    p = proba.to_numpy()
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)

    # write everything at once
    adata = target.copy() if copy else target
    adata.obs[key_added] = labels.array
    adata.obs[_keys.confidence(key_added)] = p.max(axis=1).astype(np.float32)
    adata.obs[_keys.entropy(key_added)] = entropy.astype(np.float32)
    adata.obsm[_keys.probabilities(key_added)] = proba
    adata.obsm[_keys.embedding(key_added)] = embedding
    adata.uns[key_added] = {"params": params, "classes": list(model.classes_)}
    if history is not None:
        adata.uns[key_added]["history"] = history
    logg.info(
        f"    finished ({perf_counter() - start:.1f}s): added\n"
        f"    'obs[{key_added!r}]', 'obs[{_keys.confidence(key_added)!r}]', 'obs[{_keys.entropy(key_added)!r}]',\n"
        f"    'obsm[{_keys.probabilities(key_added)!r}]', 'obsm[{_keys.embedding(key_added)!r}]', 'uns[{key_added!r}]'"
    )
    return adata if copy else None


def _propagate(proba: pd.DataFrame, graph: Any, alpha: float) -> pd.DataFrame:
    """Label spreading (:func:`sptl.pp._graph.spread_labels`) of a probability table over a spatial graph."""
    return pd.DataFrame(spread_labels(proba.to_numpy(), graph, alpha), index=proba.index, columns=proba.columns)
