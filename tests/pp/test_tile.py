from __future__ import annotations

import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile
from helpers import assert_unchanged, snapshot
from PIL import Image

import sptl
from sptl.pp import PatchDataset


@pytest.fixture(scope="module")
def visium():
    adata = sptl.datasets.visium_fixture()
    lib = adata.uns["spatial"]["custom"]
    return adata, lib["images"]["lowres"], float(lib["scalefactors"]["tissue_lowres_scalef"])


# -- tile_image ----------------------------------------------------------------------------------------


def test_tile_image_keeps_the_tissue_of_a_real_he_image(visium):
    adata, he, scale = visium
    tiles = sptl.pp.tile_image(he, tile_size=30, slide_id="brain")
    assert tiles.obs["slide"].cat.categories.tolist() == ["brain"]
    assert tiles.obs_names[0] == f"brain_{tiles.obs['x'].iloc[0]}_{tiles.obs['y'].iloc[0]}"
    np.testing.assert_allclose(tiles.obsm["spatial"], tiles.obs[["x", "y"]].to_numpy() + 15)
    assert (tiles.obs["tissue_fraction"] >= 0.5).all()
    # the tissue covers about half of the 600 x 600 image (the rest is glass with fiducial spots)
    assert 0.3 < tiles.n_obs / 400 < 0.6
    # every spot of the Visium fixture (all under tissue) lies in a kept tile
    spots = adata.obsm["spatial"] * scale
    x0, y0 = tiles.obs["x"].to_numpy(), tiles.obs["y"].to_numpy()
    inside = [((x0 <= x) & (x < x0 + 30) & (y0 <= y) & (y < y0 + 30)).any() for x, y in spots]
    assert np.mean(inside) >= 0.95
    p = tiles.uns["patches"]["params"]
    assert p["patch_size_px"] == 30.0 and p["image_path"] is None and p["library_id"] == "brain"
    assert tiles.uns["spatial"]["brain"]["images"]["hires"] is he
    assert 0 < p["saturation_threshold"] < 1
    # the record is what the patch reader of sptl.pp / sptl.tl.embed_histology expects
    ds = PatchDataset.from_adata(tiles)
    patch = ds[0]
    assert tuple(patch.shape) == (3, 30, 30)
    np.testing.assert_allclose(patch.numpy().transpose(1, 2, 0) * 255, he[y0[0] : y0[0] + 30, x0[0] : x0[0] + 30, :3])


def test_tile_image_drops_the_glass_strip_of_the_dentate_gyrus_image():
    adata = sptl.datasets.visium_dentate_gyrus()
    he = next(iter(adata.uns["spatial"].values()))["images"]["lowres"]  # 172 x 243, glass in x < ~15
    tiles = sptl.pp.tile_image(he, tile_size=8)
    assert tiles.obs["x"].min() >= 8
    assert tiles.n_obs > 0.8 * (243 // 8 - 2) * (172 // 8)
    half = sptl.pp.tile_image(he, tile_size=8, stride=4)
    assert 3.5 * tiles.n_obs < half.n_obs < 4.5 * tiles.n_obs
    assert half.uns["patches"]["params"]["stride"] == 4


@pytest.fixture(scope="module")
def big_tiff(tmp_path_factory, visium):
    """The fixture's H&E upscaled 8x (4800 x 4800 px) in a tiled, compressed TIFF at 0.5 um per pixel."""
    he = np.kron(visium[1], np.ones((8, 8, 1), dtype=np.uint8))
    path = tmp_path_factory.mktemp("wsi") / "slide.tif"
    tifffile.imwrite(
        path, he, tile=(256, 256), compression="zlib", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER"
    )
    return path, he


def test_tile_image_reads_a_tiled_tiff_by_region(big_tiff):
    path, he = big_tiff
    tiles = sptl.pp.tile_image(path, tile_size=240)
    p = tiles.uns["patches"]["params"]
    assert p["reader"] == "tifffile (zarr, by region)"
    assert p["image_path"] == str(path.resolve()) and p["image_mpp"] == pytest.approx(0.5)
    assert p["patch_size_um"] == pytest.approx(120.0)
    assert tiles.obs["slide"].iloc[0] == "slide"
    # same tiles as from the array in memory
    ref = sptl.pp.tile_image(he, tile_size=240, slide_id="slide")
    assert tiles.obs_names.equals(ref.obs_names)
    np.testing.assert_allclose(tiles.obs["tissue_fraction"], ref.obs["tissue_fraction"])
    # tiles of 120 px at 1 um per pixel are cut from the same 240 image pixels and resized
    coarse = sptl.pp.tile_image(path, tile_size=120, mpp=1.0)
    assert coarse.obs_names.equals(tiles.obs_names)
    assert coarse.uns["patches"]["params"]["patch_size_px"] == 240.0
    assert coarse.uns["patches"]["params"]["size"] == 120
    ds = PatchDataset.from_adata(coarse)
    assert tuple(ds[0].shape) == (3, 120, 120)
    thumb = coarse.uns["spatial"]["slide"]["images"]["lowres"]
    assert thumb.shape == (160, 160, 3)  # every 30th pixel
    assert coarse.uns["spatial"]["slide"]["scalefactors"]["tissue_lowres_scalef"] == pytest.approx(1 / 30)


def test_tile_image_reads_png_files_with_pil(visium, tmp_path):
    he = visium[1]
    Image.fromarray(he).save(tmp_path / "he.png")
    tiles = sptl.pp.tile_image(tmp_path / "he.png", tile_size=30)
    ref = sptl.pp.tile_image(he, tile_size=30, slide_id="he")
    assert tiles.obs_names.equals(ref.obs_names)
    assert tiles.uns["patches"]["params"]["reader"] == "PIL"


def test_tile_image_bad_input(visium, tmp_path):
    he = visium[1]
    with pytest.raises(ValueError, match="do not fit the 600 x 600 image"):
        sptl.pp.tile_image(he, tile_size=700)
    with pytest.raises(ValueError, match="pass `image_mpp=`"):
        sptl.pp.tile_image(he, tile_size=30, mpp=0.5)
    with pytest.raises(ValueError, match="expected \\(height, width, 3\\)"):
        sptl.pp.tile_image(he[..., 0], tile_size=30)
    with pytest.raises(FileNotFoundError, match="not found"):
        sptl.pp.tile_image(tmp_path / "missing.tif", tile_size=30)
    with pytest.raises(ValueError, match="tissue_threshold"):
        sptl.pp.tile_image(he, tile_size=30, tissue_threshold=1.5)
    with pytest.raises(ValueError, match="No tile holds"):
        sptl.pp.tile_image(np.full((100, 100, 3), 240, dtype=np.uint8), tile_size=10)
    with pytest.raises(TypeError, match="image array or the path"):
        sptl.pp.tile_image(42, tile_size=30)


def test_tile_image_openslide_formats_name_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openslide", None)  # as if the extra were not installed
    (tmp_path / "slide.svs").write_bytes(b"")
    with pytest.raises(ImportError, match="sptl\\[wsi\\]"):
        sptl.pp.tile_image(tmp_path / "slide.svs", tile_size=256)


def test_tile_image_reads_slides_through_openslide(big_tiff, tmp_path):
    pytest.importorskip("openslide")
    path, _ = big_tiff
    slide = tmp_path / "slide.svs"  # OpenSlide reads a tiled TIFF as a "generic-tiff" slide
    shutil.copy(path, slide)
    tiles = sptl.pp.tile_image(slide, tile_size=240)
    p = tiles.uns["patches"]["params"]
    assert p["reader"] == "openslide" and p["image_mpp"] == pytest.approx(0.5)
    # OpenSlide's thumbnail is resampled, not strided: the tissue mask differs a little at the border
    ref = sptl.pp.tile_image(path, tile_size=240)
    shared = tiles.obs_names.intersection(ref.obs_names)
    assert len(shared) >= 0.95 * max(tiles.n_obs, ref.n_obs)


# -- tile_spots ----------------------------------------------------------------------------------------


def test_tile_spots_groups_her2st_array_positions(her2st):
    adata = her2st("B1")
    adata.obsm["array"] = adata.obs[["array_x", "array_y"]].to_numpy()
    sptl.pp.tile_spots(adata, size=4, spatial_key="array", batch_key="section")
    tiles = adata.obs["sptl_tile"]
    sizes = tiles.value_counts()
    assert sizes.max() <= 16 and sizes.min() >= 2
    assert all(t.startswith("B1_") for t in tiles.dropna())
    # a square never spans more than 4 array positions in either direction
    span = adata.obs.groupby("sptl_tile", observed=True)[["array_x", "array_y"]].agg(lambda v: v.max() - v.min())
    assert (span.to_numpy() <= 3).all()
    # the spots left out are exactly those alone in their square
    alone = sptl.pp.tile_spots(adata, size=4, spatial_key="array", batch_key="section", min_size=1, copy=True)
    singles = alone.obs["sptl_tile"].map(alone.obs["sptl_tile"].value_counts()) == 1
    assert tiles.isna().sum() == 3 and (tiles.isna() == singles).all()
    assert adata.uns["sptl_tile"]["params"]["size"] == 4.0


def test_tile_spots_copy_and_bad_input(her2st):
    adata = her2st("C1")
    adata.obsm["array"] = adata.obs[["array_x", "array_y"]].to_numpy()
    before = snapshot(adata)
    out = sptl.pp.tile_spots(adata, size=3, spatial_key="array", min_size=1, key_added="bag", copy=True)
    assert_unchanged(adata, before)
    assert out.obs["bag"].notna().all()
    for kwargs, error, match in [
        ({"size": 0}, ValueError, "positive number"),
        ({"size": 4, "spatial_key": "nope"}, KeyError, "obsm\\['nope'\\]"),
        ({"size": 4, "batch_key": "nope"}, KeyError, "obs\\['nope'\\]"),
        ({"size": 4, "min_size": 0}, ValueError, "min_size"),
    ]:
        with pytest.raises(error, match=match):
            sptl.pp.tile_spots(adata, **{"spatial_key": "array", **kwargs})
        assert_unchanged(adata, before)
    pd.testing.assert_frame_equal(adata.obs, before["obs"])
