"""Label transfer from annotated source sections to a target section."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import perf_counter
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .. import _keys, _validate
from .._docs import inject_docs
from ..models._base import labels_from_proba
from ..models._gnn import RelationalTransfer
from ..models._knn import KNNTransfer
from ..pp._graph import SMOOTH_NEIGHBORS, build_graph, check_graph, choose_smooth, spread_labels

METHODS = ("knn", "gnn")


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
    n_comps: int | None = None,
    n_neighbors: int = 15,
    balance: bool = True,
    smooth: float | str = "auto",
    adaptation: str | Sequence[str] | None = "auto",
    unassigned_threshold: float | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    spatial_key: str | None = _keys.SPATIAL,
    graph_key: str | None = None,
    min_shared_genes: int = _validate.MIN_SHARED_GENES,
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
        Number of principal components of the joint embedding. ``None``: 30 for ``"knn"``; for
        ``"gnn"`` all of them on a targeted panel (at most 500 genes used) and 50 otherwise.
    n_neighbors
        Number of source neighbours that vote (``"knn"``).
    balance
        Rebalance classes (``"knn"``: votes divided by class size; ``"gnn"``: class-weighted loss), so
        rare classes are not drowned.
    smooth
        Weight ``alpha`` in ``[0, 1)`` of the spatial neighbours in label spreading: the final
        probabilities ``F`` solve ``F = (1 - alpha) P + alpha S F``, where ``P`` are the model's
        probabilities and ``S`` averages over each spot's spatial neighbours. ``0`` turns it off.
        ``"auto"`` sets ``alpha`` from the spatial coherence of the labels, how much more often neighbouring
        source spots share a label than chance (Cohen's kappa of the labels at the two ends of a
        spatial-graph edge): ``alpha = 0.8 * min(1, coherence / 0.5)``. Tissue regions (coherence 0.5 and
        more) get the weight validated on them, 0.8, cell types intermixed in space (0.1-0.3) weak
        spreading (0.2-0.5). A source without coordinates (a dissociated reference) is measured through
        the labels predicted for the target instead. ``uns[key_added]["smoothing"]`` records the choice.
    adaptation
        Domain adaptation for ``"gnn"``: ``"mmd"``, ``"dann"``, ``"self_training"``, a list of them,
        ``None`` (none), or ``"auto"``: for ``"gnn"`` DANN, plus self-training when the source labels
        form spatially coherent regions (coherence 0.5 or more); nothing for ``"knn"`` (see
        :class:`sptl.models.RelationalTransfer`).
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
    - ``uns[key_added]``: ``params``, the source ``classes``, ``smoothing`` (the spreading weight
      ``alpha`` used and, with ``smooth="auto"``, the label ``coherence`` it came from) and, for
      ``"gnn"``, the training ``history``.

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
    # one AnnData per section (``batch_key`` splits a source into its sections)
    sections = sources if batch_key is None else _validate.split_batches(sources, batch_key, "source")
    if isinstance(adaptation, str) and adaptation == "auto" and method == "knn":
        adaptation = None
    if not (smooth == "auto" if isinstance(smooth, str) else 0 <= smooth < 1):
        msg = f"`smooth` must be 'auto' or lie in [0, 1), got {smooth!r}."
        raise ValueError(msg)
    if spatial_key is None and method == "gnn":
        msg = "`method='gnn'` needs the target's coordinates: pass `spatial_key=` (default 'spatial')."
        raise ValueError(msg)
    coords = None
    if spatial_key is not None and (smooth != 0 or method == "gnn"):
        coords = _validate.check_spatial(target, spatial_key, "target")
    smooth_graph = None
    if coords is not None and smooth != 0:
        if graph_key is not None:
            smooth_graph = check_graph(target, graph_key, coords, "target")
        elif target.n_obs > 1:
            smooth_graph = build_graph(coords, n_neighs=min(SMOOTH_NEIGHBORS, target.n_obs - 1))[0]
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
        model = KNNTransfer(
            n_genes=n_genes,
            n_comps=30 if n_comps is None else n_comps,
            n_neighbors=n_neighbors,
            balance=balance,
            device=device,
            seed=seed,
            **extra,
        )
        model.fit(
            sections,
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
    n_alone = sum(spatial_key is None or spatial_key not in a.obsm for a in sections)
    logg.info(
        f"    {model.history_['n_shared_genes']} genes shared by source and target (control probes left out)"
        + (f"; {n_alone} source section(s) without coordinates, used as a dissociated reference" if n_alone else "")
    )
    smoothing = None
    if smooth_graph is not None:
        if smooth == "auto":
            codes, graph = _source_label_graph(sections, label_key, exclude, model.classes_, spatial_key)
            smoothing = choose_smooth(codes, graph, proba.to_numpy(), smooth_graph)
            logg.info(
                f"    label coherence {smoothing['coherence']:.2f} (measured on the {smoothing['measured_on']}):"
                f" spreading weight {smoothing['alpha']:.2f}"
            )
        else:
            smoothing = {"alpha": float(smooth)}
        if smoothing["alpha"] > 0:
            proba = _propagate(proba, smooth_graph, smoothing["alpha"])
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
    if smoothing is not None:
        adata.uns[key_added]["smoothing"] = smoothing
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


def _source_label_graph(
    sources: Sequence[AnnData],
    label_key: str,
    exclude: Sequence[str],
    classes: Sequence[str],
    spatial_key: str,
) -> tuple[np.ndarray | None, Any]:
    """Source labels as codes of ``classes`` (-1: none) and the sources' spatial graph (block diagonal).

    Sources without ``obsm[spatial_key]`` (dissociated references) get no edges; ``(None, None)`` when no
    source has coordinates.
    """
    labels = _validate.check_labels(sources, label_key, "source", exclude=exclude)
    codes, graphs = [], []
    for ad, lab in zip(sources, labels, strict=True):
        codes.append(pd.Categorical(lab, categories=list(classes)).codes.astype(np.int64))
        if spatial_key in ad.obsm and ad.n_obs > 1:
            coords = _validate.check_spatial(ad, spatial_key, "source")
            graph = build_graph(coords, n_neighs=min(SMOOTH_NEIGHBORS, ad.n_obs - 1))[0]
        else:
            graph = sparse.csr_matrix((ad.n_obs, ad.n_obs))
        graphs.append(graph)
    if not any(g.nnz for g in graphs):
        return None, None
    return np.concatenate(codes), sparse.block_diag(graphs, format="csr")
