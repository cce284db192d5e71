"""Scores of transferred labels against known labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score


def label_scores(
    truth: Sequence | pd.Series,
    predicted: Sequence | pd.Series,
    *,
    labels: Sequence[str] | None = None,
    exclude: Sequence[str] = ("undetermined",),
) -> dict[str, float | int]:
    """Accuracy and macro-F1 of predicted labels.

    Observations are scored when their true label is known, not in ``exclude`` and, when ``labels``
    is given, one of ``labels`` (the classes the source could teach). Macro-F1 averages the per-class
    F1 over the true classes that remain.

    Parameters
    ----------
    truth
        True labels (missing values are not scored).
    predicted
        Predicted labels, same length and order.
    labels
        Classes that can be scored, usually the source classes.
    exclude
        True labels never scored (for example ``"undetermined"``).

    Returns
    -------
    ``{"accuracy": ..., "macro_f1": ..., "n_scored": ...}``

    Examples
    --------
    >>> from sptl.metrics import label_scores
    >>> label_scores(["a", "b", "b"], ["a", "b", "a"])["accuracy"]
    0.6666666666666666
    """
    t = pd.Series(np.asarray(truth, dtype=object))
    p = pd.Series(np.asarray(predicted, dtype=object))
    if len(t) != len(p):
        msg = f"`truth` has {len(t)} entries but `predicted` has {len(p)}."
        raise ValueError(msg)
    keep = t.notna() & ~t.astype(str).isin(list(exclude))
    if labels is not None:
        keep &= t.astype(str).isin([str(x) for x in labels])
    t, p = t[keep].astype(str), p[keep].astype(str)
    if len(t) == 0:
        msg = "No observation can be scored: no true label is known, outside `exclude` and among `labels`."
        raise ValueError(msg)
    present = sorted(t.unique())
    return {
        "accuracy": float(accuracy_score(t, p)),
        "macro_f1": float(f1_score(t, p, labels=present, average="macro", zero_division=0)),
        "n_scored": len(t),
    }
