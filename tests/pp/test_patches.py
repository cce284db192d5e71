from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_unchanged, snapshot
from PIL import Image

import sptl
from sptl.pp import PatchDataset
from sptl.pp._patches import MACENKO_REF_HE, MACENKO_REF_MAX, fit_macenko


@pytest.fixture(scope="module")
def _fixture():
    return sptl.datasets.visium_fixture()


@pytest.fixture
def visium(_fixture):
    return _fixture.copy()


@pytest.fixture(scope="module")
def _dg():
    return sptl.datasets.visium_dentate_gyrus()


@pytest.fixture
def dg(_dg):
    return _dg.copy()


def _lowres(adata):
    lib = adata.uns["spatial"]["custom"]
    return lib["images"]["lowres"], lib["scalefactors"]["tissue_lowres_scalef"]


def test_patches_are_the_pixels_around_each_spot_on_real_he(visium):
    img, scale = _lowres(visium)
    ds = sptl.pp.extract_patches(visium, img_key="lowres", patch_size=9, unit="px", size=None, return_dataset=True)
    assert isinstance(ds, PatchDataset) and len(ds) == visium.n_obs
    params = visium.uns["patches"]["params"]
    assert params["library_id"] == "custom" and params["img_key"] == "lowres" and params["image_path"] is None
    assert params["scale_factor"] == pytest.approx(scale) and params["size"] == 9
    assert (visium.obs["patches_coverage"] == 1).all()  # every fixture spot lies well inside the image
    for i in (0, 17, 99):
        x, y = visium.obsm["spatial"][i] * scale
        x0, y0 = int(np.floor(x - 4.5 + 0.5)), int(np.floor(y - 4.5 + 0.5))
        expected = img[y0 : y0 + 9, x0 : x0 + 9].astype(np.float32) / 255
        np.testing.assert_allclose(ds[i].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    # real tissue, not the black hires placeholder: patches are neither empty nor saturated
    means = torch.stack([ds[i] for i in range(len(ds))]).mean(dim=(1, 2, 3))
    assert 0.3 < float(means.min()) and float(means.max()) < 0.9


def test_spot_and_micrometre_units_follow_the_visium_scale_factors(visium):
    sf = visium.uns["spatial"]["custom"]["scalefactors"]
    _, scale = _lowres(visium)
    sptl.pp.extract_patches(visium, img_key="lowres", patch_size=2)  # unit="spot"
    p = visium.uns["patches"]["params"]
    assert p["patch_size_px"] == pytest.approx(2 * sf["spot_diameter_fullres"] * scale)
    assert p["patch_size_um"] == pytest.approx(110.0)  # two 55 um Visium spots
    sptl.pp.extract_patches(visium, img_key="lowres", patch_size=55, unit="um", key_added="p55")
    assert visium.uns["p55"]["params"]["patch_size_px"] == pytest.approx(sf["spot_diameter_fullres"] * scale)
    ds = PatchDataset.from_adata(visium, "p55")
    assert tuple(ds[0].shape) == (3, 224, 224)


def test_default_image_is_hires_then_lowres(visium, dg):
    sptl.pp.extract_patches(visium, size=8)
    assert visium.uns["patches"]["params"]["img_key"] == "hires"
    sptl.pp.extract_patches(dg, size=8)
    assert dg.uns["patches"]["params"]["img_key"] == "lowres"


def test_border_patches_on_the_dentate_gyrus_crop(dg):
    # RGBA crop of 243 x 172 px: spots near its edge get patches that leave the image
    ds = sptl.pp.extract_patches(dg, patch_size=6, size=None, return_dataset=True)
    cov = dg.obs["patches_coverage"].to_numpy()
    assert cov.min() < 0.9 and (cov == 1).mean() > 0.5
    edge = int(np.argmin(cov))
    padded = ds[edge]
    assert padded.shape[0] == 3  # alpha dropped
    assert float(padded.max()) == 1.0  # white fill outside the image
    mirrored = sptl.pp.extract_patches(dg, patch_size=6, size=None, border="reflect", return_dataset=True)
    assert not torch.equal(padded, mirrored[edge])
    assert float(mirrored[edge].max()) < 1.0  # mirrored tissue, no white fill
    centre = int(np.argmax(cov))  # fully inside: both border modes give the same pixels
    assert torch.equal(ds[centre], mirrored[centre])
    before = snapshot(dg)
    with pytest.raises(ValueError, match="cross the image border"):
        sptl.pp.extract_patches(dg, patch_size=6, border="error", key_added="strict")
    assert_unchanged(dg, before)


def test_image_array_and_file_give_the_same_patches(visium, tmp_path):
    img, scale = _lowres(visium)
    bare = visium.copy()
    del bare.uns["spatial"]
    arr = sptl.pp.extract_patches(
        bare, image=img, scale_factor=scale, patch_size=10, unit="px", size=20, return_dataset=True
    )
    assert bare.uns["spatial"]["image"]["images"]["hires"] is img  # stored where squidpy looks, not copied
    path = tmp_path / "he.png"
    Image.fromarray(img).save(path)
    bare2 = visium.copy()
    del bare2.uns["spatial"]
    out = sptl.pp.extract_patches(
        bare2, image=path, scale_factor=scale, patch_size=10, unit="px", size=20, key_added="p", copy=True
    )
    assert "p" not in bare2.uns and out.uns["p"]["params"]["image_path"] == str(path)
    from_file = PatchDataset.from_adata(out, "p")
    assert from_file._image is None  # read lazily
    for i in (0, 50):
        assert torch.equal(arr[i], from_file[i])
    loader = torch.utils.data.DataLoader(from_file, batch_size=25)
    assert tuple(next(iter(loader)).shape) == (25, 3, 20, 20)


@pytest.mark.parametrize("loader", ["visium_fixture", "visium_dentate_gyrus"])
def test_macenko_maps_real_he_onto_the_reference_stains(loader):
    adata = getattr(sptl.datasets, loader)()
    ds = sptl.pp.extract_patches(adata, img_key="lowres", size=None, stain_norm="macenko", return_dataset=True)
    params = adata.uns["patches"]["params"]
    fitted = np.asarray(params["stain_matrix"])
    assert fitted.shape == (3, 2) and params["stain_norm"] == "macenko"
    ref = np.asarray(MACENKO_REF_HE) / np.linalg.norm(MACENKO_REF_HE, axis=0)
    assert (fitted * ref).sum(axis=0).min() < 0.99  # the section's own stains differ from the reference
    # the whole image normalised with the fitted stains has the reference stains (fixed point)
    whole = PatchDataset(
        ds.image,
        np.array([[ds.image.shape[1] / 2, ds.image.shape[0] / 2]]),
        patch_size_px=max(ds.image.shape[:2]),
        stain=ds.stain,
    )[0]
    inside = (whole.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    refit = fit_macenko(inside)
    assert (refit["matrix"] * ref).sum(axis=0).min() > 0.999
    np.testing.assert_allclose(refit["max"], MACENKO_REF_MAX, rtol=0.1)
    assert not torch.equal(ds[0], sptl.pp.extract_patches(adata, img_key="lowres", size=None, return_dataset=True)[0])


def test_no_image_in_uns_spatial_is_a_clear_error(visium):
    bare = visium.copy()
    del bare.uns["spatial"]
    before = snapshot(bare)
    with pytest.raises(KeyError, match=r"uns\['spatial'\]` holds no image library"):
        sptl.pp.extract_patches(bare)
    assert_unchanged(bare, before)
    del visium.uns["spatial"]["custom"]["images"]
    with pytest.raises(KeyError, match=r"\['images'\]` is missing or empty"):
        sptl.pp.extract_patches(visium)
    with pytest.raises(KeyError, match=r"\['other'\]` not found; libraries are \['custom'\]"):
        sptl.pp.extract_patches(visium, library_id="other")


def test_spots_outside_the_image_are_refused(visium):
    visium.obsm["spatial"] = visium.obsm["spatial"] * 3  # e.g. coordinates of another resolution
    before = snapshot(visium)
    with pytest.raises(ValueError, match=r"lie outside the 600 x 600 image"):
        sptl.pp.extract_patches(visium, img_key="lowres")
    assert_unchanged(visium, before)


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.zeros((50, 50), dtype=np.uint8), ValueError, r"shape \(50, 50\).*RGB"),
        (np.zeros((50, 50, 1), dtype=np.uint8), ValueError, "RGBA"),
        (np.zeros((50, 50, 5), dtype=np.uint8), ValueError, "multiplexed"),
        (np.zeros((50, 50, 3), dtype=np.int64), TypeError, "dtype int64"),
        (np.zeros((50, 50, 3), dtype=bool), TypeError, "dtype bool"),
        (np.full((50, 50, 3), 200.0), ValueError, r"float image with values up to 200.*\[0, 1\]"),
    ],
)
def test_wrong_channels_or_dtype(visium, image, error, match):
    visium.uns["spatial"]["custom"]["images"]["lowres"] = image
    before = snapshot(visium)
    with pytest.raises(error, match=match):
        sptl.pp.extract_patches(visium, img_key="lowres")
    assert_unchanged(visium, before)
    bare = visium.copy()
    del bare.uns["spatial"]
    with pytest.raises(error, match=match):
        sptl.pp.extract_patches(bare, image=image, patch_size=4, unit="px")


def test_bad_arguments(visium):
    with pytest.raises(ValueError, match="unit"):
        sptl.pp.extract_patches(visium, unit="mm")
    with pytest.raises(ValueError, match="needs `patch_size=`"):
        sptl.pp.extract_patches(visium, unit="px")
    bare = visium.copy()
    del bare.uns["spatial"]
    img, _ = _lowres(visium)
    with pytest.raises(KeyError, match="spot diameter"):
        sptl.pp.extract_patches(bare, image=img)
    with pytest.raises(ValueError, match="needs `mpp=`"):
        sptl.pp.extract_patches(bare, image=img, patch_size=50, unit="um")
    with pytest.raises(FileNotFoundError):
        sptl.pp.extract_patches(bare, image="/nonexistent/he.png", patch_size=4, unit="px")
    with pytest.raises(KeyError, match=r"extract_patches"):
        PatchDataset.from_adata(visium, "patches")
