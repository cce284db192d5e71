from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

import sptl
from sptl.pp import PatchDataset


@pytest.fixture(scope="module")
def slide_tiles():
    """Tiles of the Visium fixture's H&E; instance features: mean and std colour of each tile (real pixels);
    bags: squares of 3 x 3 tiles; bag label: whether the square reaches the upper half of the tissue."""
    he = sptl.datasets.visium_fixture().uns["spatial"]["custom"]["images"]["lowres"]
    tiles = sptl.pp.tile_image(he, tile_size=20, slide_id="brain")
    ds = PatchDataset.from_adata(tiles)
    patches = np.stack([ds[i].numpy() for i in range(len(ds))])
    tiles.obsm["X_colour"] = np.concatenate([patches.mean(axis=(2, 3)), patches.std(axis=(2, 3))], axis=1)
    sptl.pp.tile_spots(tiles, size=60)
    y = tiles.obsm["spatial"][:, 1]
    upper = (y < np.median(y)).astype(int)
    tiles.obs["upper"] = np.where(upper.astype(bool), "upper", "lower")
    reach = tiles.obs.groupby("sptl_tile", observed=True)["upper"].transform(lambda v: (v == "upper").any())
    tiles.obs["bag_label"] = np.where(reach, "upper", "lower")
    tiles.obs.loc[tiles.obs["sptl_tile"].isna(), "bag_label"] = np.nan
    sptl.tl.mil(
        tiles,
        bag_key="sptl_tile",
        label_key="bag_label",
        use_rep="X_colour",
        n_splits=3,
        model_kwargs={"max_epochs": 10},
        progress=False,
    )
    return tiles


def test_attention_plot_on_the_slide_thumbnail(slide_tiles, tmp_path):
    axes = sptl.pl.attention(slide_tiles, label="upper", img_key="lowres", show=False)
    assert len(axes) == 2
    assert axes[0].get_title() == "bag P(upper), out of fold"
    assert axes[1].get_title() == "attention x bag size"
    assert len(axes[0].images) == 1  # the thumbnail underneath
    # coloured points: every tile in a bag
    coloured = axes[1].collections[1].get_offsets()
    assert len(coloured) == slide_tiles.obs["sptl_tile"].notna().sum()
    plt.close("all")
    sptl.pl.attention(slide_tiles, relative=False, save=tmp_path / "att.png", show=False)
    assert (tmp_path / "att.png").stat().st_size > 0
    plt.close("all")


def test_attention_plot_into_given_axes_and_errors(slide_tiles):
    _, ax = plt.subplots(1, 2)
    out = sptl.pl.attention(slide_tiles, ax=list(ax), show=False)
    assert out[0] is ax[0]
    with pytest.raises(ValueError, match="2 axes"):
        sptl.pl.attention(slide_tiles, ax=[ax[0]], show=False)
    with pytest.raises(ValueError, match="not a class"):
        sptl.pl.attention(slide_tiles, label="middle", show=False)
    with pytest.raises(KeyError, match=r"run `sptl\.tl\.mil"):
        sptl.pl.attention(slide_tiles, key="other", show=False)
    with pytest.raises(KeyError, match="images"):
        sptl.pl.attention(slide_tiles, img_key="hires_missing", show=False)
    plt.close("all")
