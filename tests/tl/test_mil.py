from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from helpers import assert_unchanged, snapshot
from sklearn.metrics import roc_auc_score

import sptl

KW = {"bag_key": "sptl_tile", "label_key": "bag_label", "use_rep": "X_pca", "progress": False}
BASELINE = {"dropout": 0.25, "weight_decay": 1e-4, "residual": False}


@pytest.fixture(scope="module")
def loo_results(her2st_bags):
    """Leave-one-patient-out runs with the attention defaults and with mean pooling (seed 0).

    Mean pooling keeps the settings it was benchmarked with (``benchmarks/mil.py``: dropout 0.25,
    weight decay 1e-4), so the comparison does not weaken the baseline.
    """
    out = {}
    for pooling, kw in (("attention", None), ("mean", BASELINE)):
        out[pooling] = sptl.tl.mil(
            her2st_bags, groups_key="patient", n_splits=None, pooling=pooling, model_kwargs=kw, copy=True, seed=0, **KW
        )
    return out


def _localisation_auc(adata, key="sptl_mil", evidence=False):
    lab = adata.obs["label"].astype(str)
    keep = (adata.obs["bag_label"] == "cancer").to_numpy() & ~lab.isin(["undetermined", "nan"]).to_numpy()
    size = adata.obs["sptl_tile"].map(adata.obs["sptl_tile"].value_counts()).to_numpy(float)
    score = adata.obs[f"{key}_attention"].to_numpy() * size
    if evidence:
        score = adata.obsm[f"{key}_evidence"]["cancer"].to_numpy()
    return roc_auc_score((lab == "invasive cancer").to_numpy()[keep], score[keep])


def test_mil_leave_one_patient_out_writes_everything(her2st_bags, loo_results):
    out = loo_results["attention"]
    assert "sptl_mil" not in her2st_bags.uns  # copy=True left the input alone
    res = out.uns["sptl_mil"]
    assert res["classes"] == ["cancer", "no cancer"]
    assert res["params"]["n_splits"] == 6 and res["params"]["groups_key"] == "patient"
    bags = res["bags"]
    assert len(bags) == 192 and bags["fold"].nunique() == 6
    # leave one patient out: every fold holds the bags of exactly one patient
    assert (bags.groupby("fold", observed=True)["group"].nunique() == 1).all()
    assert (bags["label"] == "cancer").sum() == 152
    np.testing.assert_allclose(res["probabilities"].sum(axis=1), 1, atol=1e-5)
    att = out.obs["sptl_mil_attention"]
    in_bag = out.obs["sptl_tile"].notna().to_numpy()
    assert att[in_bag].notna().all() and att[~in_bag].isna().all()
    np.testing.assert_allclose(att[in_bag].groupby(out.obs["sptl_tile"][in_bag], observed=True).sum(), 1, atol=1e-5)
    inst = out.obsm["sptl_mil_instance_probabilities"]
    assert list(inst.columns) == ["cancer", "no cancer"] and inst.shape == (out.n_obs, 2)
    ev = out.obsm["sptl_mil_evidence"]
    assert list(ev.columns) == ["cancer", "no cancer"] and ev.index.equals(out.obs_names)
    assert ev[in_bag].notna().all().all() and ev[~in_bag].isna().all().all()


def test_abmil_vs_mean_pooling_bag_auc(loo_results):
    att = loo_results["attention"].uns["sptl_mil"]["scores"]["auc"]
    mean = loo_results["mean"].uns["sptl_mil"]["scores"]["auc"]
    # measured with seed 0 (CPU): ABMIL defaults 0.755, mean pooling 0.837. Over seeds 0-4 (benchmarks/mil.py):
    # ABMIL 0.80-0.81 (issue-13 defaults), mean pooling 0.850 +- 0.020, so on these bags ABMIL does NOT beat mean
    # pooling (the issue-13 goal is not met)
    assert att > 0.70
    assert mean > 0.78
    # ... it trails it by 0.082 here; fail if the gap grows past 0.12
    assert mean - att < 0.12


def test_attention_localises_invasive_cancer(loo_results):
    # spots of positive bags: attention x bag size vs the pathologist's invasive cancer label
    auc = _localisation_auc(loo_results["attention"])
    assert auc > 0.58  # measured 0.615 with seed 0 (0.620 +- 0.015 over seeds 0-4, goal 0.65); chance is 0.5
    # mean pooling has uniform weights: its "attention" says nothing (0.5 up to float rounding)
    assert _localisation_auc(loo_results["mean"]) == pytest.approx(0.5, abs=0.01)


def test_evidence_localises_invasive_cancer(loo_results):
    # the class-aware evidence map (pooling weight x the spot's own evidence for "cancer", times the bag size):
    # measured 0.619 with seed 0 (attention 0.615); over seeds 0-4 0.679 +- 0.051 (attention 0.620 +- 0.015)
    auc = _localisation_auc(loo_results["attention"], evidence=True)
    assert auc > 0.59


def _toy(n_bags=30, size=8, seed=0):
    rng = np.random.default_rng(seed)
    n = n_bags * size
    a = ad.AnnData(np.zeros((n, 1), dtype=np.float32), obsm={"X_emb": rng.normal(size=(n, 4))})
    a.obs["bag"] = np.repeat([f"b{i}" for i in range(n_bags)], size)
    pos = np.repeat(np.arange(n_bags) % 2 == 1, size)
    a.obsm["X_emb"][pos & (np.arange(n) % size < 2), 0] += 4
    a.obs["y"] = np.where(pos, "pos", "neg")
    a.obs["patient"] = np.repeat(np.arange(n_bags) % 5, size).astype(str)
    return a


TOY = {"bag_key": "bag", "label_key": "y", "use_rep": "X_emb", "progress": False}


def test_stratified_folds_without_groups_and_three_classes():
    a = _toy()
    sptl.tl.mil(a, n_splits=3, key_added="m", model_kwargs={"max_epochs": 30}, **TOY)
    res = a.uns["m"]
    assert sorted(res["bags"]["fold"].value_counts().tolist()) == [10, 10, 10]
    assert res["scores"]["auc"] > 0.9
    assert "m_attention" in a.obs and "m_instance_probabilities" in a.obsm and "m_evidence" in a.obsm
    assert res["params"]["model_kwargs"] == {"max_epochs": 30}
    b = _toy(n_bags=36)
    b.obs["y"] = np.repeat(np.array(["a", "b", "c"])[np.arange(36) % 3], 8)
    sptl.tl.mil(b, n_splits=3, model_kwargs={"max_epochs": 5}, **TOY)
    assert b.uns["sptl_mil"]["classes"] == ["a", "b", "c"]
    assert 0 <= b.uns["sptl_mil"]["scores"]["auc"] <= 1


def test_missing_bag_ids_are_left_out():
    a = _toy()
    a.obs.loc[a.obs_names[:8], "bag"] = np.nan  # bag b0 dissolved: its spots are in no bag
    sptl.tl.mil(a, n_splits=3, model_kwargs={"max_epochs": 5}, **TOY)
    assert len(a.uns["sptl_mil"]["bags"]) == 29
    assert a.obs["sptl_mil_attention"].iloc[:8].isna().all()
    assert a.obs["sptl_mil_attention"].iloc[8:].notna().all()


@pytest.mark.parametrize(
    ("change", "kwargs", "error", "match"),
    [
        (lambda a: a.obs.__setitem__("bag", [*a.obs["bag"].iloc[:-1], "alone"]), {}, ValueError, "single instance"),
        (lambda a: a.obs.__setitem__("y", ["pos", *a.obs["y"].iloc[1:]]), {}, ValueError, "varies within 1 bag"),
        (lambda a: a.obsm["X_emb"].__setitem__((5, 2), np.nan), {}, ValueError, "NaN or infinite features"),
        (lambda a: a.obs.__setitem__("y", "pos"), {}, ValueError, "at least two classes"),
        (lambda a: None, {"use_rep": "X_nope"}, KeyError, "obsm\\['X_nope'\\]"),
        (lambda a: None, {"groups_key": "nope"}, KeyError, "obs\\['nope'\\]"),
        (lambda a: None, {"n_splits": 31}, ValueError, "between 2 and the number of bags"),
        (lambda a: None, {"n_splits": None}, ValueError, "leave one group out"),
        (lambda a: None, {"groups_key": "patient", "n_splits": 6}, ValueError, "groups of"),
        (
            lambda a: a.obs.__setitem__("patient", np.arange(a.n_obs).astype(str)),
            {"groups_key": "patient"},
            ValueError,
            "varies within",
        ),
        (lambda a: None, {"model_kwargs": {"pooling": "max"}}, ValueError, "not in `model_kwargs`"),
        (lambda a: None, {"pooling": "sum"}, ValueError, "pooling='sum'"),
        (lambda a: None, {"model_kwargs": {"dropout": 1.5}}, ValueError, "dropout"),
    ],
)
def test_bad_input_raises_and_leaves_adata_untouched(change, kwargs, error, match):
    a = _toy()
    change(a)
    before = snapshot(a)
    with pytest.raises(error, match=match):
        sptl.tl.mil(a, **{**TOY, "n_splits": 3, **kwargs})
    assert_unchanged(a, before)


def test_fold_training_on_one_class_is_refused():
    a = _toy(n_bags=20)
    # patient "N" holds every negative bag: leaving it out would train on positive bags only
    a.obs["patient"] = np.where(a.obs["y"] == "neg", "N", np.repeat(np.arange(20) % 2, 8).astype(str))
    before = snapshot(a)
    with pytest.raises(ValueError, match="one class only"):
        sptl.tl.mil(a, **{**TOY, "groups_key": "patient", "n_splits": None})
    assert_unchanged(a, before)
