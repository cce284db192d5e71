"""Input validation shared by every public function.

Each check raises before anything is computed or written, with a message that names the object,
the key or the shape at fault and says how to fix it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

#: Fewest genes label transfer and the other expression methods accept (default of ``min_shared_genes``).
MIN_SHARED_GENES = 10
#: Below this many shared genes a warning says that few classes can be told apart.
FEW_SHARED_GENES = 20
#: Control probes of imaging panels, ignored wherever genes are shared (case-insensitive name prefixes):
#: MERFISH / MERSCOPE ``Blank-*``, Xenium ``NegControlProbe_*``, ``NegControlCodeword_*``,
#: ``UnassignedCodeword_*``, ``DeprecatedCodeword_*``, ``BLANK_*``, ``Intergenic_Region_*``, CosMx
#: ``NegPrb*``, ``SystemControl*``, ``FalseCode*``.
CONTROL_GENES = re.compile(
    r"^(blank|negcontrol|negprb|systemcontrol|falsecode|unassignedcodeword|deprecatedcodeword|intergenic_region)",
    re.IGNORECASE,
)
#: Largest value of a non-integer matrix that is taken as already log-transformed: log1p of counts per
#: 10,000 stays below 10 and log1p of counts per million below 14, while normalised values that are not
#: log-transformed (volume-normalised MERFISH, counts per 10,000) reach far higher in highly expressed genes.
LOG_MAX = 20.0


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
            f"{where} holds negative values: sptl expects raw counts or normalised, non-negative values here"
            " (pass `layer=` with the counts if `.X` is scaled)."
        )
        raise ValueError(msg)
    totals = np.asarray(X.sum(axis=1)).ravel() if X.ndim == 2 else np.asarray(X)
    n_empty = int((totals == 0).sum())
    if n_empty and n_empty == len(totals):
        msg = f"{where} has no counts in any observation (all zero): there is no expression to work with."
        raise ValueError(msg)
    if n_empty:
        warnings.warn(
            f"{where}: {n_empty} of {len(totals)} observations have no counts at all; their results carry no"
            " information of their own (filter them with `scanpy.pp.filter_cells(adata, min_counts=1)`).",
            UserWarning,
            stacklevel=3,
        )
    if value_kind(X) == "log":
        warnings.warn(
            f"{where} looks log-transformed (non-integer values, none above {LOG_MAX:g}): sptl expects raw"
            " counts or normalised values that are not log-transformed, and uses these as they are. Pass the"
            " counts (for example `layer='counts'`) if you have them.",
            UserWarning,
            stacklevel=3,
        )
    return X


def value_kind(X: np.ndarray | sparse.spmatrix) -> str:
    """What the non-negative values of an expression matrix are, judged from the values.

    ``"counts"``: all integers (raw counts, stored as integers or floats). ``"log"``: not all integers and
    none above :data:`LOG_MAX` (log-transformed already). ``"normalized"``: other non-integer values,
    such as volume-normalised imaging panels (MERFISH) or counts per 10,000 that are not log-transformed.
    """
    values = X.data if sparse.issparse(X) else np.asarray(X).ravel()
    sample = values
    if values.size > 1_000_000:  # every value for the maximum, a fixed sample for the integer test
        sample = values[np.random.default_rng(0).choice(values.size, 1_000_000, replace=False)]
    if values.size == 0 or np.issubdtype(values.dtype, np.integer) or np.all(sample == np.round(sample)):
        return "counts"
    return "log" if float(values.max()) <= LOG_MAX else "normalized"


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


def shared_genes(adatas: Sequence[AnnData], names: Sequence[str], min_shared: int = MIN_SHARED_GENES) -> pd.Index:
    """Return the genes all ``adatas`` share (in the first one's order), control probes left out.

    Control probes (:data:`CONTROL_GENES`) never count. Raises if fewer than ``min_shared`` genes remain
    and warns below :data:`FEW_SHARED_GENES`.
    """
    genes = adatas[0].var_names
    for ad in adatas[1:]:
        genes = genes[genes.isin(ad.var_names)]
    genes = genes[[CONTROL_GENES.match(str(g)) is None for g in genes]]
    sizes = ", ".join(f"{n}: {ad.n_vars}" for n, ad in zip(names, adatas, strict=True))
    if len(genes) < min_shared:
        msg = (
            f"Only {len(genes)} genes are shared ({sizes} genes; control probes such as `Blank-*` not"
            f" counted), fewer than `min_shared_genes={min_shared}`. Check that all inputs use the same gene"
            " identifiers (symbols vs Ensembl ids, case)."
        )
        raise ValueError(msg)
    if len(genes) < FEW_SHARED_GENES:
        warnings.warn(
            f"Only {len(genes)} genes are shared ({sizes} genes): with fewer than {FEW_SHARED_GENES} genes few"
            " classes can be told apart; expect a weak transfer.",
            UserWarning,
            stacklevel=3,
        )
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
