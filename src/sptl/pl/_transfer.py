"""Plots of transferred labels on the tissue."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from .. import _keys, _validate
from .._docs import inject_docs
from ._figure import check_axes, finish, panel_axes
from ._figure import spot_size as _spot_size

#: Colour of missing / excluded labels.
MISSING_COLOR = "#d3d3d3"


@inject_docs
def transfer(
    adata: AnnData,
    /,
    *,
    key: str = _keys.TRANSFER,
    truth_key: str | None = None,
    spatial_key: str = _keys.SPATIAL,
    spot_size: float | None = None,
    palette: dict[str, str] | None = None,
    title: str | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> list[Axes] | None:
    """Draw transferred labels and their confidence on the tissue, beside the true labels if known.

    Panels, left to right: true labels (when ``truth_key`` is given), transferred labels, and
    confidence. True and transferred labels share one colour per class; labels the source did not
    have and missing values are grey.

    Parameters
    ----------
    {adata}
    key
        ``key_added`` of :func:`sptl.tl.transfer_labels`.
    truth_key
        Column of ``adata.obs`` with known labels to draw beside the transferred ones.
    {spatial_key}
    spot_size
        Marker area in points^2; chosen from the number of spots when ``None``.
    palette
        Colour of each class; matplotlib's ``tab20`` is used for the rest.
    title
        Figure title.
    {plot_common}

    Returns
    -------
    The axes if ``show=False``, else ``None``.

    Examples
    --------
    >>> import sptl
    >>> source, target = sptl.datasets.her2st("F1"), sptl.datasets.her2st("D1")
    >>> sptl.tl.transfer_labels(source, target, label_key="label", progress=False)
    >>> axes = sptl.pl.transfer(target, truth_key="label", show=False)
    """
    _validate.check_adata(adata, "adata")
    if key not in adata.obs:
        msg = f"`adata.obs[{key!r}]` not found: run `sptl.tl.transfer_labels(..., key_added={key!r})` first."
        raise KeyError(msg)
    conf_key = _keys.confidence(key)
    if conf_key not in adata.obs:
        msg = f"`adata.obs[{conf_key!r}]` not found: run `sptl.tl.transfer_labels(..., key_added={key!r})` first."
        raise KeyError(msg)
    if truth_key is not None and truth_key not in adata.obs:
        msg = f"`adata.obs[{truth_key!r}]` not found (obs columns: {list(adata.obs.columns)})."
        raise KeyError(msg)
    coords = _validate.check_spatial(adata, spatial_key, "adata")
    n_panels = 3 if truth_key is not None else 2
    check_axes(ax, n_panels, "one per panel")

    pred = adata.obs[key].astype(object)
    classes = list(adata.obs[key].cat.categories) if hasattr(adata.obs[key], "cat") else sorted(pred.dropna().unique())
    colors = _palette(classes, palette)
    fig, axes = panel_axes(ax, n_panels, (5.2 * n_panels, 5))
    size = _spot_size(spot_size, adata.n_obs, 60000, 4, 120)

    panels: list[tuple[str, pd.Series]] = []
    if truth_key is not None:
        panels.append((f"true: {truth_key}", adata.obs[truth_key].astype(object)))
    panels.append((f"transferred: {key}", pred))
    for a, (name, values) in zip(axes, panels, strict=False):
        cols = [colors.get(str(v), MISSING_COLOR) if pd.notna(v) else MISSING_COLOR for v in values]
        a.scatter(coords[:, 0], coords[:, 1], c=cols, s=size, linewidths=0)
        _tissue_axes(a, name)
    shown = [c for c in classes if c in set(pred.dropna().astype(str))] or classes
    if truth_key is not None:
        extra = sorted(set(adata.obs[truth_key].dropna().astype(str)) - set(classes))
        if extra:
            shown = shown + [f"{e} (not transferred)" for e in extra]
    handles = [Line2D([], [], marker="o", linestyle="", color=colors.get(c, MISSING_COLOR), label=c) for c in shown]
    axes[n_panels - 2].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)

    conf = adata.obs[conf_key].to_numpy(dtype=float)
    sc_ = axes[-1].scatter(coords[:, 0], coords[:, 1], c=conf, s=size, cmap="viridis", vmin=0, vmax=1, linewidths=0)
    _tissue_axes(axes[-1], "confidence")
    fig.colorbar(sc_, ax=axes[-1], shrink=0.7)
    if title is not None:
        fig.suptitle(title)
    return finish(fig, axes, save=save, show=show)


def _palette(classes: Sequence[str], palette: dict[str, str] | None) -> dict[str, str]:
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    colors = {str(c): cmap(i % cmap.N) for i, c in enumerate(classes)}
    colors = {c: "#{:02x}{:02x}{:02x}".format(*tuple(int(255 * v) for v in rgba[:3])) for c, rgba in colors.items()}
    colors.update(palette or {})
    return colors


def _tissue_axes(ax: Axes, title: str) -> None:
    ax.set_aspect("equal")
    ax.invert_yaxis()  # image convention: y grows downwards
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    for side in ax.spines.values():
        side.set_visible(False)
