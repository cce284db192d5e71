"""Mouse olfactory bulb, Spatial Transcriptomics with H&E, two sections (STUtility example data)."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._validate import check_choice
from ._her2st import add_image, read_rgb
from ._registry import bundled_path, load_bundled

BUNDLED_FILE = "mouse_olfactory_bulb.h5ad"
#: Folder of the bundled H&E JPEGs (the release's images, unchanged) in the package data.
IMAGE_FOLDER = "mouse_olfactory_bulb"
#: The two consecutive sections.
MOB_SECTIONS: tuple[str, ...] = ("MOB1", "MOB2")


def mouse_olfactory_bulb(
    section: str = "MOB1",
    *,
    image: bool = True,
    path: str | os.PathLike | None = None,
) -> AnnData:
    """Mouse olfactory bulb, Spatial Transcriptomics (100 um spots) with the H&E image of the section.

    Two consecutive sections (``"MOB1"``, ``"MOB2"``) of one animal, 1000 genes, raw counts of the spots
    under tissue (379 and 407), each with its H&E image: a second tissue and species, next to HER2ST
    (:func:`sptl.datasets.her2st` with ``image=True``), for learning expression from histology and for
    aligning consecutive sections with their images.

    Parameters
    ----------
    section
        ``"MOB1"`` or ``"MOB2"`` (``MOB_SECTIONS``).
    image
        Add the H&E image in the scanpy / squidpy Visium layout (below).
    path
        Folder with the raw release files (``{section}.tsv.gz`` or ``{section}.tsv``,
        ``alignment_table_{section}.tsv``, ``{section}.jpg``) to parse instead of the copy bundled with sptl.

    Returns
    -------
    Spots under tissue x 1000 genes, raw integer counts (sparse ``int32``) in ``.X``. Genes are the
    release's Ensembl ids (``ENSMUSG...``, version suffix kept; no gene symbols are released with the data). With

    - ``obsm['spatial']``: spot centres in pixels of the H&E image (``float64``),
    - ``obs['array_x']``, ``obs['array_y']``: array positions, ``obs['section']``,
    - with ``image``: ``uns['spatial'][section]`` with ``images['hires']`` (the release's 1905 x 1905 px
      JPEG, ``uint8``), ``scalefactors`` (``tissue_hires_scalef`` = 1; ``spot_diameter_fullres``: half the
      centre-to-centre spot distance, ~16 px) and ``metadata`` (``microns_per_pixel`` assuming the
      array's 200 um spot pitch, ~6.3; the source).

    Notes
    -----
    Source: STUtility, github.com/jbergenstrahle/STUtility at commit 9a8f421, ``inst/extdata/counts/``
    (``MOB1.tsv``, ``MOB1.jpg``, ``alignment_table_MOB1.tsv``; the same for MOB2). Licence: MIT (Joseph
    Bergenstråhle 2019). Paper: Bergenstråhle J., Larsson L., Lundeberg J., "Seamless integration of image and
    molecular analysis for spatial transcriptomics workflows", BMC Genomics 21:482 (2020).

    Examples
    --------
    >>> import sptl
    >>> mob = sptl.datasets.mouse_olfactory_bulb("MOB1")
    >>> mob.shape, mob.uns["spatial"]["MOB1"]["images"]["hires"].shape
    ((379, 1000), (1905, 1905, 3))
    """
    check_choice(section, "section", MOB_SECTIONS)
    if path is None:
        adata = load_bundled(BUNDLED_FILE)
        adata = adata[adata.obs["section"] == section].copy()
        adata.obs["section"] = adata.obs["section"].cat.remove_unused_categories()
        image_file = bundled_path(f"{IMAGE_FOLDER}/{section}.jpg")
    else:
        adata = read_mob_raw(path, section)
        image_file = Path(path) / f"{section}.jpg"
    if image:
        add_image(
            adata, section, read_rgb(image_file), scale=1.0, source="bundled" if path is None else str(image_file)
        )
    return adata


def read_mob_raw(path: str | os.PathLike, section: str) -> AnnData:
    """Parse one MOB section from the STUtility release files in folder ``path`` (spots under tissue only)."""
    folder = Path(path)
    counts_file = next((f for f in (folder / f"{section}.tsv.gz", folder / f"{section}.tsv") if f.exists()), None)
    if counts_file is None:
        msg = f"{folder / section}.tsv(.gz) not found: `path` must be the folder with the STUtility MOB files."
        raise FileNotFoundError(msg)
    counts = pd.read_csv(counts_file, sep="\t", index_col=0)
    table = pd.read_csv(folder / f"alignment_table_{section}.tsv", sep="\t")
    table.index = [f"{x}x{y}" for x, y in zip(table["x"], table["y"], strict=True)]
    table = table[table["selected"] == 1]
    spots = counts.index.intersection(table.index, sort=False)
    counts, table = counts.loc[spots], table.loc[spots]
    obs = pd.DataFrame(index=pd.Index([f"{section}_{s}" for s in spots]))
    obs["array_x"] = table["x"].to_numpy()
    obs["array_y"] = table["y"].to_numpy()
    obs["section"] = pd.Categorical([section] * len(obs))
    var = pd.DataFrame(index=pd.Index(counts.columns.astype(str)))
    adata = AnnData(X=sparse.csr_matrix(counts.to_numpy().astype(np.int32)), obs=obs, var=var)
    adata.obsm["spatial"] = table[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    return adata


def read_mob_sections(path: str | os.PathLike) -> AnnData:
    """Both sections parsed and concatenated (what the bundle stores; images are separate JPEG files)."""
    adatas = [read_mob_raw(path, s) for s in MOB_SECTIONS]
    out = ad.concat(adatas, join="outer", fill_value=0)
    out.obs["section"] = pd.Categorical(out.obs["section"].astype(str), categories=list(MOB_SECTIONS))
    return out
