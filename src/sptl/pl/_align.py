"""Plots of aligned sections: the stack overlaid in one frame, with a sample of matches as lines."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection

from .. import _keys, _validate
from .._docs import inject_docs
from ._figure import check_axes, finish, panel_axes
from ._figure import spot_size as _spot_size
from ._transfer import _palette, _tissue_axes


@inject_docs
def aligned(
    slices: Sequence[AnnData],
    /,
    *,
    key: str = _keys.ALIGN,
    spatial_key: str = _keys.SPATIAL,
    n_matches: int = 150,
    spot_size: float | None = None,
    seed: int = 0,
    title: str | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> list[Axes] | None:
    """Draw sections before and after :func:`sptl.tl.align_slices`, with matched spots joined by lines.

    Left: every slice in its own coordinates. Right: the slices overlaid in the aligned frame (one
    colour per slice), and for a random sample of spots of each slice ``i > 0`` a line to its best
    match in slice ``i - 1``, grey when the spot sent little of its mass there.

    Parameters
    ----------
    slices
        The sections passed to :func:`sptl.tl.align_slices`, in the same order.
    key
        ``key_added`` of :func:`sptl.tl.align_slices`.
    {spatial_key}
    n_matches
        Number of matches drawn per pair of slices.
    spot_size
        Marker area in points^2; chosen from the number of spots when ``None``.
    seed
        Random seed of the sample of matches.
    title
        Figure title.
    {plot_common}

    Returns
    -------
    The two axes if ``show=False``, else ``None``.

    Examples
    --------
    >>> import sptl
    >>> a, b = sptl.datasets.breast_st(1), sptl.datasets.breast_st(2)
    >>> sptl.tl.align_slices([a, b], progress=False)
    >>> axes = sptl.pl.aligned([a, b], show=False)
    """
    items = _validate.as_adata_list(slices, "slices")
    names = _validate.names_of(items, "slices")
    for ad, name in zip(items, names, strict=True):
        for where, k in (("obsm", key), ("obs", _keys.match(key)), ("obs", _keys.match_mass(key))):
            if k not in getattr(ad, where):
                msg = f"`{name}.{where}[{k!r}]` not found: run `sptl.tl.align_slices(..., key_added={key!r})` first."
                raise KeyError(msg)
    original = [_validate.check_spatial(ad, spatial_key, n) for ad, n in zip(items, names, strict=True)]
    check_axes(ax, 2, "before, after")
    fig, axes = panel_axes(ax, 2, (11, 5))
    colors = list(_palette([str(i) for i in range(len(items))], None).values())
    n_total = sum(ad.n_obs for ad in items)
    size = _spot_size(spot_size, n_total, 40000, 2, 60)
    rng = np.random.default_rng(seed)

    offset = 0.0
    for i, coords in enumerate(original):
        shifted = coords - coords.min(axis=0) + [offset, 0]
        axes[0].scatter(shifted[:, 0], shifted[:, 1], s=size, color=colors[i], linewidths=0, label=f"slice {i}")
        offset = shifted[:, 0].max() + 0.15 * np.ptp(coords[:, 0])
    _tissue_axes(axes[0], f"{spatial_key} (side by side)")

    frames = [np.asarray(ad.obsm[key], dtype=float) for ad in items]
    for i, P in enumerate(frames):
        axes[1].scatter(P[:, 0], P[:, 1], s=size, color=colors[i], alpha=0.6, linewidths=0, label=f"slice {i}")
    for i in range(1, len(items)):
        ad, prev = items[i], items[i - 1]
        match = ad.obs[_keys.match(key)].astype(object)
        idx = prev.obs_names.get_indexer(match.fillna("").to_numpy())
        ok = np.flatnonzero(idx >= 0)
        pick = rng.choice(ok, min(n_matches, len(ok)), replace=False) if len(ok) else ok
        segs = np.stack([frames[i][pick], frames[i - 1][idx[pick]]], axis=1)
        mass = ad.obs[_keys.match_mass(key)].to_numpy(dtype=float)[pick]
        line_colors = [(0.1, 0.1, 0.1, 0.8) if m >= 0.5 else (0.6, 0.6, 0.6, 0.6) for m in mass]
        axes[1].add_collection(LineCollection(segs, colors=line_colors, linewidths=0.6))
    _tissue_axes(axes[1], f"{key} (overlaid, matches as lines)")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8, markerscale=2)
    if title is not None:
        fig.suptitle(title)
    return finish(fig, axes, save=save, show=show)
