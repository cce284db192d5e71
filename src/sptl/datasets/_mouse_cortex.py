"""Single-cell imaging sets of mouse cortex from the Tangram repository (smFISH and MERFISH-like)."""

from __future__ import annotations

import os

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from ._parse import int_categorical, integer_csr, locate
from ._registry import load_bundled

SMFISH_RAW = "smFISH_anndata.h5ad"
MERFISH_RAW = "test_ad_sp_readytomap.h5ad"
SMFISH_FILE = "mouse_cortex_smfish.h5ad"
MERFISH_FILE = "mouse_cortex_merfish.h5ad"


def mouse_cortex_smfish(*, path: str | os.PathLike | None = None) -> AnnData:
    """Mouse cortex smFISH: 4840 segmented cells x 22 genes with cluster ids (Tangram example).

    Parameters
    ----------
    path
        Folder with Tangram's ``smFISH_anndata.h5ad`` to parse instead of the copy bundled with sptl.

    Returns
    -------
    4840 cells x 22 genes (Fezf2, Pde1a, Rorb, Kcnk2, Cux2, ...), integer transcript counts
    (sparse CSR ``int32``) in ``.X``, with

    - ``obsm['spatial']``: cell centres from ``obs['x']``, ``obs['y']`` (``float64``),
    - ``obs['cluster']``: cluster ids ``"1"`` ... ``"6"`` (categorical; their meaning is not
      documented by the source),
    - the source's other cell columns unchanged: ``'cell'``, ``'x'``, ``'y'``, ``'has_center'``,
      ``'n_transcripts'``, ``'density'``, ``'elongation'``, ``'area'``, ``'avg_confidence'``,
      ``'doublet_score'``.

    Notes
    -----
    Source: Tangram, github.com/broadinstitute/Tangram, ``example/data/smFISH_anndata.h5ad`` at
    commit 0ed386ea (later removed from the repository). The original smFISH study is not named by
    the source. Paper: Biancalani T. et al., "Deep learning and alignment of spatially resolved
    single-cell transcriptomes with Tangram", Nat Methods 18:1352-1362 (2021). Licence: BSD 3-Clause
    (Tangram).

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.mouse_cortex_smfish()
    >>> adata.shape
    (4840, 22)
    >>> list(adata.obs["cluster"].cat.categories)
    ['1', '2', '3', '4', '5', '6']
    """
    if path is None:
        return load_bundled(SMFISH_FILE)
    return read_smfish_raw(path)


def mouse_cortex_merfish(*, path: str | os.PathLike | None = None) -> AnnData:
    """MERFISH-like mouse cortex slice: 2150 cells x 253 genes (Tangram test data, no labels).

    Parameters
    ----------
    path
        Folder with Tangram's ``test_ad_sp_readytomap.h5ad`` to parse instead of the copy bundled
        with sptl.

    Returns
    -------
    2150 cells x 253 genes (lower-case symbols), integer counts (sparse CSR ``int32``) in ``.X``,
    with

    - ``obsm['spatial']``: cell positions from ``obs['x']``, ``obs['y']`` (``float64``),
    - the source's cell columns unchanged: ``'x'``, ``'y'``, ``'x_um'``, ``'y_um'``,
      ``'rotated_x'``, ``'rotated_y'``, ``'rna_count_based_density'``; ``var['n_cells']``.

    Notes
    -----
    Probably a subset of the MERFISH mouse primary motor cortex data of the BICCN (Zhang M. et al.,
    Nature 598:137, 2021), as the 254-gene panel suggests; the source does not say.

    Source: Tangram, github.com/broadinstitute/Tangram, ``test_data/test_ad_sp_readytomap.h5ad`` at
    commit f9994948 (later removed from the repository). Paper: Biancalani T. et al., "Deep
    learning and alignment of spatially resolved single-cell transcriptomes with Tangram", Nat
    Methods 18:1352-1362 (2021). Licence: BSD 3-Clause (Tangram).

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.mouse_cortex_merfish()
    >>> adata.shape
    (2150, 253)
    """
    if path is None:
        return load_bundled(MERFISH_FILE)
    return read_merfish_raw(path)


def _read_tangram(path: str | os.PathLike, name: str) -> AnnData:
    src = ad.read_h5ad(locate(path, name) / name)
    adata = AnnData(X=integer_csr(src.X, name), obs=src.obs.copy(), var=src.var.copy())
    adata.obs_names = pd.Index(src.obs_names.astype(str))
    adata.var_names = pd.Index(src.var_names.astype(str))
    adata.obsm["spatial"] = src.obs[["x", "y"]].to_numpy(dtype=np.float64)
    adata.obs_names_make_unique()
    adata.var_names_make_unique()
    return adata


def read_smfish_raw(path: str | os.PathLike) -> AnnData:
    """Parse Tangram's smFISH file in folder ``path``."""
    adata = _read_tangram(path, SMFISH_RAW)
    adata.obs["cluster"] = int_categorical(adata.obs["cluster"].to_numpy())
    return adata


def read_merfish_raw(path: str | os.PathLike) -> AnnData:
    """Parse Tangram's MERFISH-like test slice in folder ``path``."""
    return _read_tangram(path, MERFISH_RAW)
