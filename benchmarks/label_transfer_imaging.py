"""Cell-type transfer on single-cell imaging panels: sptl side by side with peers.

Each task transfers labels from a source section (or half section) to a target, in both directions:

- ``a``: MERFISH mouse hypothalamus (:func:`sptl.datasets.merfish_hypothalamus`, 161 genes), ``Cell_class``
  (15 cell classes), bregma 0.26 -> 0.21 and 0.21 -> 0.26. Source cells labelled ``Ambiguous`` are not
  used for training by any method (sptl: ``exclude=["Ambiguous"]``);
- ``b``: the dissociated-reference variant of ``a``: the source has no coordinates
  (``del source.obsm["spatial"]``), as a scRNA-seq atlas would;
- ``c``: the many-class variant: MERFISH neurons only (cells with a ``Neuron_cluster_ID``), label =
  ``Neuron_cluster_ID`` (61 clusters, many rare), both directions;
- ``d``: a second panel, with integer counts: mouse cortex smFISH (:func:`sptl.datasets.mouse_cortex_smfish`,
  22 genes, label ``cluster``, 6 clusters) cut into two halves at the median x and at the median y, each half
  the source of the other (4 transfers).

Scores are computed on the target cells whose true label is known and not ``Ambiguous`` (classes the source
lacks included: no method can predict them). Macro-F1 averages the per-class F1 over the true classes present
(:func:`sptl.metrics.label_scores`). Seconds are wall time per transfer, preprocessing included (for
Tangram also starting its venv's python and passing the data as h5ad files).

Methods (the name prefixes select them with ``--only``)
- ``sptl knn`` / ``sptl gnn``: :func:`sptl.tl.transfer_labels` with ``method="knn"`` / ``"gnn"`` and its
  defaults (``progress=False``); ``--sptl-kwargs`` adds keyword arguments as JSON, e.g.
  ``'{"min_shared_genes": 10}'``. A failure (such as a refused small panel) is reported as a failure row.
- peers, each on all shared genes except the ``Blank_*`` control barcodes (which sptl ignores too), each
  with two preprocessings, reported as separate rows: ``normalize_total`` (scanpy's default target, the
  median total of each section) + ``log1p`` (``nt+log1p``, scanpy's standard), and ``log1p`` only
  (``log1p``: the MERFISH values are volume-normalised already). ``--preps`` picks them (``nt1e4+log1p``:
  ``target_sum=1e4``, the other common choice):

  - ``logreg``: scikit-learn logistic regression, ``class_weight="balanced"``, on the log-expression
    z-scored with the source's means and standard deviations;
  - ``knn-pca``: scanpy-style kNN classifier: z-scored as above, PCA fitted on the source
    (30 components, or one fewer than the genes), 15 nearest source cells vote;
  - ``ingest``: :func:`scanpy.tl.ingest` (PCA, 30 components or fewer, and scanpy's 15-neighbour graph of the
    source; pynndescent 0.7.0 leaves ``n_search_trees`` unset, set to 1 here as in ``label_transfer.py``);
  - ``tangram``: Tangram (``tangram-sc``) in clusters mode (one profile per source class,
    ``tg.map_cells_to_space(mode="clusters")``, 1000 epochs) on all shared genes, then
    ``tg.project_cell_annotations`` and the argmax per target cell of the class's mapped mass times its
    share of source cells (``--readout cells`` of ``peers/tangram_transfer.py``; ``tangram ... mass`` rows
    take the plain argmax). Density prior ``uniform`` (one cell per target observation) and
    ``rna_count_based``, as separate rows. Runs in its own venv: build it with
    ``bash benchmarks/peers/setup_tangram.sh`` (``.venv-tangram``).

Run (from the repository root, main venv; Tangram rows need ``.venv-tangram``)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/label_transfer_imaging.py
    ... --tasks a d --only "sptl knn" logreg            # a subset of tasks and methods
    ... --sptl-kwargs '{"min_shared_genes": 10}'       # extra transfer_labels arguments

``--ceiling`` adds a reference row that is not a transfer: logistic regression trained on the source plus 4/5 of the
target's own labels, each target fold predicted by the model that did not see it (:func:`ceiling`). It shows how
much room the labels and genes leave above the peers.

It prints, per task, method | mean macro-F1 | mean accuracy | seconds per transfer | failures, per-class F1
tables for tasks ``a`` and ``b`` (mean over the two directions), and a summary of mean macro-F1 per task
and method with the best peer per task marked; ``--csv`` writes the per-transfer rows.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy import sparse
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

import sptl
from sptl.metrics import label_scores

sys.path.insert(0, str(Path(__file__).parent))
from label_transfer import _patch_pynndescent

AMBIGUOUS = "Ambiguous"
CONTROL = re.compile(r"^blank", re.IGNORECASE)
#: Preprocessings of the peers: name -> normalize_total target (None: the median total; False: none).
PREPS: dict[str, float | bool | None] = {"nt+log1p": None, "log1p": False, "nt1e4+log1p": 1e4}
DEFAULT_PREPS = ("nt+log1p", "log1p")


# ----------------------------------------------------------------------------------------------- tasks


@dataclass
class Task:
    """Transfers sharing a label: (name, source, target) triples."""

    key: str
    title: str
    label_key: str
    exclude: list[str]
    pairs: list[tuple[str, AnnData, AnnData]] = field(default_factory=list)


def _merfish(section: str, label_key: str, *, neurons: bool = False) -> AnnData:
    adata = sptl.datasets.merfish_hypothalamus(section)
    if neurons:
        adata = adata[adata.obs["Neuron_cluster_ID"].notna().to_numpy()].copy()
    adata.obs[label_key] = adata.obs[label_key].cat.remove_unused_categories()
    return adata


def _no_coordinates(adata: AnnData) -> AnnData:
    adata = adata.copy()
    del adata.obsm["spatial"]
    return adata


def _halves(adata: AnnData, axis: int) -> tuple[AnnData, AnnData]:
    xy = adata.obsm["spatial"][:, axis]
    low = xy <= np.median(xy)
    return adata[low].copy(), adata[~low].copy()


def build_tasks(keys: list[str]) -> list[Task]:
    """The tasks named in ``keys`` (``a``, ``b``, ``c``, ``d``)."""
    sections = list(sptl.datasets.MERFISH_SECTIONS)  # "0.26", "0.21"
    tasks = []
    if "a" in keys or "b" in keys:
        cells = {s: _merfish(s, "Cell_class") for s in sections}
    if "a" in keys:
        t = Task("a", "MERFISH Cell_class, section -> section", "Cell_class", [AMBIGUOUS])
        t.pairs = [(f"{s}->{r}", cells[s], cells[r]) for s in sections for r in sections if s != r]
        tasks.append(t)
    if "b" in keys:
        t = Task("b", "MERFISH Cell_class, source without coordinates", "Cell_class", [AMBIGUOUS])
        t.pairs = [(f"{s}->{r}", _no_coordinates(cells[s]), cells[r]) for s in sections for r in sections if s != r]
        tasks.append(t)
    if "c" in keys:
        neurons = {s: _merfish(s, "Neuron_cluster_ID", neurons=True) for s in sections}
        t = Task("c", "MERFISH neurons, Neuron_cluster_ID", "Neuron_cluster_ID", [])
        t.pairs = [(f"{s}->{r}", neurons[s], neurons[r]) for s in sections for r in sections if s != r]
        tasks.append(t)
    if "d" in keys:
        smfish = sptl.datasets.mouse_cortex_smfish()
        t = Task("d", "mouse cortex smFISH cluster, half -> half", "cluster", [])
        for axis, name in ((0, "x"), (1, "y")):
            low, high = _halves(smfish, axis)
            t.pairs += [(f"{name}<=med->{name}>med", low, high), (f"{name}>med->{name}<=med", high, low)]
        tasks.append(t)
    return tasks


# --------------------------------------------------------------------------------------------- methods


def sptl_transfer(src: AnnData, tgt: AnnData, label_key: str, exclude: list[str], *, method: str, **kw) -> np.ndarray:
    out = sptl.tl.transfer_labels(
        src, tgt, label_key=label_key, exclude=exclude, method=method, progress=False, copy=True, **kw
    )
    return out.obs["sptl_label"].astype(str).to_numpy()


def _training(src: AnnData, tgt: AnnData, label_key: str, exclude: list[str]) -> tuple[AnnData, AnnData]:
    """Labelled, non-excluded source cells and the target, on the shared genes less the control barcodes."""
    genes = [g for g in src.var_names.intersection(tgt.var_names) if not CONTROL.match(g)]
    labels = src.obs[label_key].astype("string")
    keep = (labels.notna() & ~labels.isin(exclude)).to_numpy()
    s = AnnData(X=sparse.csr_matrix(src[keep, genes].X, dtype=np.float32), obs=src.obs.loc[keep, [label_key]].copy())
    s.var_names = pd.Index(genes)
    s.obs[label_key] = s.obs[label_key].astype(str).astype("category")
    t = AnnData(X=sparse.csr_matrix(tgt[:, genes].X, dtype=np.float32), obs=pd.DataFrame(index=tgt.obs_names.copy()))
    t.var_names = pd.Index(genes)
    return s, t


def _log(adata: AnnData, prep: str) -> AnnData:
    """``normalize_total`` (per ``PREPS[prep]``) and ``log1p`` of a copy."""
    adata = adata.copy()
    target = PREPS[prep]
    if target is not False:
        sc.pp.normalize_total(adata, target_sum=target)
    sc.pp.log1p(adata)
    return adata


def _zscored(src: AnnData, tgt: AnnData, label_key: str, exclude: list[str], prep: str):
    s, t = _training(src, tgt, label_key, exclude)
    s, t = _log(s, prep), _log(t, prep)
    scaler = StandardScaler().fit(s.X.toarray())
    return scaler.transform(s.X.toarray()), scaler.transform(t.X.toarray()), s.obs[label_key].to_numpy()


def logreg(src, tgt, label_key, exclude, *, prep: str) -> np.ndarray:
    Xs, Xt, y = _zscored(src, tgt, label_key, exclude, prep)
    return LogisticRegression(max_iter=2000, class_weight="balanced").fit(Xs, y).predict(Xt)


def knn_pca(src, tgt, label_key, exclude, *, prep: str, n_comps: int = 30, k: int = 15) -> np.ndarray:
    Xs, Xt, y = _zscored(src, tgt, label_key, exclude, prep)
    pca = PCA(n_components=min(n_comps, Xs.shape[1] - 1), random_state=0).fit(Xs)
    return KNeighborsClassifier(n_neighbors=k).fit(pca.transform(Xs), y).predict(pca.transform(Xt))


def ingest(src, tgt, label_key, exclude, *, prep: str, n_comps: int = 30) -> np.ndarray:
    import pynndescent

    _patch_pynndescent(pynndescent)
    s, t = _training(src, tgt, label_key, exclude)
    s, t = _log(s, prep), _log(t, prep)
    sc.pp.pca(s, n_comps=min(n_comps, s.n_vars - 1))
    sc.pp.neighbors(s, n_neighbors=15)
    sc.tl.ingest(t, s, obs=label_key, embedding_method="pca")
    return t.obs[label_key].astype(str).to_numpy()


def tangram(src, tgt, label_key, exclude, *, prep: str, prior: str, readout: str = "cells") -> np.ndarray:
    from peers.tangram import tangram_labels

    s, t = _training(src, tgt, label_key, exclude)
    normalize = {"nt+log1p": "median", "log1p": "none", "nt1e4+log1p": "1e4"}[prep]
    return tangram_labels(
        s,
        t,
        label_key=label_key,
        exclude=(),
        mode="clusters",
        density_prior=prior,
        genes="all",
        normalize=normalize,
        readout=readout,
        extra_args=["--epochs", "1000"],
    )


def ceiling(src, tgt, label_key, exclude, *, prep: str, folds: int = 5) -> np.ndarray:
    """Not a transfer: logistic regression trained on the source AND 4/5 of the target's own labels.

    Each fold of the target is predicted by a model that saw the source plus the other folds' true labels
    (z-scored on that training set). It estimates how far a linear classifier on these genes can go when the
    target's labels are known: a reference for the margins a transfer method could reach, not a peer.
    """
    from sklearn.model_selection import KFold

    s, t = _training(src, tgt, label_key, exclude)
    Xs, Xt = _log(s, prep).X.toarray(), _log(t, prep).X.toarray()
    ys = s.obs[label_key].to_numpy()
    truth = tgt.obs[label_key].astype("string")
    known = (truth.notna() & ~truth.isin([AMBIGUOUS, *exclude])).to_numpy()
    pred = np.empty(tgt.n_obs, dtype=object)
    for train, test in KFold(folds, shuffle=True, random_state=0).split(Xt):
        train = train[known[train]]
        X = np.vstack([Xs, Xt[train]])
        y = np.concatenate([ys, truth.to_numpy()[train].astype(str)])
        scaler = StandardScaler().fit(X)
        model = LogisticRegression(max_iter=2000, class_weight="balanced").fit(scaler.transform(X), y)
        pred[test] = model.predict(scaler.transform(Xt[test]))
    return pred


Method = Callable[[AnnData, AnnData, str, list[str]], np.ndarray]


def methods(
    preps: list[str], sptl_kwargs: dict, tangram_mass: bool = False, with_ceiling: bool = False
) -> dict[str, Method]:
    """Every method row, in print order."""
    out: dict[str, Method] = {
        "sptl knn": lambda s, t, k, e: sptl_transfer(s, t, k, e, method="knn", **sptl_kwargs),
        "sptl gnn": lambda s, t, k, e: sptl_transfer(s, t, k, e, method="gnn", **sptl_kwargs),
    }
    for p in preps:
        out[f"logreg, {p}"] = lambda s, t, k, e, p=p: logreg(s, t, k, e, prep=p)
    for p in preps:
        out[f"knn-pca, {p}"] = lambda s, t, k, e, p=p: knn_pca(s, t, k, e, prep=p)
    for p in preps:
        out[f"ingest, {p}"] = lambda s, t, k, e, p=p: ingest(s, t, k, e, prep=p)
    readouts = ["cells", "mass"] if tangram_mass else ["cells"]
    for r in readouts:
        for prior in ("uniform", "rna_count_based"):
            for p in preps:
                name = f"tangram {prior}{'' if r == 'cells' else ' mass'}, {p}"
                out[name] = lambda s, t, k, e, p=p, prior=prior, r=r: tangram(
                    s, t, k, e, prep=p, prior=prior, readout=r
                )
    if with_ceiling:
        for p in preps:
            out[f"(ceiling) logreg + 4/5 target labels, {p}"] = lambda s, t, k, e, p=p: ceiling(s, t, k, e, prep=p)
    return out


# --------------------------------------------------------------------------------------------- scoring


def scored(truth: pd.Series, exclude: list[str]) -> np.ndarray:
    """Target cells scored: true label known and not ``Ambiguous`` (nor another excluded label)."""
    t = truth.astype("string")
    return (t.notna() & ~t.isin([AMBIGUOUS, *exclude])).to_numpy()


def per_class_f1(truth: pd.Series, pred: np.ndarray, exclude: list[str]) -> pd.Series:
    keep = scored(truth, exclude)
    t, p = truth[keep].astype(str).to_numpy(), np.asarray(pred, dtype=object)[keep].astype(str)
    present = sorted(set(t))
    return pd.Series(f1_score(t, p, labels=present, average=None, zero_division=0), index=present)


def run_task(task: Task, fns: dict[str, Method]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-transfer rows, and per-class F1 (one column per method and transfer)."""
    rows, per_class = [], {}
    for pair, src, tgt in task.pairs:
        truth = tgt.obs[task.label_key]
        keep = scored(truth, task.exclude)
        src_classes = set(src.obs[task.label_key].dropna().astype(str)) - {AMBIGUOUS, *task.exclude}
        missing = sorted(set(truth[keep].astype(str)) - src_classes)
        print(
            f"[{task.key}] {pair}: {src.n_obs} source cells, {keep.sum()} target cells scored, "
            f"{truth[keep].nunique()} classes; {len(missing)} absent from the source "
            f"({int(truth[keep].astype(str).isin(missing).sum())} cells)",
            flush=True,
        )
        for name, fn in fns.items():
            start = time.perf_counter()
            try:
                pred = fn(src, tgt, task.label_key, task.exclude)
                s = label_scores(truth, pred, exclude=[AMBIGUOUS, *task.exclude])
                per_class[(name, pair)] = per_class_f1(truth, pred, task.exclude)
                err = ""
            except Exception as e:  # report methods that fail instead of hiding them
                s, err = {"accuracy": np.nan, "macro_f1": np.nan}, f"{type(e).__name__}: {e}".replace("\n", " ")[:160]
            seconds = time.perf_counter() - start
            rows.append({"task": task.key, "pair": pair, "method": name, **s, "seconds": seconds, "error": err})
            print(f"    {name:<34} macro-F1 {s['macro_f1']:.3f}  acc {s['accuracy']:.3f}  {seconds:6.1f} s {err}")
    return pd.DataFrame(rows), pd.DataFrame(per_class)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    return df.groupby("method", sort=False).agg(
        mean_macro_f1=("macro_f1", "mean"),
        mean_accuracy=("accuracy", "mean"),
        seconds=("seconds", "mean"),
        failures=("error", lambda e: int((e != "").sum())),
    )


def class_table(per_class: pd.DataFrame, task: Task) -> pd.DataFrame:
    """Per-class F1, mean over the transfers (classes as rows, methods as columns), with the cell counts."""
    table = per_class.T.groupby(level=0, sort=False).mean().T
    n = pd.concat([t.obs[task.label_key][scored(t.obs[task.label_key], task.exclude)] for _, _, t in task.pairs])
    table.insert(0, "n cells", n.astype(str).value_counts().reindex(table.index).fillna(0).astype(int))
    return table.sort_values("n cells", ascending=False)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d"])
    parser.add_argument("--only", nargs="*", help="run only the methods whose name starts with one of these")
    parser.add_argument("--preps", nargs="*", default=list(DEFAULT_PREPS), choices=list(PREPS))
    parser.add_argument("--sptl-kwargs", default="{}", help="JSON dict of extra transfer_labels arguments")
    parser.add_argument("--tangram-mass", action="store_true", help="also the plain-argmax Tangram readout")
    parser.add_argument(
        "--ceiling", action="store_true", help="also the reference row trained with 4/5 of the target's labels"
    )
    parser.add_argument("--csv", help="write the per-transfer rows here")
    args = parser.parse_args(argv)

    print(f"load average at start: {os.getloadavg()}")
    sc.settings.verbosity = 0
    fns = methods(args.preps, json.loads(args.sptl_kwargs), args.tangram_mass, args.ceiling)
    fns = {k: v for k, v in fns.items() if not args.only or any(k.startswith(o) for o in args.only)}
    if args.sptl_kwargs != "{}":
        print(f"sptl keyword arguments: {args.sptl_kwargs}")
    tasks = build_tasks(args.tasks)
    if any(k.startswith("ingest") for k in fns):  # compile pynndescent's numba code once, untimed
        _, src, tgt = tasks[0].pairs[0]
        ingest(src[:500].copy(), tgt[:500].copy(), tasks[0].label_key, tasks[0].exclude, prep=args.preps[0])
    results, classes = [], {}
    for task in tasks:
        df, per_class = run_task(task, fns)
        results.append(df)
        summary = summarise(df)
        print(f"\n### ({task.key}) {task.title}: {len(task.pairs)} transfers\n")
        print(summary.round(3).to_markdown())
        if task.key in ("a", "b") and not per_class.empty:
            classes[task.key] = class_table(per_class, task)
            print(f"\nper-class F1, ({task.key}), mean over {len(task.pairs)} transfers\n")
            print(classes[task.key].round(2).to_markdown())
        failed = df[df["error"] != ""]
        if len(failed):
            print("\nfailures:\n" + failed[["pair", "method", "error"]].to_string(index=False))
        print(flush=True)
    df = pd.concat(results, ignore_index=True)
    table = df.pivot_table(index="method", columns="task", values="macro_f1", aggfunc="mean", sort=False)
    marked = table.round(3).astype(str)
    peers = [m for m in table.index if not m.startswith(("sptl", "(ceiling)"))]
    for task in table.columns:
        if peers and table.loc[peers, task].notna().any():
            best = table.loc[peers, task].idxmax()
            marked.loc[best, task] += " *"
    print("### summary: mean macro-F1 per task (* = best peer)\n")
    print(marked.to_markdown())
    print(f"\nload average at end: {os.getloadavg()}")
    if args.csv:
        df.to_csv(args.csv, index=False)
    return df


if __name__ == "__main__":
    main()
