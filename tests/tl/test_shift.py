from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from helpers import assert_unchanged, snapshot
from scipy import sparse

import sptl

SAME_PATIENT = [("A1", "A2"), ("B1", "B2")]
OTHER_PATIENT = [("A1", "B1"), ("B1", "D1")]


def shift(her2st, a, b, **kw):
    kw.setdefault("n_permutations", 100)
    kw.setdefault("progress", False)
    target = her2st(b)
    sptl.tl.domain_shift(her2st(a), target, **kw)
    return target.uns["sptl_shift"]


def test_mmd_separates_patients_more_than_consecutive_sections(her2st):
    # measured (seed 0): same patient MMD^2 0.0002-0.0018, A-distance 0.10-0.53;
    # other patients MMD^2 0.018-0.033, A-distance 1.19-1.50, permutation p = 1/101
    same = [shift(her2st, a, b) for a, b in SAME_PATIENT]
    other = [shift(her2st, a, b) for a, b in OTHER_PATIENT]
    assert max(r["mmd2"] for r in same) * 5 < min(r["mmd2"] for r in other)
    assert max(r["a_distance"] for r in same) + 0.5 < min(r["a_distance"] for r in other)
    assert all(r["p_value"] <= 0.02 for r in other)
    assert same[0]["p_value"] > 0.05
    for r in same + other:
        assert r["estimator"] == "exact" and len(r["null"]) == 100
        assert 0.5 <= r["domain_accuracy"] <= 1


def test_linear_estimator_agrees_on_the_order(her2st):
    # measured: linear MMD^2 A1->A2 about 0.000, A1->B1 about 0.03 with p < 1e-3
    same = shift(her2st, "A1", "A2", estimator="linear")
    other = shift(her2st, "A1", "B1", estimator="linear")
    assert other["estimator"] == "linear" and len(other["null"]) == 0
    assert other["mmd2"] > same["mmd2"] + 0.01
    assert other["p_value"] < 0.01


def test_gene_ranking_and_params(her2st):
    res = shift(her2st, "A1", "B1", n_top_genes=50)
    genes = res["genes"]
    assert list(genes.columns) == ["mean_source", "mean_target", "smd", "frac_source", "frac_target"]
    assert len(genes) == 50
    smd = np.abs(genes["smd"].to_numpy())
    assert (np.diff(smd) <= 1e-6).all()
    # the top gene really differs: its means go in the direction of its smd
    top = genes.iloc[0]
    assert np.sign(top["mean_target"] - top["mean_source"]) == np.sign(top["smd"])
    assert res["params"]["n_top_genes"] == 50 and res["params"]["estimator"] == "auto"
    # swapping source and target flips the sign of the shift
    back = shift(her2st, "B1", "A1", n_top_genes=50)["genes"]["smd"]
    common = genes.index.intersection(back.index)
    assert len(common) > 20
    np.testing.assert_allclose(genes.loc[common, "smd"].to_numpy(), -back[common].to_numpy(), atol=1e-4)


def test_batch_key_compares_every_pair(her2st):
    sections = [her2st(s) for s in ("A1", "A2", "B1")]
    joint = ad.concat(sections, join="inner", label="batch", keys=["A1", "A2", "B1"], index_unique="-")
    out = sptl.tl.domain_shift(joint, batch_key="batch", n_permutations=50, progress=False, copy=True)
    assert "sptl_shift" not in joint.uns
    res = out.uns["sptl_shift"]
    mmd = res["mmd2"]
    assert list(mmd.index) == ["A1", "A2", "B1"] and mmd.shape == (3, 3)
    np.testing.assert_allclose(mmd.to_numpy(), mmd.to_numpy().T)
    assert mmd.loc["A1", "A2"] < min(mmd.loc["A1", "B1"], mmd.loc["A2", "B1"])
    assert res["a_distance"].loc["A1", "A2"] < res["a_distance"].loc["A1", "B1"]
    assert list(res["genes"].columns) == ["A1", "A2", "B1"] and len(res["genes"]) == 100


def test_use_rep_and_copy():
    rng = np.random.default_rng(0)
    a = ad.AnnData(X=sparse.csr_matrix(rng.poisson(1, (200, 5)).astype(np.float32)))
    b = ad.AnnData(X=sparse.csr_matrix(rng.poisson(1, (150, 5)).astype(np.float32)))
    a.obsm["X_emb"] = rng.normal(size=(200, 4))
    b.obsm["X_emb"] = rng.normal(size=(150, 4)) + np.array([1.5, 0, 0, 0])
    before = snapshot(b)
    out = sptl.tl.domain_shift(a, b, use_rep="X_emb", n_permutations=50, progress=False, copy=True)
    assert_unchanged(b, before)
    res = out.uns["sptl_shift"]
    assert res["p_value"] <= 0.02 and res["a_distance"] > 0.8
    assert res["genes"].empty and res["params"]["use_rep"] == "X_emb"


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda s, t: (s, t[:0].copy()), ValueError, "empty"),
        (lambda s, t: (s, _renamed(t)), ValueError, "shared"),
        (lambda s, t: (s, _constant(t)), ValueError, "constant"),
        (lambda s, t: (s, _negative(t)), ValueError, "negative"),
    ],
    ids=["empty target", "mismatched genes", "constant target", "not counts"],
)
def test_bad_input_raises_and_leaves_data_untouched(her2st, change, error, match):
    source, target = change(her2st("A1"), her2st("B1"))
    before_s, before_t = snapshot(source), snapshot(target)
    with pytest.raises(error, match=match):
        sptl.tl.domain_shift(source, target, n_permutations=10, progress=False)
    assert_unchanged(source, before_s)
    assert_unchanged(target, before_t)


def test_bad_arguments(her2st):
    source, target = her2st("A1"), her2st("B1")
    before = snapshot(target)
    with pytest.raises(ValueError, match="estimator"):
        sptl.tl.domain_shift(source, target, estimator="fast")
    with pytest.raises(ValueError, match="not both"):
        sptl.tl.domain_shift(source, target, batch_key="patient")
    with pytest.raises(ValueError, match="batch_key"):
        sptl.tl.domain_shift(source)
    with pytest.raises(ValueError, match="at least two"):
        sptl.tl.domain_shift(source, batch_key="patient")
    with pytest.raises(KeyError, match="X_missing"):
        sptl.tl.domain_shift(source, target, use_rep="X_missing")
    source.obsm["X_c"] = np.ones((source.n_obs, 3))
    target.obsm["X_c"] = np.ones((target.n_obs, 3))
    with pytest.raises(ValueError, match="constant"):
        sptl.tl.domain_shift(source, target, use_rep="X_c")
    del target.obsm["X_c"]
    assert_unchanged(target, before)


def _renamed(adata):
    adata.var_names = [f"gene{i}" for i in range(adata.n_vars)]
    return adata


def _constant(adata):
    adata.X = sparse.csr_matrix(np.ones(adata.shape, dtype=np.float32))
    return adata


def _negative(adata):
    X = adata.X.toarray().astype(np.float32)
    X[0, 0] = -1
    adata.X = sparse.csr_matrix(X)
    return adata
