"""Plots of aligned stacks and integrated embeddings."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import pytest

import sptl


@pytest.fixture(scope="module")
def stack():
    slices = [sptl.datasets.breast_st(i) for i in (1, 2, 3)]
    sptl.tl.align_slices(slices, progress=False)
    return slices


def test_aligned_draws_overlay_and_match_lines(stack, tmp_path):
    axes = sptl.pl.aligned(stack, n_matches=40, show=False, save=tmp_path / "stack.png")
    assert len(axes) == 2
    assert len(axes[1].collections) == 3 + 2  # one scatter per slice, one set of lines per pair
    assert len(axes[1].collections[-1].get_segments()) == 40
    assert (tmp_path / "stack.png").stat().st_size > 0
    plt.close("all")


def test_aligned_needs_align_slices_first(stack):
    fresh = [sptl.datasets.breast_st(1), sptl.datasets.breast_st(2)]
    with pytest.raises(KeyError, match=r"run `sptl\.tl\.align_slices"):
        sptl.pl.aligned(fresh, show=False)
    with pytest.raises(ValueError, match="2 axes"):
        sptl.pl.aligned(stack, ax=[plt.gca()], show=False)
    plt.close("all")


def test_integration_umap_panels():
    adata = ad.concat([sptl.datasets.her2st(s) for s in ("B1", "B2")], label="batch")
    sptl.tl.integrate(adata, batch_key="batch", method="ot", progress=False)
    axes = sptl.pl.integration(adata, batch_key="batch", label_key="cluster", show=False)
    assert [a.get_title() for a in axes] == ["batch", "cluster"]
    assert len(axes[0].collections[0].get_offsets()) == adata.n_obs
    with pytest.raises(KeyError, match="X_other"):
        sptl.pl.integration(adata, batch_key="batch", key="other", show=False)
    plt.close("all")
