"""Tiling: square regions of spots (bags for MIL) and tiles of whole-slide images."""

from __future__ import annotations

import os
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg

from .. import _keys, _validate
from .._docs import inject_docs


@inject_docs
def tile_spots(
    adata: AnnData,
    /,
    *,
    size: float,
    spatial_key: str = _keys.SPATIAL,
    batch_key: str | None = None,
    min_size: int = 2,
    key_added: str = _keys.TILE_SPOTS,
    copy: bool = False,
) -> AnnData | None:
    """Group observations into square regions of the tissue (for example bags for :func:`sptl.tl.mil`).

    The plane is cut into squares of side ``size`` starting at the smallest coordinates (of each
    section, with ``batch_key``); every observation gets the id of the square it falls in.

    Parameters
    ----------
    {adata}
    size
        Side of the squares, in the units of ``obsm[spatial_key]`` (array positions give squares of
        ``size x size`` spots).
    {spatial_key}
    batch_key
        Column of ``.obs`` with the section of each observation; squares never mix sections and their
        ids start with the section.
    min_size
        Squares with fewer observations get no id (missing value).
    {key_added}
    {copy}

    Returns
    -------
    ``None``, or the annotated copy if ``copy=True``. Written: ``obs[key_added]``, the region id
    (categorical, ``"{section}_{column}_{row}"``; missing in squares below ``min_size``), and
    ``uns[key_added]["params"]``.

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.her2st("B1")
    >>> adata.obsm["array"] = adata.obs[["array_x", "array_y"]].to_numpy()
    >>> sptl.pp.tile_spots(adata, size=4, spatial_key="array", batch_key="section")
    >>> adata.obs["sptl_tile"].nunique()
    23
    """
    start = perf_counter()
    _validate.check_adata(adata, "adata")
    coords = _validate.check_spatial(adata, spatial_key, "adata")[:, :2]
    if not np.isfinite(size) or size <= 0:
        msg = f"`size` must be a positive number, got {size!r}."
        raise ValueError(msg)
    if int(min_size) < 1:
        msg = f"`min_size` must be a positive integer, got {min_size!r}."
        raise ValueError(msg)
    if batch_key is None:
        batch = pd.Series("", index=adata.obs_names)
    elif batch_key not in adata.obs:
        msg = f"`adata.obs[{batch_key!r}]` not found (obs columns: {list(adata.obs.columns)}): pass `batch_key=`."
        raise KeyError(msg)
    else:
        batch = adata.obs[batch_key].astype(str)
        if adata.obs[batch_key].isna().any():
            msg = f"`adata.obs[{batch_key!r}]` has missing values: every observation needs a section."
            raise ValueError(msg)
    ids = np.empty(adata.n_obs, dtype=object)
    for b in pd.unique(batch):
        rows = np.flatnonzero(batch.to_numpy() == b)
        cell = np.floor((coords[rows] - coords[rows].min(axis=0)) / size).astype(np.int64)
        prefix = f"{b}_" if batch_key is not None else ""
        ids[rows] = [f"{prefix}{x}_{y}" for x, y in cell]
    counts = pd.Series(ids).map(pd.Series(ids).value_counts()).to_numpy()
    ids[counts < min_size] = None
    labels = pd.Categorical(ids, categories=pd.unique(ids[pd.notna(ids)]))

    out = adata.copy() if copy else adata
    out.obs[key_added] = labels
    out.uns[key_added] = {
        "params": {"size": float(size), "spatial_key": spatial_key, "batch_key": batch_key, "min_size": int(min_size)}
    }
    logg.info(
        f"cut {adata.n_obs} observations into {len(labels.categories)} squares of side {size}"
        f" ({int(pd.isna(ids).sum())} left out)\n"
        f"    finished ({perf_counter() - start:.1f}s): added 'obs[{key_added!r}]', 'uns[{key_added!r}]'"
    )
    return out if copy else None


#: Suffixes read through OpenSlide (the ``wsi`` extra) rather than tifffile / PIL.
OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
#: Side, in level-0 pixels, of the blocks read at a time when building the tissue mask.
BLOCK = 4096
#: Mask pixels along one tile side (sets the thumbnail resolution of the tissue mask).
MASK_PER_TILE = 8


class _Slide:
    """Region reader over an image: an array, a TIFF (by region through zarr), OpenSlide, or PIL."""

    def __init__(self, image: Any) -> None:
        self.path: str | None = None
        self.reader = "array"
        self.mpp: float | None = None
        self._close: list[Any] = []
        self._openslide = None
        if isinstance(image, str | os.PathLike):
            path = Path(image)
            if not path.exists():
                msg = f"Image file {path} not found."
                raise FileNotFoundError(msg)
            self.path = str(path.resolve())
            suffix = path.suffix.lower()
            if suffix in OPENSLIDE_SUFFIXES:
                self._open_openslide(path)
            elif suffix in (".tif", ".tiff", ".btf", ".ome.tif"):
                self._open_tiff(path)
            else:
                from PIL import Image

                Image.MAX_IMAGE_PIXELS = None
                with Image.open(path) as im:
                    self.array = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "RGBA") else im)
                self.reader = "PIL"
        elif hasattr(image, "shape") and hasattr(image, "__getitem__"):
            self.array = image
        else:
            msg = f"`image` must be an image array or the path of an image file, got {type(image).__name__}."
            raise TypeError(msg)
        if self._openslide is None:
            shape = tuple(self.array.shape)
            if len(shape) != 3 or shape[2] not in (3, 4):
                msg = (
                    f"`image` has shape {shape}: expected (height, width, 3) RGB or (height, width, 4) RGBA;"
                    " convert greyscale or multiplexed images to RGB first."
                )
                raise ValueError(msg)
            self.height, self.width = int(shape[0]), int(shape[1])

    def _open_tiff(self, path: Path) -> None:
        import tifffile
        import zarr

        tif = tifffile.TiffFile(path)
        self._close.append(tif)
        series = tif.series[0]
        self.array = zarr.open(series.aszarr(level=0), mode="r")
        self.reader = "tifffile (zarr, by region)"
        page = series.levels[0].pages[0] if hasattr(series, "levels") else series.pages[0]
        tags = page.tags
        if "XResolution" in tags and "ResolutionUnit" in tags:
            num, den = tags["XResolution"].value
            unit = int(tags["ResolutionUnit"].value)
            per_um = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre
            if per_um is not None and num > 0 and den > 0:
                self.mpp = per_um / (num / den)

    def _open_openslide(self, path: Path) -> None:
        try:
            import openslide
        except ImportError as e:
            msg = (
                f"Reading {path.suffix} slides needs OpenSlide: `pip install 'sptl[wsi]'` (installs"
                " openslide-python and openslide-bin)."
            )
            raise ImportError(msg) from e
        slide = openslide.OpenSlide(str(path))
        self._openslide = slide
        self._close.append(slide)
        self.reader = "openslide"
        self.width, self.height = (int(v) for v in slide.dimensions)
        mpp = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        self.mpp = float(mpp) if mpp else None

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """RGB pixels of rows ``y0:y1`` and columns ``x0:x1`` (level 0)."""
        if self._openslide is not None:
            region = self._openslide.read_region((x0, y0), 0, (x1 - x0, y1 - y0))
            return np.asarray(region.convert("RGB"))
        return np.asarray(self.array[y0:y1, x0:x1])[..., :3]

    def thumbnail(self, step: int) -> np.ndarray:
        """Every ``step``-th pixel in both directions, read block by block (bounded memory)."""
        if self._openslide is not None:
            size = (max(1, -(-self.width // step)), max(1, -(-self.height // step)))
            thumb = np.asarray(self._openslide.get_thumbnail(size).convert("RGB"))
            from skimage.transform import resize

            out = resize(thumb, (size[1], size[0]), preserve_range=True, anti_aliasing=False)
            return out.astype(thumb.dtype)
        block = step * max(1, BLOCK // step)
        out = None
        for y0 in range(0, self.height, block):
            for x0 in range(0, self.width, block):
                part = self.read(y0, min(y0 + block, self.height), x0, min(x0 + block, self.width))[::step, ::step]
                if out is None:
                    out = np.empty((-(-self.height // step), -(-self.width // step), 3), dtype=part.dtype)
                out[y0 // step : y0 // step + part.shape[0], x0 // step : x0 // step + part.shape[1]] = part
        return out

    def close(self) -> None:
        for obj in self._close:
            obj.close()


def _as_unit_float(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float32) / 255.0
    if rgb.dtype == np.uint16:
        return rgb.astype(np.float32) / 65535.0
    return np.clip(rgb.astype(np.float32), 0.0, 1.0)


def tile_image(
    image: np.ndarray | str | os.PathLike,
    /,
    *,
    tile_size: int,
    stride: int | None = None,
    mpp: float | None = None,
    image_mpp: float | None = None,
    tissue_threshold: float = 0.5,
    saturation_threshold: float | None = None,
    slide_id: str | None = None,
    key_added: str = _keys.PATCHES,
) -> AnnData:
    """Cut a (whole-slide) H&E image into tiles on tissue; each tile becomes an observation.

    A tissue mask is computed on a thumbnail: pixels whose (slightly smoothed) saturation (HSV)
    exceeds a threshold (Otsu's by default) are tissue, since glass and background are grey or
    white; holes enclosed by tissue are filled. The image is cut
    into a grid of square tiles, and those with at least ``tissue_threshold`` tissue are kept. Pixels
    are never all in memory for TIFF files (tiled or not) and OpenSlide slides: the thumbnail is read
    block by block, and the tiles themselves are cropped later, lazily, by
    :class:`sptl.pp.PatchDataset` / :func:`sptl.tl.embed_histology` from the record this function writes.

    Parameters
    ----------
    image
        An ``(height, width, 3 or 4)`` array (``uint8``, ``uint16`` or float in [0, 1]; memory-mapped
        arrays and zarr arrays work), or the path of an image file: TIFF (read by region through
        tifffile + zarr), PNG / JPEG (PIL), or a whole-slide format of OpenSlide (``.svs``,
        ``.ndpi``, ``.mrxs``...; needs the ``wsi`` extra: ``pip install 'sptl[wsi]'``).
    tile_size
        Side of the tiles in pixels at the resolution ``mpp`` (the image's own when ``mpp=None``).
    stride
        Distance between the corners of neighbouring tiles, in the same pixels; ``None`` means
        ``tile_size`` (tiles touch, no overlap).
    mpp
        Micrometres per pixel the tiles should have (0.5 is about 20x); tiles are then cut from
        ``tile_size * mpp / image_mpp`` image pixels and resized to ``tile_size`` when read.
    image_mpp
        Micrometres per pixel of the image; ``None`` reads it from the file (TIFF resolution tags,
        OpenSlide properties). Needed with ``mpp``.
    tissue_threshold
        Fewest fraction of a tile's area that must be tissue for the tile to be kept (0 keeps all).
    saturation_threshold
        Saturation (0-1) above which a pixel is tissue; ``None`` picks it by Otsu's method. Set it for
        images that are almost all tissue, where Otsu would split the tissue itself.
    slide_id
        Name of the slide (``obs['slide']`` and the prefix of the tile names); ``None`` uses the file
        name without suffix, or ``"slide"`` for an array.
    key_added
        Key in ``.uns`` of the tile record (the default is the one :func:`sptl.tl.embed_histology`
        reads, ``patches_key="patches"``).

    Returns
    -------
    A new AnnData with one observation per kept tile, named ``"{slide_id}_{x}_{y}"``:

    - ``X``: one variable, ``tissue_fraction`` (also in ``obs``),
    - ``obs['slide']`` (categorical), ``obs['x']``, ``obs['y']`` (top-left corner in image pixels) and
      ``obs['tissue_fraction']``,
    - ``obsm['spatial']``: tile centres (x, y) in image pixels,
    - ``uns[key_added]["params"]``: the patch record of :func:`sptl.pp.extract_patches`
      (``image_path``, or ``library_id`` / ``img_key`` for an array; ``spatial_key``, ``scale_factor``,
      ``patch_size_px``, ``patch_size_um``, ``size``, ``border``...) plus the tiling parameters
      (``tile_size``, ``stride``, ``mpp``, ``image_mpp``, ``tissue_threshold``, the
      ``saturation_threshold`` used, ``image_shape``, ``reader``),
    - ``uns['spatial'][slide_id]``: ``images['lowres']`` the thumbnail the mask was computed on (and,
      for an array, ``images['hires']`` the array itself), ``scalefactors`` mapping ``obsm['spatial']``
      onto them (``tissue_lowres_scalef``, ``tissue_hires_scalef``, ``spot_diameter_fullres`` = tile
      side), so squidpy / scanpy plots draw the tiles on the slide.

    Examples
    --------
    >>> import sptl
    >>> visium = sptl.datasets.visium_fixture()
    >>> he = visium.uns["spatial"]["custom"]["images"]["lowres"]
    >>> tiles = sptl.pp.tile_image(he, tile_size=32, slide_id="brain")
    >>> tiles.obs["slide"].iloc[0], tiles.uns["patches"]["params"]["patch_size_px"]
    ('brain', 32.0)
    >>> 100 < tiles.n_obs < 18 * 18  # of the 18 x 18 grid, the tiles on tissue
    True
    """
    start = perf_counter()
    for name, value in (("tile_size", tile_size), ("stride", tile_size if stride is None else stride)):
        if not float(value) >= 1:
            msg = f"`{name}` must be at least one pixel, got {value!r}."
            raise ValueError(msg)
    if not 0 <= tissue_threshold <= 1:
        msg = f"`tissue_threshold` must lie in [0, 1], got {tissue_threshold!r}."
        raise ValueError(msg)
    if saturation_threshold is not None and not 0 <= saturation_threshold < 1:
        msg = f"`saturation_threshold` must lie in [0, 1), got {saturation_threshold!r}."
        raise ValueError(msg)
    for name, value in (("mpp", mpp), ("image_mpp", image_mpp)):
        if value is not None and not value > 0:
            msg = f"`{name}` must be positive, got {value!r}."
            raise ValueError(msg)
    slide = _Slide(image)
    try:
        image_mpp = image_mpp if image_mpp is not None else slide.mpp
        if mpp is not None and image_mpp is None:
            msg = (
                "`mpp=` needs the image's own micrometres per pixel, which the image does not record: pass"
                " `image_mpp=`, or `mpp=None` to tile at the image's resolution."
            )
            raise ValueError(msg)
        factor = 1.0 if mpp is None else mpp / image_mpp
        side = max(1, round(tile_size * factor))
        step = max(1, round((tile_size if stride is None else stride) * factor))
        if side > min(slide.height, slide.width):
            msg = (
                f"Tiles of {side} image pixels do not fit the {slide.width} x {slide.height} image: pass a smaller"
                " `tile_size` (or a larger `mpp`)."
            )
            raise ValueError(msg)
        slide_id = slide_id or (Path(slide.path).stem if slide.path else "slide")
        logg.info(f"tiling a {slide.width} x {slide.height} image ({slide.reader}) into tiles of {side} px")
        thumb_step = max(1, side // MASK_PER_TILE)
        thumb = slide.thumbnail(thumb_step)
    finally:
        slide.close()
    mask, threshold = _tissue_mask(thumb, saturation_threshold)
    xs = np.arange(0, slide.width - side + 1, step)
    ys = np.arange(0, slide.height - side + 1, step)
    gx, gy = (g.ravel() for g in np.meshgrid(xs, ys))
    fraction = _box_fraction(mask, gx, gy, side, slide.height / thumb.shape[0], slide.width / thumb.shape[1])
    keep = fraction >= tissue_threshold if tissue_threshold > 0 else np.ones(len(gx), dtype=bool)
    if not keep.any():
        msg = (
            f"No tile holds {tissue_threshold:.0%} tissue (saturation threshold {threshold:.3f}): lower"
            " `tissue_threshold` or `saturation_threshold`, or check that the image is an H&E image."
        )
        raise ValueError(msg)
    gx, gy, fraction = gx[keep], gy[keep], fraction[keep].astype(np.float32)

    names = pd.Index([f"{slide_id}_{x}_{y}" for x, y in zip(gx, gy, strict=True)])
    obs = pd.DataFrame(
        {
            _keys.SLIDE: pd.Categorical([slide_id] * len(gx)),
            "x": gx.astype(np.int64),
            "y": gy.astype(np.int64),
            "tissue_fraction": fraction,
        },
        index=names,
    )
    tiles = AnnData(X=fraction[:, None].copy(), obs=obs, var=pd.DataFrame(index=["tissue_fraction"]))
    tiles.obsm[_keys.SPATIAL] = np.column_stack([gx + side / 2, gy + side / 2]).astype(np.float64)
    is_array = slide.path is None and isinstance(image, np.ndarray)
    images = {"lowres": thumb}
    scalefactors = {"tissue_lowres_scalef": 1.0 / thumb_step, "spot_diameter_fullres": float(side)}
    if is_array:
        images["hires"] = image
        scalefactors["tissue_hires_scalef"] = 1.0
    tiles.uns[_keys.SPATIAL_UNS] = {slide_id: {"images": images, "scalefactors": scalefactors}}
    tiles.uns[key_added] = {
        "params": {
            "library_id": slide_id,
            "img_key": "hires" if is_array else None,
            "image_path": slide.path,
            "spatial_key": _keys.SPATIAL,
            "scale_factor": 1.0,
            "patch_size": float(tile_size),
            "unit": "px",
            "patch_size_px": float(side),
            "patch_size_um": None if image_mpp is None else float(side * image_mpp),
            "size": int(tile_size),
            "border": "pad",
            "stain_norm": None,
            "stain_matrix": None,
            "stain_max": None,
            "tile_size": int(tile_size),
            "stride": int(tile_size if stride is None else stride),
            "mpp": mpp,
            "image_mpp": image_mpp,
            "tissue_threshold": float(tissue_threshold),
            "saturation_threshold": float(threshold),
            "image_shape": [slide.height, slide.width],
            "reader": slide.reader,
        }
    }
    logg.info(
        f"    kept {len(gx)} of {keep.size} tiles ({len(gx) / keep.size:.0%}) on tissue\n"
        f"    finished ({perf_counter() - start:.1f}s): a new AnnData of tiles with 'obsm['spatial']',"
        f" 'uns[{key_added!r}]', 'uns['spatial']'"
    )
    return tiles


def _tissue_mask(thumb: np.ndarray, threshold: float | None) -> tuple[np.ndarray, float]:
    """Tissue pixels of a thumbnail: smoothed saturation above ``threshold`` (Otsu's when ``None``), holes filled."""
    from scipy.ndimage import binary_fill_holes, gaussian_filter
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    saturation = rgb2hsv(_as_unit_float(thumb[..., :3]))[..., 1]
    saturation = gaussian_filter(saturation, sigma=MASK_PER_TILE / 4)
    if threshold is None:
        threshold = float(threshold_otsu(saturation)) if np.ptp(saturation) > 0 else 1.0
    return binary_fill_holes(saturation > threshold), float(threshold)


def _box_fraction(
    mask: np.ndarray, x: np.ndarray, y: np.ndarray, side: int, scale_y: float, scale_x: float
) -> np.ndarray:
    """Mean of ``mask`` over each tile (tile corners ``x``, ``y`` and ``side`` in image pixels)."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.float64)
    integral[1:, 1:] = mask.cumsum(axis=0).cumsum(axis=1)
    r0 = np.clip(np.floor(y / scale_y).astype(int), 0, mask.shape[0])
    c0 = np.clip(np.floor(x / scale_x).astype(int), 0, mask.shape[1])
    r1 = np.clip(np.maximum(np.ceil((y + side) / scale_y).astype(int), r0 + 1), 0, mask.shape[0])
    c1 = np.clip(np.maximum(np.ceil((x + side) / scale_x).astype(int), c0 + 1), 0, mask.shape[1])
    total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    return total / np.maximum((r1 - r0) * (c1 - c0), 1)
