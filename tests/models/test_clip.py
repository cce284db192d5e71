from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch

import sptl
from sptl.models import SpatialCLIP
from sptl.models._clip import log_normalize
from sptl.models._encoders import vision_blocks

MICRO = {"image_encoder": "sptl-vit-micro", "n_genes": 60, "embed_dim": 32}


@pytest.fixture(scope="module")
def sections():
    """Two synthetic sections (different layouts and stains): train on one, evaluate on the other."""
    train = sptl.datasets.synthetic_tissue(n_spots=300, seed=0)
    test = sptl.datasets.synthetic_tissue(n_spots=200, seed=1)
    for a in (train, test):
        sptl.pp.extract_patches(a, size=32)
    return train, test


@pytest.fixture(scope="module")
def model(sections):
    return SpatialCLIP(**MICRO, max_epochs=10, seed=0).fit(sections[0], progress=False)


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory):
    sptl.models.register_open_clip_configs()
    torch.manual_seed(3)
    clip = open_clip.create_model("sptl-vit-micro")
    path = tmp_path_factory.mktemp("ckpt") / "micro.pt"
    torch.save(clip.state_dict(), path)
    return clip, path


def test_trained_model_beats_chance_on_a_held_out_section(model, sections):
    train, test = sections
    truth = test.obs["tissue_type"].astype(str).to_numpy()
    majority = test.obs["tissue_type"].value_counts(normalize=True).max()  # 0.375
    img = model.transform(test, modality="image", progress=False)
    expr = model.transform(test, modality="expression", progress=False)
    assert img.shape == expr.shape == (200, 32)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    # zero-shot: marker-set prototypes vs image embeddings (measured 0.59-0.85 over model seeds 0-3)
    protos = model.embed_markers(train.uns["synthetic"]["markers"])
    labels = np.array(list(train.uns["synthetic"]["markers"]))[(img @ protos.T).argmax(axis=1)]
    assert (labels == truth).mean() > max(0.5, majority + 0.1)
    # retrieval: rank of each spot's own expression among 200 for its image (chance median 100.5; measured 46-53)
    sim = img @ expr.T
    rank = (sim > np.diag(sim)[:, None]).sum(axis=1) + 1
    assert np.median(rank) < 75
    # BLEEP-style prediction of the marker genes from the images (Pearson r per gene; measured 0.34-0.42)
    pred = model.predict(test, reference=train, progress=False)
    truth_expr = log_normalize(test[:, pred.columns].X)
    markers = {g for genes in train.uns["synthetic"]["markers"].values() for g in genes}
    r = [np.corrcoef(pred[g], truth_expr[:, i])[0, 1] for i, g in enumerate(pred.columns) if g in markers]
    assert len(r) > 20 and np.nanmean(r) > 0.25
    assert model.history_["loss"][-1] < model.history_["loss"][0] - 0.5


def test_save_load_round_trip_gives_identical_embeddings(model, sections, tmp_path):
    _, test = sections
    path = tmp_path / "clip.npz"
    model.save(path)
    loaded = SpatialCLIP.load(path)
    assert loaded.params == model.params and loaded.var_names_.equals(model.var_names_)
    assert loaded.history_["preprocessing"] == {
        "image_size": 32,
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
    }
    for modality in ("image", "expression"):
        np.testing.assert_array_equal(
            loaded.transform(test, modality=modality, progress=False),
            model.transform(test, modality=modality, progress=False),
        )
    with np.load(path, allow_pickle=False) as f:  # a plain npz with a JSON header, no pickle
        header = json.loads(f["__header__"].tobytes().decode())
    assert header["class"] == "SpatialCLIP" and header["history"]["patches"]["patch_size_um"] == 55.0


def test_load_refuses_other_models_and_weights_of_another_architecture(model, tmp_path):
    path = tmp_path / "clip.npz"
    model.save(path)
    with pytest.raises(ValueError, match="holds a 'SpatialCLIP' model, not a 'KNNTransfer'"):
        sptl.models.KNNTransfer.load(path)
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(arrays["__header__"].tobytes().decode())
    header["params"]["image_encoder"] = "sptl-vit-tiny"
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match="do not fit a SpatialCLIP with image_encoder='sptl-vit-tiny'"):
        SpatialCLIP.load(bad)


def test_refuses_data_that_does_not_match_the_model(model, sections):
    _, test = sections
    other = test.copy()
    other.var_names = [f"x{g}" for g in other.var_names]
    with pytest.raises(ValueError, match="lacks 60 of the 60 genes"):
        model.transform(other, modality="expression", progress=False)
    # trained on one-spot (55 um) patches: patches of two spots are refused
    visium = sptl.datasets.visium_fixture()
    sptl.pp.extract_patches(visium, img_key="lowres", patch_size=2, size=32)
    with pytest.raises(ValueError, match=r"110.0 um, this model was trained on 55.0 um"):
        model.transform(visium, modality="image", progress=False)
    with pytest.raises(RuntimeError, match="not fitted"):
        SpatialCLIP(**MICRO).transform(test, progress=False)


def test_transfer_modes_freeze_what_they_say(sections, micro_checkpoint):
    train, _ = sections
    clip, path = micro_checkpoint
    start = {k: v.clone() for k, v in clip.visual.state_dict().items()}

    def changed(m):
        now = m.net_.visual.module.state_dict()
        return {k for k in start if not torch.equal(now[k], start[k])}

    common = {**MICRO, "pretrained": str(path), "max_epochs": 2, "seed": 0}
    frozen = SpatialCLIP(**common, freeze="all").fit(train, progress=False)
    assert changed(frozen) == set()  # linear probe: the tower is untouched
    assert frozen.history_["loss"][-1] < frozen.history_["loss"][0]
    last = SpatialCLIP(**common, freeze="backbone", unfreeze_last=1).fit(train, progress=False)
    moved = changed(last)
    assert any(k.startswith("transformer.resblocks.1.") for k in moved)
    assert not any(k.startswith(("transformer.resblocks.0.", "conv1", "positional_embedding")) for k in moved)
    assert "proj" in moved  # the final projection learns with the last block
    full = SpatialCLIP(**common, freeze="none").fit(train, progress=False)
    assert any(k.startswith("transformer.resblocks.0.") for k in changed(full)) and "conv1.weight" in changed(full)
    assert len(vision_blocks(full.net_.visual.module)) == 2


def test_gene_sentences_through_the_text_tower(sections, tmp_path):
    train, test = sections
    m = SpatialCLIP(**MICRO, expression_encoder="sentence", sentence_length=4, max_epochs=3).fit(train, progress=False)
    assert m.history_["loss"][-1] < m.history_["loss"][0]
    tokens = m._sentences(np.eye(60, dtype=np.float32)[:2])
    assert tokens.shape == (2, 32)
    m.save(tmp_path / "s.npz")
    loaded = SpatialCLIP.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(
        loaded.transform(test, modality="expression", progress=False),
        m.transform(test, modality="expression", progress=False),
    )
    protos = loaded.embed_markers({"a": ["BAKETO", train.var_names[0]], "b": [train.var_names[1]]})
    assert protos.shape == (2, 32)


def test_fit_on_several_sections(sections):
    train, test = sections
    m = SpatialCLIP(**MICRO, max_epochs=1).fit([train, test], progress=False)
    assert m.history_["n_spots"] == 500 and m.history_["n_sections"] == 2


def test_bad_arguments(sections):
    train, _ = sections
    with pytest.raises(ValueError, match="freeze='some'"):
        SpatialCLIP(freeze="some")
    with pytest.raises(ValueError, match="at least 2"):
        SpatialCLIP(batch_size=1)
    with pytest.raises(ValueError, match="needs an open_clip `image_encoder`"):
        SpatialCLIP(image_encoder="torchvision:resnet18", expression_encoder="sentence")
    with pytest.raises(ValueError, match="None of the markers of 'x'"):
        SpatialCLIP(**MICRO, max_epochs=1).fit(train, progress=False).embed_markers({"x": ["NOTAGENE"]})
    bare = train.copy()
    del bare.uns["patches"]
    with pytest.raises(KeyError, match="extract_patches"):
        SpatialCLIP(**MICRO).fit(bare, progress=False)


def test_torchvision_tower_fine_tunes_its_last_stage(sections, tmp_path):
    import torchvision

    train, test = sections[0][:64].copy(), sections[1][:32].copy()
    torch.manual_seed(0)
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    m = SpatialCLIP(
        image_encoder="torchvision:resnet18",
        pretrained=str(path),
        image_size=32,
        freeze="backbone",
        unfreeze_last=1,
        n_genes=60,
        embed_dim=16,
        max_epochs=1,
    ).fit(train, progress=False)
    start = torch.load(path, weights_only=True)
    now = m.net_.visual.module.state_dict()
    moved = {k for k in now if not torch.equal(now[k], start[k])}
    assert moved and all(k.startswith("layer4.") for k in moved)  # BatchNorm statistics of frozen stages kept
    m.save(tmp_path / "r.npz")
    np.testing.assert_array_equal(
        SpatialCLIP.load(tmp_path / "r.npz").transform(test, progress=False), m.transform(test, progress=False)
    )
    with pytest.raises(ValueError, match="applies to timm / torchvision"):
        SpatialCLIP(image_size=64)
