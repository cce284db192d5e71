from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import sptl
from sptl.metrics import label_scores
from sptl.models import RelationalTransfer

EXCL = ["undetermined"]


@pytest.fixture(scope="module")
def fitted():
    source, target = sptl.datasets.her2st("F1"), sptl.datasets.her2st("D1")
    return RelationalTransfer(max_epochs=60).fit(source, label_key="label", target=target, exclude=EXCL, progress=False)


def test_real_pair_floor(fitted, her2st):
    target = her2st("D1")
    pred = fitted.predict(target, progress=False)
    scores = label_scores(target.obs["label"], pred, labels=fitted.classes_)
    # measured F1 -> D1 with 60 epochs (seed 0, cosine head): accuracy 0.725, macro-F1 0.473
    assert scores["accuracy"] >= 0.68
    assert scores["macro_f1"] >= 0.42
    assert pred.index.equals(target.obs_names)
    assert len(fitted.history_["loss"]) == 60
    assert fitted.history_["loss"][-1] < fitted.history_["loss"][0]


def test_save_load_identical(fitted, her2st, tmp_path):
    path = tmp_path / "gnn.npz"
    fitted.save(path)
    loaded = RelationalTransfer.load(path)
    assert loaded.params == fitted.params and loaded.classes_ == fitted.classes_
    for section in ("D1", "C1"):
        pd.testing.assert_frame_equal(
            fitted.predict_proba(her2st(section), progress=False), loaded.predict_proba(her2st(section), progress=False)
        )
    np.testing.assert_array_equal(fitted.transform(her2st("D1")), loaded.transform(her2st("D1")))


def test_load_refuses_mismatch(fitted, tmp_path):
    path = tmp_path / "gnn.npz"
    fitted.save(path)
    with pytest.raises(ValueError, match="holds a 'RelationalTransfer' model"):
        sptl.models.KNNTransfer.load(path)
    with np.load(path) as f:
        arrays = dict(f)
    arrays["net.head.weight"] = arrays["net.head.weight"][:, :5]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match="network weights do not fit"):
        RelationalTransfer.load(bad)


def test_refuses_other_genes(fitted, her2st):
    target = her2st("D1")
    target.var_names = [f"g{i}" for i in range(target.n_vars)]
    with pytest.raises(ValueError, match="genes this model was trained on"):
        fitted.predict(target)


def test_open_set_and_tiles(fitted, her2st):
    target = her2st("D1")
    fitted.params["unassigned_threshold"] = 0.9
    try:
        pred = fitted.predict(target, progress=False)
    finally:
        fitted.params["unassigned_threshold"] = None
    assert pred.cat.categories[-1] == "unassigned"
    assert 0 < (pred == "unassigned").sum() < target.n_obs
    # tiled inference (tiles of 60 spots with a 2-hop halo) gives the same probabilities as the full graph
    full = fitted.predict_proba(target, progress=False)
    fitted.params["tile_size"] = 60
    try:
        tiled = fitted.predict_proba(target, progress=False)
    finally:
        fitted.params["tile_size"] = 50_000
    np.testing.assert_allclose(tiled.to_numpy(), full.to_numpy(), atol=1e-5)


@pytest.mark.parametrize("adaptation", ["mmd", "dann", "self_training", ["dann", "self_training"]])
def test_adaptation_runs(adaptation, her2st):
    model = RelationalTransfer(max_epochs=15, adaptation=adaptation, encoder="sage")
    model.fit(her2st("C1"), label_key="label", target=her2st("B1"), exclude=EXCL, progress=False)
    assert len(model.history_["adaptation"]) == 15
    assert max(model.history_["adaptation"]) > 0
    assert ("n_pseudo_labels" in model.history_) == ("self_training" in adaptation)


@pytest.mark.parametrize(("share", "floor"), [(0.5, 0.85), (1.0, 0.72)])
def test_self_training_pseudo_labels(share, floor, her2st):
    source, target = her2st("F1"), her2st("D1")
    model = RelationalTransfer(max_epochs=2, adaptation="self_training", pseudo_label_share=share)
    model.fit(source, label_key="label", target=target, exclude=EXCL, progress=False)
    n = model.history_["n_pseudo_labels"]
    # per class, the most confident `share` of the target spots the teacher assigns to it (ties may add a few)
    if share == 1.0:
        assert n == target.n_obs
    else:
        assert 0.45 * target.n_obs <= n <= 0.55 * target.n_obs
    # the teacher's pseudo-labels (knn vote spread over D1's graph) are mostly right, the most confident
    # half more so: measured 0.91 (share 0.5) and 0.79 (all spots) on the labelled spots (F1 -> D1, seed 0)
    x, codes, weights, graphs, n_src = _teacher_inputs(model, source, target)
    pseudo, smoothing = model._teacher(
        x, codes, weights, graphs, n_src, 1, torch.device("cpu"), np.random.default_rng(0)
    )
    pseudo = pseudo[n_src:]
    # F1's regions are coherent (label coherence 0.60), so the teacher spreads its votes strongly
    assert smoothing["measured_on"] == "source" and smoothing["alpha"] > 0.7
    truth = target.obs["label"].astype(str).to_numpy()
    picked = (pseudo >= 0) & np.isin(truth, model.classes_)
    assert (np.asarray(model.classes_)[pseudo[picked]] == truth[picked]).mean() >= floor


def test_batch_key_and_prebuilt_graphs(her2st):
    both = ad.concat([her2st("C1"), her2st("F1")], join="inner")
    for section in (both,):
        assert section.obs_names.is_unique
    target = her2st("D1")
    sptl.pp.spatial_graph(target)
    model = RelationalTransfer(max_epochs=10, encoder="gcn")
    model.fit(both, label_key="label", batch_key="section", exclude=EXCL, progress=False)
    assert model.history_["n_source_spots"] == int(
        both.obs["label"].notna().sum() - (both.obs["label"] == "undetermined").sum()
    )
    pred = model.predict(target, graph_key="spatial", progress=False)
    assert len(pred) == target.n_obs


def test_graph_errors(fitted, her2st):
    target = her2st("D1")
    with pytest.raises(KeyError, match=r"sptl\.pp\.spatial_graph"):
        fitted.predict(target, graph_key="spatial")
    other = her2st("C1")
    sptl.pp.spatial_graph(target)
    # a graph built on shuffled coordinates connects far-apart spots
    shuffled = target.copy()
    shuffled.obsm["spatial"] = target.obsm["spatial"][np.random.default_rng(0).permutation(target.n_obs)]
    with pytest.raises(ValueError, match="built on other coordinates"):
        fitted.predict(shuffled, graph_key="spatial")
    with pytest.raises(KeyError, match=r"obsm\['spatial'\]"):
        del other.obsm["spatial"]
        fitted.predict(other)


def test_bad_parameters():
    with pytest.raises(ValueError, match="encoder='transformer'"):
        RelationalTransfer(encoder="transformer")
    with pytest.raises(ValueError, match="adaptation='coral'"):
        RelationalTransfer(adaptation="coral")
    with pytest.raises(ValueError, match="divisible"):
        RelationalTransfer(hidden=30, heads=4)
    with pytest.raises(ValueError, match="head='mlp'"):
        RelationalTransfer(head="mlp")
    with pytest.raises(ValueError, match="unassigned_threshold"):
        RelationalTransfer(unassigned_threshold=1.5)
    with pytest.raises(ValueError, match="pseudo_label_share"):
        RelationalTransfer(pseudo_label_share=0)


def test_neighbor_sampler_needs_pyg_lib_or_trains():
    from sptl.models._gnn import _has_sampler

    if not _has_sampler():
        with pytest.raises(ImportError, match="pip install pyg-lib"):
            RelationalTransfer(sampler="neighbor")
        return
    source, target = sptl.datasets.her2st("F1"), sptl.datasets.her2st("D1")
    model = RelationalTransfer(max_epochs=60, sampler="neighbor", tile_size=128).fit(
        source, label_key="label", target=target, exclude=EXCL, progress=False
    )
    scores = label_scores(target.obs["label"], model.predict(target, progress=False), labels=model.classes_)
    assert scores["accuracy"] >= 0.6  # the tile sampler reaches 0.725 on this pair


def test_tiles_sampler_batches_cover_every_source_node_once():
    source = sptl.datasets.her2st("F1")
    model = RelationalTransfer(max_epochs=1, tile_size=100, sampler="tiles")
    coords = [np.asarray(source.obsm["spatial"], dtype=float)]
    edge_index = sptl.models._gnn._union([np.zeros((source.n_obs, 1))], [sptl.pp._graph.build_graph(coords[0])[0]])[1]
    batches = model._batches(coords, np.array([0, source.n_obs]), edge_index, source.n_obs, 1, np.random.default_rng(0))
    seeds = np.concatenate([nodes[mask] for nodes, _, mask in batches()])
    assert np.array_equal(np.sort(seeds), np.arange(source.n_obs))


def _teacher_inputs(model, source, target):
    """The node features, codes, weights and graphs the teacher sees in ``fit`` (one source, one target)."""
    from sptl.pp._expression import standardized
    from sptl.pp._graph import build_graph

    def feats(adata):
        X = model._model_counts(adata, None, 1.0)
        return model._scale(standardized(X, float(model.target_sum_)) @ model.components_.T)

    lab = source.obs["label"].astype(object).where(~source.obs["label"].isin(EXCL))
    codes = np.concatenate(
        [pd.Categorical(lab, categories=model.classes_).codes, -np.ones(target.n_obs, dtype=np.int64)]
    ).astype(np.int64)
    x = np.vstack([feats(source), feats(target)])
    graphs = [build_graph(np.asarray(a.obsm["spatial"]), n_neighs=6)[0] for a in (source, target)]
    return x, codes, np.ones(len(x), dtype=np.float32), graphs, source.n_obs
