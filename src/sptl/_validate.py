"""Input validation shared by every public function.

Each check raises before anything is computed or written, with a message that names the object,
the key or the shape at fault and says how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse


def as_adata_list(data: AnnData | Sequence[AnnData], name: str) -> list[AnnData]:
    """Return ``data`` as a non-empty list of AnnData, each checked with :func:`check_adata`."""
    if isinstance(data, AnnData):
        items = [data]
    elif isinstance(data, Sequence) and not isinstance(data, str):
        items = list(data)
        if not items:
            msg = f"`{name}` is an empty list: pass at least one AnnData."
            raise ValueError(msg)
    else:
        msg = f"`{name}` must be an AnnData or a list of AnnData, got {type(data).__name__}."
        raise TypeError(msg)
    for ad, label in zip(items, names_of(items, name), strict=True):
        check_adata(ad, label)
    return items


def names_of(items: Sequence[AnnData], name: str) -> list[str]:
    """How error messages call each item: ``name`` alone, or ``name[i]`` in a list of several."""
    return [name] if len(items) == 1 else [f"{name}[{i}]" for i in range(len(items))]


def check_adata(adata: AnnData, name: str = "adata") -> None:
    """Check that ``adata`` is a non-empty AnnData with unique observation and variable names."""
    if not isinstance(adata, AnnData):
        msg = f"`{name}` must be an AnnData, got {type(adata).__name__}."
        raise TypeError(msg)
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = f"`{name}` is empty ({adata.n_obs} observations x {adata.n_vars} variables)."
        raise ValueError(msg)
    for axis, names in (("obs", adata.obs_names), ("var", adata.var_names)):
        if not names.is_unique:
            dup = names[names.duplicated()].unique()[:5].tolist()
            fix = "adata.obs_names_make_unique()" if axis == "obs" else "adata.var_names_make_unique()"
            msg = f"`{name}.{axis}_names` are not unique (for example {dup}): run `{fix}` first."
            raise ValueError(msg)


def get_counts(adata: AnnData, layer: str | None, name: str = "adata") -> np.ndarray | sparse.spmatrix:
    """Return the count matrix (``.X`` or ``layers[layer]``) after checking it is finite and >= 0."""
    if layer is None:
        X, where = adata.X, f"`{name}.X`"
    else:
        if layer not in adata.layers:
            msg = (
                f"`{name}.layers[{layer!r}]` not found; layers are {list(adata.layers)}. Pass `layer=None` to use `.X`."
            )
            raise KeyError(msg)
        X, where = adata.layers[layer], f"`{name}.layers[{layer!r}]`"
    if X is None:
        msg = f"{where} is empty (None)."
        raise ValueError(msg)
    values = X.data if sparse.issparse(X) else np.asarray(X)
    if not np.issubdtype(values.dtype, np.number):
        msg = f"{where} has dtype {values.dtype}, expected numbers."
        raise TypeError(msg)
    n_bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if n_bad:
        msg = f"{where} holds {n_bad} NaN or infinite values: remove or impute them first."
        raise ValueError(msg)
    if np.size(values) and values.min() < 0:
        msg = (
            f"{where} holds negative values: sptl expects raw counts here (pass `layer=` with the counts"
            " if `.X` is scaled)."
        )
        raise ValueError(msg)
    return X


def check_spatial(adata: AnnData, spatial_key: str, name: str = "adata") -> np.ndarray:
    """Return ``obsm[spatial_key]`` as an ``(n_obs, 2 or 3)`` float array after checking it."""
    if spatial_key not in adata.obsm:
        msg = (
            f"`{name}.obsm[{spatial_key!r}]` not found (obsm keys: {list(adata.obsm)}): store the spot"
            " coordinates there or pass `spatial_key=`."
        )
        raise KeyError(msg)
    coords = np.asarray(adata.obsm[spatial_key], dtype=float)
    if coords.ndim != 2 or coords.shape[1] not in (2, 3):
        msg = f"`{name}.obsm[{spatial_key!r}]` has shape {coords.shape}, expected ({adata.n_obs}, 2) or (n, 3)."
        raise ValueError(msg)
    n_bad = int((~np.isfinite(coords)).any(axis=1).sum())
    if n_bad:
        msg = f"`{name}.obsm[{spatial_key!r}]` has NaN or infinite coordinates in {n_bad} rows."
        raise ValueError(msg)
    return coords


def check_labels(adatas: Sequence[AnnData], label_key: str, name: str, exclude: Sequence[str] = ()) -> list[pd.Series]:
    """Return each ``obs[label_key]`` as strings (missing values and ``exclude`` set to NaN).

    Raises if the column is missing anywhere or if fewer than two classes remain.
    """
    out = []
    for i, ad in enumerate(adatas):
        where = name if len(adatas) == 1 else f"{name}[{i}]"
        if label_key not in ad.obs:
            msg = f"`{where}.obs[{label_key!r}]` not found (obs columns: {list(ad.obs.columns)}): pass `label_key=`."
            raise KeyError(msg)
        lab = ad.obs[label_key]
        lab = lab.astype(object).where(lab.notna(), None).map(lambda v: None if v is None else str(v))
        out.append(lab)
    present = set(pd.concat(out).dropna())
    absent = [e for e in exclude if str(e) not in present]
    if absent:
        msg = (
            f"`exclude` names label(s) {absent} absent from `{name}.obs[{label_key!r}]`, whose labels are"
            f" {sorted(present)}: check the spelling."
        )
        raise ValueError(msg)
    out = [lab.where(~lab.isin([str(e) for e in exclude]), None) for lab in out]
    classes = pd.unique(pd.concat(out).dropna())
    if len(classes) < 2:
        msg = (
            f"`{name}.obs[{label_key!r}]` has {len(classes)} class(es) {list(classes)} after dropping missing"
            f" and excluded labels {list(exclude)}: label transfer needs at least two."
        )
        raise ValueError(msg)
    return out


def shared_genes(adatas: Sequence[AnnData], names: Sequence[str], min_shared: int) -> pd.Index:
    """Return the genes all ``adatas`` share (in the first one's order), or raise if too few."""
    genes = adatas[0].var_names
    for ad in adatas[1:]:
        genes = genes[genes.isin(ad.var_names)]
    if len(genes) < min_shared:
        sizes = ", ".join(f"{n}: {ad.n_vars}" for n, ad in zip(names, adatas, strict=True))
        msg = (
            f"Only {len(genes)} genes are shared ({sizes} genes), fewer than `min_shared_genes={min_shared}`."
            " Check that all inputs use the same gene identifiers (symbols vs Ensembl ids, case)."
        )
        raise ValueError(msg)
    return genes


def check_choice(value: object, name: str, choices: Sequence[object]) -> None:
    """Raise a ValueError if ``value`` is not one of ``choices``."""
    if value not in choices:
        msg = f"`{name}={value!r}` is not valid; choose one of {list(choices)}."
        raise ValueError(msg)


def split_batches(adatas: Sequence[AnnData], batch_key: str, name: str) -> list[AnnData]:
    """Split each AnnData into one view per value of ``obs[batch_key]`` (sections of one object)."""
    out = []
    for ad, label in zip(adatas, names_of(adatas, name), strict=True):
        if batch_key not in ad.obs:
            msg = f"`{label}.obs[{batch_key!r}]` not found (obs columns: {list(ad.obs.columns)}): pass `batch_key=`."
            raise KeyError(msg)
        for b in pd.unique(ad.obs[batch_key].dropna()):
            out.append(ad[(ad.obs[batch_key] == b).to_numpy()])
    return out


def check_weights(adatas: Sequence[AnnData], weights_key: str, name: str) -> list[np.ndarray]:
    """Return each ``obs[weights_key]`` as float32 instance weights (finite, >= 0, not all zero)."""
    out = []
    for i, ad in enumerate(adatas):
        where = name if len(adatas) == 1 else f"{name}[{i}]"
        if weights_key not in ad.obs:
            msg = (
                f"`{where}.obs[{weights_key!r}]` not found (obs columns: {list(ad.obs.columns)}): run"
                " `sptl.tl.instance_weights` first or pass the right `weights_key=`."
            )
            raise KeyError(msg)
        try:
            w = ad.obs[weights_key].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as e:
            dtype = ad.obs[weights_key].dtype
            msg = f"`{where}.obs[{weights_key!r}]` must hold numbers (instance weights), got dtype {dtype}."
            raise TypeError(msg) from e
        n_bad = int((~np.isfinite(w) | (w < 0)).sum())
        if n_bad:
            msg = f"`{where}.obs[{weights_key!r}]` has {n_bad} negative, NaN or infinite weights."
            raise ValueError(msg)
        out.append(w.astype(np.float32))
    if not any(w.sum() > 0 for w in out):
        msg = f"All weights in `{name}.obs[{weights_key!r}]` are zero."
        raise ValueError(msg)
    return out
