"""Attention of multiple-instance learning drawn on the tissue."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _keys, _validate
from .._docs import inject_docs
from ._figure import check_axes, finish, panel_axes
from ._figure import spot_size as _spot_size
from ._transfer import MISSING_COLOR, _tissue_axes


@inject_docs
def attention(
    adata: AnnData,
    /,
    *,
    key: str = _keys.MIL,
    label: str | None = None,
    relative: bool = True,
    spatial_key: str = _keys.SPATIAL,
    library_id: str | None = None,
    img_key: str | None = None,
    spot_size: float | None = None,
    cmap: str = "magma",
    title: str | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> list[Axes] | None:
    """Draw the bags' out-of-fold predictions and each instance's attention on the tissue.

    Left: every instance coloured by its bag's out-of-fold probability of ``label``; right: the
    attention each instance got within its bag (from :func:`sptl.tl.mil`). Instances in no bag are
    grey. Draw one section at a time (pass a view such as ``adata[adata.obs["section"] == "B1"]``),
    since sections may share coordinates.

    Parameters
    ----------
    {adata}
    key
        ``key_added`` of :func:`sptl.tl.mil`.
    label
        Class whose bag probability is drawn; ``None`` takes the first class.
    relative
        Draw attention times the bag size (1 = the uniform weight), which compares bags of different
        sizes; ``False`` draws the raw weights (summing to 1 per bag).
    {spatial_key}
    library_id
        Library of ``uns['spatial']`` holding the image drawn underneath (with ``img_key``); ``None``
        takes the only one.
    img_key
        Image of the library to draw underneath (``"lowres"``, ``"hires"``; :func:`sptl.pp.tile_image`
        stores the slide's thumbnail as ``"lowres"``); ``None`` draws no image.
    spot_size
        Marker area in points^2; chosen from the number of instances when ``None``.
    cmap
        Colour map of the attention.
    title
        Figure title.
    {plot_common}

    Returns
    -------
    The two axes if ``show=False``, else ``None``.

    Examples
    --------
    >>> import numpy as np, anndata as ad, sptl
    >>> rng = np.random.default_rng(0)
    >>> adata = ad.AnnData(np.zeros((240, 1)), obsm={"X_feat": rng.normal(size=(240, 4))})
    >>> adata.obsm["spatial"] = np.c_[np.arange(240) % 16, np.arange(240) // 16].astype(float)
    >>> sptl.pp.tile_spots(adata, size=4)
    >>> adata.obs["label"] = np.where(adata.obs["sptl_tile"].cat.codes % 2, "a", "b")
    >>> sptl.tl.mil(adata, bag_key="sptl_tile", label_key="label", use_rep="X_feat", n_splits=3, progress=False)
    >>> axes = sptl.pl.attention(adata, label="a", show=False)
    """
    _validate.check_adata(adata, "adata")
    att_key = _keys.attention(key)
    if att_key not in adata.obs or key not in adata.uns or "bags" not in adata.uns[key]:
        msg = (
            f"`adata.obs[{att_key!r}]` or `adata.uns[{key!r}]['bags']` not found: run"
            f" `sptl.tl.mil(..., key_added={key!r})` first."
        )
        raise KeyError(msg)
    res = adata.uns[key]
    classes = list(res["classes"])
    label = classes[0] if label is None else label
    if label not in classes:
        msg = f"`label={label!r}` is not a class of `adata.uns[{key!r}]`; classes are {classes}."
        raise ValueError(msg)
    coords = _validate.check_spatial(adata, spatial_key, "adata")[:, :2]
    check_axes(ax, 2, "bag prediction, attention")
    image, scale = None, 1.0
    if img_key is not None:
        spatial = adata.uns.get(_keys.SPATIAL_UNS, {})
        libs = list(spatial)
        if library_id is None and len(libs) == 1:
            library_id = libs[0]
        if library_id not in spatial or img_key not in spatial[library_id].get("images", {}):
            msg = f"`adata.uns['spatial'][{library_id!r}]['images'][{img_key!r}]` not found (libraries: {libs})."
            raise KeyError(msg)
        image = spatial[library_id]["images"][img_key]
        scale = float(spatial[library_id].get("scalefactors", {}).get(f"tissue_{img_key}_scalef", 1.0))

    bag_key = res["params"]["bag_key"]
    bags = (
        adata.obs[bag_key]
        .astype(object)
        .where(adata.obs[bag_key].notna(), None)
        .map(lambda v: None if v is None else str(v))
    )
    proba = res["probabilities"][label]
    proba.index = proba.index.astype(str)
    bag_p = bags.map(proba).to_numpy(dtype=float)
    att = adata.obs[att_key].to_numpy(dtype=float)
    if relative:
        att = att * bags.map(bags.value_counts()).to_numpy(dtype=float)

    fig, axes = panel_axes(ax, 2, (10.4, 5))
    size = _spot_size(spot_size, adata.n_obs, 60000, 4, 120)
    xy = coords * scale
    panels = [
        (bag_p, f"bag P({label}), out of fold", "viridis", (0.0, 1.0)),
        (att, "attention x bag size" if relative else "attention", cmap, (0.0, _top(att))),
    ]
    for a, (values, name, colours, (lo, hi)) in zip(axes, panels, strict=True):
        if image is not None:
            a.imshow(image)
        out = np.isnan(values)
        a.scatter(xy[out, 0], xy[out, 1], c=MISSING_COLOR, s=size, linewidths=0)
        sc_ = a.scatter(xy[~out, 0], xy[~out, 1], c=values[~out], s=size, cmap=colours, vmin=lo, vmax=hi, linewidths=0)
        _tissue_axes(a, name)
        if image is not None:
            a.invert_yaxis()  # imshow already put y downwards
        fig.colorbar(sc_, ax=a, shrink=0.7)
    if title is not None:
        fig.suptitle(title)
    return finish(fig, axes, save=save, show=show)


def _top(values: np.ndarray) -> float:
    """Upper end of the colour scale: the 99th percentile, so a few sharp weights do not wash out the rest."""
    finite = values[np.isfinite(values)]
    return float(np.percentile(finite, 99)) if len(finite) and np.percentile(finite, 99) > 0 else 1.0
