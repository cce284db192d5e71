from __future__ import annotations

import numpy as np
import pytest

import sptl
from sptl.models._clip import log_normalize


@pytest.fixture(scope="module")
def section():
    return sptl.datasets.synthetic_tissue(n_spots=300, seed=0)


def test_layout_and_keys(section):
    assert section.shape == (300, 200)
    assert section.X.dtype == np.int32 and section.X.sum() > 0
    lib = section.uns["spatial"]["synthetic"]
    img = lib["images"]["hires"]
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    xy = section.obsm["spatial"]
    assert (xy >= 0).all() and (xy[:, 0] < img.shape[1]).all() and (xy[:, 1] < img.shape[0]).all()
    assert lib["scalefactors"]["spot_diameter_fullres"] == 24.0
    assert section.obs["tissue_type"].nunique() == 4
    assert section.obs["cellularity"].between(0, 1).all()


def test_expression_and_image_share_the_hidden_types(section):
    types = section.obs["tissue_type"].astype(str).to_numpy()
    logn = log_normalize(section.X)
    for name, genes in section.uns["synthetic"]["markers"].items():
        idx = section.var_names.get_indexer(genes)
        inside, outside = logn[types == name][:, idx].mean(), logn[types != name][:, idx].mean()
        assert inside > outside + 1.0, name
    # darkness (haematoxylin) of the patches: immune (dense small nuclei) > adipose (few nuclei, pale)
    ds = sptl.pp.extract_patches(section, size=16, return_dataset=True)
    dark = np.array([1 - float(ds[i].mean()) for i in range(len(ds))])
    assert dark[types == "immune"].mean() > dark[types == "adipose"].mean() + 0.1
    # cellularity raises the proliferation genes
    prolif = section.var_names.get_indexer(section.uns["synthetic"]["proliferation_genes"])
    r = np.corrcoef(section.obs["cellularity"], logn[:, prolif].mean(axis=1))[0, 1]
    assert r > 0.5


def test_seeds_reproduce_and_sections_share_genes(section):
    again = sptl.datasets.synthetic_tissue(n_spots=300, seed=0)
    assert (again.X != section.X).nnz == 0
    np.testing.assert_array_equal(
        again.uns["spatial"]["synthetic"]["images"]["hires"], section.uns["spatial"]["synthetic"]["images"]["hires"]
    )
    other = sptl.datasets.synthetic_tissue(n_spots=300, seed=1)
    assert other.var_names.equals(section.var_names)
    assert not other.obs["tissue_type"].equals(section.obs["tissue_type"])


def test_path_is_a_cache(tmp_path):
    path = tmp_path / "syn.h5ad"
    first = sptl.datasets.synthetic_tissue(n_spots=50, seed=3, path=path)
    assert path.exists()
    stamp = path.stat().st_mtime_ns
    cached = sptl.datasets.synthetic_tissue(n_spots=50, seed=3, path=path)
    assert path.stat().st_mtime_ns == stamp and (cached.X != first.X).nnz == 0
    other = sptl.datasets.synthetic_tissue(n_spots=50, seed=4, path=path)  # other arguments: regenerated
    assert other.uns["synthetic"]["params"]["seed"] == 4 and path.stat().st_mtime_ns != stamp


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_types"):
        sptl.datasets.synthetic_tissue(n_types=1)
    with pytest.raises(ValueError, match="too small"):
        sptl.datasets.synthetic_tissue(n_genes=20)
