"""Tools on a trained SpatialCLIP: embeddings, expression from images, zero-shot labels, retrieval."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import perf_counter

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg

from .. import _keys, _validate
from .._docs import inject_docs
from ..models._clip import MODALITIES, SpatialCLIP
from ..models._histology import HistologyRegressor


def _check_model(model: object) -> SpatialCLIP:
    if not isinstance(model, SpatialCLIP):
        msg = f"`model` must be a sptl.models.SpatialCLIP, got {type(model).__name__}."
        raise TypeError(msg)
    model._check_fitted()
    return model


@inject_docs
def embed_clip(
    adata: AnnData,
    /,
    *,
    model: SpatialCLIP,
    modalities: Sequence[str] = MODALITIES,
    patches_key: str = _keys.PATCHES,
    layer: str | None = None,
    max_missing_genes: float = 0.1,
    progress: bool = True,
    key_added: str = _keys.CLIP,
    copy: bool = False,
) -> AnnData | None:
    """Embed every spot's image patch and/or expression in a trained SpatialCLIP's shared space.

    Parameters
    ----------
    {adata}
    model
        A fitted :class:`sptl.models.SpatialCLIP`.
    modalities
        ``"image"`` (patches from ``uns[patches_key]``), ``"expression"`` (counts), or both.
    patches_key
        Key of the patch record written by :func:`sptl.pp.extract_patches`.
    {layer}
    max_missing_genes
        Largest fraction of the model's genes ``adata`` may lack (they count as zero).
    {progress}
    key_added
        Stem of the keys written.
    {copy}

    Returns
    -------
    ``None``, or the annotated copy if ``copy=True``. Written: ``obsm[f"X_{key_added}_image"]`` and/or
    ``obsm[f"X_{key_added}_expression"]`` (unit-length rows), ``uns[key_added]["params"]``.

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.synthetic_tissue(n_spots=120, seed=0)
    >>> sptl.pp.extract_patches(adata, size=32)
    >>> model = sptl.models.SpatialCLIP(image_encoder="sptl-vit-micro", n_genes=40, max_epochs=2)
    >>> model = model.fit(adata, progress=False)
    >>> sptl.tl.embed_clip(adata, model=model, progress=False)
    >>> adata.obsm["X_clip_image"].shape
    (120, 128)
    """
    start = perf_counter()
    _check_model(model)
    _validate.check_adata(adata)
    modalities = [modalities] if isinstance(modalities, str) else list(modalities)
    if not modalities:
        msg = "`modalities` is empty: pass 'image', 'expression' or both."
        raise ValueError(msg)
    for m in modalities:
        _validate.check_choice(m, "modalities", MODALITIES)
    logg.info(f"embedding {adata.n_obs} spots ({', '.join(modalities)}) with {model!r}")
    out_arrays = {
        m: model.transform(
            adata,
            modality=m,
            patches_key=patches_key,
            layer=layer,
            max_missing_genes=max_missing_genes,
            progress=progress,
        )
        for m in modalities
    }
    params = {
        "modalities": modalities,
        "patches_key": patches_key,
        "layer": layer,
        "max_missing_genes": max_missing_genes,
        "model": repr(model),
    }
    out = adata.copy() if copy else adata
    for m, arr in out_arrays.items():
        out.obsm[_keys.clip_embedding(key_added, m)] = arr
    out.uns[key_added] = {"params": params}
    added = ", ".join(f"'obsm[{_keys.clip_embedding(key_added, m)!r}]'" for m in modalities)
    logg.info(f"    finished ({perf_counter() - start:.1f}s): added\n    {added}, 'uns[{key_added!r}]'")
    return out if copy else None


@inject_docs
def predict_expression(
    adata: AnnData,
    reference: AnnData | None = None,
    /,
    *,
    model: SpatialCLIP | HistologyRegressor,
    n_neighbors: int = 20,
    genes: Sequence[str] | None = None,
    patches_key: str = _keys.PATCHES,
    reference_layer: str | None = None,
    max_missing_genes: float = 0.1,
    progress: bool = True,
    key_added: str = _keys.PREDICTED_EXPRESSION,
    copy: bool = False,
) -> AnnData | None:
    """Predict expression from histology, for sections with an image but no (or a poor) expression measurement.

    With a :class:`sptl.models.HistologyRegressor` (the recommended route on real H&E: frozen pretrained
    features at two scales, a ridge probe, spatial smoothing) the model predicts directly; ``reference``
    is not needed. With a :class:`sptl.models.SpatialCLIP` the prediction is BLEEP-style retrieval: the
    image embedding of every spot of ``adata`` is compared with the expression embeddings of the
    ``reference`` spots in the model's shared space, and the prediction is the similarity-weighted mean
    (softmax at the model's temperature) of the ``n_neighbors`` closest reference profiles.

    Parameters
    ----------
    {adata}
    reference
        Spots with measured expression (raw counts), for example the training sections; needed by a
        ``SpatialCLIP`` model only.
    model
        A fitted :class:`sptl.models.HistologyRegressor` or :class:`sptl.models.SpatialCLIP`.
    n_neighbors
        Reference spots averaged per prediction (``SpatialCLIP``).
    genes
        Genes to predict (``SpatialCLIP``: must be in ``reference``; a ``HistologyRegressor`` predicts a
        subset of its genes); ``None``: the model's genes.
    patches_key
        Key of the patch record of ``adata`` (see :func:`sptl.pp.extract_patches`).
    reference_layer
        Layer of ``reference`` with raw counts; ``None`` uses ``.X``.
    max_missing_genes
        Largest fraction of the model's genes ``reference`` may lack.
    {progress}
    key_added
        Key written.
    {copy}

    Returns
    -------
    ``None``, or the annotated copy if ``copy=True``. Written: ``obsm[key_added]``, a DataFrame (rows
    ``obs_names``, columns the genes) of predicted ``log1p`` counts per 10,000 (of all genes), and
    ``uns[key_added]["params"]``.

    Examples
    --------
    >>> import sptl
    >>> ref = sptl.datasets.synthetic_tissue(n_spots=120, seed=0)
    >>> new = sptl.datasets.synthetic_tissue(n_spots=60, seed=1)
    >>> for a in (ref, new):
    ...     sptl.pp.extract_patches(a, size=32)
    >>> model = sptl.models.SpatialCLIP(image_encoder="sptl-vit-micro", n_genes=40, max_epochs=2)
    >>> model = model.fit(ref, progress=False)
    >>> sptl.tl.predict_expression(new, ref, model=model, progress=False)
    >>> new.obsm["predicted_expression"].shape
    (60, 40)
    """
    start = perf_counter()
    _validate.check_adata(adata)
    if isinstance(model, HistologyRegressor):
        model._check_fitted()
        if genes is not None:
            genes = pd.Index([str(g) for g in genes])
            missing = genes[~genes.isin(model.var_names_)]
            if len(missing):
                msg = f"The model does not predict {len(missing)} of `genes` (e.g. {missing[:5].tolist()})."
                raise ValueError(msg)
        logg.info(f"predicting expression of {adata.n_obs} spots from their images with {model!r}")
        pred = model.predict(adata, patches_key=patches_key, progress=progress)
        if genes is not None:
            pred = pred[genes]
    else:
        _check_model(model)
        if reference is None:
            msg = "A SpatialCLIP model predicts by retrieval: pass the `reference` spots with measured expression."
            raise ValueError(msg)
        _validate.check_adata(reference, "reference")
        logg.info(f"predicting expression of {adata.n_obs} spots from their images ({reference.n_obs} reference spots)")
        pred = model.predict(
            adata,
            reference=reference,
            n_neighbors=n_neighbors,
            genes=genes,
            patches_key=patches_key,
            reference_layer=reference_layer,
            max_missing_genes=max_missing_genes,
            progress=progress,
        )
    params = {
        "n_neighbors": int(n_neighbors) if reference is not None else None,
        "n_genes": int(pred.shape[1]),
        "patches_key": patches_key,
        "reference_layer": reference_layer,
        "n_reference": None if reference is None else int(reference.n_obs),
        "model": repr(model),
    }
    out = adata.copy() if copy else adata
    out.obsm[key_added] = pred
    out.uns[key_added] = {"params": params}
    logg.info(f"    finished ({perf_counter() - start:.1f}s): added\n    'obsm[{key_added!r}]', 'uns[{key_added!r}]'")
    return out if copy else None


@inject_docs
def annotate_zero_shot(
    adata: AnnData,
    /,
    *,
    model: SpatialCLIP,
    markers: Mapping[str, Sequence[str]],
    modality: str = "image",
    marker_z: float = 2.0,
    patches_key: str = _keys.PATCHES,
    layer: str | None = None,
    progress: bool = True,
    key_added: str = _keys.ZERO_SHOT,
    copy: bool = False,
) -> AnnData | None:
    """Label spots from marker gene sets alone (no labelled spots), through a trained SpatialCLIP.

    Each marker set becomes a prototype in the shared space (:meth:`SpatialCLIP.embed_markers`: a
    profile with the markers raised, or the marker names as a gene sentence); every spot takes the
    label of the most similar prototype, with class probabilities from a softmax at the model's
    temperature. With ``modality="image"`` the labels come from the histology alone.

    Parameters
    ----------
    {adata}
    model
        A fitted :class:`sptl.models.SpatialCLIP`.
    markers
        ``{{label: [marker genes]}}``; at least one marker per label must be a model gene.
    modality
        Embed the spots' ``"image"`` patches or their ``"expression"``.
    marker_z
        Standard deviations by which markers are raised in the prototype profiles (MLP encoder).
    patches_key
        Key of the patch record (``modality="image"``).
    {layer}
    {progress}
    key_added
        Stem of the keys written.
    {copy}

    Returns
    -------
    ``None``, or the annotated copy if ``copy=True``. Written: ``obs[key_added]`` (categorical label),
    ``obs[f"{key_added}_confidence"]`` (probability of that label), ``obsm[f"{key_added}_scores"]``
    (DataFrame of class probabilities), ``uns[key_added]`` (``params``, ``markers``).

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.synthetic_tissue(n_spots=120, seed=0)
    >>> sptl.pp.extract_patches(adata, size=32)
    >>> model = sptl.models.SpatialCLIP(image_encoder="sptl-vit-micro", n_genes=60, max_epochs=2)
    >>> model = model.fit(adata, progress=False)
    >>> markers = adata.uns["synthetic"]["markers"]
    >>> sptl.tl.annotate_zero_shot(adata, model=model, markers=markers, progress=False)
    >>> adata.obs["zero_shot"].cat.categories.tolist()
    ['epithelium', 'stroma', 'immune', 'adipose']
    """
    start = perf_counter()
    _check_model(model)
    _validate.check_adata(adata)
    _validate.check_choice(modality, "modality", MODALITIES)
    if not isinstance(markers, Mapping) or len(markers) < 2:
        msg = "`markers` must be a dict {label: [genes]} with at least two labels."
        raise ValueError(msg)
    labels = [str(k) for k in markers]
    protos = model.embed_markers(markers, marker_z=marker_z)
    emb = model.transform(adata, modality=modality, patches_key=patches_key, layer=layer, progress=progress)
    scale = float(np.exp(min(float(model.net_.logit_scale.detach()), np.log(100.0))))
    logits = scale * emb @ protos.T
    logits -= logits.max(axis=1, keepdims=True)
    proba = np.exp(logits)
    proba /= proba.sum(axis=1, keepdims=True)
    codes = proba.argmax(axis=1)
    params = {
        "modality": modality,
        "marker_z": float(marker_z),
        "patches_key": patches_key,
        "layer": layer,
        "model": repr(model),
    }
    out = adata.copy() if copy else adata
    out.obs[key_added] = pd.Categorical.from_codes(codes, categories=labels)
    out.obs[_keys.confidence(key_added)] = proba.max(axis=1).astype(np.float32)
    out.obsm[_keys.scores(key_added)] = pd.DataFrame(proba.astype(np.float32), index=out.obs_names, columns=labels)
    out.uns[key_added] = {"params": params, "markers": {k: list(v) for k, v in markers.items()}}
    logg.info(
        f"    finished ({perf_counter() - start:.1f}s): added\n    'obs[{key_added!r}]',"
        f" 'obs[{_keys.confidence(key_added)!r}]', 'obsm[{_keys.scores(key_added)!r}]', 'uns[{key_added!r}]'"
    )
    return out if copy else None


@inject_docs
def retrieve(
    adata: AnnData,
    /,
    *,
    model: SpatialCLIP,
    reference: AnnData | None = None,
    query: str = "image",
    k: int = 5,
    patches_key: str = _keys.PATCHES,
    layer: str | None = None,
    progress: bool = True,
    key_added: str = _keys.RETRIEVAL,
    copy: bool = False,
) -> AnnData | None:
    """Cross-modal retrieval: for every spot, the ``k`` reference spots whose other modality matches best.

    With ``query="image"`` each patch of ``adata`` retrieves the reference spots with the most
    similar expression embeddings (and the reverse for ``"expression"``). Without ``reference`` the
    spots of ``adata`` are searched, and the rank of each spot's own partner is recorded (1 = its own
    expression is the best match of its image).

    Parameters
    ----------
    {adata}
    model
        A fitted :class:`sptl.models.SpatialCLIP`.
    reference
        Spots to search (with patches for ``query="expression"``, counts for ``"image"``); ``None``
        searches ``adata`` itself.
    query
        Modality of ``adata`` that queries: ``"image"`` or ``"expression"``.
    k
        Matches kept per spot.
    patches_key
        Key of the patch records.
    {layer}
    {progress}
    key_added
        Stem of the keys written.
    {copy}

    Returns
    -------
    ``None``, or the annotated copy if ``copy=True``. Written: ``obsm[f"{key_added}_indices"]`` (``(n, k)``
    positions of the matches in ``reference``, best first), ``obsm[f"{key_added}_scores"]`` (their cosine
    similarities), without ``reference`` also ``obs[f"{key_added}_rank"]`` (rank of the spot's own
    partner), and ``uns[key_added]["params"]`` (with ``reference_obs_names`` when a reference is given).

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.synthetic_tissue(n_spots=120, seed=0)
    >>> sptl.pp.extract_patches(adata, size=32)
    >>> model = sptl.models.SpatialCLIP(image_encoder="sptl-vit-micro", n_genes=40, max_epochs=2)
    >>> model = model.fit(adata, progress=False)
    >>> sptl.tl.retrieve(adata, model=model, k=5, progress=False)
    >>> adata.obsm["retrieval_indices"].shape
    (120, 5)
    """
    start = perf_counter()
    _check_model(model)
    _validate.check_adata(adata)
    _validate.check_choice(query, "query", MODALITIES)
    if reference is not None:
        _validate.check_adata(reference, "reference")
    if int(k) < 1:
        msg = f"`k` must be a positive integer, got {k!r}."
        raise ValueError(msg)
    other = "expression" if query == "image" else "image"
    ref = adata if reference is None else reference
    q = model.transform(adata, modality=query, patches_key=patches_key, layer=layer, progress=progress)
    r = model.transform(ref, modality=other, patches_key=patches_key, layer=layer, progress=progress)
    sim = q @ r.T
    kk = min(int(k), r.shape[0])
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :kk]
    top = np.take_along_axis(sim, idx, axis=1)
    params = {"query": query, "k": kk, "patches_key": patches_key, "layer": layer, "model": repr(model)}
    rank = None
    if reference is None:
        own = np.diag(sim)
        rank = (sim > own[:, None]).sum(axis=1) + 1
    else:
        params["reference_obs_names"] = ref.obs_names.tolist()
    out = adata.copy() if copy else adata
    out.obsm[_keys.indices(key_added)] = idx.astype(np.int64)
    out.obsm[_keys.scores(key_added)] = top.astype(np.float32)
    if rank is not None:
        out.obs[_keys.rank(key_added)] = rank.astype(np.int64)
    out.uns[key_added] = {"params": params}
    added = f"'obsm[{_keys.indices(key_added)!r}]', 'obsm[{_keys.scores(key_added)!r}]'"
    if rank is not None:
        added += f", 'obs[{_keys.rank(key_added)!r}]'"
    logg.info(f"    finished ({perf_counter() - start:.1f}s): added\n    {added}, 'uns[{key_added!r}]'")
    return out if copy else None
