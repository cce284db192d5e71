from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

import sptl
from sptl.metrics import label_scores
from sptl.models import TrAdaBoost

EXCL = ["undetermined"]
# cross-patient HER2ST pairs; 5% of the target's labelled spots are given to TrAdaBoost
PAIRS = [("F1", "E1"), ("D1", "E1"), ("B1", "F1"), ("E1", "A1"), ("A1", "D1"), ("C1", "B1")]


def pair_features(a, b):
    """Joint PCA features of a source/target pair, source labels, 5% target labels and the held-out rest."""
    src, tgt = sptl.datasets.her2st(a), sptl.datasets.her2st(b)
    model = sptl.models.KNNTransfer().fit(src, label_key="label", target=tgt, exclude=EXCL)
    Xs, Xt = model.transform(src), model.transform(tgt)
    lab = src.obs["label"].astype(str)
    ys = np.where(lab.isin([*EXCL, "nan"]), None, lab).astype(object)
    yt = tgt.obs["label"].astype(str).to_numpy()
    pool = np.flatnonzero(~np.isin(yt, [*EXCL, "nan"]))
    few = np.random.default_rng(0).choice(pool, max(5, round(0.05 * len(pool))), replace=False)
    return Xs, ys, Xt, yt, few, np.setdiff1d(pool, few), model.classes_


@pytest.fixture(scope="module")
def f1_e1():
    return pair_features("F1", "E1")


def test_beats_source_only_training_on_real_pairs():
    # measured (seed 0), macro-F1 on the 95% held-out target spots, mean over the 6 pairs:
    # source-only logistic regression 0.366, TrAdaBoost with 5% target labels 0.448 (better in 4 of 6)
    source_only, boosted = [], []
    for a, b in PAIRS:
        Xs, ys, Xt, yt, few, test, classes = pair_features(a, b)
        keep = np.array([v is not None for v in ys])
        so = LogisticRegression(max_iter=1000, class_weight="balanced").fit(Xs[keep], ys[keep].astype(str))
        boost = TrAdaBoost().fit(Xs, ys, Xt[few], yt[few])
        source_only.append(label_scores(yt[test], so.predict(Xt)[test], labels=classes)["macro_f1"])
        boosted.append(label_scores(yt[test], boost.predict(Xt)[test], labels=classes)["macro_f1"])
    assert np.mean(boosted) >= np.mean(source_only) + 0.05
    assert np.mean(boosted) >= 0.42
    assert sum(b > s for b, s in zip(boosted, source_only, strict=True)) >= 4


def test_probabilities_classes_and_rounds(f1_e1):
    Xs, ys, Xt, yt, few, _, classes = f1_e1
    model = TrAdaBoost(n_estimators=10).fit(Xs, ys, Xt[few], yt[few])
    proba = model.predict_proba(Xt)
    assert proba.shape == (len(Xt), len(model.classes_))
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    assert list(model.classes_) == sorted(set(classes) | set(yt[few]))
    np.testing.assert_array_equal(model.predict(Xt), model.classes_[proba.argmax(1)])
    assert 1 <= len(model.estimators_) <= 10 and len(model.alphas_) == len(model.estimators_)
    assert (model.errors_ < 1 - 1 / len(model.classes_)).all()


def test_scikit_learn_api():
    model = TrAdaBoost(n_estimators=7, C=0.5)
    assert model.get_params()["n_estimators"] == 7
    model.set_params(learning_rate=0.5)
    copy = clone(model)
    assert copy.get_params() == model.get_params() and not hasattr(copy, "estimators_")
    rng = np.random.default_rng(0)
    Xs = rng.normal(size=(200, 3))
    Xt = rng.normal(size=(40, 3))
    fitted = model.fit(Xs, (Xs[:, 0] > 0).astype(int), Xt[:10], (Xt[:10, 0] > 0).astype(int))
    assert fitted is model
    assert model.score(Xt[10:], (Xt[10:, 0] > 0).astype(int)) > 0.8
    assert model.predict(Xt[:2]).dtype.kind == "i"


@pytest.mark.parametrize("estimator", ["logistic", "tree"])
def test_save_load_roundtrip(tmp_path, f1_e1, estimator):
    Xs, ys, Xt, yt, few, _, _ = f1_e1
    cols = [f"PC{i}" for i in range(Xs.shape[1])]
    model = TrAdaBoost(estimator=estimator, n_estimators=5).fit(
        pd.DataFrame(Xs, columns=cols), ys, pd.DataFrame(Xt[few], columns=cols), yt[few]
    )
    path = tmp_path / "boost.npz"
    model.save(path)
    loaded = TrAdaBoost.load(path)
    assert loaded.get_params() == model.get_params()
    np.testing.assert_allclose(loaded.predict_proba(Xt), model.predict_proba(Xt))
    np.testing.assert_array_equal(loaded.predict(Xt), model.predict(Xt))
    with pytest.raises(ValueError, match="other columns"):
        loaded.predict(pd.DataFrame(Xt, columns=[f"x{i}" for i in range(Xt.shape[1])]))
    with pytest.raises(ValueError, match="features"):
        loaded.predict(Xt[:, :5])


def test_load_refuses_other_files(tmp_path, her2st):
    knn = sptl.models.KNNTransfer().fit(her2st("F1"), label_key="label")
    knn.save(tmp_path / "knn.npz")
    with pytest.raises(ValueError, match="KNNTransfer"):
        TrAdaBoost.load(tmp_path / "knn.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not an sptl model"):
        TrAdaBoost.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        TrAdaBoost.load(tmp_path / "missing.npz")


def test_bad_input(f1_e1):
    Xs, ys, Xt, yt, few, _, _ = f1_e1
    with pytest.raises(ValueError, match="min_target_labels=5"):
        TrAdaBoost().fit(Xs, ys, Xt[few[:3]], yt[few[:3]])
    unlabelled = np.array([None] * len(few), dtype=object)
    unlabelled[:2] = yt[few[:2]]
    with pytest.raises(ValueError, match="got 2"):
        TrAdaBoost().fit(Xs, ys, Xt[few], unlabelled)
    with pytest.raises(ValueError, match="features"):
        TrAdaBoost().fit(Xs, ys, Xt[few][:, :5], yt[few])
    bad = Xs.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TrAdaBoost().fit(bad, ys, Xt[few], yt[few])
    with pytest.raises(ValueError, match="non-empty"):
        TrAdaBoost().fit(Xs[:0], ys[:0], Xt[few], yt[few])
    with pytest.raises(ValueError, match="labels for"):
        TrAdaBoost().fit(Xs, ys[:10], Xt[few], yt[few])
    with pytest.raises(ValueError, match="at least two"):
        TrAdaBoost().fit(Xs, np.repeat("a", len(Xs)), Xt[few], np.repeat("a", len(few)))
    with pytest.raises(ValueError, match="estimator"):
        TrAdaBoost(estimator="svm").fit(Xs, ys, Xt[few], yt[few])
    with pytest.raises(ValueError, match="sample_weight"):
        TrAdaBoost().fit(Xs, ys, Xt[few], yt[few], sample_weight=-np.ones(len(Xs)))
    with pytest.raises(RuntimeError, match="not fitted"):
        TrAdaBoost().predict(Xt)


def test_importance_weights_as_initial_weights(f1_e1):
    Xs, ys, Xt, yt, few, _, _ = f1_e1
    w = np.ones(len(Xs))
    w[: len(Xs) // 2] = 0  # the first half of the source is ignored
    uniform = TrAdaBoost(n_estimators=3).fit(Xs, ys, Xt[few], yt[few])
    model = TrAdaBoost(n_estimators=3).fit(Xs, ys, Xt[few], yt[few], sample_weight=w)
    proba = model.predict_proba(Xt)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    assert np.abs(proba - uniform.predict_proba(Xt)).max() > 0.05
