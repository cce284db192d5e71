"""Saving, loading and gene checks shared by sptl's trainable models."""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .. import _keys, _validate

#: Bumped when the checkpoint layout changes; older files are refused with a clear error.
FORMAT_VERSION = 1


class TransferModel(ABC):
    """Base class: constructor arguments, the genes the model was trained on, and checkpoints.

    A checkpoint is one ``.npz`` file (no pickle) holding the model's arrays and a JSON header with
    the class name, format version, constructor arguments, genes and label classes.
    """

    #: Names of the array attributes that make up the trained state.
    _state_arrays: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.var_names_: pd.Index | None = None
        self.classes_: list[str] | None = None
        self.history_: dict[str, Any] = {}

    @abstractmethod
    def fit(self, source: AnnData, /, **kwargs: Any) -> TransferModel:
        """Train on annotated source data; returns ``self``."""

    @abstractmethod
    def predict(self, adata: AnnData, /, **kwargs: Any) -> pd.Series:
        """Predict labels for every observation of ``adata``."""

    @staticmethod
    def _sections(
        source: AnnData | Sequence[AnnData],
        target: AnnData | Sequence[AnnData] | None,
        *,
        label_key: str,
        layer: str | None,
        exclude: Sequence[str],
        batch_key: str | None = None,
    ) -> tuple[list[AnnData], list[AnnData], list[pd.Series], list[str], list]:
        """Validate training inputs: sources, targets, source labels, names for messages, counts."""
        sources = _validate.as_adata_list(source, "source")
        if batch_key is not None:
            sources = _validate.split_batches(sources, batch_key, "source")
        targets = [] if target is None else _validate.as_adata_list(target, "target")
        labels = _validate.check_labels(sources, label_key, "source", exclude=exclude)
        names = _validate.names_of(sources, "source") + _validate.names_of(targets, "target")
        counts = [_validate.get_counts(a, layer, n) for a, n in zip(sources + targets, names, strict=True)]
        return sources, targets, labels, names, counts

    # -- checks -------------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """Whether the model has been fitted or loaded."""
        return self.var_names_ is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            msg = (
                f"This {type(self).__name__} is not fitted yet: call `.fit(...)` or `{type(self).__name__}.load(path)`."
            )
            raise RuntimeError(msg)

    def _model_counts(
        self, adata: AnnData, layer: str | None, max_missing_genes: float, name: str = "adata"
    ) -> sparse.csr_matrix:
        """Counts of ``adata`` on the model's genes, in the model's order.

        Genes the model knows but ``adata`` lacks count as zero (sections often drop all-zero genes) as
        long as they are at most ``max_missing_genes`` of the model's genes; more raises a ValueError.
        """
        self._check_fitted()
        X = _validate.get_counts(adata, layer, name)
        idx = adata.var_names.get_indexer(self.var_names_)
        missing = self.var_names_[idx < 0]
        if len(missing) > max_missing_genes * len(self.var_names_):
            msg = (
                f"`{name}` lacks {len(missing)} of the {len(self.var_names_)} genes this model was trained on"
                f" (for example {missing[:5].tolist()}), more than `max_missing_genes={max_missing_genes}`"
                " allows: use data with the same gene identifiers (symbols vs ids?) or train a new model."
            )
            raise ValueError(msg)
        X = sparse.csr_matrix(X)[:, np.where(idx < 0, 0, idx)]
        if len(missing):
            logg.warning(f"`{name}` lacks {len(missing)} model genes; they are treated as zero counts.")
            X = sparse.csr_matrix(X.multiply((idx >= 0)[None, :]))
        return X

    # -- persistence --------------------------------------------------------------------------------
    #: Whether :meth:`save` compresses the arrays (network weights hardly compress, and slowly).
    _compress: ClassVar[bool] = True

    def save(self, path: str | os.PathLike) -> None:
        """Save weights, genes, classes and constructor arguments to ``path`` (``.npz``)."""
        self._check_fitted()
        header = {
            "class": type(self).__name__,
            "format_version": FORMAT_VERSION,
            "params": self.params,
            "var_names": self.var_names_.tolist(),
            "classes": self.classes_,
            "history": self.history_,
        }
        write_checkpoint(path, header, self._arrays(), compress=self._compress)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TransferModel:
        """Load a model saved with :meth:`save`; refuses files of another model class or format."""
        header, arrays = read_checkpoint(path, cls.__name__)
        missing = [k for k in cls._state_arrays if k not in arrays]
        if missing:
            msg = f"{path} is incomplete: arrays {missing} are missing."
            raise ValueError(msg)
        model = cls(**header["params"])
        model.var_names_ = pd.Index(header["var_names"])
        model.classes_ = header["classes"]
        model.history_ = header.get("history", {})
        model._restore(arrays)
        return model

    def _arrays(self) -> dict[str, np.ndarray]:
        """The arrays that make up the trained state (saved by :meth:`save`)."""
        return {k: np.asarray(getattr(self, k)) for k in self._state_arrays}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the trained state from the arrays of a checkpoint."""
        for k in self._state_arrays:
            setattr(self, k, arrays[k])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        state = (
            f"fitted on {len(self.var_names_)} genes, {len(self.classes_)} classes" if self.is_fitted else "not fitted"
        )
        return f"{type(self).__name__}({args}) [{state}]"


def write_checkpoint(
    path: str | os.PathLike, header: dict[str, Any], arrays: dict[str, np.ndarray], *, compress: bool = True
) -> None:
    """Write an sptl checkpoint: one ``.npz`` of named arrays plus a JSON ``__header__`` (no pickle)."""
    blob = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with Path(path).open("wb") as fh:
        (np.savez_compressed if compress else np.savez)(fh, __header__=blob, **arrays)


def read_checkpoint(path: str | os.PathLike, class_name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a checkpoint written by :func:`write_checkpoint`: its header and arrays.

    Refuses a missing file, a file that is not an sptl checkpoint, another model class and another
    checkpoint format, each with a clear error.
    """
    path = Path(path)
    if not path.exists():
        msg = f"Checkpoint {path} not found."
        raise FileNotFoundError(msg)
    try:
        with np.load(path, allow_pickle=False) as f:
            header = json.loads(f["__header__"].tobytes().decode())
            arrays = {k: f[k] for k in f.files if k != "__header__"}
    except (ValueError, KeyError, OSError) as e:
        msg = f"{path} is not an sptl model checkpoint ({e})."
        raise ValueError(msg) from e
    if header.get("class") != class_name:
        msg = f"{path} holds a {header.get('class')!r} model, not a {class_name!r}: load it with that class."
        raise ValueError(msg)
    if header.get("format_version") != FORMAT_VERSION:
        msg = (
            f"{path} was written in checkpoint format {header.get('format_version')}, this sptl reads"
            f" format {FORMAT_VERSION}: re-train or use the sptl version that wrote it."
        )
        raise ValueError(msg)
    return header, arrays


def source_weights(sources: Sequence[AnnData], weights_key: str | None, labelled: np.ndarray) -> np.ndarray:
    """Instance weights of all source spots (ones without ``weights_key``), mean 1 over the labelled ones.

    Raises if every labelled spot has weight 0.
    """
    if weights_key is None:
        return np.ones(len(labelled), dtype=np.float32)
    w = np.concatenate(_validate.check_weights(sources, weights_key, "source"))
    if not w[labelled].sum() > 0:
        msg = f"All labelled source spots have weight 0 in `obs[{weights_key!r}]`."
        raise ValueError(msg)
    return (w / w[labelled].mean()).astype(np.float32)


def class_sizes(codes: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """Summed instance weights per class (float32); a class without weight counts as size 1."""
    freq = np.bincount(codes, weights=weights, minlength=n_classes).astype(np.float32)
    return np.where(freq > 0, freq, np.float32(1.0))


def labels_from_proba(proba: pd.DataFrame, threshold: float | None) -> pd.Series:
    """Argmax labels (categorical); with ``threshold``, rows below it become ``"unassigned"``."""
    cats = [str(c) for c in proba.columns]
    values = proba.to_numpy()
    codes = values.argmax(axis=1)
    if threshold is not None:
        cats = [*cats, _keys.UNASSIGNED]
        codes = np.where(values.max(axis=1) < threshold, len(cats) - 1, codes)
    return pd.Series(pd.Categorical.from_codes(codes, categories=cats), index=proba.index)
