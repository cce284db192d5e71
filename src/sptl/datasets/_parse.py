"""Helpers shared by the dataset loaders: argument checks and raw-file parsing steps."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse


def locate(path: str | os.PathLike, marker: str, subfolder: str | None = None) -> Path:
    """Folder holding ``marker``: ``path`` itself or ``path / subfolder`` (the release's own layout).

    Raises ``FileNotFoundError`` naming the expected file when neither holds it.
    """
    folder = Path(path)
    candidates = [folder] if subfolder is None else [folder, folder / subfolder]
    for cand in candidates:
        if (cand / marker).exists():
            return cand
    where = " or ".join(str(c / marker) for c in candidates)
    msg = f"{where} not found: `path` must be the folder with the raw release files."
    raise FileNotFoundError(msg)


def integer_csr(values: np.ndarray | sparse.spmatrix, what: str) -> sparse.csr_matrix:
    """Return counts as a CSR ``int32`` matrix, after checking they are whole non-negative numbers."""
    X = sparse.csr_matrix(values)
    data = X.data
    if data.size and (data.min() < 0 or not np.array_equal(data, np.round(data))):
        msg = f"{what} should hold raw counts (whole numbers >= 0)."
        raise ValueError(msg)
    if data.size and data.max() > np.iinfo(np.int32).max:
        msg = f"{what} has counts beyond the int32 range."
        raise ValueError(msg)
    return X.astype(np.int32)


def int_categorical(values: Sequence | np.ndarray) -> pd.Categorical:
    """Integer cluster ids as a categorical of strings, categories in numeric order."""
    values = pd.Series(values)
    codes = sorted(pd.unique(values.dropna()))
    return pd.Categorical(
        values.map(lambda v: str(int(v)) if pd.notna(v) else np.nan), categories=[str(int(c)) for c in codes]
    )
