"""Histology <-> expression: SpatialCLIP transfer modes side by side with simple baselines.

Data: ``sptl.datasets.synthetic_tissue`` sections (hidden tissue types drive both the H&E-like texture and
the counts; each seed has its own layout and stain shift). Train on the seed-0 section (``--n-train``
spots), evaluate on two held-out sections (seeds 1 and 2, ``--n-test`` spots each). Patches: one spot
diameter (55 um), resized to the encoder's input.

Protocol (every number is the mean over the two held-out sections and three model seeds, 0-2):
- expression prediction: :func:`sptl.tl.predict_expression` (image embedding of each held-out spot ->
  its 20 nearest training spots by expression embedding -> softmax-weighted mean of their log-normalised
  profiles). Pearson r per gene over the held-out spots, averaged over the 50 most variable genes of the
  training section (scanpy ``highly_variable_genes``, seurat flavour, on log1p counts per 10,000).
- retrieval: each held-out spot's image queries the expression embeddings of all spots of its section;
  top-1 / top-5 = share whose own expression is ranked first / in the first five (chance 1/n, 5/n).
- zero-shot: :func:`sptl.tl.annotate_zero_shot` from the images with the generator's marker sets (one
  prototype per hidden type, no labels used), accuracy against the hidden type.

Methods
- ``colour kNN`` baseline: no learned image features; per-quadrant RGB mean / std of the patch (24
  numbers, z-scored), the 20 nearest training patches, mean of their profiles (expression only).
- ``ridge on frozen features``: scikit-learn ridge from the pretrained tower's features to the top-50
  genes (expression only).
- ``CLIP from scratch``: ``SpatialCLIP(freeze="none")`` from random weights.
- ``random tower, frozen + linear probe``: ``freeze="all"`` on random weights (what the probe alone does).
- ``pretrained, frozen + linear probe``: the image tower of a CLIP pretrained on three other sections
  (seeds 10-12, saved as an open_clip checkpoint file and loaded through ``pretrained=``), frozen.
- ``pretrained, fine-tune last block``: ``freeze="backbone", unfreeze_last=1``.
- ``pretrained, full fine-tune``: ``freeze="none"`` (tower learning rate lr / 10).
- ``gene sentence, from scratch``: ``expression_encoder="sentence"`` (open_clip text tower over the top-8
  gene names), from random weights.
No real pretrained weights can be downloaded here, so "pretrained" means pretrained on other synthetic
sections; with a real checkpoint (CONCH, OmiCLIP...) pass its file to ``pretrained=`` the same way.
Throughput: :func:`sptl.tl.embed_histology` patches / s for several towers on this CPU.

Run: ``python benchmarks/histology.py`` (``--quick`` for a smoke run)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import scanpy as sc
import torch
from anndata import AnnData
from sklearn.linear_model import Ridge
from sklearn.neighbors import NearestNeighbors

import sptl
from sptl.models import SpatialCLIP
from sptl.models._clip import log_normalize
from sptl.models._encoders import load_image_encoder

sc.settings.verbosity = 0


def sections(n_train, n_test, size):
    train = sptl.datasets.synthetic_tissue(n_spots=n_train, seed=0)
    tests = [sptl.datasets.synthetic_tissue(n_spots=n_test, seed=s) for s in (1, 2)]
    pre = [sptl.datasets.synthetic_tissue(n_spots=n_train, seed=s) for s in (10, 11, 12)]
    for a in [train, *tests, *pre]:
        sptl.pp.extract_patches(a, size=size)
    return train, tests, pre


def top_genes(train, n=50):
    tmp = AnnData(log_normalize(train.X))
    tmp.var_names = train.var_names
    sc.pp.highly_variable_genes(tmp, n_top_genes=n, flavor="seurat")
    return tmp.var_names[tmp.var["highly_variable"].to_numpy()]


def mean_r(pred, test, genes):
    truth = log_normalize(test.X)[:, test.var_names.get_indexer(genes)]
    pred = np.asarray(pred)
    rs = [np.corrcoef(pred[:, i], truth[:, i])[0, 1] if pred[:, i].std() > 0 else 0.0 for i in range(len(genes))]
    return float(np.mean(rs))


def patches(adata, size):
    ds = sptl.pp.PatchDataset.from_adata(adata)
    x = torch.stack([ds[i] for i in range(len(ds))])
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


def colour_features(x):
    h, w = x.shape[-2:]
    quads = [
        x[..., : h // 2, : w // 2],
        x[..., : h // 2, w // 2 :],
        x[..., h // 2 :, : w // 2],
        x[..., h // 2 :, w // 2 :],
    ]
    return torch.cat([torch.cat([q.mean((-2, -1)), q.std((-2, -1))], 1) for q in quads], 1).numpy()


def colour_knn(train, test, genes, k=20):
    ftr, fte = colour_features(patches(train, 32)), colour_features(patches(test, 32))
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    nn = NearestNeighbors(n_neighbors=k).fit((ftr - mu) / sd)
    _, idx = nn.kneighbors((fte - mu) / sd)
    prof = log_normalize(train.X)[:, train.var_names.get_indexer(genes)]
    return mean_r(prof[idx].mean(1), test, genes)


def ridge_on_frozen(train, test, genes, encoder, ckpt):
    tower = load_image_encoder(encoder, str(ckpt)).eval()
    with torch.no_grad():
        ftr, fte = tower(patches(train, tower.image_size)).numpy(), tower(patches(test, tower.image_size)).numpy()
    y = log_normalize(train.X)[:, train.var_names.get_indexer(genes)]
    return mean_r(Ridge(alpha=1.0).fit(ftr, y).predict(fte), test, genes)


def evaluate(model, train, test, genes):
    t = test.copy()
    sptl.tl.predict_expression(t, train, model=model, genes=list(genes), progress=False)
    r = mean_r(t.obsm["predicted_expression"][list(genes)].to_numpy(), t, genes)
    sptl.tl.retrieve(t, model=model, k=5, progress=False)
    rank = t.obs["retrieval_rank"].to_numpy()
    sptl.tl.annotate_zero_shot(t, model=model, markers=train.uns["synthetic"]["markers"], progress=False)
    acc = float((t.obs["zero_shot"].astype(str) == t.obs["tissue_type"].astype(str)).mean())
    return {"r": r, "top1": float((rank == 1).mean()), "top5": float((rank <= 5).mean()), "zero_shot": acc}


def pretrain(pre, encoder, epochs, path):
    """CLIP on other sections; its image tower saved as an open_clip checkpoint file (what users download)."""
    model = SpatialCLIP(image_encoder=encoder, n_genes=200, max_epochs=epochs, seed=100).fit(pre, progress=False)
    sptl.models.register_open_clip_configs()
    clip = open_clip.create_model(encoder)
    clip.visual.load_state_dict(model.net_.visual.module.state_dict())
    torch.save(clip.state_dict(), path)
    return path


def throughput(n=256):
    visium = sptl.datasets.visium_dentate_gyrus()
    visium = visium[np.resize(np.arange(visium.n_obs), n)].copy()
    visium.obs_names_make_unique()
    sptl.pp.extract_patches(visium, size=224)
    rows = []
    for name, enc in [
        ("sptl-vit-micro (32 px)", "sptl-vit-micro"),
        ("sptl-vit-tiny (64 px)", "sptl-vit-tiny"),
        ("torchvision resnet18 (224 px)", "torchvision:resnet18"),
        ("timm resnet50 (224 px)", "timm:resnet50"),
        ("open_clip ViT-B-32 (224 px)", "ViT-B-32"),
    ]:
        sptl.tl.embed_histology(visium[:8].copy(), encoder=enc, progress=False)  # warm-up / model build
        t = time.perf_counter()
        sptl.tl.embed_histology(visium, encoder=enc, progress=False, batch_size=64)
        dt = time.perf_counter() - t
        rows.append({"encoder (random weights; speed only)": name, "patches / s": n / dt})
    return pd.DataFrame(rows)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--encoder", default="sptl-vit-micro")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.n_train, args.n_test, args.seeds = 3, 200, 100, 1
    torch.set_num_threads(1)
    tmp = Path("/tmp") / "sptl_histology_benchmark"
    tmp.mkdir(exist_ok=True)
    size = 64
    train, tests, pre = sections(args.n_train, args.n_test, size)
    genes = top_genes(train)
    t = time.perf_counter()
    ckpt = pretrain(pre, args.encoder, args.epochs, tmp / "pretrained_clip.pt")
    print(f"pretraining on 3 other sections: {time.perf_counter() - t:.0f} s")

    common = {"image_encoder": args.encoder, "n_genes": 200, "max_epochs": args.epochs}
    configs = {
        "CLIP from scratch": {"freeze": "none"},
        "random tower, frozen + linear probe": {"freeze": "all"},
        "pretrained, frozen + linear probe": {"freeze": "all", "pretrained": str(ckpt)},
        "pretrained, fine-tune last block": {"freeze": "backbone", "unfreeze_last": 1, "pretrained": str(ckpt)},
        "pretrained, full fine-tune": {"freeze": "none", "pretrained": str(ckpt)},
        "gene sentence, from scratch": {"expression_encoder": "sentence", "freeze": "none"},
    }
    rows = [
        {
            "method": "chance / majority",
            "r": 0.0,
            "top1": float(np.mean([1 / t.n_obs for t in tests])),
            "top5": float(np.mean([5 / t.n_obs for t in tests])),
            "zero_shot": float(np.mean([t.obs["tissue_type"].value_counts(normalize=True).max() for t in tests])),
            "fit s": 0.0,
        },
        {"method": "colour kNN (baseline)", "r": np.mean([colour_knn(train, t, genes) for t in tests]), "fit s": 0.0},
        {
            "method": "ridge on pretrained frozen features",
            "r": np.mean([ridge_on_frozen(train, t, genes, args.encoder, ckpt) for t in tests]),
            "fit s": 0.0,
        },
    ]
    for name, cfg in configs.items():
        scores, secs = [], []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            model = SpatialCLIP(**common, **cfg, seed=seed).fit(train, progress=False)
            secs.append(time.perf_counter() - t0)
            scores += [evaluate(model, train, t, genes) for t in tests]
        row = {"method": name, **pd.DataFrame(scores).mean().to_dict(), "fit s": float(np.mean(secs))}
        row["zero_shot sd"] = float(pd.DataFrame(scores)["zero_shot"].std())
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows).set_index("method")
    pd.set_option("display.width", 200)
    print(f"\nencoder {args.encoder}, {args.epochs} epochs, train {args.n_train} spots, 2 x {args.n_test} held out")
    print(table.round(3).to_markdown())
    print()
    print(throughput(64 if args.quick else 256).round(1).to_markdown(index=False))


if __name__ == "__main__":
    main()
