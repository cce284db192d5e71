from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_unchanged, snapshot

import sptl


def test_generic_knn_graph_on_st(her2st):
    adata = her2st("B1")
    sptl.pp.spatial_graph(adata)
    conn = adata.obsp["spatial_connectivities"]
    assert conn.shape == (295, 295)
    np.testing.assert_array_equal(np.asarray(conn.sum(1)).ravel(), 6)
    params = adata.uns["spatial_neighbors"]["params"]
    assert params["coord_type"] == "generic" and params["spatial_key"] == "spatial"
    # ST spots sit on a square grid: 4 direct neighbours at the spacing, then diagonals at 1.41x
    d = adata.obsp["spatial_distances"]
    spacing = _spacing(adata.obsm["spatial"])
    assert np.median(d.data) < 1.5 * spacing


def test_grid_graph_for_visium_and_copy():
    adata = sptl.datasets.visium_fixture()
    before = snapshot(adata)
    out = sptl.pp.spatial_graph(adata, key_added="hex", copy=True)
    assert_unchanged(adata, before)
    assert out.uns["hex_neighbors"]["params"]["coord_type"] == "grid"
    assert "hex_connectivities" in out.obsp and "hex_distances" in out.obsp


def test_radius_and_delaunay(her2st):
    adata = her2st("B1")
    sptl.pp.spatial_graph(adata, radius=1.2 * _spacing(adata.obsm["spatial"]), key_added="r")
    deg = np.asarray((adata.obsp["r_connectivities"] > 0).sum(1)).ravel()
    # the 4 grid neighbours, fewer at the tissue border
    assert deg.max() <= 5 and 2.5 < deg.mean() <= 4
    sptl.pp.spatial_graph(adata, delaunay=True, key_added="d")
    assert adata.obsp["d_connectivities"].nnz > 0


def _spacing(coords):
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=2).fit(coords).kneighbors(coords)
    return float(np.median(dist[:, 1]))


def test_errors(her2st):
    adata = her2st("B1")
    with pytest.raises(KeyError, match=r"obsm\['xy'\]"):
        sptl.pp.spatial_graph(adata, spatial_key="xy")
    with pytest.raises(ValueError, match="coord_type='hex'"):
        sptl.pp.spatial_graph(adata, coord_type="hex")
    with pytest.raises(ValueError, match="n_neighs=0"):
        sptl.pp.spatial_graph(adata, n_neighs=0)
    assert "spatial_connectivities" not in adata.obsp
