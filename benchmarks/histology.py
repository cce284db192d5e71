"""Histology <-> expression on real H&E (default) and on synthetic sections (``--synthetic``).

Real data (``python benchmarks/histology.py``)
----------------------------------------------
Sections with H&E paired with counts, bundled with sptl: HER2ST patient C, sections C2-C5
(``sptl.datasets.her2st(s, image=True)``, ~180 spots each, ~1.5 um / px) and the mouse olfactory bulb
(``sptl.datasets.mouse_olfactory_bulb``, MOB1 / MOB2, ~400 spots, ~6 um / px). Folds: leave one section out
over C2-C5 (train on three, predict the fourth) and MOB1 -> MOB2, MOB2 -> MOB1.

Genes, chosen on the training sections of each fold (``log1p`` of counts per 10,000): the 50 with the highest
variance ("variable"), the 50 with the highest mean ("expressed"), and scanpy's 50 highly variable genes
(seurat flavour, dispersion-normalised: mostly lowly expressed genes; "HVG" column). Score: Pearson r per
gene across the held-out spots, mean over the genes of each set, mean over folds (HER2ST and MOB reported
separately). Retrieval top-5: each held-out spot's image (or predicted expression) queries the measured
expression of all spots of its section; share whose own profile is among the 5 closest (chance 5 / n:
2.7% on HER2ST, 1.3% on MOB). For a regression method the query is its predicted expression (cosine
similarity of z-scored profiles over the evaluated genes); for a CLIP model, ``sptl.tl.retrieve``.

Every patch: 1.65 spot diameters (165 um; 224 px at the study's full resolution). Methods:
- ``colour ridge``: per-quadrant RGB mean / std of the patch (24 numbers), z-scored, ridge (penalty by GCV);
- ``EffNet-Lite0 + ridge``: ``sptl.tl.embed_histology(encoder="efficientnet_lite0", pretrained="imagenet")``
  (frozen ImageNet features, 1280 numbers), z-scored, ridge (penalty by GCV) -- the issue's baseline;
- ``sptl HistologyRegressor``: :class:`sptl.models.HistologyRegressor` at its defaults (``genes=`` the
  evaluated genes): patch + 2x context, 8 dihedral views averaged, ridge by GCV, spatial smoothing with a
  weight chosen on the training sections; rows with one ingredient removed show what each brings;
- ``SpatialCLIP, frozen EffNet-Lite0``: the CLIP route with the pretrained tower frozen
  (``freeze="all"``), retrieval prediction (``sptl.tl.predict_expression`` with the training sections as
  reference);
- ``SpatialCLIP defaults``: from scratch (``sptl-vit-tiny``), retrieval prediction;
- ``SpatialCLIP, fine-tune last block`` (``--finetune``; slow on a CPU): EffNet-Lite0 ImageNet weights,
  ``freeze="backbone", unfreeze_last=1``, 112 px input, 10 epochs.
Features of a section are computed once per configuration and reused across folds and runs (the benchmark
memoises ``HistologyRegressor.features`` in ``/tmp/sptl_histology_features``; the computation is the model's own).

Synthetic data (``--synthetic``)
--------------------------------
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

Run: ``python benchmarks/histology.py --synthetic`` (``--quick`` for a smoke run)
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


def main_synthetic(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--encoder", default="sptl-vit-micro")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
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


# -- real data ---------------------------------------------------------------------------------------
REAL_FOLDS = [
    *[([t for t in ("C2", "C3", "C4", "C5") if t != s], s) for s in ("C2", "C3", "C4", "C5")],
    (["MOB1"], "MOB2"),
    (["MOB2"], "MOB1"),
]
PATCH_SPOTS = 1.65  # 165 um: 224 px at HER2ST's full resolution


def real_section(name):
    a = sptl.datasets.mouse_olfactory_bulb(name) if name.startswith("MOB") else sptl.datasets.her2st(name, image=True)
    a.uns["benchmark_section"] = name
    sptl.pp.extract_patches(a, patch_size=PATCH_SPOTS, size=224)
    return a


def gene_sets(train):
    tmp = sc.concat(train, join="inner")
    y = log_normalize(tmp.X)
    variable = tmp.var_names[np.argsort(-y.var(axis=0))[:50]]
    expressed = tmp.var_names[np.argsort(-y.mean(axis=0))[:50]]
    hv = AnnData(y, var=pd.DataFrame(index=tmp.var_names))
    sc.pp.highly_variable_genes(hv, n_top_genes=50, flavor="seurat")
    hvg = tmp.var_names[hv.var["highly_variable"].to_numpy()]
    return {"variable": variable, "expressed": expressed, "HVG": hvg}


def truth_of(adata, genes):
    return log_normalize(adata.X)[:, adata.var_names.get_indexer(genes)]


def scores_of(pred, test, sets):
    """Mean Pearson r per gene set and retrieval top-5 from a predicted expression DataFrame."""
    out = {}
    for name, genes in sets.items():
        p, t = pred[list(genes)].to_numpy(), truth_of(test, genes)
        rs = [
            np.corrcoef(p[:, i], t[:, i])[0, 1] if p[:, i].std() > 0 and t[:, i].std() > 0 else 0.0
            for i in range(len(genes))
        ]
        out[name] = float(np.mean(rs))
    allg = pd.Index(sorted(set().union(*[set(g) for g in sets.values()])))
    p, t = pred[list(allg)].to_numpy(), truth_of(test, allg)
    mu, sd = t.mean(0), t.std(0) + 1e-6
    pz, tz = (p - mu) / sd, (t - mu) / sd
    pz /= np.linalg.norm(pz, axis=1, keepdims=True) + 1e-9
    tz /= np.linalg.norm(tz, axis=1, keepdims=True) + 1e-9
    sim = pz @ tz.T
    rank = (sim > np.diag(sim)[:, None]).sum(1) + 1
    out["top5"] = float((rank <= 5).mean())
    return out


#: Features of the sections, kept between runs (delete the folder after changing the model's feature code).
CACHE = Path("/tmp") / "sptl_histology_features"
CACHE.mkdir(exist_ok=True)


class MemoRegressor(sptl.models.HistologyRegressor):
    """The shipped model with its features memoised per section, scale and views (same computation)."""

    cache: dict = {}

    def features(self, adata, /, *, patches_key="patches", progress=True):
        p = self.params
        section = adata.uns.get("benchmark_section")
        if section is None:
            return super().features(adata, patches_key=patches_key, progress=progress)
        parts = []
        context = p["context"]
        for c in context:
            key = (section, p["encoder"], p["pretrained"], p["image_size"], c, p["views"])
            file = CACHE / ("_".join(map(str, key)) + ".npy")
            if key not in self.cache and file.exists():
                self.cache[key] = np.load(file)
            if key not in self.cache:
                p["context"] = [c]
                try:
                    self.cache[key] = super().features(adata, patches_key=patches_key, progress=progress)
                finally:
                    p["context"] = context
                np.save(file, self.cache[key])
            parts.append(self.cache[key])
        return np.hstack(parts)


def ridge_route(feature_fn, train, test, genes):
    from sklearn.linear_model import RidgeCV

    ftr = np.vstack([feature_fn(a) for a in train])
    fte = feature_fn(test)
    mu, sd = ftr.mean(0), ftr.std(0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    y = np.vstack([truth_of(a, genes) for a in train])
    m = RidgeCV(alphas=np.logspace(-1, 5, 25)).fit((ftr - mu) / sd, y)
    return pd.DataFrame(m.predict((fte - mu) / sd), index=test.obs_names, columns=list(genes))


_FEATS: dict = {}


def colour_feats(a):
    key = ("colour", a.uns["benchmark_section"])
    if key not in _FEATS:
        ds = sptl.pp.PatchDataset.from_adata(a)
        _FEATS[key] = colour_features(torch.stack([ds[i] for i in range(len(ds))]))
    return _FEATS[key]


def effnet_feats(a):
    key = ("effnet", a.uns["benchmark_section"])
    if key not in _FEATS:
        t = sptl.tl.embed_histology(a, encoder="efficientnet_lite0", pretrained="imagenet", progress=False, copy=True)
        _FEATS[key] = t.obsm["X_histology"]
    return _FEATS[key]


def clip_route(cfg, train, test, genes):
    model = SpatialCLIP(n_genes=1000, **cfg).fit(train, progress=False)
    ref = sc.concat(train, join="inner")
    t = test.copy()
    sptl.tl.predict_expression(t, ref, model=model, genes=list(genes), progress=False)
    pred = t.obsm["predicted_expression"]
    sptl.tl.retrieve(t, model=model, k=5, progress=False)
    return pred, float((t.obs["retrieval_rank"].to_numpy() <= 5).mean())


def main_real(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--finetune", action="store_true", help="also the slow fine-tuning route")
    parser.add_argument("--only", nargs="*", default=None, help="method name prefixes to run")
    parser.add_argument("--folds", nargs="*", default=None, help="held-out sections to run (e.g. C2 MOB2)")
    args = parser.parse_args(argv)
    sc.settings.verbosity = 0
    names = sorted({s for tr, te in REAL_FOLDS for s in [*tr, te]})
    data = {n: real_section(n) for n in names}
    sptl_default = {}
    methods = {
        "colour ridge": ("ridge", colour_feats),
        "EffNet-Lite0 + ridge (baseline)": ("ridge", effnet_feats),
        "sptl HistologyRegressor (defaults)": ("model", sptl_default),
        "  without reduced rank (rank=None)": ("model", {"rank": None}),
        "  without spatial smoothing (smooth=0)": ("model", {"smooth": 0.0}),
        "  without context (context=(1,))": ("model", {"context": (1.0,)}),
        "  without views (views=1)": ("model", {"views": 1}),
        "  without context, views, rank, smoothing": (
            "model",
            {"context": (1.0,), "views": 1, "rank": None, "smooth": 0.0},
        ),
        "SpatialCLIP, frozen EffNet-Lite0 (retrieval)": (
            "clip",
            {"image_encoder": "efficientnet_lite0", "pretrained": "imagenet", "freeze": "all"},
        ),
        "SpatialCLIP defaults, from scratch (retrieval)": ("clip", {}),
    }
    if args.finetune:
        methods["SpatialCLIP, fine-tune last block (retrieval)"] = (
            "clip",
            {
                "image_encoder": "efficientnet_lite0",
                "pretrained": "imagenet",
                "freeze": "backbone",
                "unfreeze_last": 1,
                "image_size": 112,
                "max_epochs": 10,
            },
        )
    if args.only:
        methods = {k: v for k, v in methods.items() if any(k.strip().startswith(o) for o in args.only)}
    folds = [f for f in REAL_FOLDS if not args.folds or f[1] in args.folds]
    rows = []
    for train_names, test_name in folds:
        train, test = [data[n] for n in train_names], data[test_name]
        sets = gene_sets(train)
        genes = pd.Index(sorted(set().union(*[set(g) for g in sets.values()])))
        genes = genes[genes.isin(test.var_names)]
        sets = {k: v[v.isin(genes)] for k, v in sets.items()}
        for name, (kind, spec) in methods.items():
            t0 = time.perf_counter()
            top5 = None
            if kind == "ridge":
                pred = ridge_route(spec, train, test, genes)
            elif kind == "model":
                model = MemoRegressor(genes=list(genes), **spec).fit(train, progress=False)
                pred = model.predict(test, progress=False)
            else:
                pred, top5 = clip_route(spec, train, test, genes)
            row = {
                "method": name,
                "test": test_name,
                **scores_of(pred, test, sets),
                "seconds": time.perf_counter() - t0,
            }
            if top5 is not None:
                row["top5"] = top5
            if kind == "model":
                row["smooth"] = model.history_["smooth"]
                row["rank"] = model.history_["rank"]
            rows.append(row)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    df = pd.DataFrame(rows)
    df["data"] = np.where(df["test"].str.startswith("MOB"), "MOB", "HER2ST")
    order = list(dict.fromkeys(df["method"]))
    table = (
        df.groupby(["method", "data"])
        .agg(
            variable=("variable", "mean"),
            expressed=("expressed", "mean"),
            HVG=("HVG", "mean"),
            top5=("top5", "mean"),
            seconds=("seconds", "mean"),
        )
        .unstack("data")
    )
    table = table.reindex(order)
    pd.set_option("display.width", 250)
    print()
    print(table.round(3).to_markdown())
    chance = {
        d: np.mean([5 / data[t].n_obs for _, t in folds if (t.startswith("MOB")) == (d == "MOB")])
        for d in ("HER2ST", "MOB")
    }
    print(f"retrieval chance (top-5): {chance}")


if __name__ == "__main__":
    import sys

    if "--synthetic" in sys.argv[1:]:
        main_synthetic(sys.argv[1:])
    else:
        main_real(sys.argv[1:])
