from __future__ import annotations

import os

import numpy as np
import open_clip
import pytest
import torch
from helpers import assert_unchanged, snapshot

import sptl


@pytest.fixture(scope="module")
def _visium():
    adata = sptl.datasets.visium_fixture()
    sptl.pp.extract_patches(adata, img_key="lowres", patch_size=2, size=32)
    return adata


@pytest.fixture
def visium(_visium):
    return _visium.copy()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A small open_clip model (sptl's 'sptl-vit-micro' config) and its checkpoint file, as a user would have."""
    sptl.models.register_open_clip_configs()
    torch.manual_seed(1)
    model = open_clip.create_model("sptl-vit-micro").eval()
    path = tmp_path_factory.mktemp("ckpt") / "micro.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_open_clip_checkpoint_through_pretrained_gives_the_models_own_embeddings(visium, tiny_clip):
    model, path = tiny_clip
    sptl.tl.embed_histology(visium, encoder="sptl-vit-micro", pretrained=str(path), progress=False, batch_size=16)
    emb = visium.obsm["X_histology"]
    assert emb.shape == (100, 32) and emb.dtype == np.float32
    params = visium.uns["histology"]["params"]
    assert params["source"] == "open_clip" and params["pretrained"] == str(path)
    assert params["preprocessing"]["image_size"] == 32
    assert params["preprocessing"]["mean"] == pytest.approx(list(open_clip.OPENAI_DATASET_MEAN))
    # same numbers as open_clip's own encode_image on the same normalised patches of the real H&E
    ds = sptl.pp.PatchDataset.from_adata(visium)
    x = torch.stack([ds[i] for i in range(len(ds))])
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.encode_image((x - mean) / std).numpy()
    np.testing.assert_allclose(emb, expected, atol=1e-4)
    # a randomly initialised model of the same name gives other features: the weights were loaded
    other = sptl.tl.embed_histology(visium, encoder="sptl-vit-micro", progress=False, copy=True)
    assert not np.allclose(other.obsm["X_histology"], emb, atol=1e-3)


def test_torchvision_and_timm_state_dicts_from_local_files(visium, tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pt"
    torch.save(net.state_dict(), path)
    sptl.tl.embed_histology(visium, encoder="torchvision:resnet18", pretrained=path, image_size=32, progress=False)
    tv = visium.obsm["X_histology"]
    assert tv.shape == (100, 512) and np.isfinite(tv).all() and tv.std(axis=0).mean() > 0
    # timm's resnet18 has the same parameter names: same weights, same features (both heads removed)
    sptl.tl.embed_histology(
        visium, encoder="timm:resnet18", pretrained=path, image_size=32, mean=(0.485, 0.456, 0.406), progress=False
    )
    np.testing.assert_allclose(visium.obsm["X_histology"], tv, atol=1e-4)


def test_user_module_and_feature_maps_are_averaged(visium):
    conv = torch.nn.Conv2d(3, 8, 3)  # (batch, 8, h, w) feature maps
    sptl.tl.embed_histology(visium, encoder=conv, image_size=32, key_added="conv", progress=False)
    assert visium.obsm["X_conv"].shape == (100, 8)
    assert visium.uns["conv"]["params"]["source"] == "module"


def test_tiles_of_a_whole_image_are_embedded_like_spots(visium, tiny_clip, tmp_path):
    """An AnnData whose observations are tiles of an image file (as sptl.pp.tile_image writes) works too."""
    from anndata import AnnData
    from PIL import Image

    img = visium.uns["spatial"]["custom"]["images"]["lowres"]
    path = tmp_path / "slide.png"
    Image.fromarray(img).save(path)
    xs, ys = np.meshgrid(np.arange(16, 600, 32), np.arange(16, 600, 32))
    tiles = AnnData(np.zeros((xs.size, 1), dtype=np.float32))
    tiles.obs_names = [f"tile_{i}" for i in range(xs.size)]
    tiles.obsm["spatial"] = np.column_stack([xs.ravel(), ys.ravel()]).astype(float)
    sptl.pp.extract_patches(tiles, image=path, patch_size=32, unit="px", size=32)
    _, ckpt = tiny_clip
    sptl.tl.embed_histology(tiles, encoder="sptl-vit-micro", pretrained=ckpt, progress=False)
    assert tiles.obsm["X_histology"].shape == (xs.size, 32)


def test_checkpoint_that_does_not_match_the_model_name(visium, tiny_clip, tmp_path):
    _, path = tiny_clip
    before = snapshot(visium)
    with pytest.raises(ValueError, match=r"does not match the encoder architecture 'sptl-vit-tiny'"):
        sptl.tl.embed_histology(visium, encoder="sptl-vit-tiny", pretrained=path, progress=False)
    import torchvision

    r18 = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    with pytest.raises(ValueError, match=r"does not match the encoder architecture 'resnet34'"):
        sptl.tl.embed_histology(visium, encoder="torchvision:resnet34", pretrained=r18, progress=False)
    with pytest.raises(ValueError, match=r"does not match"):
        sptl.tl.embed_histology(visium, encoder=torch.nn.Conv2d(3, 4, 3), pretrained=r18, progress=False)
    assert_unchanged(visium, before)


def test_bad_input(visium):
    before = snapshot(visium)
    with pytest.raises(FileNotFoundError, match="not found"):
        sptl.tl.embed_histology(visium, encoder="sptl-vit-micro", pretrained="/no/such/weights.pt", progress=False)
    with pytest.raises(ValueError, match="Unknown image encoder 'no-such-net'"):
        sptl.tl.embed_histology(visium, encoder="no-such-net", progress=False)
    with pytest.raises(TypeError, match=r"model name or a torch nn\.Module"):
        sptl.tl.embed_histology(visium, encoder=42, progress=False)
    with pytest.raises(KeyError, match=r"uns\['nope'\]\['params'\]` not found: run `sptl.pp.extract_patches"):
        sptl.tl.embed_histology(visium, encoder="sptl-vit-micro", patches_key="nope", progress=False)
    assert_unchanged(visium, before)


@pytest.mark.internet
@pytest.mark.skipif(os.environ.get("SPTL_INTERNET") != "1", reason="needs the network: set SPTL_INTERNET=1")
def test_hub_weights_download(visium):
    sptl.tl.embed_histology(visium, encoder="ViT-B-32", pretrained="laion2b_s34b_b79k", progress=False)
    assert visium.obsm["X_histology"].shape == (100, 512)


def test_patch_grid_plot(tmp_path):
    adata = sptl.datasets.synthetic_tissue(n_spots=120, seed=0)
    sptl.pp.extract_patches(adata, size=16)
    axes = sptl.pl.patches(adata, groupby="tissue_type", n=3, show=False)
    assert axes.shape == (4, 3)
    first = axes[0, 0].get_images()[0].get_array()
    assert first.shape == (16, 16, 3)
    sptl.pl.patches(adata, obs_names=adata.obs_names[:2], save=tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(KeyError, match=r"not in `adata\.obs_names`"):
        sptl.pl.patches(adata, obs_names=["nope"], show=False)
