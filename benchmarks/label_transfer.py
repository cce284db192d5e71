"""Label transfer across HER2ST patients: sptl knn side by side with simple peers.

Every ordered pair of labelled HER2ST sections from different patients (30 pairs). Scores are
computed on the target spots whose pathologist label the source has, ``undetermined`` excluded.

Methods
- ``sptl knn``: :func:`sptl.tl.transfer_labels` (default: label spreading over the spatial graph,
  ``smooth="auto"``, which is 0.8 on every labelled HER2ST section: their label coherence is 0.60-0.83)
- ``sptl knn (no smoothing)``: same with ``smooth=0``
- ``sptl gnn``: ``method="gnn"`` (GAT over the spatial graph), default (DANN + self-training on
  pseudo-labels of a knn teacher spread over the target graph, label spreading ``"auto"``), self-training
  only, DANN only, without adaptation, and without adaptation or spreading
- ``tangram``: Tangram (``tangram-sc``) run in its own venv (``benchmarks/peers/setup_tangram.sh``),
  source spots mapped onto target spots and labels projected
- ``logreg``: scikit-learn logistic regression (class-balanced) on the same features sptl uses
  (source HVGs, per-section z-scores, joint PCA)
- ``scanpy ingest``: :func:`scanpy.tl.ingest` on log-normalised shared genes (PCA + kNN of scanpy);
  pynndescent 0.7.0 leaves ``n_search_trees`` unset, which crashes ingest, so it is set to 1 here.

Run: ``python benchmarks/label_transfer.py`` (all methods) or, e.g.,
``python benchmarks/label_transfer.py --only "sptl knn" "scanpy ingest"`` (a subset, by name prefix).
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.linear_model import LogisticRegression

import sptl
from sptl.datasets import HER2ST_LABELLED

sys.path.insert(0, str(Path(__file__).parent))
from sptl.metrics import label_scores

EXCL = ["undetermined"]


def sptl_transfer(src, tgt, **kw):
    tgt = tgt.copy()
    sptl.tl.transfer_labels(src, tgt, label_key="label", exclude=EXCL, progress=False, **kw)
    return tgt.obs["sptl_label"].astype(str).to_numpy()


def logreg(src, tgt):
    model = sptl.models.KNNTransfer().fit(src, label_key="label", target=tgt, exclude=EXCL, progress=False)
    lab = src.obs["label"].astype(str)
    keep = ~lab.isin([*EXCL, "nan"])
    clf = LogisticRegression(max_iter=2000, class_weight="balanced")
    clf.fit(model.transform(src)[keep.to_numpy()], lab[keep])
    return clf.predict(model.transform(tgt))


def ingest(src, tgt):
    import pynndescent

    _patch_pynndescent(pynndescent)
    genes = src.var_names.intersection(tgt.var_names)
    s, t = src[:, genes].copy(), tgt[:, genes].copy()
    s = s[~s.obs["label"].astype(str).isin([*EXCL, "nan"])].copy()
    for a in (s, t):
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
    sc.pp.highly_variable_genes(s, n_top_genes=3000)
    s, t = s[:, s.var["highly_variable"]].copy(), t[:, s.var["highly_variable"]].copy()
    sc.pp.pca(s, n_comps=30)
    sc.pp.neighbors(s)
    s.obs["label"] = s.obs["label"].astype(str).astype("category")
    sc.tl.ingest(t, s, obs="label", embedding_method="pca")
    return t.obs["label"].astype(str).to_numpy()


def _patch_pynndescent(pynndescent) -> None:
    """pynndescent 0.7.0 leaves ``NNDescent.n_search_trees`` as None, which scanpy's ingest multiplies."""
    cls = pynndescent.NNDescent
    if getattr(cls, "_sptl_patched", False):
        return
    init = cls.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if getattr(self, "n_search_trees", None) is None:
            self.n_search_trees = 1

    cls.__init__ = patched
    cls._sptl_patched = True


def tangram(src, tgt):
    from peers.tangram import tangram_labels

    return tangram_labels(src, tgt, label_key="label", exclude=tuple(EXCL))


METHODS = {
    "sptl knn": sptl_transfer,
    "sptl knn (no smoothing)": lambda s, t: sptl_transfer(s, t, smooth=0.0),
    "sptl gnn (default: dann + self-training)": lambda s, t: sptl_transfer(s, t, method="gnn"),
    "sptl gnn, self-training only": lambda s, t: sptl_transfer(s, t, method="gnn", adaptation="self_training"),
    "sptl gnn, dann only": lambda s, t: sptl_transfer(s, t, method="gnn", adaptation="dann"),
    "sptl gnn, no adaptation": lambda s, t: sptl_transfer(s, t, method="gnn", adaptation=None),
    "sptl gnn, no adaptation, no smoothing": lambda s, t: sptl_transfer(
        s, t, method="gnn", adaptation=None, smooth=0.0
    ),
    "tangram (own venv)": tangram,
    "logreg (sptl features)": logreg,
    "scanpy ingest": ingest,
}


def main(only: list[str] | None = None) -> pd.DataFrame:
    sc.settings.verbosity = 0
    methods = {k: v for k, v in METHODS.items() if not only or any(k.startswith(o) for o in only)}
    data = {s: sptl.datasets.her2st(s) for s in HER2ST_LABELLED}
    rows = []
    for a, b in itertools.permutations(HER2ST_LABELLED, 2):
        classes = sorted(set(data[a].obs["label"].dropna().astype(str)) - set(EXCL))
        for name, fn in methods.items():
            start = time.perf_counter()
            try:
                pred = fn(data[a], data[b])
                s = label_scores(data[b].obs["label"], pred, labels=classes)
                err = ""
            except Exception as e:  # report peers that fail instead of hiding them
                s, err = {"accuracy": np.nan, "macro_f1": np.nan}, f"{type(e).__name__}: {e}"[:80]
            rows.append(
                {
                    "pair": f"{a}->{b}",
                    "method": name,
                    **s,
                    "seconds": time.perf_counter() - start,
                    "error": err,
                }
            )
    df = pd.DataFrame(rows)
    summary = df.groupby("method", sort=False).agg(
        mean_accuracy=("accuracy", "mean"),
        median_accuracy=("accuracy", "median"),
        mean_macro_f1=("macro_f1", "mean"),
        median_macro_f1=("macro_f1", "median"),
        mean_seconds=("seconds", "mean"),
        failures=("error", lambda e: int((e != "").sum())),
    )
    print(f"HER2ST label transfer, {df['pair'].nunique()} ordered cross-patient pairs")
    print(summary.round(3).to_markdown() if _has_tabulate() else summary.round(3).to_string())
    failed = df[df["error"] != ""]
    if len(failed):
        print("\nfailures:\n" + failed[["pair", "method", "error"]].to_string(index=False))
    return df


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only the methods whose name starts with one of these")
    main(parser.parse_args().only)
