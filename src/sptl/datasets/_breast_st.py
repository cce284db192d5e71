"""Four consecutive breast-cancer Spatial Transcriptomics sections (Ståhl et al. 2016), from PASTE."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from anndata import AnnData

from .._validate import check_choice
from ._parse import integer_csr, locate
from ._registry import load_bundled

#: The four sections, in tissue order.
BREAST_ST_SLICES: tuple[int, ...] = (1, 2, 3, 4)


def bundled_name(slice: int) -> str:
    """Name of the bundled file for one section."""
    return f"breast_st/slice{slice}.h5ad"


def breast_st(slice: int = 1, *, path: str | os.PathLike | None = None) -> AnnData:
    """One of four consecutive breast-cancer Spatial Transcriptomics sections.

    Layers 1-4 of a breast cancer biopsy from the original Spatial Transcriptomics paper (100 um
    spots), the sample data of PASTE, the reference set for aligning and integrating slices. No
    region labels.

    Parameters
    ----------
    slice
        Section, ``1`` to ``4`` (see ``BREAST_ST_SLICES``); sections are adjacent in this order.
    path
        Folder with the raw PASTE sample files (``slice{N}.csv`` and ``slice{N}_coor.csv``) to
        parse instead of the copy bundled with sptl.

    Returns
    -------
    Spots x genes (254, 251, 264, 262 spots; 7998, 7713, 7453, 7571 genes for slices 1-4), raw
    integer counts (sparse CSR ``int32``) in ``.X``, observation names are the release's spot ids
    (``"XxY"`` array positions), with

    - ``obsm['spatial']``: spot positions from ``slice{N}_coor.csv`` (array units, ``float64``,
      columns x, y),
    - ``obs['slice']``: the section number as a categorical string (``"1"`` ... ``"4"``).

    Notes
    -----
    Source: PASTE sample data, github.com/raphael-group/paste, ``sample_data/`` at commit
    5f0d58c6. Data paper: Ståhl P.L. et al., "Visualization and analysis of gene expression in
    tissue sections by spatial transcriptomics", Science 353:78-82 (2016). Method paper: Zeira R. et
    al., "Alignment and integration of spatial transcriptomics data", Nat Methods (2022). Licence:
    BSD 3-Clause (PASTE repository).

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.breast_st(1)
    >>> adata.shape
    (254, 7998)
    >>> adata.obsm["spatial"].shape
    (254, 2)
    """
    check_choice(slice, "slice", BREAST_ST_SLICES)
    if path is None:
        return load_bundled(bundled_name(slice))
    return read_breast_st_raw(path, slice)


def read_breast_st_raw(path: str | os.PathLike, slice: int) -> AnnData:
    """Parse one section from the raw PASTE files in folder ``path``."""
    folder = locate(path, f"slice{slice}.csv")
    counts = pd.read_csv(folder / f"slice{slice}.csv", index_col=0)
    coords = np.loadtxt(folder / f"slice{slice}_coor.csv", delimiter=",", dtype=np.float64, ndmin=2)
    if coords.shape != (counts.shape[0], 2):
        msg = f"slice{slice}_coor.csv has shape {coords.shape}, expected ({counts.shape[0]}, 2)."
        raise ValueError(msg)
    obs = pd.DataFrame(index=pd.Index(counts.index.astype(str), name=None))
    obs["slice"] = pd.Categorical([str(slice)] * len(obs), categories=[str(s) for s in BREAST_ST_SLICES])
    var = pd.DataFrame(index=pd.Index(counts.columns.astype(str)))
    adata = AnnData(X=integer_csr(counts.to_numpy(), f"slice{slice}.csv"), obs=obs, var=var)
    adata.obsm["spatial"] = coords
    adata.obs_names_make_unique()
    adata.var_names_make_unique()
    return adata
