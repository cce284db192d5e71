"""Expression preprocessing shared by the transfer models.

Library-size normalisation, gene selection across sections and per-section standardisation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy import sparse
from sklearn.decomposition import PCA

#: z-scores are clipped to this absolute value, as in :func:`scanpy.pp.scale`.
CLIP = 10.0


def log_normalize(X: np.ndarray | sparse.spmatrix, target_sum: float = 1e4) -> sparse.csr_matrix:
    """Counts per ``target_sum`` then ``log1p`` (scanpy), returned as float32 CSR."""
    tmp = AnnData(X=sparse.csr_matrix(X, dtype=np.float32))
    with warnings.catch_warnings():  # empty spots stay zero; that is fine here
        warnings.filterwarnings("ignore", message="Some cells have zero counts")
        sc.pp.normalize_total(tmp, target_sum=target_sum)
    sc.pp.log1p(tmp)
    return tmp.X


def select_genes(batches: Sequence[sparse.csr_matrix], genes: pd.Index, n_genes: int) -> pd.Index:
    """Highly variable genes across batches of log-normalised data.

    Uses scanpy's ``seurat`` flavour with ``batch_key``, which ranks genes by the number of batches
    where they are variable.
    """
    if n_genes >= len(genes):
        return genes
    joint = AnnData(X=sparse.vstack(batches).tocsr(), var=pd.DataFrame(index=genes))
    joint.obs["batch"] = pd.Categorical(np.repeat(np.arange(len(batches)), [b.shape[0] for b in batches]).astype(str))
    sc.pp.highly_variable_genes(joint, flavor="seurat", n_top_genes=n_genes, batch_key="batch")
    return genes[joint.var["highly_variable"].to_numpy()]


def standardize(X: sparse.spmatrix | np.ndarray) -> np.ndarray:
    """z-score every gene within one section (removes the section's own shift), clipped at ``CLIP``."""
    X = X.toarray() if sparse.issparse(X) else np.asarray(X, dtype=np.float32)
    X = X - X.mean(axis=0, keepdims=True)
    X /= np.maximum(X.std(axis=0, keepdims=True), 1e-3)
    return np.clip(X, -CLIP, CLIP, out=X).astype(np.float32)


def standardized(counts: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """Log-normalise one section's counts and z-score every gene within the section."""
    return standardize(log_normalize(counts))


def fit_pca_space(
    adatas: Sequence[AnnData],
    counts: Sequence[np.ndarray | sparse.spmatrix],
    *,
    genes: pd.Index,
    n_sources: int,
    n_genes: int,
    n_comps: int,
    seed: int,
) -> tuple[pd.Index, np.ndarray, list[np.ndarray]]:
    """The joint expression space the transfer models work in.

    Highly variable genes are chosen on the first ``n_sources`` sections (the labelled side defines
    what matters), every section is log-normalised and z-scored on them within itself, and a PCA is
    fitted on all sections together.

    Returns
    -------
    The genes, the PCA components (``n_comps x n_genes``) and each section's principal components.
    """
    lognorm = [log_normalize(X[:, a.var_names.get_indexer(genes)]) for X, a in zip(counts, adatas, strict=True)]
    hvg = select_genes(lognorm[:n_sources], genes, n_genes)
    z = [standardized(X[:, a.var_names.get_indexer(hvg)]) for X, a in zip(counts, adatas, strict=True)]
    n_comps = min(n_comps, len(hvg), sum(x.shape[0] for x in z) - 1)
    pca = PCA(n_components=n_comps, random_state=seed, svd_solver="randomized")
    pca.fit(np.vstack(z))
    components = pca.components_.astype(np.float32)
    return pd.Index(hvg), components, [(x @ components.T).astype(np.float32) for x in z]
