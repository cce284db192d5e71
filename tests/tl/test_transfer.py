from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from helpers import assert_unchanged, snapshot

import sptl
from sptl.datasets import HER2ST_LABELLED
from sptl.metrics import label_scores

EXCL = ["undetermined"]


def run(source, target, **kw):
    kw.setdefault("progress", False)
    sptl.tl.transfer_labels(source, target, label_key="label", exclude=EXCL, **kw)
    return label_scores(target.obs["label"], target.obs["sptl_label"], labels=target.uns["sptl_label"]["classes"])


def test_pair_f1_to_d1_reaches_measured_floor(her2st):
    # measured at 0.792 accuracy, 0.663 macro-F1 (seed 0; 0.655 / 0.520 without label spreading)
    scores = run(her2st("F1"), her2st("D1"))
    assert scores["accuracy"] >= 0.75
    assert scores["macro_f1"] >= 0.62
    assert scores["n_scored"] == 255


def test_all_cross_patient_pairs_mean_floor(her2st):
    # 30 ordered pairs of labelled sections from different patients;
    # measured mean accuracy 0.615, mean macro-F1 0.462 (median 0.377)
    rows = [run(her2st(a), her2st(b)) for a, b in itertools.permutations(HER2ST_LABELLED, 2)]
    df = pd.DataFrame(rows)
    assert len(df) == 30
    assert df["accuracy"].mean() >= 0.58
    assert df["macro_f1"].mean() >= 0.44


def test_keys_written(her2st):
    target = her2st("D1")
    run(her2st("F1"), target)
    labels = target.obs["sptl_label"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    classes = target.uns["sptl_label"]["classes"]
    assert list(labels.cat.categories) == classes
    assert classes == ["connective tissue", "immune infiltrate", "invasive cancer"]
    conf = target.obs["sptl_label_confidence"].to_numpy()
    assert conf.shape == (target.n_obs,) and (conf > 0).all() and (conf <= 1 + 1e-6).all()
    proba = target.obsm["sptl_label_probabilities"]
    assert list(proba.columns) == classes
    np.testing.assert_allclose(proba.to_numpy().sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(proba.to_numpy().argmax(1), labels.cat.codes.to_numpy())
    assert target.obsm["X_sptl_label"].shape == (target.n_obs, 30)
    ent = target.obs["sptl_label_entropy"].to_numpy()
    assert (ent >= 0).all() and (ent <= np.log(3) + 1e-5).all()
    params = target.uns["sptl_label"]["params"]
    assert params["label_key"] == "label" and params["method"] == "knn" and params["exclude"] == EXCL


def test_key_added_and_no_smoothing_without_spatial(her2st):
    source, target = her2st("F1"), her2st("D1")
    del target.obsm["spatial"]
    sptl.tl.transfer_labels(source, target, label_key="label", spatial_key=None, key_added="region", progress=False)
    assert "region" in target.obs and "region_confidence" in target.obs
    assert target.uns["region"]["params"]["smooth"] == 0.0


def test_smoothing_helps_on_real_pair(her2st):
    plain = run(her2st("F1"), her2st("D1"), smooth=0.0)
    smoothed = run(her2st("F1"), her2st("D1"))
    assert smoothed["accuracy"] > plain["accuracy"]


def test_copy_semantics(her2st):
    source, target = her2st("F1"), her2st("D1")
    before = snapshot(target)
    out = sptl.tl.transfer_labels(source, target, label_key="label", copy=True, progress=False)
    assert out is not None and "sptl_label" in out.obs
    assert_unchanged(target, before)
    assert sptl.tl.transfer_labels(source, target, label_key="label", progress=False) is None
    assert "sptl_label" in target.obs


def test_reproducible(her2st):
    a, b = her2st("D1"), her2st("D1")
    run(her2st("C1"), a)
    run(her2st("C1"), b)
    pd.testing.assert_series_equal(a.obs["sptl_label"], b.obs["sptl_label"])
    np.testing.assert_array_equal(a.obs["sptl_label_confidence"], b.obs["sptl_label_confidence"])


def test_several_sources(her2st):
    target = her2st("D1")
    scores = run([her2st("C1"), her2st("F1")], target)
    # measured 0.647 accuracy, 0.488 macro-F1 with C1 + F1 -> D1
    assert scores["accuracy"] >= 0.60
    assert target.uns["sptl_label"]["params"]["n_sources"] == 2
    assert "cancer in situ" not in target.uns["sptl_label"]["classes"]


def test_source_list_must_not_be_empty(her2st):
    with pytest.raises(ValueError, match="empty list"):
        sptl.tl.transfer_labels([], her2st("D1"), label_key="label")


def _bad_cases(her2st):
    """(name, source, target, kwargs, exception, message) for each invalid input."""
    src, tgt = her2st("F1"), her2st("D1")
    cases = []
    cases.append(("missing label key", src, tgt, {"label_key": "nope"}, KeyError, r"obs\['nope'\]"))
    t = tgt.copy()
    del t.obsm["spatial"]
    cases.append(("missing spatial", src, t, {}, KeyError, r"target.obsm\['spatial'\]` not found"))
    cases.append(("too few genes", src, tgt[:, :50].copy(), {}, ValueError, "Only 50 genes are shared"))
    cases.append(("empty target", src, tgt[:0].copy(), {}, ValueError, "empty"))
    cases.append(("empty source", src[:0].copy(), tgt, {}, ValueError, "empty"))
    t = tgt.copy()
    t.X = t.X.astype(np.float32)
    t.X.data[0] = np.nan
    cases.append(("nan counts", src, t, {}, ValueError, "NaN or infinite"))
    s = src.copy()
    s.X = s.X.astype(np.float32)
    s.X.data[3] = np.inf
    cases.append(("inf counts", s, tgt, {}, ValueError, "NaN or infinite"))
    t = tgt.copy()
    t.obsm["spatial"][5, 0] = np.nan
    cases.append(("nan coordinates", src, t, {}, ValueError, "NaN or infinite coordinates in 1 rows"))
    s = src.copy()
    s.obs["one"] = "tumour"
    cases.append(("one class", s, tgt, {"label_key": "one"}, ValueError, "at least two"))
    t = tgt.copy()
    t.obs_names = ["spot"] * t.n_obs
    cases.append(("duplicate obs names", src, t, {}, ValueError, "obs_names_make_unique"))
    s = src.copy()
    s.var_names = [s.var_names[0]] * s.n_vars
    cases.append(("duplicate var names", s, tgt, {}, ValueError, "var_names_make_unique"))
    cases.append(("negative counts", src, _negative(tgt), {}, ValueError, "negative values"))
    cases.append(("unknown method", src, tgt, {"method": "magic"}, ValueError, "method='magic'"))
    cases.append(("missing layer", src, tgt, {"layer": "counts"}, KeyError, r"layers\['counts'\]"))
    cases.append(("bad smooth", src, tgt, {"smooth": 1.0}, ValueError, "smooth"))
    cases.append(("not anndata", src, tgt.to_df(), {}, TypeError, "must be an AnnData"))
    cases.append(("excluded label absent", src, tgt, {"exclude": ["Undetermined"]}, ValueError, "absent from"))
    cases.append(("knn adaptation", src, tgt, {"adaptation": "dann"}, ValueError, "applies to `method='gnn'`"))
    cases.append(
        ("gnn without coords", src, tgt, {"method": "gnn", "spatial_key": None}, ValueError, "needs coordinates")
    )
    s = src.copy()
    del s.obsm["spatial"]
    cases.append(("gnn source coords", s, tgt, {"method": "gnn"}, KeyError, r"source.obsm\['spatial'\]"))
    cases.append(("graph missing", src, tgt, {"method": "gnn", "graph_key": "g"}, KeyError, "spatial_graph"))
    s = src.copy()
    s.obs["w"] = 1.0
    s.obs.iloc[4, s.obs.columns.get_loc("w")] = -0.5
    cases.append(("missing weights", src, tgt, {"weights_key": "w"}, KeyError, r"source.obs\['w'\]` not found"))
    cases.append(("negative weight", s, tgt, {"weights_key": "w"}, ValueError, "1 negative, NaN or infinite weights"))
    cases.append(("bad encoder", src, tgt, {"method": "gnn", "model_kwargs": {"encoder": "x"}}, ValueError, "encoder"))
    return cases


def _negative(adata):
    adata = adata.copy()
    adata.X = adata.X.astype(np.float32)
    adata.X.data[0] = -1
    return adata


def test_bad_input_raises_and_leaves_data_unchanged(her2st):
    for name, source, target, kw, exc, match in _bad_cases(her2st):
        kw = {"label_key": "label", "progress": False, **kw}
        snaps = [snapshot(a) for a in (source, target) if hasattr(a, "obsm")]
        with pytest.raises(exc, match=match):
            sptl.tl.transfer_labels(source, target, **kw)
        for a, snap in zip([a for a in (source, target) if hasattr(a, "obsm")], snaps, strict=True):
            assert_unchanged(a, snap)
        assert "sptl_label" not in getattr(target, "obs", {}), name


def test_cuda_requested_without_cuda(her2st):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        sptl.tl.transfer_labels(her2st("F1"), her2st("D1"), label_key="label", device="cuda", progress=False)


def test_gnn_method_writes_everything(her2st):
    source, target = her2st("F1"), her2st("D1")
    sptl.tl.transfer_labels(
        source,
        target,
        label_key="label",
        method="gnn",
        exclude=EXCL,
        adaptation="dann",
        unassigned_threshold=0.5,
        model_kwargs={"max_epochs": 30},
        key_added="gnn",
        progress=False,
    )
    cats = list(target.obs["gnn"].cat.categories)
    assert cats == ["connective tissue", "immune infiltrate", "invasive cancer", "unassigned"]
    assert target.obsm["X_gnn"].shape == (target.n_obs, 64)
    hist = target.uns["gnn"]["history"]
    assert len(hist["loss"]) == 30 and max(hist["adaptation"]) > 0
    params = target.uns["gnn"]["params"]
    assert params["method"] == "gnn" and params["adaptation"] == "dann" and params["smooth"] == 0.8
    assert params["model_kwargs"] == {"max_epochs": 30}
    assert (target.obs.loc[target.obs["gnn"] == "unassigned", "gnn_confidence"] < 0.5).all()


def test_gnn_reproducible(her2st):
    outs = []
    for _ in range(2):
        target = her2st("D1")
        sptl.tl.transfer_labels(
            her2st("C1"), target, label_key="label", method="gnn", model_kwargs={"max_epochs": 20}, progress=False
        )
        outs.append(target.obsm["sptl_label_probabilities"])
    pd.testing.assert_frame_equal(outs[0], outs[1])
    # adaptation="auto" resolves to the benchmarked default for the gnn
    assert target.uns["sptl_label"]["params"]["adaptation"] == ["dann", "self_training"]


def test_label_spreading_keeps_probabilities_and_agrees_with_neighbours(her2st):
    from sptl.pp._graph import build_graph
    from sptl.tl._transfer import _propagate

    target = her2st("D1")
    sptl.tl.transfer_labels(her2st("F1"), target, label_key="label", smooth=0.0, progress=False)
    proba = target.obsm["sptl_label_probabilities"]
    graph = build_graph(np.asarray(target.obsm["spatial"]), n_neighs=6)[0]
    spread = _propagate(proba, graph, 0.8)
    np.testing.assert_allclose(spread.sum(axis=1), 1.0, atol=1e-5)
    rows, cols = graph.nonzero()

    def agreement(p):
        lab = p.to_numpy().argmax(1)
        return (lab[rows] == lab[cols]).mean()

    assert agreement(spread) > agreement(proba) + 0.05


@pytest.mark.parametrize("method", ["knn", "gnn"])
def test_instance_weights(her2st, method):
    """Uniform weights change nothing; zero weight on a class's spots removes that class's votes."""
    kw = {"method": method, "model_kwargs": {"max_epochs": 15} if method == "gnn" else None}
    source, plain = her2st("F1"), her2st("D1")
    run(source, plain, **kw)
    source.obs["w"] = 3.0
    weighted = her2st("D1")
    run(source, weighted, weights_key="w", **kw)
    np.testing.assert_allclose(
        weighted.obsm["sptl_label_probabilities"].to_numpy(),
        plain.obsm["sptl_label_probabilities"].to_numpy(),
        atol=1e-5,
    )
    assert weighted.uns["sptl_label"]["params"]["weights_key"] == "w"
    if method == "knn":
        source.obs["w"] = np.where(source.obs["label"] == "immune infiltrate", 0.0, 1.0)
        target = her2st("D1")
        run(source, target, weights_key="w", **kw)
        assert (target.obsm["sptl_label_probabilities"]["immune infiltrate"] == 0).all()
        assert (plain.obs["sptl_label"] == "immune infiltrate").sum() > 0


@pytest.mark.parametrize(("pair", "floor"), [(("F1", "D1"), 0.62), (("B1", "D1"), 0.5)])
def test_gnn_default_real_pairs(pair, floor, her2st):
    # the default gnn (DANN + self-training from the spread knn teacher + label spreading); measured macro-F1
    # (seed 0): F1 -> D1 0.678, B1 -> D1 0.572 (knn on the same pairs: 0.663, 0.435)
    source, target = her2st(pair[0]), her2st(pair[1])
    sptl.tl.transfer_labels(source, target, label_key="label", method="gnn", exclude=EXCL, progress=False)
    classes = target.uns["sptl_label"]["classes"]
    scores = label_scores(target.obs["label"], target.obs["sptl_label"], labels=classes)
    assert scores["macro_f1"] >= floor
    assert target.uns["sptl_label"]["history"]["n_pseudo_labels"] > 0.4 * target.n_obs
