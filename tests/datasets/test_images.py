"""H&E images bundled with HER2ST C2-C5 and the mouse olfactory bulb sections."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import sparse

import sptl
from sptl.datasets import HER2ST_IMAGES, MOB_SECTIONS


def _under_spots(adata, library_id: str) -> np.ndarray:
    lib = adata.uns["spatial"][library_id]
    xy = np.rint(adata.obsm["spatial"] * lib["scalefactors"]["tissue_hires_scalef"]).astype(int)
    img = lib["images"]["hires"]
    return img[xy[:, 1], xy[:, 0]].astype(float)


@pytest.mark.parametrize("section", HER2ST_IMAGES)
def test_her2st_sections_with_their_he(section):
    adata = sptl.datasets.her2st(section, image=True)
    lib = adata.uns["spatial"][section]
    img = lib["images"]["hires"]
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and 4000 < img.shape[0] < 5200
    assert lib["scalefactors"]["tissue_hires_scalef"] == 0.5
    assert 120 < lib["scalefactors"]["spot_diameter_fullres"] < 150  # 100 um at ~0.74 um / px
    assert 0.65 < lib["metadata"]["microns_per_pixel"] < 0.8
    # the spots sit on stained tissue (haematoxylin / eosin darker than the slide's white)
    assert _under_spots(adata, section).mean() < 200 and img[:50, :50].mean() > 200
    # the counts are the same as without the image
    plain = sptl.datasets.her2st(section)
    assert (plain.X != adata.X).nnz == 0 and "spatial" not in plain.uns


def test_her2st_image_patches_through_extract_patches():
    adata = sptl.datasets.her2st("C3", image=True)
    ds = sptl.pp.extract_patches(adata, img_key="hires", patch_size=1.5, unit="spot", size=64, return_dataset=True)
    x = ds[0]
    assert tuple(x.shape) == (3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    # micrometres from the image's recorded resolution (100 um spots), not Visium's 55 um spot
    assert adata.uns["patches"]["params"]["patch_size_um"] == pytest.approx(150.0)


def test_her2st_image_errors(tmp_path):
    with pytest.raises(ValueError, match="not bundled"):
        sptl.datasets.her2st("A1", image=True)
    small = tmp_path / "small.png"
    Image.fromarray(np.full((300, 300, 3), 255, np.uint8)).save(small)
    with pytest.raises(ValueError, match="fall outside the 300 x 300 px image"):
        sptl.datasets.her2st("A1", image_path=small)
    with pytest.raises(FileNotFoundError, match="not found"):
        sptl.datasets.her2st("A1", image_path=tmp_path / "missing.jpg")


@pytest.mark.parametrize(("section", "n_spots"), [("MOB1", 379), ("MOB2", 407)])
def test_mouse_olfactory_bulb(section, n_spots):
    adata = sptl.datasets.mouse_olfactory_bulb(section)
    assert adata.shape == (n_spots, 1000) and set(adata.obs["section"]) == {section}
    assert sparse.issparse(adata.X) and adata.X.dtype == np.int32 and adata.X.sum(axis=1).min() > 0
    assert adata.var_names[0].startswith("ENSMUSG") and adata.var_names.is_unique
    lib = adata.uns["spatial"][section]
    assert lib["images"]["hires"].shape == (1905, 1905, 3) and lib["scalefactors"]["tissue_hires_scalef"] == 1.0
    assert 14 < lib["scalefactors"]["spot_diameter_fullres"] < 18
    assert _under_spots(adata, section).mean() < lib["images"]["hires"][:40, :40].astype(float).mean()
    assert "spatial" not in sptl.datasets.mouse_olfactory_bulb(section, image=False).uns
    assert MOB_SECTIONS == ("MOB1", "MOB2")


def test_patches_on_background_warn_and_nan_pixels_are_refused():
    adata = sptl.datasets.her2st("C2", image=True)
    sptl.pp.extract_patches(adata, patch_size=1.5, size=32)
    tissue = adata.obs["patches_tissue"]
    assert tissue.between(0, 1).all() and tissue.median() > 0.8  # the spots sit on the tissue
    # the image is half the full resolution: a scale factor of 0.15 puts the patches elsewhere (background)
    with pytest.warns(UserWarning, match="Most patches lie on background"):
        sptl.pp.extract_patches(adata, scale_factor=0.15, patch_size=1.5, size=32, key_added="wrong")
    assert adata.obs["wrong_tissue"].median() < 0.2
    img = adata.uns["spatial"]["C2"]["images"]["hires"][:1000, :1000].astype(np.float32) / 255
    img[10, 10, 0] = np.nan
    with pytest.raises(ValueError, match="contains NaN pixels"):
        sptl.pp.extract_patches(adata[:3].copy(), image=img, scale_factor=0.05, patch_size=10, unit="px")
