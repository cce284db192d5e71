"""Expression preprocessing shared by the transfer models.

Library-size normalisation, gene selection across sections and per-section standardisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy import sparse
from sklearn.decomposition import PCA

from .. import _validate

#: z-scores are clipped to this absolute value, as in :func:`scanpy.pp.scale`.
CLIP = 10.0

#: Gene sets up to this size count as a targeted panel (imaging panels: 20-500 genes, each chosen to be
#: informative, tens to hundreds of molecules per cell), larger ones as a transcriptome.
PANEL_GENES = 500
#: Total that transcriptome counts are normalised to (scanpy's usual ``target_sum``).
TRANSCRIPTOME_TARGET = 1e4


def count_target(matrices: Sequence[np.ndarray | sparse.spmatrix]) -> float:
    """The total that counts are normalised to, from the gene count of the matrices.

    A transcriptome (more than :data:`PANEL_GENES` genes) gets the usual 10,000. A targeted panel gets the
    median total of all observations with counts, pooled over the sections compared in one call: its cells
    hold tens to hundreds of molecules, and scaling them to 10,000 would turn a single molecule into a jump
    of ``log(60)`` (on a 22-gene smFISH panel, sptl's knn transfer scored macro-F1 0.797 with the median and
    0.734 with 10,000; on HER2ST's 3000 variable genes the median total moved integration, alignment and
    shift scores away from what 10,000 gives). Matrices that are not counts
    (:func:`sptl._validate.value_kind`) do not take part.
    """
    if not matrices or matrices[0].shape[1] > PANEL_GENES:
        return TRANSCRIPTOME_TARGET
    totals = [np.asarray(X.sum(axis=1)).ravel() for X in matrices if _validate.value_kind(X) == "counts"]
    pooled = np.concatenate(totals) if totals else np.zeros(0)
    pooled = pooled[pooled > 0]
    return float(np.median(pooled)) if len(pooled) else TRANSCRIPTOME_TARGET


def log_normalize(X: np.ndarray | sparse.spmatrix, target_sum: float | None = None) -> sparse.csr_matrix:
    """Log-expression of one section, by what its values are (:func:`sptl._validate.value_kind`), as float32 CSR.

    Counts are scaled to ``target_sum`` per observation (``None``: :func:`count_target` of this section
    alone), then ``log1p``; normalised values that are not log-transformed (volume-normalised MERFISH, for
    example) only get ``log1p``, since normalising them again would remove what the technology's own
    normalisation kept; log-transformed values are used as they are.
    """
    kind = _validate.value_kind(X)
    out = sparse.csr_matrix(X, dtype=np.float32, copy=True)
    if kind == "counts":
        target = count_target([X]) if target_sum is None else float(target_sum)
        total = np.asarray(out.sum(axis=1)).ravel()
        out = sparse.csr_matrix(sparse.diags(np.divide(target, total, out=np.zeros_like(total), where=total > 0)) @ out)
    if kind != "log":
        np.log1p(out.data, out=out.data)
    return out


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


def standardized(counts: np.ndarray | sparse.spmatrix, target_sum: float | None = None) -> np.ndarray:
    """Log-normalise one section's counts (:func:`log_normalize`) and z-score every gene within the section."""
    return standardize(log_normalize(counts, target_sum))


def fit_pca_space(
    adatas: Sequence[AnnData],
    counts: Sequence[np.ndarray | sparse.spmatrix],
    *,
    genes: pd.Index,
    n_sources: int,
    n_genes: int,
    n_comps: int,
    seed: int,
) -> tuple[pd.Index, np.ndarray, list[np.ndarray], float]:
    """The joint expression space the transfer models work in.

    Highly variable genes are chosen on the first ``n_sources`` sections (the labelled side defines
    what matters), every section is log-normalised (counts to one total for all sections, the
    :func:`count_target` of the shared genes) and z-scored on them within itself, and a PCA is fitted on
    all sections together.

    Returns
    -------
    The genes, the PCA components (``n_comps x n_genes``), each section's principal components and the
    total counts were normalised to.
    """
    shared = [X[:, a.var_names.get_indexer(genes)] for X, a in zip(counts, adatas, strict=True)]
    target_sum = count_target(shared)
    hvg = select_genes([log_normalize(X, target_sum) for X in shared[:n_sources]], genes, n_genes)
    z = [standardized(X[:, a.var_names.get_indexer(hvg)], target_sum) for X, a in zip(counts, adatas, strict=True)]
    n_comps = min(n_comps, len(hvg), sum(x.shape[0] for x in z) - 1)
    pca = PCA(n_components=n_comps, random_state=seed, svd_solver="randomized")
    pca.fit(np.vstack(z))
    components = pca.components_.astype(np.float32)
    return pd.Index(hvg), components, [(x @ components.T).astype(np.float32) for x in z], target_sum
