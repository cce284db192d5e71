"""Scores of a slice alignment: label agreement of the transport plan, matches and displacement."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree


def alignment_accuracy(
    plan: np.ndarray | sparse.spmatrix,
    labels_rows: Sequence | pd.Series,
    labels_cols: Sequence | pd.Series,
) -> float:
    """Share of the transported mass that joins spots of the same label (PASTE's accuracy).

    Mass between spots whose label is missing on either side is left out of both the numerator and
    the total.

    Parameters
    ----------
    plan
        Transport plan, rows = spots of one slice, columns = spots of the other (dense or sparse).
    labels_rows
        Label of each row spot.
    labels_cols
        Label of each column spot.

    Returns
    -------
    The share, in ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> from sptl.metrics import alignment_accuracy
    >>> alignment_accuracy(np.array([[0.4, 0.1], [0.0, 0.5]]), ["a", "b"], ["a", "b"])
    0.9
    """
    P = sparse.coo_matrix(plan)
    la = pd.Series(np.asarray(labels_rows, dtype=object))
    lb = pd.Series(np.asarray(labels_cols, dtype=object))
    if P.shape != (len(la), len(lb)):
        msg = f"`plan` has shape {P.shape}, but there are {len(la)} row labels and {len(lb)} column labels."
        raise ValueError(msg)
    codes = pd.factorize(pd.concat([la, lb]).astype("string"), use_na_sentinel=True)[0]
    ca, cb = codes[: len(la)], codes[len(la) :]
    known = (ca[P.row] >= 0) & (cb[P.col] >= 0)
    total = float(P.data[known].sum())
    if total <= 0:
        msg = "No transported mass joins two labelled spots: check the labels and the plan."
        raise ValueError(msg)
    same = known & (ca[P.row] == cb[P.col])
    return float(P.data[same].sum()) / total


def match_accuracy(matched: Sequence | pd.Series, truth: Sequence | pd.Series) -> float:
    """Share of spots whose best match is their true counterpart.

    Parameters
    ----------
    matched
        Best match of each spot (for example ``obs["spatial_aligned_match"]``); missing counts as wrong.
    truth
        True counterpart of each spot, same order.

    Returns
    -------
    The share, in ``[0, 1]``.

    Examples
    --------
    >>> from sptl.metrics import match_accuracy
    >>> match_accuracy(["s1", "s2", None], ["s1", "s3", "s4"])
    0.3333333333333333
    """
    m = pd.Series(np.asarray(matched, dtype=object))
    t = pd.Series(np.asarray(truth, dtype=object))
    if len(m) != len(t):
        msg = f"`matched` has {len(m)} entries but `truth` has {len(t)}."
        raise ValueError(msg)
    if len(t) == 0:
        msg = "No spot to score."
        raise ValueError(msg)
    return float((m.notna() & (m.astype(str) == t.astype(str))).mean())


def displacement(aligned: np.ndarray, truth: np.ndarray, *, unit: float | None = None) -> dict[str, float]:
    """Distance between aligned and true positions, in spot spacings.

    Parameters
    ----------
    aligned
        Aligned coordinates, one row per spot.
    truth
        True coordinates of the same spots in the reference frame.
    unit
        Length of one spot spacing; ``None`` takes the median nearest-neighbour distance of ``truth``.

    Returns
    -------
    ``{"median": ..., "mean": ..., "p90": ...}`` of the displacement in units of ``unit``.

    Examples
    --------
    >>> import numpy as np
    >>> from sptl.metrics import displacement
    >>> grid = np.stack(np.meshgrid(np.arange(5.0), np.arange(5.0)), -1).reshape(-1, 2)
    >>> displacement(grid + [0.5, 0], grid)["median"]
    0.5
    """
    A, T = np.asarray(aligned, dtype=float), np.asarray(truth, dtype=float)
    if A.shape != T.shape or A.ndim != 2:
        msg = f"`aligned` has shape {A.shape} and `truth` {T.shape}: expected the same (n, d) shape."
        raise ValueError(msg)
    if unit is None:
        d, _ = cKDTree(T).query(T, k=2)
        unit = float(np.median(d[:, 1])) if len(T) > 1 else 1.0
    dist = np.linalg.norm(A - T, axis=1) / unit
    return {"median": float(np.median(dist)), "mean": float(dist.mean()), "p90": float(np.quantile(dist, 0.9))}
