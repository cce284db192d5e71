from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import pytest

import sptl


@pytest.fixture(scope="module")
def pair():
    target = sptl.datasets.her2st("B1")
    sptl.tl.domain_shift(sptl.datasets.her2st("A1"), target, n_permutations=50, progress=False)
    return target


def test_pair_panels_and_file(pair, tmp_path):
    out = tmp_path / "shift.png"
    axes = sptl.pl.domain_shift(pair, n_genes=10, save=out, show=False)
    assert len(axes) == 2
    assert "MMD" in axes[0].get_title() and "A-distance" in axes[0].get_title()
    assert len(axes[0].patches) == 30  # histogram of the permutation null
    assert len(axes[1].patches) == 10  # one bar per gene
    labels = [t.get_text() for t in axes[1].get_yticklabels()]
    assert labels[::-1] == list(pair.uns["sptl_shift"]["genes"].index[:10])
    assert out.stat().st_size > 10_000
    plt.close("all")


def test_batch_heatmaps_into_given_axes(her2st):
    sections = [her2st(s) for s in ("A1", "A2", "B1")]
    joint = ad.concat(sections, join="inner", label="batch", keys=["A1", "A2", "B1"], index_unique="-")
    sptl.tl.domain_shift(joint, batch_key="batch", n_permutations=20, progress=False)
    _fig, ax = plt.subplots(1, 2)
    axes = sptl.pl.domain_shift(joint, ax=list(ax), show=False)
    assert axes[0] is ax[0]
    assert axes[0].images[0].get_array().shape == (3, 3)
    assert [t.get_text() for t in axes[1].get_yticklabels()] == ["A1", "A2", "B1"]
    plt.close("all")


def test_errors(pair, her2st):
    with pytest.raises(KeyError, match=r"run `sptl\.tl\.domain_shift"):
        sptl.pl.domain_shift(her2st("B1"), show=False)
    with pytest.raises(ValueError, match="must hold 2 axes"):
        _fig, ax = plt.subplots(1, 3)
        sptl.pl.domain_shift(pair, ax=list(ax), show=False)
    with pytest.raises(ValueError, match="n_genes"):
        sptl.pl.domain_shift(pair, n_genes=0, show=False)
    plt.close("all")
