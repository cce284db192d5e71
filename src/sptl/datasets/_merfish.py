"""MERFISH mouse hypothalamus (preoptic region), two sections of animal 1 (Moffitt et al. 2018)."""

from __future__ import annotations

import os
import re

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._validate import check_choice
from ._parse import locate
from ._registry import load_bundled

BUNDLED_FILE = "merfish_hypothalamus.h5ad"
RAW_FILE = "animal1_bregma0.26_0.21_161genes.h5ad"
#: The two sections: bregma position (mm) -> section name in ``obs['section']``, in file order.
MERFISH_SECTIONS: dict[str, str] = {"0.26": "animal1_bregma0.26", "0.21": "animal1_bregma0.21"}
#: Source columns not kept: Moffitt's cell UUIDs (a fifth of the compressed file).
_DROPPED = ("Cell_name",)


def merfish_hypothalamus(section: str | None = None, *, path: str | os.PathLike | None = None) -> AnnData:
    """MERFISH mouse hypothalamic preoptic region: 11,162 cells x 161 genes in two sections, cell classes.

    A targeted single-cell imaging panel (155 genes and 6 blank control barcodes) of animal 1 of
    Moffitt et al. (2018), sections at bregma +0.26 and +0.21 mm, with the study's cell classes and
    neuron clusters. Spatially intermixed cell types at single-cell resolution: the reference set
    for section-to-section cell-type transfer on an imaging panel.

    Parameters
    ----------
    section
        One section, by its bregma position (``"0.26"`` or ``"0.21"``) or its name
        (``"animal1_bregma0.26"``, ``"animal1_bregma0.21"``; see ``MERFISH_SECTIONS``), or ``None``
        for both.
    path
        Folder with the raw file ``animal1_bregma0.26_0.21_161genes.h5ad`` to parse instead of the
        copy bundled with sptl.

    Returns
    -------
    Cells x 161 genes (5584 cells at bregma 0.26, 5578 at 0.21, 11,162 for both, in that order).
    ``.X`` holds Moffitt's volume-normalised expression (non-negative floats, not counts, not
    log-transformed), unchanged, as a sparse CSR ``float32`` matrix. The genes include the blank
    control barcodes ``Blank_1`` ... ``Blank_5``, kept as released. Observation names are the
    source's ``"cell_{i}"``. With

    - ``obsm['spatial']``: cell centroids (``sdimx``, ``sdimy``) in micrometres (``float64``),
    - ``obs['Cell_class']``: 16 cell classes (categorical): ``'Astrocyte'``, ``'Endothelial 1'``
      ... ``'3'``, ``'Ependymal'``, ``'Excitatory'``, ``'Inhibitory'``, ``'Microglia'``,
      ``'OD Immature 1'``, ``'2'``, ``'OD Mature 1'`` ... ``'4'``, ``'Pericytes'`` and
      ``'Ambiguous'`` (1543 cells the study could not classify: not a cell type),
    - ``obs['Neuron_cluster_ID']``: the study's 61 neuron clusters (``'E-1'`` ..., ``'H-1'``,
      ``'I-1'`` ...; categorical) for the excitatory and inhibitory cells, missing (``NaN``) for
      all other cells,
    - ``obs['section']``: section name, ``obs['bregma']``: its bregma position as a string (both
      categorical, in ``MERFISH_SECTIONS`` order),
    - ``obs['sdimx']``, ``obs['sdimy']``: the centroids again (um), ``obs['sdimz']``: the bregma
      position as a number (mm),
    - ``obs['Animal_ID']``, ``obs['Animal_sex']``, ``obs['Behavior']``: ``1``, ``'Female'``,
      ``'Naive'`` for every cell.

    One section keeps only the categories present in it (59 neuron clusters at 0.26, 56 at 0.21).

    Notes
    -----
    The source's ``Cell_name`` column (Moffitt's cell UUIDs) is dropped to keep the bundled file
    small; values, cells and genes are otherwise as released.

    Source: Banksy, github.com/prabhakarlab/Banksy, ``data/hypothalamus.rda`` at commit 74d245a2
    (exported to h5ad with values unchanged). Licence: MIT at that commit (later commits changed it).
    Data paper: Moffitt J.R. et al., "Molecular, spatial, and functional single-cell profiling of
    the hypothalamic preoptic region", Science 362:eaau5324 (2018); data originally released on
    Dryad.

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.merfish_hypothalamus("0.26")
    >>> adata.shape
    (5584, 161)
    >>> int((adata.obs["Cell_class"] == "Inhibitory").sum())
    1743
    >>> sptl.datasets.merfish_hypothalamus().n_obs
    11162
    """
    name = _section_name(section)
    adata = load_bundled(BUNDLED_FILE) if path is None else read_merfish_hypothalamus_raw(path)
    if name is None:
        return adata
    return adata[(adata.obs["section"] == name).to_numpy()].copy()


def _section_name(section: str | None) -> str | None:
    """The section name for a bregma position or a section name; ``None`` for both sections."""
    if section is None:
        return None
    if section in MERFISH_SECTIONS.values():
        return section
    check_choice(section, "section", [*MERFISH_SECTIONS, *MERFISH_SECTIONS.values()])
    return MERFISH_SECTIONS[section]


def _natural(name: str) -> tuple:
    """Sort key putting ``"E-2"`` before ``"E-10"``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def read_merfish_hypothalamus_raw(path: str | os.PathLike) -> AnnData:
    """Parse the MERFISH hypothalamus file (both sections) in folder ``path``."""
    folder = locate(path, RAW_FILE)
    src = ad.read_h5ad(folder / RAW_FILE)
    obs = src.obs.drop(columns=[c for c in _DROPPED if c in src.obs]).copy()
    obs.index = pd.Index(src.obs_names.astype(str))
    for col in ("Cell_class", "Animal_sex", "Behavior"):
        obs[col] = obs[col].astype(str).astype("category")
    ids = obs["Neuron_cluster_ID"].astype(object)
    ids = ids.where(ids.notna() & (ids.astype(str) != "")).to_numpy()  # '' for non-neurons -> NaN
    obs["Neuron_cluster_ID"] = pd.Categorical(ids, categories=sorted(set(pd.Series(ids).dropna()), key=_natural))
    for col, categories in (("section", MERFISH_SECTIONS.values()), ("bregma", MERFISH_SECTIONS)):
        obs[col] = pd.Categorical(obs[col].astype(str), categories=list(categories))
        if obs[col].isna().any():
            msg = f"{RAW_FILE}: unexpected {col} values {sorted(set(src.obs[col].astype(str)))}."
            raise ValueError(msg)
    X = sparse.csr_matrix(src.X, dtype=np.float32)
    X.sort_indices()
    adata = AnnData(X=X, obs=obs)
    adata.var_names = pd.Index(src.var_names.astype(str))
    adata.obsm["spatial"] = obs[["sdimx", "sdimy"]].to_numpy(dtype=np.float64)
    adata.obs_names_make_unique()
    adata.var_names_make_unique()
    return adata
