"""Transfer spot labels from one section to another with Tangram (run with the tangram venv's python).

    .venv-tangram/bin/python benchmarks/peers/tangram_transfer.py SOURCE.h5ad TARGET.h5ad OUT.csv \
        --label-key label --exclude undetermined --device cpu

Standard Tangram protocol (as in its tutorials), with the source spots playing the single cells:

1. drop source spots without a label or with an excluded one; ``normalize_total`` + ``log1p`` both sections
   (``--normalize``: ``1e4`` = ``target_sum=1e4``, the default; ``median`` = scanpy's default target, the
   median total of each section; ``none`` = ``log1p`` only, for values already normalised);
2. training genes: the top ``--n-markers`` genes of each source class (``rank_genes_groups``, Wilcoxon),
   kept where both sections express them (``tg.pp_adatas``, which lower-cases names and drops all-zero genes);
   ``--genes all``: every shared gene instead (small targeted panels);
3. ``tg.map_cells_to_space(mode=--mode, density_prior=--density-prior)`` for ``--epochs`` epochs; defaults
   ``mode="cells"`` (every source spot mapped) and ``density_prior="rna_count_based"``. ``--mode clusters``
   maps one profile per source class instead (``cluster_label`` = the label column; Tangram sums the class's
   spots, ``scale=True``), as Tangram recommends for large single-cell references;
4. ``tg.project_cell_annotations``: per target spot, the mapped mass of each source class; argmax = label.
   In clusters mode each class's row of the mapping sums to one over the target, whatever the class size,
   so a rare class's mass is concentrated on few spots and its raw argmax wins often: ``--readout cells``
   multiplies each class's mass by its share of source cells (Tangram's ``cluster_density``), i.e. scores the
   number of cells each class puts on a spot. ``--readout mass`` (default) is the plain argmax.

OUT.csv has one row per target spot: ``obs_name``, ``predicted`` and ``seconds`` (wall time of steps 1-4,
the same on every row). Inputs need raw counts in ``.X``. torch runs on one thread (``--threads``): for
these small matrices two threads were 8-10x slower per epoch on the 2-core project machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import torch

# This folder also holds the wrapper module ``tangram.py``; as the script's folder it comes first on
# sys.path and would shadow the tangram package, so take it off.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("source", help="h5ad with raw counts and the labels in obs[--label-key]")
    p.add_argument("target", help="h5ad with raw counts; its spots get a predicted label")
    p.add_argument("out", help="csv to write (obs_name, predicted, seconds)")
    p.add_argument("--label-key", default="label")
    p.add_argument("--exclude", nargs="*", default=["undetermined"], help="source labels not transferred")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--epochs",
        type=int,
        default=500,
        help="Tangram's default is 1000; on HER2ST the loss is flat after ~300 and 1000 scores the same",
    )
    p.add_argument("--n-markers", type=int, default=100, help="top marker genes per source class")
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads; one is fastest for these small matrices")
    p.add_argument("--mode", choices=["cells", "clusters"], default="cells", help="Tangram mapping mode")
    p.add_argument("--density-prior", choices=["rna_count_based", "uniform"], default="rna_count_based")
    p.add_argument("--genes", choices=["markers", "all"], default="markers", help="training genes")
    p.add_argument(
        "--normalize",
        choices=["1e4", "median", "none"],
        default="1e4",
        help="normalize_total target before log1p: 1e4, the median total (scanpy's default), or none",
    )
    p.add_argument(
        "--readout",
        choices=["mass", "cells"],
        default="mass",
        help="clusters mode: argmax of the mapped mass, or of mass x class share of source cells",
    )
    return p.parse_args(argv)


def _prepare(adata: ad.AnnData, normalize: str = "1e4") -> ad.AnnData:
    """Sparse float copy, unique names, total-count normalised (``normalize``) and log1p."""
    adata = ad.AnnData(X=sp.csr_matrix(adata.X, dtype=np.float32), obs=adata.obs.copy(), var=adata.var[[]].copy())
    adata.var_names_make_unique()
    if normalize != "none":
        sc.pp.normalize_total(adata, target_sum=None if normalize == "median" else float(normalize))
    sc.pp.log1p(adata)
    # Tangram 1.0.4 only accepts scipy csr/csc *matrices* (its dense branch calls ndarray.toarray()).
    adata.X = sp.csr_matrix(adata.X)
    return adata


def marker_genes(source: ad.AnnData, label_key: str, n_markers: int) -> list[str]:
    """Union of the top ``n_markers`` Wilcoxon marker genes of each source class."""
    sc.tl.rank_genes_groups(source, groupby=label_key, method="wilcoxon", n_genes=n_markers, use_raw=False)
    names = pd.DataFrame(source.uns["rank_genes_groups"]["names"])
    return sorted(set(names.to_numpy().ravel().astype(str)))


def transfer(
    source: ad.AnnData,
    target: ad.AnnData,
    *,
    label_key: str = "label",
    exclude: tuple[str, ...] = ("undetermined",),
    device: str = "cpu",
    epochs: int = 500,
    n_markers: int = 100,
    learning_rate: float = 0.1,
    seed: int = 0,
    mode: str = "cells",
    density_prior: str = "rna_count_based",
    genes: str = "markers",
    normalize: str = "1e4",
    readout: str = "mass",
) -> pd.Series:
    """Tangram label transfer; returns the predicted label of every target spot (indexed by obs_names)."""
    import tangram as tg  # the package: this folder's tangram.py is off sys.path (see the top)

    logging.getLogger().setLevel(logging.WARNING)  # tangram sets the root logger to INFO on import
    labels = source.obs[label_key].astype("string")
    keep = (labels.notna() & ~labels.isin(list(exclude))).to_numpy()
    if not keep.any():
        msg = f"no source spot has a label in obs[{label_key!r}] outside {list(exclude)}"
        raise ValueError(msg)
    src = _prepare(source[keep], normalize)
    src.obs[label_key] = pd.Categorical(labels[keep].astype(str))
    tgt = _prepare(target, normalize)

    # Wilcoxon needs two spots per class; with fewer than two such classes, train on all shared genes.
    counts = src.obs[label_key].value_counts()
    rankable = src[src.obs[label_key].isin(counts.index[counts >= 2])].copy()
    use_markers = genes == "markers" and rankable.obs[label_key].nunique() > 1
    tg.pp_adatas(src, tgt, genes=marker_genes(rankable, label_key, n_markers) if use_markers else None)
    if not src.uns["training_genes"]:
        msg = "source and target share no training gene"
        raise ValueError(msg)

    np.random.seed(seed)  # the initial mapping is drawn with np.random (tangram ignores random_state=0)
    mapping = tg.map_cells_to_space(
        src,
        tgt,
        mode=mode,
        cluster_label=label_key if mode == "clusters" else None,
        density_prior=density_prior,
        num_epochs=epochs,
        learning_rate=learning_rate,
        device=device,
        verbose=False,
    )
    tg.project_cell_annotations(mapping, tgt, annotation=label_key)
    scores = tgt.obsm["tangram_ct_pred"]
    if mode == "clusters" and readout == "cells":
        share = mapping.obs.set_index(label_key)["cluster_density"]
        scores = scores * share.reindex(scores.columns).to_numpy()
    return pd.Series(scores.idxmax(axis=1).to_numpy(), index=target.obs_names, name="predicted")


def main(argv: list[str] | None = None) -> None:
    """Read the two sections, transfer the labels, write the csv."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    source, target = ad.read_h5ad(args.source), ad.read_h5ad(args.target)
    start = time.perf_counter()
    pred = transfer(
        source,
        target,
        label_key=args.label_key,
        exclude=tuple(args.exclude),
        device=args.device,
        epochs=args.epochs,
        n_markers=args.n_markers,
        learning_rate=args.learning_rate,
        seed=args.seed,
        mode=args.mode,
        density_prior=args.density_prior,
        genes=args.genes,
        normalize=args.normalize,
        readout=args.readout,
    )
    seconds = time.perf_counter() - start
    out = pd.DataFrame({"obs_name": pred.index, "predicted": pred.to_numpy(), "seconds": seconds})
    out.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
