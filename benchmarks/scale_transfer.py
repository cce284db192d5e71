"""Scale of relational (GNN) label transfer: synthetic sections of 10k, 100k and 1M cells.

Each size runs in its own subprocess so that peak memory (max RSS) is measured cleanly.
A synthetic section: ``n`` cells at unit density in a square, five tissue domains from a Voronoi
partition of random centres, 50 genes with Poisson counts whose means depend on the domain; the
target is an independent section with a gene-wise multiplicative shift (a batch effect). Graph:
6 nearest spatial neighbours. Training uses spatial tiles with a 2-hop halo (``tile_size``).

Run: ``python benchmarks/scale_transfer.py [--sizes 10000 100000 1000000] [--epochs 10]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def synthetic_section(n: int, *, n_genes: int = 50, n_domains: int = 5, shift: float = 0.0, seed: int = 0):
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    rng = np.random.default_rng(seed)
    side = np.sqrt(n)
    coords = rng.uniform(0, side, size=(n, 2))
    centres = np.random.default_rng(1).uniform(0, 1, size=(4 * n_domains, 2)) * side
    owner = np.random.default_rng(2).integers(n_domains, size=len(centres))
    from scipy.spatial import cKDTree

    domain = owner[cKDTree(centres).query(coords)[1]]
    profile = np.random.default_rng(3).gamma(2.0, 1.0, size=(n_domains, n_genes))
    batch = np.exp(rng.normal(0, shift, size=n_genes)) if shift else np.ones(n_genes)
    lam = profile[domain] * batch * rng.gamma(5.0, 0.2, size=(n, 1))
    counts = sparse.csr_matrix(rng.poisson(lam).astype(np.int32))
    obs = pd.DataFrame(
        {"domain": pd.Categorical([f"domain_{d}" for d in domain])}, index=[f"c{seed}_{i}" for i in range(n)]
    )
    adata = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]))
    adata.obsm["spatial"] = coords
    return adata


def run_one(n: int, epochs: int, tile_size: int) -> dict:
    import torch

    import sptl
    from sptl.metrics import label_scores

    torch.manual_seed(0)
    start = time.perf_counter()
    source = synthetic_section(n, seed=10)
    target = synthetic_section(n, shift=0.3, seed=11)
    t_data = time.perf_counter() - start
    start = time.perf_counter()
    sptl.tl.transfer_labels(
        source,
        target,
        label_key="domain",
        method="gnn",
        min_shared_genes=10,
        model_kwargs={"max_epochs": epochs, "tile_size": tile_size},
        progress=False,
    )
    seconds = time.perf_counter() - start
    scores = label_scores(target.obs["domain"], target.obs["sptl_label"])
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {
        "cells": n,
        "epochs": epochs,
        "seconds": round(seconds, 1),
        "data_seconds": round(t_data, 1),
        "peak_rss_gb": round(peak_gb, 2),
        "accuracy": round(scores["accuracy"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="*", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tile-size", type=int, default=50_000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.epochs, args.tile_size)))
        return
    print(f"{'cells':>9} {'epochs':>6} {'seconds':>8} {'peak RSS GB':>11} {'accuracy':>8}")
    for n in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--epochs",
            str(args.epochs),
            "--tile-size",
            str(args.tile_size),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"{n:>9} failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{r['cells']:>9} {r['epochs']:>6} {r['seconds']:>8} {r['peak_rss_gb']:>11} {r['accuracy']:>8}", flush=True
        )


if __name__ == "__main__":
    main()
