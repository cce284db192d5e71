from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

import sptl


@pytest.fixture
def annotated(her2st):
    target = her2st("D1")
    sptl.tl.transfer_labels(her2st("F1"), target, label_key="label", exclude=["undetermined"], progress=False)
    return target


def test_panels_and_file(annotated, tmp_path):
    out = tmp_path / "transfer.png"
    axes = sptl.pl.transfer(annotated, truth_key="label", save=out, show=False)
    assert len(axes) == 3
    assert [a.get_title() for a in axes] == ["true: label", "transferred: sptl_label", "confidence"]
    assert out.stat().st_size > 20_000
    # every spot is drawn in each panel
    assert all(a.collections[0].get_offsets().shape[0] == annotated.n_obs for a in axes)
    plt.close("all")


def test_without_truth_and_into_given_axes(annotated):
    _fig, ax = plt.subplots(1, 2)
    axes = sptl.pl.transfer(annotated, ax=list(ax), show=False)
    assert len(axes) == 2 and axes[0] is ax[0]
    with pytest.raises(ValueError, match="must hold 3 axes"):
        sptl.pl.transfer(annotated, truth_key="label", ax=list(ax), show=False)
    plt.close("all")


def test_errors(annotated, her2st):
    with pytest.raises(KeyError, match=r"run `sptl\.tl\.transfer_labels"):
        sptl.pl.transfer(her2st("D1"), show=False)
    with pytest.raises(KeyError, match="obs\\['truth'\\]"):
        sptl.pl.transfer(annotated, truth_key="truth", show=False)
    with pytest.raises(KeyError, match="obsm\\['xy'\\]"):
        sptl.pl.transfer(annotated, spatial_key="xy", show=False)


def test_training_curves(her2st, tmp_path):
    target = her2st("D1")
    sptl.tl.transfer_labels(
        her2st("F1"), target, label_key="label", method="gnn", model_kwargs={"max_epochs": 12}, progress=False
    )
    ax = sptl.pl.training_curves(target, save=tmp_path / "curves.png", show=False)
    assert ax.lines[0].get_xdata().tolist() == list(range(1, 13))
    assert (tmp_path / "curves.png").stat().st_size > 5_000
    with pytest.raises(KeyError, match="history"):
        sptl.pl.training_curves(her2st("D1"), show=False)
    plt.close("all")
