"""Multiple-instance learning on HER2ST: bags of 4x4 spots, "does this region hold invasive cancer?".

The six labelled HER2ST sections (patients A-F, one section each). A bag is a square of 4 x 4 array
positions of one section (``sptl.pp.tile_spots``; squares with fewer than 2 spots dropped); it is
positive ("cancer") when one of its spots carries the pathologist label ``invasive cancer``.
``--task connective`` asks the same of ``connective tissue`` instead (63 of the 192 bags positive,
every patient has both kinds): a second bag task with the same bags and features, used to check that
the defaults were not fitted to the first. Instance
features: expression PCA (10 components; scanpy: counts per 10k, log1p, 3000 highly variable genes
chosen across sections, scaled, PCA over all sections together, labels unused).

Folds: leave one patient out (six folds); every bag is predicted by a model that never saw its
patient. Scores:

- bag AUC / balanced accuracy of the out-of-fold bag predictions (192 bags, 40 without cancer),
- localisation AUC: over the spots of positive bags (``undetermined`` and unlabelled spots left
  out), how well a spot score separates the spots of the task's label (invasive cancer, connective
  tissue) from the others. ``attention`` uses the
  attention weight times the bag size (1 = uniform), ``evidence`` the spot's contribution to its
  bag's logit of the task's class times the bag size (``obsm['sptl_mil_evidence']``, Additive MIL:
  attention times the spot's own class evidence), ``instance`` the class probability the model
  gives the spot alone (a bag of one).

Methods (same folds, same features)

- ``sptl ABMIL``: :func:`sptl.tl.mil` (gated attention, defaults),
- ``mean pooling``: ``pooling="mean"`` (same network, mean of instance embeddings),
- ``max pooling``: ``pooling="max"`` (instance classifier, bag logit = max over instances),
  both with the settings of their earlier measurement (dropout 0.25, weight decay 1e-4),
- ``logreg on bag means``: scikit-learn logistic regression (class-balanced) on each bag's mean
  feature vector; its instance score is the same regression applied to each spot.

Each MIL method runs with seeds 0-4; the table gives mean and standard deviation over seeds.

Run: ``python benchmarks/mil.py [--task cancer|connective]`` (prints the load average and thread count)

``python benchmarks/mil.py --tiles`` instead measures :func:`sptl.pp.tile_image` on a whole-slide-sized
tiled TIFF (32,768 x 32,768 RGB, 3.2 GB of pixels, zlib-compressed 512 x 512 tiles; the bundled
Visium H&E upscaled 8x and repeated) written tile by tile: seconds and peak memory of a process that
only imports sptl and tiles it, against one that only imports sptl.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

import sptl

SEEDS = range(5)
#: bag task: positive bag label -> the spot label that makes a bag positive
TASKS = {"cancer": "invasive cancer", "connective": "connective tissue"}
POS = "cancer"  # the positive bag label of the task that runs (set in main)


def task_labels(adata: ad.AnnData, task: str) -> pd.Series:
    """``task`` if the spot's bag holds a spot labelled ``TASKS[task]``, else ``"no " + task``; NaN outside bags."""
    pos = (adata.obs["label"] == TASKS[task]).groupby(adata.obs["sptl_tile"], observed=True).transform("any")
    out = pd.Series(np.where(pos, task, f"no {task}"), index=adata.obs_names, dtype=object)
    out[adata.obs["sptl_tile"].isna().to_numpy()] = np.nan
    return out


def localisation(adata: ad.AnnData, score: np.ndarray) -> float:
    """AUC of ``score`` for spots of the task's label vs other spots, within positive bags."""
    lab = adata.obs["label"].astype(str)
    keep = (adata.obs["bag_label"] == POS).to_numpy() & ~lab.isin(["undetermined", "nan"]).to_numpy()
    return float(roc_auc_score((lab == TASKS[POS]).to_numpy()[keep], score[keep]))


#: mean / max pooling keep the settings they were measured with before issue 13 (ABMIL's old defaults:
#: dropout 0.25, weight decay 1e-4) so the baselines are not changed by the new attention defaults
BASELINE = {"dropout": 0.25, "weight_decay": 1e-4, "residual": False}


def run_mil(adata: ad.AnnData, pooling: str, seed: int) -> dict[str, float]:
    sptl.tl.mil(
        adata,
        bag_key="sptl_tile",
        label_key="bag_label",
        use_rep="X_pca",
        groups_key="patient",
        n_splits=None,
        pooling=pooling,
        model_kwargs=None if pooling == "attention" else BASELINE,
        seed=seed,
        progress=False,
    )
    res = adata.uns["sptl_mil"]
    size = adata.obs["sptl_tile"].map(adata.obs["sptl_tile"].value_counts()).to_numpy(float)
    att = adata.obs["sptl_mil_attention"].to_numpy() * size
    inst = adata.obsm["sptl_mil_instance_probabilities"][POS].to_numpy()
    return {
        "bag AUC": res["scores"]["auc"],
        "bag balanced accuracy": res["scores"]["balanced_accuracy"],
        "localisation AUC (attention)": localisation(adata, att) if pooling != "mean" else 0.5,
        "localisation AUC (evidence)": localisation(adata, adata.obsm["sptl_mil_evidence"][POS].to_numpy()),
        "localisation AUC (instance)": localisation(adata, inst),
    }


def run_logreg(adata: ad.AnnData) -> dict[str, float]:
    obs = adata.obs
    in_bag = obs["sptl_tile"].notna().to_numpy()
    bags = obs["sptl_tile"].astype(str).to_numpy()[in_bag]
    X = pd.DataFrame(adata.obsm["X_pca"][in_bag], index=bags).groupby(level=0).mean()
    y = obs.groupby("sptl_tile", observed=True)["bag_label"].first()
    y.index = y.index.astype(str)
    y = y.reindex(X.index)
    patient = obs.groupby("sptl_tile", observed=True)["patient"].first().astype(str)
    patient.index = patient.index.astype(str)
    patient = patient.reindex(X.index)
    proba = pd.Series(np.nan, index=X.index)
    inst = np.full(adata.n_obs, np.nan)
    for p in patient.unique():
        test = (patient == p).to_numpy()
        clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit(X[~test], y[~test] == POS)
        proba[test] = clf.predict_proba(X[test])[:, 1]
        spots = (obs["patient"].astype(str) == p).to_numpy()
        inst[spots] = clf.predict_proba(adata.obsm["X_pca"][spots])[:, 1]
    truth = (y == POS).to_numpy()
    return {
        "bag AUC": float(roc_auc_score(truth, proba)),
        "bag balanced accuracy": float(balanced_accuracy_score(truth, proba.to_numpy() > 0.5)),
        "localisation AUC (attention)": np.nan,
        "localisation AUC (evidence)": np.nan,
        "localisation AUC (instance)": localisation(adata, inst),
    }


def main(task: str = "cancer") -> pd.DataFrame:
    global POS
    POS = task
    sc.settings.verbosity = 0
    print(f"task {task!r}; load average {os.getloadavg()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    adata = sptl.datasets.her2st_bags()
    adata.obs["bag_label"] = task_labels(adata, task)
    per_bag = adata.obs.groupby("sptl_tile", observed=True)["bag_label"].first()
    print(f"{adata.n_obs} spots, {len(per_bag)} bags: {per_bag.value_counts().to_dict()}")
    rows = []
    for name, pooling in (
        ("sptl ABMIL (attention, defaults)", "attention"),
        ("mean pooling", "mean"),
        ("max pooling", "max"),
    ):
        runs, seconds = [], []
        for seed in SEEDS:
            start = time.perf_counter()
            runs.append(run_mil(adata, pooling, seed))
            seconds.append(time.perf_counter() - start)
        df = pd.DataFrame(runs)
        row = {"method": name}
        for col in df.columns:
            row[col] = f"{df[col].mean():.3f} ± {df[col].std():.3f}"
        row["seconds (6 folds)"] = f"{np.mean(seconds):.1f}"
        rows.append(row)
        print(name, df.round(3).to_dict("list"), flush=True)
    start = time.perf_counter()
    lr = run_logreg(adata)
    rows.append(
        {"method": "logreg on bag means (sklearn)"}
        | {k: "n/a" if np.isnan(v) else f"{v:.3f}" for k, v in lr.items()}
        | {"seconds (6 folds)": f"{time.perf_counter() - start:.1f}"}
    )
    table = pd.DataFrame(rows).set_index("method")
    print(table.to_markdown())
    print(f"load average after: {os.getloadavg()}")
    return table


SIDE = 32768
TILE = 512
PROBE = """
import resource, sys, time
import sptl
start = time.perf_counter()
if len(sys.argv) > 1:
    tiles = sptl.pp.tile_image(sys.argv[1], tile_size=256)
    print(tiles.n_obs, tiles.uns["patches"]["params"]["reader"])
print("seconds", time.perf_counter() - start)
print("peak_gb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)
"""


def write_big_tiff(path: Path) -> None:
    import tifffile

    he = sptl.datasets.visium_fixture().uns["spatial"]["custom"]["images"]["lowres"]

    def tiles():
        ys, xs = np.mgrid[0:TILE, 0:TILE]
        for ty in range(0, SIDE, TILE):
            for tx in range(0, SIDE, TILE):
                yield he[((ys + ty) // 8) % he.shape[0], ((xs + tx) // 8) % he.shape[1]]

    tifffile.imwrite(
        path,
        tiles(),
        shape=(SIDE, SIDE, 3),
        dtype=np.uint8,
        tile=(TILE, TILE),
        compression="zlib",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )


def tile_memory() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.tif"
        start = time.perf_counter()
        write_big_tiff(path)
        print(f"wrote {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - start:.0f} s")
        for args in ([], [str(path)]):
            out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
            print("import sptl only" if not args else "import sptl + tile_image", out.stdout.strip().splitlines())


if __name__ == "__main__":
    if "--tiles" in sys.argv:
        tile_memory()
    else:
        main(sys.argv[sys.argv.index("--task") + 1] if "--task" in sys.argv else "cancer")
