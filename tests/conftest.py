from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import sptl
from sptl.datasets import HER2ST_LABELLED

sc.settings.verbosity = 0


@pytest.fixture(scope="session")
def _her2st_cache():
    return {}


@pytest.fixture
def her2st(_her2st_cache):
    """Load a bundled HER2ST section; each call returns a fresh copy."""

    def load(section: str):
        if section not in _her2st_cache:
            _her2st_cache[section] = sptl.datasets.her2st(section)
        return _her2st_cache[section].copy()

    return load


@pytest.fixture(scope="session")
def _her2st_bags_session():
    """The six labelled HER2ST sections, 4x4-spot regions as bags ("cancer" if any invasive cancer spot),
    expression PCA (scanpy: log-normalised, HVGs across sections, scaled) as instance features."""
    adata = ad.concat([sptl.datasets.her2st(s) for s in HER2ST_LABELLED], join="inner", merge="same")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=3000, batch_key="section", flavor="seurat")
    sc.pp.scale(adata, max_value=10)
    sc.pp.pca(adata, n_comps=10, mask_var="highly_variable", random_state=0)
    adata.obsm["array"] = adata.obs[["array_x", "array_y"]].to_numpy()
    sptl.pp.tile_spots(adata, size=4, spatial_key="array", batch_key="section")
    cancer = (adata.obs["label"] == "invasive cancer").groupby(adata.obs["sptl_tile"], observed=True).transform("any")
    adata.obs["bag_label"] = pd.Series(np.where(cancer, "cancer", "no cancer"), index=cancer.index)
    adata.obs.loc[adata.obs["sptl_tile"].isna(), "bag_label"] = np.nan  # spots in no bag
    return adata


@pytest.fixture(scope="module")
def her2st_bags(_her2st_bags_session):
    """A copy of the HER2ST MIL bags for one test module."""
    return _her2st_bags_session.copy()
