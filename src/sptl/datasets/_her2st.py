"""HER2-positive breast cancer Spatial Transcriptomics sections (Andersson et al. 2021)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from anndata import AnnData
from anndata.io import read_elem, write_elem
from scipy import sparse

from .._validate import check_choice
from ._registry import bundled_path

BUNDLED_FILE = "her2st.h5ad"

#: The 36 sections: patients A-D with six consecutive sections, E-H with three.
HER2ST_SECTIONS: tuple[str, ...] = tuple(
    f"{p}{i}" for p, n in zip("ABCDEFGH", (6, 6, 6, 6, 3, 3, 3, 3), strict=True) for i in range(1, n + 1)
)
#: Sections that carry pathologist region annotations.
HER2ST_LABELLED: tuple[str, ...] = ("A1", "B1", "C1", "D1", "E1", "F1")
#: Sections whose H&E image is bundled (``her2st(section, image=True)``).
HER2ST_IMAGES: tuple[str, ...] = ("C2", "C3", "C4", "C5")
#: Downscaling of the bundled H&E images: full resolution (~0.74 um per pixel) x 0.5.
IMAGE_SCALE = 0.5
#: Folder of the bundled H&E JPEGs in the package data.
IMAGE_FOLDER = "her2st_he"


def her2st(
    section: str = "A1",
    *,
    image: bool = False,
    image_path: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
) -> AnnData:
    """One section of the HER2-positive breast cancer ST study.

    Spatial Transcriptomics (100 um spots on a 200 um grid) of eight HER2-positive breast tumours,
    patients A-H, three or six consecutive sections each (36 sections).

    Parameters
    ----------
    section
        Section id, ``"A1"`` ... ``"H3"`` (see ``HER2ST_SECTIONS``). ``A1, B1, C1, D1, E1, F1`` carry
        pathologist region labels.
    image
        Add the section's H&E image, in the scanpy / squidpy Visium layout (below). Bundled for
        ``C2, C3, C4, C5`` (``HER2ST_IMAGES``) at half the study's resolution (~1.5 um per pixel, JPEG);
        for other sections pass ``image_path``.
    image_path
        A full-resolution H&E image file of the section (the study's ``data/ST-imgs/<patient>/<section>/*.jpg``
        at github.com/almaan/her2st), used instead of the bundled one; implies ``image=True``. Its pixels must
        be those of the spot positions: spots outside the image raise a ValueError.
    path
        Folder with the raw release files (``{section}.tsv.gz``, ``{section}_selection.tsv``,
        ``{section}-cluster-annotation.tsv.gz`` and, if present, ``{section}_labeled_coordinates.tsv``)
        to parse instead of the copy bundled with sptl.

    Returns
    -------
    Spots under tissue x genes, raw integer counts (sparse) in ``.X``, with

    - ``obsm['spatial']``: pixel coordinates of the spot centres on the study's H&E image,
    - ``obs['array_x']``, ``obs['array_y']``: array (grid) positions,
    - ``obs['label']``: pathologist region (categorical; missing where the section has no label),
    - ``obs['cluster']``: the study's expression clusters (categorical),
    - ``obs['patient']``, ``obs['section']``,
    - with ``image``: ``uns['spatial'][section]``: ``images['hires']`` (``uint8`` RGB array),
      ``scalefactors`` (``tissue_hires_scalef``: image pixels per full-resolution pixel of
      ``obsm['spatial']``; ``spot_diameter_fullres``: half the spot pitch, as the 100 um spots sit on a
      200 um grid) and ``metadata`` (``microns_per_pixel`` of the full resolution, from the 200 um pitch;
      the image source). ``sc.pl.spatial``, ``squidpy.pl.spatial_scatter`` and
      ``sptl.pp.extract_patches(img_key="hires")`` read it as they read Visium data.

    Notes
    -----
    Source: Andersson A. et al., "Spatial deconvolution of HER2-positive breast cancer delineates
    tumor-associated cell type interactions", Nat Commun 12:6012 (2021), data released at
    github.com/almaan/her2st; files as redistributed by the PASTE reproducibility repository
    (raphael-group/paste_reproducibility, data/HER2). Licence: released by the study authors for
    research use.

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.her2st("B1")
    >>> adata.obs["label"].value_counts().index[0]
    'connective tissue'
    >>> he = sptl.datasets.her2st("C2", image=True)
    >>> he.uns["spatial"]["C2"]["images"]["hires"].shape
    (4956, 4637, 3)
    """
    check_choice(section, "section", HER2ST_SECTIONS)
    if (image or image_path is not None) and image_path is None and section not in HER2ST_IMAGES:
        msg = (
            f"The H&E image of section {section!r} is not bundled (bundled: {', '.join(HER2ST_IMAGES)}): pass"
            " `image_path=` a full-resolution image of it (github.com/almaan/her2st, data/ST-imgs)."
        )
        raise ValueError(msg)
    adata = _read_bundled_section(section) if path is None else read_her2st_raw(path, section)
    if image or image_path is not None:
        if image_path is None:
            img, scale, source = read_rgb(bundled_path(f"{IMAGE_FOLDER}/{section}.jpg")), IMAGE_SCALE, "bundled"
        else:
            img, scale, source = read_rgb(image_path), 1.0, str(image_path)
        add_image(adata, section, img, scale=scale, source=source)
    return adata


def her2st_bags(*, size: int = 4, n_comps: int = 10, path: str | os.PathLike | None = None) -> AnnData:
    """The six labelled HER2ST sections as bags for multiple-instance learning.

    Every section is cut into squares of ``size`` x ``size`` positions of the ST array
    (:func:`sptl.pp.tile_spots`, ``obs['sptl_tile']``); a bag is ``"cancer"`` when any of its spots is
    invasive cancer (``obs['bag_label']``; missing for spots in no bag). Instance features: scanpy's
    expression PCA (counts per 10k, log1p, 3000 highly variable genes across sections, scaled,
    ``n_comps`` components in ``obsm['X_pca']``).

    Parameters
    ----------
    size
        Side of a bag in array positions.
    n_comps
        Principal components used as instance features.
    path
        Folder with the raw release files, as for :func:`sptl.datasets.her2st`; ``None`` uses the bundle.

    Returns
    -------
    One AnnData with the spots of A1, B1, C1, D1, E1 and F1 (``obs['section']``).

    Examples
    --------
    >>> import sptl
    >>> bags = sptl.datasets.her2st_bags()
    >>> bags.obs.groupby("sptl_tile", observed=True)["bag_label"].first().value_counts().to_dict()
    {'cancer': 152, 'no cancer': 40}
    """
    import anndata as ad
    import scanpy as sc

    from ..pp._tile import tile_spots

    adata = ad.concat([her2st(s, path=path) for s in HER2ST_LABELLED], join="inner", merge="same")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=3000, batch_key="section", flavor="seurat")
    sc.pp.scale(adata, max_value=10)
    sc.pp.pca(adata, n_comps=n_comps, mask_var="highly_variable", random_state=0)
    adata.obsm["array"] = adata.obs[["array_x", "array_y"]].to_numpy()
    tile_spots(adata, size=size, spatial_key="array", batch_key="section")
    cancer = (adata.obs["label"] == "invasive cancer").groupby(adata.obs["sptl_tile"], observed=True).transform("any")
    adata.obs["bag_label"] = pd.Series(np.where(cancer, "cancer", "no cancer"), index=cancer.index)
    adata.obs.loc[adata.obs["sptl_tile"].isna(), "bag_label"] = np.nan  # spots in no bag
    return adata


def _read_bundled_section(section: str, file: str | os.PathLike | None = None) -> AnnData:
    """Read one section's rows from the bundled file that stores all 36 sections.

    The bundled file is a valid h5ad (all sections, genes = union, dense ``uint16`` counts compressed
    with shuffle + gzip); only the rows and genes of ``section`` are read.
    """
    with h5py.File(bundled_path(BUNDLED_FILE) if file is None else file, "r") as f:
        obs = read_elem(f["obs"])
        var = read_elem(f["var"])
        rows = np.flatnonzero(obs["section"].to_numpy() == section)
        if len(rows) == 0:
            msg = f"Section {section!r} is not in the HER2ST bundle {f.filename}."
            raise ValueError(msg)
        start, stop = int(rows[0]), int(rows[-1]) + 1
        genes = var[f"in_{section}"].to_numpy()
        X = f["X"][start:stop][:, genes]
        spatial = f["obsm/spatial"][start:stop]
    obs = obs.iloc[start:stop].copy()
    for col in ("patient", "section", "label", "cluster"):
        obs[col] = obs[col].cat.remove_unused_categories()
    adata = AnnData(X=sparse.csr_matrix(X.astype(np.int32)), obs=obs, var=pd.DataFrame(index=var.index[genes]))
    adata.obsm["spatial"] = spatial.astype(np.float64)
    return adata


def write_her2st_bundle(sections: list[AnnData], path: str | os.PathLike) -> None:
    """Write parsed sections into the single compressed h5ad that :func:`her2st` reads."""
    genes = pd.Index(pd.unique(np.concatenate([a.var_names.to_numpy() for a in sections])))
    X = np.zeros((sum(a.n_obs for a in sections), len(genes)), dtype=np.uint16)
    var = pd.DataFrame(index=genes)
    row = 0
    for a in sections:
        counts = a.X.toarray()
        if counts.max() > np.iinfo(np.uint16).max:
            msg = "counts exceed uint16"
            raise ValueError(msg)
        X[row : row + a.n_obs, genes.get_indexer(a.var_names)] = counts
        var[f"in_{a.obs['section'].iloc[0]}"] = genes.isin(a.var_names)
        row += a.n_obs
    obs = pd.concat([a.obs for a in sections])
    for col in ("patient", "section", "label", "cluster"):
        obs[col] = obs[col].astype(str).replace("nan", np.nan).astype("category")
    out = AnnData(obs=obs, var=var)
    out.obsm["spatial"] = np.concatenate([a.obsm["spatial"] for a in sections])
    out.write_h5ad(path, compression="gzip", compression_opts=9)
    with h5py.File(path, "a") as f:
        if "X" in f:
            del f["X"]
        kw = {"compression": "gzip", "compression_opts": 9, "shuffle": True, "chunks": (32, len(genes))}
        write_elem(f, "X", X, dataset_kwargs=kw)


def read_her2st_raw(path: str | os.PathLike, section: str) -> AnnData:
    """Parse one HER2ST section from the raw release files in folder ``path``."""
    folder = Path(path)
    counts_file = folder / f"{section}.tsv.gz"
    if not counts_file.exists():
        msg = f"{counts_file} not found: `path` must be the folder with the raw HER2ST files."
        raise FileNotFoundError(msg)
    counts = pd.read_csv(counts_file, sep="\t", index_col=0)
    xy = counts.index.str.split("x", expand=True).to_frame(index=False).astype(int).to_numpy()
    spot_ids = pd.Index([f"{x}x{y}" for x, y in xy])

    sel = pd.read_csv(folder / f"{section}_selection.tsv", sep="\t")
    sel.index = [f"{x}x{y}" for x, y in zip(sel["x"], sel["y"], strict=True)]
    sel = sel[~sel.index.duplicated()]
    keep = spot_ids.isin(sel.index)
    keep &= sel.reindex(spot_ids)["selected"].fillna(0).to_numpy() == 1
    counts, xy, spot_ids = counts.loc[keep], xy[keep], spot_ids[keep]
    sel = sel.loc[spot_ids]

    obs = pd.DataFrame(index=pd.Index([f"{section}_{s}" for s in spot_ids], name=None))
    obs["array_x"] = xy[:, 0]
    obs["array_y"] = xy[:, 1]
    obs["patient"] = pd.Categorical([section[0]] * len(obs))
    obs["section"] = pd.Categorical([section] * len(obs))

    clusters = pd.read_csv(folder / f"{section}-cluster-annotation.tsv.gz", sep="\t")
    clusters.index = [f"{x}x{y}" for x, y in zip(clusters["x"], clusters["y"], strict=True)]
    clusters = clusters[~clusters.index.duplicated()]
    obs["cluster"] = pd.Categorical(clusters["label"].reindex(spot_ids).to_numpy())

    labels = pd.Series(np.nan, index=spot_ids, dtype=object)
    lab_file = folder / f"{section}_labeled_coordinates.tsv"
    if lab_file.exists():
        lab = pd.read_csv(lab_file, sep="\t").dropna(subset=["x", "y"])
        lab.index = [
            f"{x}x{y}" for x, y in zip(np.rint(lab["x"]).astype(int), np.rint(lab["y"]).astype(int), strict=True)
        ]
        lab = lab[~lab.index.duplicated()]
        labels = lab["label"].reindex(spot_ids)
    obs["label"] = pd.Categorical(labels.to_numpy())

    X = sparse.csr_matrix(counts.to_numpy())
    X = X.astype(np.int32)
    var = pd.DataFrame(index=pd.Index(counts.columns.astype(str)))
    adata = AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = sel[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    adata.var_names_make_unique()
    return adata


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as an ``uint8`` RGB array (any size: the decompression-bomb limit is lifted)."""
    from PIL import Image

    if not Path(path).is_file():
        msg = f"Image file {path} not found."
        raise FileNotFoundError(msg)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def add_image(
    adata: AnnData, library_id: str, img: np.ndarray, *, scale: float, source: str, pitch_um: float = 200.0
) -> None:
    """Store an image in the Visium layout of ``uns['spatial'][library_id]`` (spot sizes from the grid pitch).

    ``scale``: image pixels per pixel of ``obsm['spatial']``. Refuses an image the spots do not fit in (a
    wrong resolution or another section's image).
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    height, width = img.shape[:2]
    inside = (
        (xy[:, 0] * scale >= 0) & (xy[:, 0] * scale < width) & (xy[:, 1] * scale >= 0) & (xy[:, 1] * scale < height)
    )
    if inside.mean() < 0.99:
        msg = (
            f"{(~inside).sum()} of {len(xy)} spots fall outside the {width} x {height} px image at scale {scale:g}:"
            " the image does not have the resolution of the spot positions (or is of another section)."
        )
        raise ValueError(msg)
    pitch = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1])) if len(xy) > 1 else float("nan")
    adata.uns.setdefault("spatial", {})[library_id] = {
        "images": {"hires": img},
        "scalefactors": {"tissue_hires_scalef": float(scale), "spot_diameter_fullres": pitch / 2},
        "metadata": {"microns_per_pixel": pitch_um / pitch, "source": source},
    }
