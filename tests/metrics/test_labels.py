from __future__ import annotations

import numpy as np
import pytest

from sptl.metrics import label_scores


def test_scores_and_exclusions():
    truth = ["a", "a", "b", "b", "undetermined", None, "c"]
    pred = ["a", "b", "b", "b", "a", "a", "a"]
    s = label_scores(truth, pred, labels=["a", "b"])
    assert s["n_scored"] == 4
    assert s["accuracy"] == pytest.approx(0.75)
    # F1(a) = 2/3, F1(b) = 0.8
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert label_scores(truth, pred)["n_scored"] == 5


def test_errors():
    with pytest.raises(ValueError, match="entries"):
        label_scores(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="No observation can be scored"):
        label_scores([np.nan, "undetermined"], ["a", "b"])
