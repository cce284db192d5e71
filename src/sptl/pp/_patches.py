"""Image patches around every spot, kept out of the AnnData as a lazy torch Dataset."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from scanpy import logging as logg

from .. import _keys, _validate
from .._docs import inject_docs

UNITS = ("spot", "px", "um")
BORDERS = ("pad", "reflect", "error")
STAIN_NORMS = (None, "macenko")
#: Diameter of a 10x Visium spot in micrometres (sets the micrometres per pixel from the scale factors).
VISIUM_SPOT_UM = 55.0
#: Reference H&E stain vectors (optical density, columns haematoxylin and eosin) and their 99th percentile
#: concentrations that Macenko normalisation maps every image onto (the values of Macenko et al. 2009 as used
#: by staintools / torchstain).
MACENKO_REF_HE = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
MACENKO_REF_MAX = (1.9705, 1.0308)
#: Background intensity of transmitted light for optical densities.
_IO = 240.0


class PatchDataset(torch.utils.data.Dataset):
    """Lazy image patches around points of an image; item ``i`` is a ``(3, size, size)`` float tensor in [0, 1].

    Nothing is cropped until an item is requested; an image given as a file path is read on first use
    (TIFF files memory-mapped when possible). Build one with :func:`sptl.pp.extract_patches` and
    ``return_dataset=True``, or from an AnnData that went through it with :meth:`from_adata`.

    Parameters
    ----------
    image
        ``(height, width, 3 or 4)`` array or array-like such as zarr (``uint8``, ``uint16`` or float in
        [0, 1]; an alpha channel is dropped) or the path of an image file.
    centers
        ``(n, 2)`` patch centres (x = column, y = row) in pixels of ``image``.
    patch_size_px
        Side of the square crop in pixels of ``image``.
    size
        Side of the returned patches in pixels (crops are resized with antialiasing); ``None`` keeps the
        crop's own size.
    border
        Patches crossing the image border are filled with white (``"pad"``) or mirrored (``"reflect"``).
    stain
        ``None`` or the fitted Macenko stain matrix and maximum concentrations of the image
        (``{"matrix": 3x2, "max": 2}``) to map each patch onto the reference stains.
    transform
        Callable applied to every patch tensor (e.g. an encoder's normalisation).
    names
        Observation names of the patches (:attr:`names`).
    """

    def __init__(
        self,
        image: np.ndarray | str | os.PathLike,
        centers: np.ndarray,
        *,
        patch_size_px: float,
        size: int | None = None,
        border: str = "pad",
        stain: Mapping[str, Any] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        names: list[str] | None = None,
    ) -> None:
        is_path = isinstance(image, str | os.PathLike)
        self._image = None if is_path else image
        self.image_path = str(image) if is_path else None
        self.centers = np.asarray(centers, dtype=np.float64)
        self.side = max(1, round(float(patch_size_px)))
        self.size = self.side if size is None else int(size)
        self.border = border
        self.stain = None if stain is None else {k: np.asarray(v, dtype=np.float64) for k, v in stain.items()}
        self.transform = transform
        self.names = names

    @property
    def image(self) -> Any:
        """The image (opened from :attr:`image_path` on first access)."""
        if self._image is None:
            self._image = read_image(self.image_path)
        return self._image

    def __len__(self) -> int:
        return len(self.centers)

    def __getstate__(self) -> dict[str, Any]:
        # worker processes reopen an image file themselves instead of receiving an open handle
        state = dict(self.__dict__)
        if self.image_path is not None:
            state["_image"] = None
        return state

    def __getitem__(self, i: int) -> torch.Tensor:
        crop = crop_patch(self.image, self.centers[i], self.side, self.border)
        if self.stain is not None:
            crop = macenko_normalize(crop, self.stain["matrix"], self.stain["max"])
        patch = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))
        if self.size != self.side:
            patch = torch.nn.functional.interpolate(
                patch[None], size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )[0].clamp_(0, 1)
        return patch if self.transform is None else self.transform(patch)

    @classmethod
    def from_adata(cls, adata: AnnData, key: str = _keys.PATCHES, **kwargs: Any) -> PatchDataset:
        """Patches of ``adata`` as described by ``uns[key]["params"]`` (written by :func:`extract_patches`).

        ``kwargs`` are passed on to the constructor (e.g. ``transform=``). Raises a KeyError naming the
        missing entry when the record or the image it points to is absent.
        """
        if key not in adata.uns or "params" not in adata.uns[key]:
            msg = (
                f"`adata.uns[{key!r}]['params']` not found: run `sptl.pp.extract_patches(adata, key_added={key!r})`"
                " (or `sptl.pp.tile_image`) first, or pass the key it wrote."
            )
            raise KeyError(msg)
        p = adata.uns[key]["params"]
        for field in ("spatial_key", "patch_size_px"):
            if field not in p:
                msg = (
                    f"`adata.uns[{key!r}]['params']` lacks {field!r}: it was not written by `sptl.pp.extract_patches`."
                )
                raise KeyError(msg)
        if p.get("image_path") is not None:
            image = p["image_path"]
            if not Path(image).exists():
                msg = f"The image file of `adata.uns[{key!r}]`, {image}, no longer exists."
                raise FileNotFoundError(msg)
        else:
            image = _uns_image(adata, p.get("library_id"), p.get("img_key"))[2]
        coords = _validate.check_spatial(adata, p["spatial_key"])[:, :2]
        stain = None if p.get("stain_matrix") is None else {"matrix": p["stain_matrix"], "max": p["stain_max"]}
        return cls(
            image,
            coords * float(p.get("scale_factor", 1.0)),
            patch_size_px=float(p["patch_size_px"]),
            size=None if p.get("size") is None else int(p["size"]),
            border=p.get("border", "pad"),
            stain=stain,
            names=adata.obs_names.tolist(),
            **kwargs,
        )


@inject_docs
def extract_patches(
    adata: AnnData,
    /,
    *,
    library_id: str | None = None,
    img_key: str | None = None,
    image: np.ndarray | str | os.PathLike | None = None,
    spatial_key: str = _keys.SPATIAL,
    scale_factor: float | None = None,
    patch_size: float | None = None,
    unit: str = "spot",
    mpp: float | None = None,
    size: int | None = 224,
    border: str = "pad",
    stain_norm: str | None = None,
    return_dataset: bool = False,
    key_added: str = _keys.PATCHES,
    copy: bool = False,
) -> AnnData | PatchDataset | None:
    """Describe the image patch around every spot, for image encoders and CLIP models.

    The patch of a spot is the square of side ``patch_size`` centred on ``obsm[spatial_key]`` mapped
    onto the image by the scale factor (Visium / squidpy convention: coordinates are full-resolution
    pixels, ``uns['spatial'][library_id]['scalefactors'][f"tissue_{img_key}_scalef"]`` maps them onto
    ``uns['spatial'][library_id]['images'][img_key]``). Patches are not stored in the AnnData: the
    parameters go to ``uns[key_added]`` and :class:`sptl.pp.PatchDataset` crops them lazily, so
    whole-slide images need no more memory than one batch of patches.

    Parameters
    ----------
    {adata}
    library_id
        Library in ``uns['spatial']``; ``None`` takes the only one there.
    img_key
        Image of the library (``"hires"``, ``"lowres"``...); ``None`` takes ``"hires"`` when present,
        else ``"lowres"``.
    image
        Use this image instead of ``uns['spatial']``: an ``(height, width, 3 or 4)`` array, which is
        stored in ``uns['spatial'][library_id]['images'][img_key]`` (``library_id`` defaults to
        ``"image"``, ``img_key`` to ``"hires"``), or the path of an image file (PNG, JPEG, TIFF), which is
        recorded and read lazily.
    spatial_key
        Key in ``.obsm`` with the spot centres (x, y).
    scale_factor
        Factor from ``obsm[spatial_key]`` to image pixels; ``None`` reads the Visium scale factor of
        ``img_key`` (or 1 with ``image=``).
    patch_size
        Side of the patch in ``unit``; ``None`` means one spot diameter.
    unit
        ``"spot"`` (multiples of the spot diameter ``spot_diameter_fullres``), ``"px"`` (pixels of the
        image used) or ``"um"`` (micrometres, see ``mpp``).
    mpp
        Micrometres per unit of ``obsm[spatial_key]``; ``None`` reads
        ``uns['spatial'][library_id]['metadata']['microns_per_pixel']`` when recorded (sptl's HER2ST and
        mouse olfactory bulb images), else derives it from the Visium spot diameter (55 um). Needed for
        ``unit="um"`` without either.
    size
        Side in pixels of the patches the dataset returns (crops are resized); ``None`` keeps the
        crop size.
    border
        Patches crossing the image border are filled with white (``"pad"``), mirrored (``"reflect"``)
        or refused (``"error"``). Spots whose centre lies outside the image always raise.
    stain_norm
        ``"macenko"`` fits the image's H&E stain vectors once (Macenko et al. 2009) and maps every patch
        onto reference stains, so sections stained differently look alike; ``None`` leaves colours.
    return_dataset
        Also return the :class:`~sptl.pp.PatchDataset` (instead of ``None`` / the copy).
    key_added
        Key in ``.uns`` (and stem of the ``.obs`` column) written.
    {copy}

    Returns
    -------
    ``None``, the annotated copy if ``copy=True``, or the :class:`~sptl.pp.PatchDataset` if
    ``return_dataset=True``. Written:

    - ``obs[f"{key_added}_coverage"]``: fraction of each patch that lies inside the image,
    - ``obs[f"{key_added}_tissue"]``: fraction of each patch on tissue (saturation mask of a thumbnail,
      Otsu's threshold; in-memory images only). When the median is below 0.2 a warning says that the
      patches lie mostly on background: a scale factor that does not fit the image's resolution, or
      coordinates of another image,
    - ``uns[key_added]["params"]``: the patch record that :meth:`sptl.pp.PatchDataset.from_adata`,
      :func:`sptl.tl.embed_histology` and :class:`sptl.models.SpatialCLIP` read: ``library_id``,
      ``img_key``, ``image_path`` (``None`` for an image in ``uns['spatial']``), ``spatial_key``,
      ``scale_factor``, ``patch_size``, ``unit``, ``patch_size_px`` (side in image pixels),
      ``patch_size_um`` (``None`` when unknown), ``size``, ``border``, ``stain_norm`` and the fitted
      ``stain_matrix`` / ``stain_max``. Any AnnData of patches or tiles carrying this record works
      with the readers above; they need ``spatial_key`` and ``patch_size_px``, plus ``image_path``
      or ``library_id`` / ``img_key``; ``scale_factor`` (1), ``size`` (the crop size), ``border``
      (``"pad"``) and the stain entries (none) are optional.

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.visium_fixture()
    >>> ds = sptl.pp.extract_patches(adata, img_key="lowres", patch_size=2, size=32, return_dataset=True)
    >>> len(ds), tuple(ds[0].shape)
    (100, (3, 32, 32))
    >>> adata.uns["patches"]["params"]["patch_size_um"]
    110.0
    """
    start = perf_counter()
    _validate.check_adata(adata)
    _validate.check_choice(unit, "unit", UNITS)
    _validate.check_choice(border, "border", BORDERS)
    _validate.check_choice(stain_norm, "stain_norm", STAIN_NORMS)
    if patch_size is not None and not patch_size > 0:
        msg = f"`patch_size` must be positive, got {patch_size!r}."
        raise ValueError(msg)
    if size is not None and int(size) < 1:
        msg = f"`size` must be a positive number of pixels, got {size!r}."
        raise ValueError(msg)
    coords = _validate.check_spatial(adata, spatial_key)[:, :2]

    image_path = None
    store_image = None
    scalefactors: Mapping[str, Any] = {}
    if image is None:
        library_id, img_key, img, scalefactors = _uns_image(adata, library_id, img_key)
        if scale_factor is None:
            name = f"tissue_{img_key}_scalef"
            if name not in scalefactors:
                msg = (
                    f"`adata.uns['spatial'][{library_id!r}]['scalefactors'][{name!r}]` not found (keys:"
                    f" {list(scalefactors)}): pass `scale_factor=`."
                )
                raise KeyError(msg)
            scale_factor = float(scalefactors[name])
    elif isinstance(image, str | os.PathLike):
        image_path = str(Path(image).resolve())
        if not Path(image_path).exists():
            msg = f"Image file {image_path} not found."
            raise FileNotFoundError(msg)
        img = read_image(image_path)
    else:
        img = check_image(image, "`image`")
        library_id = "image" if library_id is None else library_id
        img_key = "hires" if img_key is None else img_key
        store_image = img
    scale_factor = 1.0 if scale_factor is None else float(scale_factor)
    if not scale_factor > 0:
        msg = f"`scale_factor` must be positive, got {scale_factor!r}."
        raise ValueError(msg)

    spot_diameter = scalefactors.get("spot_diameter_fullres")
    recorded = _recorded_mpp(adata, library_id) if image is None else None
    if mpp is None and recorded is not None:
        mpp = recorded
    elif mpp is None and spot_diameter is not None:
        mpp = VISIUM_SPOT_UM / float(spot_diameter)
    if patch_size is None and unit != "spot":
        msg = f"`unit={unit!r}` needs `patch_size=`."
        raise ValueError(msg)
    if unit == "spot":
        if spot_diameter is None:
            msg = (
                "`unit='spot'` needs the spot diameter in `uns['spatial'][library_id]['scalefactors']"
                "['spot_diameter_fullres']`: pass `patch_size=` with `unit='px'` or `unit='um'`."
            )
            raise KeyError(msg)
        patch_size = 1.0 if patch_size is None else float(patch_size)
        patch_px = patch_size * float(spot_diameter) * scale_factor
    elif unit == "px":
        patch_px = float(patch_size)
    else:
        if mpp is None:
            msg = "`unit='um'` needs `mpp=` (micrometres per unit of `obsm[spatial_key]`): no Visium scale factors."
            raise ValueError(msg)
        patch_px = float(patch_size) / mpp * scale_factor
    patch_um = None if mpp is None else round(float(patch_px / scale_factor * mpp), 6)

    centers = coords * scale_factor
    height, width = img.shape[:2]
    outside = (centers[:, 0] < -0.5) | (centers[:, 0] > width - 0.5) | (centers[:, 1] < -0.5)
    outside |= centers[:, 1] > height - 0.5
    if outside.any():
        first = adata.obs_names[np.flatnonzero(outside)[0]]
        msg = (
            f"{int(outside.sum())} spot(s) (e.g. {first!r}) lie outside the {width} x {height} image once"
            f" `obsm[{spatial_key!r}]` is multiplied by the scale factor {scale_factor:g}: check `img_key`,"
            " `scale_factor` and that the coordinates are (x, y)."
        )
        raise ValueError(msg)
    coverage = patch_coverage(centers, patch_px, width, height)
    tissue = patch_tissue(img, centers, patch_px) if isinstance(img, np.ndarray) else None
    if tissue is not None and len(tissue) >= 10 and np.median(tissue) < LOW_TISSUE:
        warnings.warn(
            f"Most patches lie on background: median tissue fraction {np.median(tissue):.2f} (saturation mask of"
            f" the image). Check that the scale factor {scale_factor:g} fits this image's resolution and that"
            f" `obsm[{spatial_key!r}]` belongs to this image.",
            UserWarning,
            stacklevel=2,
        )
    if border == "error" and (coverage < 1).any():
        first = adata.obs_names[np.flatnonzero(coverage < 1)[0]]
        msg = (
            f"{int((coverage < 1).sum())} patch(es) (e.g. {first!r}) cross the image border: pass"
            " `border='pad'` or `'reflect'`, or a smaller `patch_size`."
        )
        raise ValueError(msg)
    stain = fit_macenko(img) if stain_norm == "macenko" else None
    side = max(1, round(float(patch_px)))
    params = {
        "library_id": library_id,
        "img_key": img_key,
        "image_path": image_path,
        "spatial_key": spatial_key,
        "scale_factor": scale_factor,
        "patch_size": None if patch_size is None else float(patch_size),
        "unit": unit,
        "patch_size_px": float(patch_px),
        "patch_size_um": patch_um,
        "size": side if size is None else int(size),
        "border": border,
        "stain_norm": stain_norm,
        "stain_matrix": None if stain is None else stain["matrix"].tolist(),
        "stain_max": None if stain is None else stain["max"].tolist(),
    }
    logg.info(f"extracting {adata.n_obs} patches of {patch_px:.1f} px from a {width} x {height} image")

    # write everything at once
    out = adata.copy() if copy else adata
    if store_image is not None:
        lib = out.uns.setdefault(_keys.SPATIAL_UNS, {}).setdefault(library_id, {})
        lib.setdefault("images", {})[img_key] = store_image
        lib.setdefault("scalefactors", {})[f"tissue_{img_key}_scalef"] = scale_factor
    out.obs[_keys.patch_coverage(key_added)] = coverage.astype(np.float32)
    if tissue is not None:
        out.obs[_keys.patch_tissue(key_added)] = tissue.astype(np.float32)
    out.uns[key_added] = {"params": params}
    logg.info(
        f"    finished ({perf_counter() - start:.1f}s): added\n"
        f"    'obs[{_keys.patch_coverage(key_added)!r}]', 'uns[{key_added!r}]'"
    )
    if return_dataset:
        return PatchDataset.from_adata(out, key_added) if image_path is None else _dataset(out, key_added, img)
    return out if copy else None


def _recorded_mpp(adata: AnnData, library_id: str | None) -> float | None:
    """``uns['spatial'][library_id]['metadata']['microns_per_pixel']`` (full resolution) when recorded."""
    value = adata.uns.get(_keys.SPATIAL_UNS, {}).get(library_id, {}).get("metadata", {}).get("microns_per_pixel")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def _dataset(adata: AnnData, key: str, img: np.ndarray) -> PatchDataset:
    """Dataset of an image file already read once (avoids reading it a second time)."""
    ds = PatchDataset.from_adata(adata, key)
    ds._image = img
    return ds


def _uns_image(
    adata: AnnData, library_id: str | None, img_key: str | None
) -> tuple[str, str, np.ndarray, Mapping[str, Any]]:
    """Library id, image key, checked image and scale factors of ``uns['spatial']``."""
    spatial = adata.uns.get(_keys.SPATIAL_UNS)
    if not isinstance(spatial, Mapping) or not spatial:
        msg = (
            "`adata.uns['spatial']` holds no image library: read the data with `squidpy.read.visium` /"
            " `scanpy.read_visium`, or pass `image=` (an array or an image file) with coordinates in `obsm`."
        )
        raise KeyError(msg)
    if library_id is None:
        if len(spatial) > 1:
            msg = f"`adata.uns['spatial']` holds several libraries {list(spatial)}: pass `library_id=`."
            raise ValueError(msg)
        library_id = next(iter(spatial))
    if library_id not in spatial:
        msg = f"`adata.uns['spatial'][{library_id!r}]` not found; libraries are {list(spatial)}."
        raise KeyError(msg)
    images = spatial[library_id].get("images", {})
    if not images:
        msg = f"`adata.uns['spatial'][{library_id!r}]['images']` is missing or empty: no image to crop patches from."
        raise KeyError(msg)
    if img_key is None:
        img_key = "hires" if "hires" in images else "lowres" if "lowres" in images else next(iter(images))
    if img_key not in images:
        msg = f"`adata.uns['spatial'][{library_id!r}]['images'][{img_key!r}]` not found; images are {list(images)}."
        raise KeyError(msg)
    img = check_image(images[img_key], f"`adata.uns['spatial'][{library_id!r}]['images'][{img_key!r}]`")
    return library_id, img_key, img, spatial[library_id].get("scalefactors", {})


def check_image(image: Any, where: str) -> Any:
    """Return ``image`` if it is an ``(h, w, 3 or 4)`` RGB(A) array or array-like; raise otherwise.

    Accepted dtypes: ``uint8``, ``uint16`` and float in [0, 1]; array-likes (zarr) stay lazy.
    """
    if not (hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__")):
        try:
            image = np.asarray(image)
        except Exception as e:
            msg = f"{where} must be an image array, got {type(image).__name__}."
            raise TypeError(msg) from e
    shape = tuple(image.shape)
    if len(shape) != 3 or shape[2] not in (3, 4):
        msg = (
            f"{where} has shape {shape}: expected (height, width, 3) RGB or (height, width, 4) RGBA;"
            " convert greyscale or multiplexed images to RGB first."
        )
        raise ValueError(msg)
    dtype = np.dtype(image.dtype)
    if dtype in (np.uint8, np.uint16):
        return image
    if np.issubdtype(dtype, np.floating):
        step = max(1, int(np.sqrt(shape[0] * shape[1] / 1e6)))
        sample = np.asarray(image[::step, ::step, :3])
        if np.isnan(sample).any() or (isinstance(image, np.ndarray) and np.isnan(image[..., :3]).any()):
            msg = f"{where} contains NaN pixels: fill them (for example with 1.0, white) before using the image."
            raise ValueError(msg)
        top = float(np.max(sample))
        if top > 1.0 + 1e-6:
            msg = (
                f"{where} is a float image with values up to {top:g}: float images must lie in [0, 1]"
                " (divide by 255, or convert to uint8)."
            )
            raise ValueError(msg)
        return image
    msg = f"{where} has dtype {dtype}: expected uint8 (0-255), uint16 or float in [0, 1]."
    raise TypeError(msg)


def read_image(path: str | os.PathLike) -> Any:
    """Open an image file and check it is RGB(A).

    TIFF files are opened by region (tifffile + zarr), so a whole-slide TIFF is never read at once;
    other formats are read into memory with PIL.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff", ".btf"):
        import tifffile

        try:
            import zarr

            tif = tifffile.TiffFile(path)
            img = zarr.open(tif.series[0].aszarr(level=0), mode="r")
        except (ImportError, ValueError, OSError, KeyError):
            img = tifffile.imread(path)
    else:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "RGBA") else im)
    return check_image(img, f"Image file {path}")


def _as_float_rgb(crop: np.ndarray) -> np.ndarray:
    """RGB float32 in [0, 1] of a crop of a checked image."""
    crop = crop[..., :3]
    if crop.dtype == np.uint8:
        return crop.astype(np.float32) / 255.0
    if crop.dtype == np.uint16:
        return crop.astype(np.float32) / 65535.0
    return np.clip(crop.astype(np.float32), 0.0, 1.0)


def patch_coverage(centers: np.ndarray, patch_px: float, width: int, height: int) -> np.ndarray:
    """Fraction of each square patch inside the image."""
    side = max(1, round(float(patch_px)))
    x0 = np.floor(centers[:, 0] - side / 2 + 0.5).astype(int)
    y0 = np.floor(centers[:, 1] - side / 2 + 0.5).astype(int)
    wx = np.clip(x0 + side, 0, width) - np.clip(x0, 0, width)
    wy = np.clip(y0 + side, 0, height) - np.clip(y0, 0, height)
    return (wx * wy) / float(side * side)


#: Median tissue fraction of the patches below which extract_patches warns (a wrong scale factor or image
#: puts the patches on the slide's background; on tissue Otsu's threshold leaves about half of each patch).
LOW_TISSUE = 0.2
#: Longest side of the thumbnail the tissue mask is computed on.
THUMBNAIL_PX = 2048


def patch_tissue(image: np.ndarray, centers: np.ndarray, patch_px: float) -> np.ndarray:
    """Fraction of each square patch that lies on tissue, from a thumbnail's saturation mask (Otsu)."""
    from ._tile import _tissue_mask

    step = max(1, int(np.ceil(max(image.shape[:2]) / THUMBNAIL_PX)))
    thumb = np.asarray(image[::step, ::step, :3])
    if np.issubdtype(thumb.dtype, np.floating):
        thumb = np.nan_to_num(thumb)
    mask, _ = _tissue_mask(thumb, None)
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    half = max(1.0, float(patch_px) / step) / 2
    x0 = np.clip(np.floor(centers[:, 0] / step - half + 0.5).astype(int), 0, w)
    x1 = np.clip(np.floor(centers[:, 0] / step + half + 0.5).astype(int), 0, w)
    y0 = np.clip(np.floor(centers[:, 1] / step - half + 0.5).astype(int), 0, h)
    y1 = np.clip(np.floor(centers[:, 1] / step + half + 0.5).astype(int), 0, h)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return np.where((x1 > x0) & (y1 > y0), inside / area, 0.0)


def crop_patch(image: np.ndarray, center: np.ndarray, side: int, border: str) -> np.ndarray:
    """``(side, side, 3)`` float32 crop centred on ``center`` (x, y), border filled as ``border`` says."""
    height, width = image.shape[:2]
    x0 = int(np.floor(center[0] - side / 2 + 0.5))
    y0 = int(np.floor(center[1] - side / 2 + 0.5))
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + side, width), min(y0 + side, height)
    crop = _as_float_rgb(np.asarray(image[cy0:cy1, cx0:cx1]))
    pads = ((cy0 - y0, y0 + side - cy1), (cx0 - x0, x0 + side - cx1), (0, 0))
    if any(p for pair in pads for p in pair):
        if border == "reflect":
            crop = np.pad(crop, pads, mode="symmetric")
        else:
            crop = np.pad(crop, pads, mode="constant", constant_values=1.0)
    return crop


def fit_macenko(
    image: np.ndarray, *, beta: float = 0.15, alpha: float = 1.0, max_pixels: int = 1_000_000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Fit the H&E stain matrix (3 x 2, optical density) and 99th percentile concentrations of an image."""
    height, width = image.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(height * width / (4 * max_pixels)))))
    thumb = np.asarray(image[::step, ::step])
    pixels = thumb.reshape(-1, thumb.shape[-1])
    if len(pixels) > max_pixels:
        pixels = pixels[np.random.default_rng(seed).choice(len(pixels), max_pixels, replace=False)]
    od = _optical_density(_as_float_rgb(pixels[None])[0])
    tissue = od[od.mean(axis=1) > beta]  # stained pixels (the paper's all-channels test drops pale eosin)
    if len(tissue) < 100:
        msg = (
            f"Stain normalisation found only {len(tissue)} stained pixels (mean optical density > {beta}) in the image:"
            " it needs an H&E image with tissue; pass `stain_norm=None`."
        )
        raise ValueError(msg)
    _, vecs = np.linalg.eigh(np.cov(tissue.T))
    vecs = vecs[:, 1:3]
    vecs = vecs * np.sign(vecs.sum(axis=0, keepdims=True) + 1e-12)
    proj = tissue @ vecs
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v1 = vecs @ np.array([np.cos(lo), np.sin(lo)])
    v2 = vecs @ np.array([np.cos(hi), np.sin(hi)])
    he = np.column_stack([v1, v2] if v1[0] > v2[0] else [v2, v1])
    he = he / np.linalg.norm(he, axis=0, keepdims=True)
    conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
    cmax = np.percentile(conc, 99, axis=1)
    return {"matrix": he, "max": np.maximum(cmax, 1e-6)}


def macenko_normalize(crop: np.ndarray, matrix: np.ndarray, cmax: np.ndarray) -> np.ndarray:
    """Map an RGB float crop onto the reference stains (:data:`MACENKO_REF_HE`)."""
    h, w, _ = crop.shape
    od = _optical_density(crop.reshape(-1, 3))
    conc = np.linalg.pinv(matrix) @ od.T
    conc *= (np.asarray(MACENKO_REF_MAX) / cmax)[:, None]
    rgb = _IO * np.exp(-np.asarray(MACENKO_REF_HE) @ conc)
    return np.clip(rgb.T / 255.0, 0.0, 1.0).reshape(h, w, 3).astype(np.float32)


def _optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density of RGB values in [0, 1]."""
    return -np.log(np.clip((rgb * 255.0 + 1.0) / _IO, 1e-6, None))
