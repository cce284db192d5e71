"""10x Visium sets: the squidpy/scanpy reader fixture and Giotto's mini mouse-brain and prostate sets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._validate import check_choice
from ._parse import integer_csr, locate
from ._registry import bundled_path, load_bundled

#: ``sample`` names of :func:`visium_prostate` and the Giotto ``list_ID`` of each.
PROSTATE_SAMPLES: dict[str, str] = {"normal": "NP", "cancer": "CP"}
#: The x shift (full-resolution pixels) that Giotto added to each prostate section to place them side
#: by side. Derived once from the raw files: after removing it, both sections have the same
#: array-to-pixel offset (a least-squares fit of x on array_row, array_col agrees within 0.4 px) and
#: the cancer section's x coordinates become whole pixels again, as in the Space Ranger output.
PROSTATE_X_SHIFT: dict[str, float] = {"NP": 0.0, "CP": 28489.0002059318}
#: Upper-left corner of the H&E crop ``deg_image2.png`` in pixels of the 10x lowres image of
#: ``V1_Adult_Mouse_Brain`` (x, y). Found by registering spots to the crop: at the lowres scale factor,
#: this offset maximises the correlation of the crop's darkness under each spot with the expression of
#: granule-cell and pyramidal-layer markers (Prox1, C1ql2, Hpca).
DG_CROP_ORIGIN_LOWRES: tuple[float, float] = (105.0, 122.0)
DG_LIBRARY_ID = "V1_Adult_Mouse_Brain_DG"

_GIOTTO_PROSTATE = "Visium_multisample/Raw"
_GIOTTO_DG = "Visium/Raw"
FIXTURE_DIR = "visium_fixture"
PROSTATE_FILE = "visium_prostate.h5ad"
DG_FILE = "visium_dentate_gyrus.h5ad"


def visium_prostate(sample: str = "normal", *, path: str | os.PathLike | None = None) -> AnnData:
    """Human prostate section, normal or cancerous (10x Visium, Giotto mini set).

    Two sections of one organ, normal prostate and prostate cancer, restricted by Giotto to 1255
    highly variable genes. No labels.

    Parameters
    ----------
    sample
        ``"normal"`` (Giotto ``list_ID`` ``NP``, 987 spots) or ``"cancer"`` (``CP``, 1340 spots).
    path
        Folder with the raw Giotto files (``expression_matrix.txt.gz``, ``cell_metadata.txt``,
        ``spatial_locs.txt``), either ``Visium_multisample/Raw`` itself or the GiottoData mini-dataset
        folder above it, to parse instead of the copy bundled with sptl.

    Returns
    -------
    Spots x 1255 genes, raw integer counts (sparse CSR ``int32``) in ``.X``, observation names
    the Giotto cell ids (``"NP-<barcode>"``), with

    - ``obsm['spatial']``: full-resolution pixel coordinates (x, y) of the spot centres, each
      section in its own frame (see Notes),
    - ``obs['array_row']``, ``obs['array_col']``: Visium array positions,
    - ``obs['in_tissue']``: 1 for every spot,
    - ``obs['sample']``: ``"normal"`` or ``"cancer"`` (categorical).

    Notes
    -----
    Giotto joined both sections into one frame, shifting the cancer section along x and storing
    y negated. Here y is negated back and the shift removed (``PROSTATE_X_SHIFT``, estimated so that
    both sections share the array-to-pixel offset; the resulting x are whole pixels), so each
    section sits in a Space-Ranger-like frame of its own. The normal section is unchanged.

    Source: GiottoData, github.com/drieslab/GiottoData, ``inst/Mini_datasets/Visium_multisample/Raw``
    at commit 1dc55ee8, a subset of public 10x Genomics Visium prostate data. Paper: Dries R. et al.,
    "Giotto: a toolbox for integrative analysis and visualization of spatial expression data",
    Genome Biol 22:78 (2021). Licence: MIT (GiottoData).

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.visium_prostate("cancer")
    >>> adata.shape
    (1340, 1255)
    """
    check_choice(sample, "sample", list(PROSTATE_SAMPLES))
    adata = load_bundled(PROSTATE_FILE) if path is None else read_visium_prostate_raw(path)
    adata = adata[(adata.obs["sample"] == sample).to_numpy()].copy()
    adata.obs["sample"] = adata.obs["sample"].cat.remove_unused_categories()
    return adata


def read_visium_prostate_raw(path: str | os.PathLike) -> AnnData:
    """Parse both prostate sections from the raw Giotto files in folder ``path``."""
    folder = locate(path, "expression_matrix.txt.gz", _GIOTTO_PROSTATE)
    expr = pd.read_csv(folder / "expression_matrix.txt.gz", sep=" ", index_col=0)
    meta = pd.read_csv(folder / "cell_metadata.txt", sep=" ").set_index("cell_ID")
    locs = pd.read_csv(folder / "spatial_locs.txt", sep=" ").set_index("cell_ID")
    cells = pd.Index(expr.columns.astype(str))
    missing = cells.difference(meta.index).union(cells.difference(locs.index))
    if len(missing):
        msg = f"{len(missing)} spots lack metadata or locations, e.g. {list(missing[:3])}."
        raise ValueError(msg)
    meta, locs = meta.loc[cells], locs.loc[cells]
    unknown = set(meta["list_ID"]) - set(PROSTATE_X_SHIFT)
    if unknown:
        msg = f"Unexpected list_ID values {sorted(unknown)}; expected {list(PROSTATE_X_SHIFT)}."
        raise ValueError(msg)

    names = {v: k for k, v in PROSTATE_SAMPLES.items()}
    obs = pd.DataFrame(index=cells)
    obs["in_tissue"] = meta["in_tissue"].to_numpy(dtype=np.int64)
    obs["array_row"] = meta["array_row"].to_numpy(dtype=np.int64)
    obs["array_col"] = meta["array_col"].to_numpy(dtype=np.int64)
    obs["sample"] = pd.Categorical(meta["list_ID"].map(names).to_numpy(), categories=list(PROSTATE_SAMPLES))
    shift = meta["list_ID"].map(PROSTATE_X_SHIFT).to_numpy(dtype=np.float64)
    x = np.rint(locs["sdimx"].to_numpy(dtype=np.float64) - shift)
    y = -locs["sdimy"].to_numpy(dtype=np.float64)
    adata = AnnData(X=integer_csr(expr.to_numpy().T, "expression_matrix.txt.gz"), obs=obs)
    adata.var_names = pd.Index(expr.index.astype(str))
    adata.obsm["spatial"] = np.column_stack([x, y])
    adata.obs_names_make_unique()
    adata.var_names_make_unique()
    return adata


def visium_fixture(*, path: str | os.PathLike | None = None) -> AnnData:
    """Visium reader fixture of scanpy and squidpy: 100 spots, 100 genes and a real H&E image.

    The Space Ranger 1.0 output folder that scanpy's and squidpy's tests read, shipped unchanged
    and read with :func:`squidpy.read.visium`, so the result has exactly their layout. For
    plumbing and image-patch tests; too small for anything else.

    Parameters
    ----------
    path
        A Space Ranger output folder (``filtered_feature_bc_matrix.h5`` and ``spatial/`` with
        ``tissue_positions_list.csv``, ``scalefactors_json.json``, ``tissue_hires_image.png`` and
        ``tissue_lowres_image.png``) to read instead of the copy bundled with sptl.

    Returns
    -------
    100 spots x 100 genes (Ensembl ids; raw integer counts, sparse CSR ``int32`` in ``.X``), with

    - ``obsm['spatial']``: spot centres in full-resolution image pixels (x, y), ``float64``,
    - ``obs['in_tissue']``, ``obs['array_row']``, ``obs['array_col']``,
    - ``var['gene_ids']``, ``var['feature_types']``, ``var['genome']``,
    - ``uns['spatial'][library_id]`` with ``'images'`` (``'lowres'``: the real 600 x 600 H&E,
      ``uint8`` RGB; ``'hires'``: a 2000 x 2000 all-black placeholder of the fixture),
      ``'scalefactors'`` (``tissue_lowres_scalef`` maps ``obsm['spatial']`` onto the lowres
      image) and ``'metadata'``; ``library_id`` is ``"custom"`` for the bundled files.

    Notes
    -----
    Source: squidpy, github.com/scverse/squidpy, ``tests/_data/`` at commit be17fcf6 (the same
    files are scanpy's ``tests/_data/visium_data/1.0.0``), a subset of public 10x Genomics Visium
    data. Paper: Palla G. et al., "Squidpy: a scalable framework for spatial omics analysis",
    Nat Methods 19:171-178 (2022). Licence: BSD 3-Clause (squidpy).

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.visium_fixture()
    >>> adata.shape
    (100, 100)
    >>> adata.uns["spatial"]["custom"]["images"]["lowres"].shape
    (600, 600, 3)
    """
    folder = bundled_path(FIXTURE_DIR) if path is None else Path(path)
    return read_visium_folder(folder)


def read_visium_folder(path: str | os.PathLike, library_id: str | None = None) -> AnnData:
    """Read a Space Ranger output folder with :func:`squidpy.read.visium`, counts as CSR ``int32``.

    Without ``spatial/tissue_hires_image.png`` (which squidpy's reader requires), the same layout is
    built with the lowres image alone: counts and metadata from squidpy's reader, then positions,
    scale factors and image read as squidpy reads them.
    """
    import squidpy as sq

    folder = Path(path)
    positions = folder / "spatial" / "tissue_positions.csv"
    if not positions.exists():
        positions = folder / "spatial" / "tissue_positions_list.csv"
    for file in (
        folder / "filtered_feature_bc_matrix.h5",
        positions,
        folder / "spatial" / "scalefactors_json.json",
        folder / "spatial" / "tissue_lowres_image.png",
    ):
        if not file.exists():
            msg = f"{file} not found: `path` must be a Space Ranger output folder."
            raise FileNotFoundError(msg)
    if (folder / "spatial" / "tissue_hires_image.png").exists():
        adata = sq.read.visium(folder, library_id=library_id)
    else:
        adata = _read_visium_lowres_only(folder, positions, library_id)
    adata.X = integer_csr(adata.X, "filtered_feature_bc_matrix.h5")
    adata.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    for lib in adata.uns["spatial"].values():
        meta = lib.get("metadata", {})
        for key, value in meta.items():
            if isinstance(value, np.ndarray) and value.size == 1:
                value = value.item()
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            meta[key] = value
    adata.obs_names_make_unique()
    adata.var_names_make_unique()
    return adata


def _read_visium_lowres_only(folder: Path, positions: Path, library_id: str | None) -> AnnData:
    """:func:`squidpy.read.visium` for a folder without the hires image (same keys, no ``'hires'``)."""
    import squidpy as sq
    from PIL import Image

    adata = sq.read.visium(folder, library_id=library_id, load_images=False)
    lib = adata.uns["spatial"][next(iter(adata.uns["spatial"]))]
    with Image.open(folder / "spatial" / "tissue_lowres_image.png") as im:
        lib["images"] = {"lowres": np.asarray(im).copy()}
    lib["scalefactors"] = json.loads((folder / "spatial" / "scalefactors_json.json").read_bytes())
    with open(positions) as f:
        has_header = f.readline().split(",")[0].strip().lower() == "barcode"
    coords = pd.read_csv(positions, header=0 if has_header else None, index_col=0)
    coords.columns = ["in_tissue", "array_row", "array_col", "pxl_col_in_fullres", "pxl_row_in_fullres"]
    coords.index = coords.index.astype(adata.obs.index.dtype)
    adata.obs = pd.merge(adata.obs, coords, how="left", left_index=True, right_index=True)
    # squidpy's column names are swapped: "pxl_row_in_fullres" holds x (the image column)
    adata.obsm["spatial"] = adata.obs[["pxl_row_in_fullres", "pxl_col_in_fullres"]].to_numpy()
    adata.obs = adata.obs.drop(columns=["pxl_row_in_fullres", "pxl_col_in_fullres"])
    return adata


def visium_dentate_gyrus(*, path: str | os.PathLike | None = None) -> AnnData:
    """Mouse hippocampus around the dentate gyrus (10x Visium, Giotto mini set) with its H&E crop.

    A crop of the public 10x ``V1_Adult_Mouse_Brain`` section: 624 spots x 634 genes and the
    243 x 172 H&E image of the same region, laid out like :func:`squidpy.read.visium` output so
    scanpy and squidpy plot spots over the tissue. No labels.

    Parameters
    ----------
    path
        Folder with the raw Giotto files (``visium_DG_expr.txt.gz``, ``visium_DG_locs.txt``,
        ``visium_DG_meta.txt``, ``scalefactors_json.json``, ``images/deg_image2.png``), either
        ``Visium/Raw`` itself or the GiottoData mini-dataset folder above it, to parse instead of the
        copy bundled with sptl.

    Returns
    -------
    624 spots x 634 genes, raw integer counts (sparse CSR ``int32``) in ``.X``, observation names
    the Visium barcodes, with

    - ``obsm['spatial']``: spot centres in full-resolution pixels (x, y) relative to the crop's
      upper-left corner (see Notes),
    - ``obs['in_tissue']``: 1 for every spot,
    - ``uns['spatial']['V1_Adult_Mouse_Brain_DG']`` with ``'images'`` (``'lowres'``: the H&E
      crop ``deg_image2.png``, ``uint8`` RGBA, 172 x 243 pixels), ``'scalefactors'`` (the 10x
      ``V1_Adult_Mouse_Brain`` values; ``tissue_lowres_scalef`` maps ``obsm['spatial']`` onto the
      crop) and ``'metadata'`` (``'crop_origin_fullres'``: the crop's corner in the 10x
      full-resolution frame).

    Notes
    -----
    Giotto stores the spots as 10x full-resolution pixels (x, -y) and the crop without its
    position. The crop was found to be a piece of the 10x lowres image (scale factor
    0.0510) whose upper-left corner lies at lowres pixel ``DG_CROP_ORIGIN_LOWRES`` = (105, 122): that
    offset maximises, over all shifts, the correlation between the darkness of the crop under each
    spot and the expression of granule-cell and pyramidal markers (Prox1, C1ql2, Hpca), and a free
    fit of the scale gives the lowres factor back. ``obsm['spatial']`` is therefore the 10x
    full-resolution position minus the crop origin (``crop_origin_fullres``); add it back to
    recover the original frame. The spot order of ``visium_DG_locs.txt`` is that of the
    expression matrix's columns (the metadata file is joined by barcode).

    Source: GiottoData, github.com/drieslab/GiottoData, ``inst/Mini_datasets/Visium/Raw`` at commit
    1dc55ee8, a crop of the public 10x Genomics ``V1_Adult_Mouse_Brain`` Visium data. Paper: Dries R.
    et al., "Giotto: a toolbox for integrative analysis and visualization of spatial expression
    data", Genome Biol 22:78 (2021). Licence: MIT (GiottoData).

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.visium_dentate_gyrus()
    >>> adata.shape
    (624, 634)
    >>> adata.uns["spatial"]["V1_Adult_Mouse_Brain_DG"]["images"]["lowres"].shape
    (172, 243, 4)
    """
    if path is None:
        return load_bundled(DG_FILE)
    return read_visium_dg_raw(path)


def read_visium_dg_raw(path: str | os.PathLike) -> AnnData:
    """Parse the Giotto mini Visium dentate-gyrus files in folder ``path``."""
    from PIL import Image

    folder = locate(path, "visium_DG_expr.txt.gz", _GIOTTO_DG)
    expr = pd.read_csv(folder / "visium_DG_expr.txt.gz", sep=" ", index_col=0)
    locs = np.loadtxt(folder / "visium_DG_locs.txt", dtype=np.float64, ndmin=2)
    meta = pd.read_csv(folder / "visium_DG_meta.txt").set_index("cell_ID")
    cells = pd.Index(expr.columns.astype(str))
    if locs.shape != (len(cells), 2):
        msg = f"visium_DG_locs.txt has shape {locs.shape}, expected ({len(cells)}, 2)."
        raise ValueError(msg)
    missing = cells.difference(meta.index)
    if len(missing):
        msg = f"{len(missing)} spots lack a row in visium_DG_meta.txt, e.g. {list(missing[:3])}."
        raise ValueError(msg)
    scalefactors = json.loads((folder / "scalefactors_json.json").read_text())
    with Image.open(folder / "images" / "deg_image2.png") as im:
        image = np.asarray(im).copy()

    scale = float(scalefactors["tissue_lowres_scalef"])
    origin = np.asarray(DG_CROP_ORIGIN_LOWRES) / scale
    obs = pd.DataFrame(index=cells)
    obs["in_tissue"] = meta.loc[cells, "in_tissue"].to_numpy(dtype=np.int64)
    adata = AnnData(X=integer_csr(expr.to_numpy().T, "visium_DG_expr.txt.gz"), obs=obs)
    adata.var_names = pd.Index(expr.index.astype(str))
    adata.obsm["spatial"] = np.column_stack([locs[:, 0], -locs[:, 1]]) - origin
    adata.uns["spatial"] = {
        DG_LIBRARY_ID: {
            "images": {"lowres": image},
            "scalefactors": scalefactors,
            "metadata": {"crop_origin_fullres": origin},
        }
    }
    adata.obs_names_make_unique()
    adata.var_names_make_unique()
    return adata
