"""Synthetic H&E-like tissue whose image texture and expression share hidden tissue types."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import ndimage, signal, sparse

#: Names of the hidden tissue types, in order (more types are called ``"type_5"``...).
TISSUE_TYPES = ("epithelium", "stroma", "immune", "adipose", "necrosis")
#: Stain vectors (optical density per unit concentration, RGB) of haematoxylin and eosin (Ruifrok & Johnston).
_H = np.array([0.65, 0.70, 0.29])
_E = np.array([0.07, 0.99, 0.11])
#: Per type: nuclei per 1000 px^2, nucleus radius (px), eosin concentration, stripe strength, nucleus darkness.
_TEXTURE = {
    "epithelium": (5.0, 3.2, 0.45, 0.0, 0.9),
    "stroma": (1.2, 2.0, 0.75, 0.35, 0.7),
    "immune": (12.0, 1.6, 0.35, 0.0, 1.3),
    "adipose": (0.4, 2.0, 0.10, 0.0, 0.6),
    "necrosis": (3.0, 1.2, 0.55, 0.0, 0.35),
}
LIBRARY_ID = "synthetic"


def synthetic_tissue(
    *,
    n_spots: int = 600,
    n_types: int = 4,
    n_genes: int = 200,
    n_markers: int = 12,
    spot_diameter: int = 24,
    stain_shift: float = 0.1,
    noise: float = 1.0,
    seed: int = 0,
    path: str | os.PathLike | None = None,
) -> AnnData:
    """Synthetic Visium-like section: H&E-like image and counts driven by the same hidden tissue types.

    Smooth random fields cut the section into contiguous regions of ``n_types`` hidden tissue types
    (epithelium, stroma, immune, adipose, necrosis...). Each type has its own image texture (nucleus
    density and size, eosin intensity, fibre stripes in stroma) rendered with haematoxylin and eosin
    absorption (Beer-Lambert), and its own marker genes. A second hidden, smooth "cellularity"
    field raises the nucleus density and a set of proliferation genes together, so image and
    expression also agree within a type. Counts are negative binomial. For learning image-expression
    models where the right answer is known; see :func:`visium_fixture` and
    :func:`visium_dentate_gyrus` for real H&E.

    Parameters
    ----------
    n_spots
        Approximate number of spots (a hexagonal Visium-like lattice).
    n_types
        Number of hidden tissue types, 2 to 8.
    n_genes
        Number of genes (at least ``n_types * n_markers + 10``).
    n_markers
        Marker genes per tissue type.
    spot_diameter
        Spot diameter in image pixels (spots are ``1.33 * spot_diameter`` apart).
    stain_shift
        Section-wide random change of the stain vectors and intensities (stain batch effect).
    noise
        Scale of the texture randomness (1 = default).
    seed
        Random seed: the same seed gives the same section; different seeds give different layouts
        and stain shifts (use them as separate sections).
    path
        An ``.h5ad`` file used as a cache: read if it exists and was made with the same arguments,
        otherwise the section is generated and written there. ``None`` generates it in memory.

    Returns
    -------
    Spots x genes, raw integer counts (sparse CSR) in ``.X``, with

    - ``obs['tissue_type']``: the hidden type of each spot (categorical), ``obs['cellularity']``:
      the hidden continuous factor in [0, 1],
    - ``obsm['spatial']``: spot centres in image pixels (x, y),
    - ``uns['spatial']['synthetic']``: ``'images'`` (``'hires'``, ``uint8`` RGB) and
      ``'scalefactors'`` (``tissue_hires_scalef`` = 1, ``spot_diameter_fullres``), as in Visium data,
    - ``uns['synthetic']``: ``'markers'`` (tissue type -> marker genes), ``'proliferation_genes'``
      and ``'params'``.

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.synthetic_tissue(n_spots=200, seed=1)
    >>> adata.obs["tissue_type"].cat.categories.tolist()
    ['epithelium', 'stroma', 'immune', 'adipose']
    >>> adata.uns["spatial"]["synthetic"]["images"]["hires"].dtype
    dtype('uint8')
    """
    params = {
        "n_spots": int(n_spots),
        "n_types": int(n_types),
        "n_genes": int(n_genes),
        "n_markers": int(n_markers),
        "spot_diameter": int(spot_diameter),
        "stain_shift": float(stain_shift),
        "noise": float(noise),
        "seed": int(seed),
    }
    if not 2 <= params["n_types"] <= 8:
        msg = f"`n_types` must lie in [2, 8], got {n_types!r}."
        raise ValueError(msg)
    if params["n_genes"] < params["n_types"] * params["n_markers"] + 10:
        msg = f"`n_genes={n_genes}` is too small for {n_types} types x {n_markers} markers plus 10 other genes."
        raise ValueError(msg)
    if params["n_spots"] < 10 or params["spot_diameter"] < 4:
        msg = f"`n_spots` must be >= 10 and `spot_diameter` >= 4 px, got {n_spots!r} and {spot_diameter!r}."
        raise ValueError(msg)
    if path is not None:
        path = Path(path)
        if path.exists():
            cached = ad.read_h5ad(path)
            stored = cached.uns.get("synthetic", {}).get("params", {})
            if {k: v.item() if hasattr(v, "item") else v for k, v in stored.items()} == params:
                return cached
    adata = _generate(**params)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(path, compression="gzip")
    return adata


def gene_names(n: int) -> pd.Index:
    """``n`` distinct word-like gene names (``"BAKETO"``...), the same for every seed, so sections share genes.

    Names of syllables rather than numbers, so that gene sentences tokenise into a few word pieces as real
    gene symbols do.
    """
    rng = np.random.default_rng(20240501)
    consonants, vowels = list("BDFGKLMNPRSTVZ"), list("AEIOU")
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(3))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return pd.Index(names)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth Gaussian random field with unit variance, correlation length ``scale`` pixels."""
    small = (max(2, int(shape[0] / scale * 4)), max(2, int(shape[1] / scale * 4)))
    field = ndimage.gaussian_filter(rng.standard_normal(small), sigma=2.0, mode="wrap")
    field = ndimage.zoom(field, (shape[0] / small[0], shape[1] / small[1]), order=1)[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-12)


def _disk(radius: float) -> np.ndarray:
    r = int(np.ceil(radius)) + 1
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return np.clip(radius + 0.5 - np.sqrt(xx**2 + yy**2), 0, 1)


def _generate(
    *,
    n_spots: int,
    n_types: int,
    n_genes: int,
    n_markers: int,
    spot_diameter: int,
    stain_shift: float,
    noise: float,
    seed: int,
) -> AnnData:
    rng = np.random.default_rng(seed)
    types = [TISSUE_TYPES[k] if k < len(TISSUE_TYPES) else f"type_{k + 1}" for k in range(n_types)]
    # hexagonal lattice of spots
    spacing = spot_diameter * 4 / 3
    n_cols = int(np.ceil(np.sqrt(n_spots * 2 / np.sqrt(3))))
    n_rows = int(np.ceil(n_spots / n_cols))
    margin = spot_diameter * 1.5
    width = int(np.ceil(2 * margin + spacing * (n_cols - 0.5)))
    height = int(np.ceil(2 * margin + spacing * np.sqrt(3) / 2 * (n_rows - 1)))
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    x = margin + spacing * (cols + 0.5 * (rows % 2))
    y = margin + spacing * np.sqrt(3) / 2 * rows
    coords = np.column_stack([x, y])[:n_spots]

    # hidden fields: tissue type (argmax of smooth fields) and cellularity
    region = 6 * spacing
    fields = np.stack([_smooth_field(rng, (height, width), region) for _ in range(n_types)])
    type_map = fields.argmax(axis=0)
    cell_map = 1 / (1 + np.exp(-1.5 * _smooth_field(rng, (height, width), 3 * spacing)))

    # stain vectors of this section (batch effect)
    h_vec = np.clip(_H + stain_shift * rng.normal(0, 0.3, 3), 0.05, None)
    e_vec = np.clip(_E + stain_shift * rng.normal(0, 0.3, 3), 0.02, None)
    intensity = np.clip(1 + stain_shift * rng.normal(0, 1, 2), 0.5, 2.0)

    # texture per type
    h_conc = np.zeros((height, width))
    e_conc = np.zeros((height, width))
    yy, xx = np.mgrid[0:height, 0:width]
    for k, name in enumerate(types):
        dens, rad, eosin, stripes, dark = _TEXTURE.get(
            name, tuple(rng.uniform([1, 1.5, 0.2, 0, 0.5], [8, 3, 0.8, 0.4, 1.2]))
        )
        mask = type_map == k
        if not mask.any():
            continue
        lam = dens / 1000 * (0.4 + 1.2 * cell_map)
        points = rng.random((height, width)) < lam * (0.7 + 0.3 * noise * rng.random((height, width)))
        nuclei = signal.fftconvolve(points.astype(float), _disk(rad), mode="same")
        nuclei = np.clip(nuclei, 0, 1) * dark
        theta = rng.uniform(0, np.pi)
        wave = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) / 2.5 + 2 * _smooth_field(rng, (height, width), 20))
        e_k = eosin * (1 + stripes * wave) + 0.08 * noise * _smooth_field(rng, (height, width), 6)
        h_conc[mask] = nuclei[mask] + 0.05
        e_conc[mask] = np.clip(e_k[mask], 0.02, None)
    h_conc = ndimage.gaussian_filter(h_conc, 0.7) * intensity[0]
    e_conc = ndimage.gaussian_filter(e_conc, 0.7) * intensity[1]
    od = h_conc[..., None] * h_vec + e_conc[..., None] * e_vec
    rgb = 255 * np.exp(-od) + rng.normal(0, 3 * noise, od.shape)
    image = np.clip(rgb, 0, 255).astype(np.uint8)

    # expression
    ix = np.clip(np.rint(coords).astype(int), 0, [width - 1, height - 1])
    spot_type = type_map[ix[:, 1], ix[:, 0]]
    # average cellularity over the spot disk
    cell_smooth = ndimage.uniform_filter(cell_map, size=spot_diameter)
    cellularity = cell_smooth[ix[:, 1], ix[:, 0]]
    genes = gene_names(n_genes)
    base = rng.lognormal(mean=0.0, sigma=1.0, size=n_genes) * 0.5
    effect = np.zeros((n_types, n_genes))
    markers = {}
    for k, name in enumerate(types):
        idx = np.arange(k * n_markers, (k + 1) * n_markers)
        effect[k, idx] = rng.uniform(1.5, 3.0, n_markers)
        markers[name] = genes[idx].tolist()
    prolif = np.arange(n_types * n_markers, n_types * n_markers + 10)
    beta = np.zeros(n_genes)
    beta[prolif] = rng.uniform(1.5, 2.5, len(prolif))
    log_mu = np.log(base)[None, :] + effect[spot_type] + beta[None, :] * (cellularity[:, None] - 0.5)
    library = rng.lognormal(mean=0.0, sigma=0.3, size=(len(coords), 1))
    mu = np.exp(log_mu) * library
    dispersion = 5.0
    counts = rng.poisson(rng.gamma(dispersion, mu / dispersion))

    obs = pd.DataFrame(index=pd.Index([f"spot_{i:05d}" for i in range(len(coords))]))
    obs["tissue_type"] = pd.Categorical.from_codes(spot_type, categories=types)
    obs["cellularity"] = cellularity.astype(np.float32)
    adata = AnnData(X=sparse.csr_matrix(counts.astype(np.int32)), obs=obs, var=pd.DataFrame(index=genes))
    adata.obsm["spatial"] = coords.astype(np.float64)
    adata.uns["spatial"] = {
        LIBRARY_ID: {
            "images": {"hires": image},
            "scalefactors": {
                "tissue_hires_scalef": 1.0,
                "spot_diameter_fullres": float(spot_diameter),
            },
            "metadata": {"source": "sptl.datasets.synthetic_tissue"},
        }
    }
    adata.uns["synthetic"] = {
        "markers": markers,
        "proliferation_genes": genes[prolif].tolist(),
        "params": {
            "n_spots": n_spots,
            "n_types": n_types,
            "n_genes": n_genes,
            "n_markers": n_markers,
            "spot_diameter": spot_diameter,
            "stain_shift": stain_shift,
            "noise": noise,
            "seed": seed,
        },
    }
    return adata
