from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sptl
from sptl.metrics import label_scores
from sptl.models import KNNTransfer


@pytest.fixture
def fitted(her2st):
    return KNNTransfer(n_genes=2000).fit(her2st("F1"), label_key="label", exclude=["undetermined"], progress=False)


def test_fit_predict_on_new_section(fitted, her2st):
    # fitted on the source alone, applied to sections it never saw; measured 0.659 accuracy on D1
    target = her2st("D1")
    pred = fitted.predict(target, progress=False)
    assert isinstance(pred.dtype, pd.CategoricalDtype) and pred.index.equals(target.obs_names)
    assert label_scores(target.obs["label"], pred, labels=fitted.classes_)["accuracy"] >= 0.6
    proba = fitted.predict_proba(her2st("C1"), progress=False)
    assert proba.shape == (her2st("C1").n_obs, len(fitted.classes_))
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    assert len(fitted.var_names_) == 2000
    assert fitted.classes_ == ["connective tissue", "immune infiltrate", "invasive cancer"]


def test_save_load_round_trip_identical(fitted, her2st, tmp_path):
    path = tmp_path / "knn.npz"
    fitted.save(path)
    loaded = KNNTransfer.load(path)
    assert loaded.params == fitted.params
    assert loaded.var_names_.equals(fitted.var_names_) and loaded.classes_ == fitted.classes_
    for section in ("D1", "B1"):
        a = fitted.predict_proba(her2st(section), progress=False)
        b = loaded.predict_proba(her2st(section), progress=False)
        pd.testing.assert_frame_equal(a, b)


def test_refuses_mismatched_genes(fitted, her2st):
    target = her2st("D1")
    target.var_names = [f"ENSG{i:011d}" for i in range(target.n_vars)]
    with pytest.raises(ValueError, match="lacks 2000 of the 2000 genes this model was trained on"):
        fitted.predict(target)


def test_refuses_other_checkpoints(fitted, tmp_path):
    path = tmp_path / "knn.npz"
    fitted.save(path)

    class OtherModel(KNNTransfer):
        pass

    with pytest.raises(ValueError, match="holds a 'KNNTransfer' model"):
        OtherModel.load(path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(ValueError, match="not an sptl model checkpoint"):
        KNNTransfer.load(bad)
    with pytest.raises(FileNotFoundError):
        KNNTransfer.load(tmp_path / "missing.npz")


def test_unfitted_and_bad_params(her2st):
    with pytest.raises(RuntimeError, match="not fitted"):
        KNNTransfer().predict(her2st("D1"))
    with pytest.raises(ValueError, match="n_neighbors"):
        KNNTransfer(n_neighbors=0)


def test_same_seed_same_model(her2st):
    a = KNNTransfer(seed=3).fit(her2st("C1"), label_key="label", progress=False)
    b = KNNTransfer(seed=3).fit(her2st("C1"), label_key="label", progress=False)
    np.testing.assert_array_equal(a.components_, b.components_)
    assert repr(a).startswith("KNNTransfer(") and "fitted on" in repr(a)
    assert sptl.models.TransferModel in type(a).__mro__
