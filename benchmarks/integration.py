"""Batch integration of HER2ST sections: sptl.tl.integrate side by side with Harmony, ComBat and no correction.

Settings
- ``labelled``: the six pathologist-labelled sections A1-F1 (six patients) as batches; labels are
  the pathologist regions (``undetermined`` left out of the scores).
- ``patient B``: the six consecutive sections B1-B6 of one patient as batches; labels are the study's
  expression clusters (``obs['cluster']``).

Methods (all end in an embedding scored the same way)
- ``none``: log-normalised counts, 2000 highly variable genes, scaled over all spots, 50-PC PCA
- ``sptl z-score + PCA``: the features sptl's methods start from (genes z-scored within each section)
- ``sptl mmd`` / ``sptl dann`` / ``sptl ot``: :func:`sptl.tl.integrate` with that ``method``
- ``harmony``: ``harmonypy`` 2.1.0 on the ``none`` PCA
- ``combat``: :func:`scanpy.pp.combat` on the log-normalised HVGs, then scaling and PCA

Scores: batch mixing (normalised iLISI over 30 neighbours, :func:`sptl.metrics.batch_mixing`, higher
= better mixed) and label conservation (ARI of k-means clusters vs labels, rescaled silhouette of the
labels, :func:`sptl.metrics.label_conservation`), and seconds.

Run: ``OMP_NUM_THREADS=1 python benchmarks/integration.py``
"""

from __future__ import annotations

import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

import sptl
from sptl.metrics import batch_mixing, label_conservation


def load(setting: str) -> tuple[ad.AnnData, str]:
    if setting == "labelled":
        sections, key = sptl.datasets.HER2ST_LABELLED, "label"
    else:
        sections, key = [f"B{i}" for i in range(1, 7)], "cluster"
    adata = ad.concat([sptl.datasets.her2st(s) for s in sections], label="batch", keys=list(sections), join="inner")
    adata.obs_names_make_unique()
    truth = adata.obs[key].astype(object)
    adata.obs["truth"] = truth.where(truth != "undetermined", None)
    return adata, key


def baseline(adata: ad.AnnData, combat: bool = False) -> np.ndarray:
    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=2000, flavor="seurat", batch_key="batch")
    a = a[:, a.var["highly_variable"]].copy()
    if combat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.pp.combat(a, key="batch")
    sc.pp.scale(a, max_value=10)
    sc.pp.pca(a, n_comps=50, random_state=0)
    return a.obsm["X_pca"]


def harmony(adata: ad.AnnData) -> np.ndarray:
    import harmonypy

    pcs = baseline(adata)
    ho = harmonypy.run_harmony(pcs, adata.obs[["batch"]], ["batch"], verbose=False, random_state=0)
    Z = np.asarray(ho.Z_corr)
    return Z.T if Z.shape[0] != len(pcs) else Z


def zscore_pca(adata: ad.AnnData) -> np.ndarray:
    from sptl.pp._expression import fit_pca_space

    codes, _ = pd.factorize(adata.obs["batch"])
    views = [adata[codes == k] for k in range(codes.max() + 1)]
    _, _, feats, _ = fit_pca_space(
        views, [v.X for v in views], genes=adata.var_names, n_sources=len(views), n_genes=2000, n_comps=50, seed=0
    )
    Z = np.zeros((adata.n_obs, feats[0].shape[1]), dtype=np.float32)
    for k, f in enumerate(feats):
        Z[codes == k] = f
    return Z


def sptl_method(method: str):
    def run(adata: ad.AnnData) -> np.ndarray:
        a = adata.copy()
        sptl.tl.integrate(a, batch_key="batch", method=method, progress=False)
        return a.obsm["X_sptl_integrated"]

    return run


METHODS = {
    "none": baseline,
    "combat": lambda a: baseline(a, combat=True),
    "harmony": harmony,
    "sptl z-score + PCA": zscore_pca,
    "sptl mmd": sptl_method("mmd"),
    "sptl dann": sptl_method("dann"),
    "sptl ot": sptl_method("ot"),
}


def main() -> None:
    rows = []
    for setting in ("labelled", "patient B"):
        adata, _ = load(setting)
        for name, fn in METHODS.items():
            start = time.perf_counter()
            try:
                Z = fn(adata)
            except Exception as e:  # a crashing peer is reported, not hidden
                rows.append({"setting": setting, "method": name, "error": f"{type(e).__name__}: {e}"[:200]})
                continue
            seconds = time.perf_counter() - start
            cons = label_conservation(Z, adata.obs["truth"])
            row = {
                "setting": setting,
                "method": name,
                "iLISI": batch_mixing(Z, adata.obs["batch"]),
                "ARI": cons["ari"],
                "silhouette": cons["silhouette"],
                "seconds": seconds,
            }
            rows.append(row)
            print(row, flush=True)
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(df.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
