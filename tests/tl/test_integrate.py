"""sptl.tl.integrate on three consecutive HER2ST sections of patient B (the sections are the batches)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from helpers import assert_unchanged, snapshot

import sptl
from sptl.metrics import batch_mixing, label_conservation

# Measured on B1-B3 (study clusters as labels), 20 epochs: iLISI mmd 0.91, dann 0.82-0.85, ot 0.83 against
# 0.69 for a PCA without correction; ARI of k-means vs clusters 0.53-0.55 (0.32 without correction).
FLOORS = {"mmd": (0.8, 0.45), "dann": (0.75, 0.45), "ot": (0.75, 0.45)}


@pytest.fixture(scope="module")
def sections():
    adata = ad.concat([sptl.datasets.her2st(s) for s in ("B1", "B2", "B3")], label="batch", join="inner")
    adata.obs_names_make_unique()
    return adata


@pytest.fixture(scope="module")
def uncorrected(sections):
    a = sections.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=2000, flavor="seurat", batch_key="batch")
    a = a[:, a.var["highly_variable"]].copy()
    sc.pp.scale(a, max_value=10)
    sc.pp.pca(a, n_comps=50, random_state=0)
    return batch_mixing(a.obsm["X_pca"], a.obs["batch"]), label_conservation(a.obsm["X_pca"], a.obs["cluster"])["ari"]


@pytest.mark.parametrize("method", ["mmd", "dann", "ot"])
def test_integration_mixes_batches_and_keeps_clusters(sections, uncorrected, method):
    adata = sections.copy()
    sptl.tl.integrate(adata, batch_key="batch", method=method, max_epochs=20, progress=False)
    Z = adata.obsm["X_sptl_integrated"]
    assert Z.shape == (adata.n_obs, 30 if method != "ot" else 50)
    mixing = batch_mixing(Z, adata.obs["batch"])
    ari = label_conservation(Z, adata.obs["cluster"])["ari"]
    min_mixing, min_ari = FLOORS[method]
    assert mixing >= min_mixing and mixing > uncorrected[0] + 0.1
    assert ari >= min_ari and ari > uncorrected[1]
    info = adata.uns["sptl_integrated"]
    assert info["params"]["method"] == method and info["batches"] == ["0", "1", "2"]
    assert ("history" in info) is (method != "ot")


def test_labels_on_one_batch_guide_the_embedding(sections):
    adata = sections.copy()
    adata.obs["known"] = adata.obs["cluster"].astype(object).where(adata.obs["batch"] == "0", None)
    sptl.tl.integrate(adata, batch_key="batch", label_key="known", max_epochs=10, progress=False, key_added="guided")
    assert adata.obsm["X_guided"].shape == (adata.n_obs, 30)
    assert len(adata.uns["guided"]["history"]) == 10
    assert np.isfinite(adata.uns["guided"]["history"]).all()


def test_bad_input_raises_and_leaves_adata_untouched(sections):
    adata = sections.copy()
    one = adata[adata.obs["batch"] == "0"].copy()
    before = snapshot(adata)
    with pytest.raises(KeyError, match="obs\\['section_id'\\]"):
        sptl.tl.integrate(adata, batch_key="section_id", progress=False)
    with pytest.raises(ValueError, match="method"):
        sptl.tl.integrate(adata, batch_key="batch", method="harmony", progress=False)
    with pytest.raises(KeyError, match="obs\\['nope'\\]"):
        sptl.tl.integrate(adata, batch_key="batch", label_key="nope", progress=False)
    assert_unchanged(adata, before)
    snap = snapshot(one)
    with pytest.raises(ValueError, match="at least two"):
        sptl.tl.integrate(one, batch_key="batch", progress=False)
    assert_unchanged(one, snap)
