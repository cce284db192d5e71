"""Plot of the domain shift measured by :func:`sptl.tl.domain_shift`."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _keys, _validate
from .._docs import inject_docs
from ._figure import check_axes, finish, panel_axes


@inject_docs
def domain_shift(
    adata: AnnData,
    /,
    *,
    key: str = _keys.SHIFT,
    n_genes: int = 15,
    title: str | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> list[Axes] | None:
    """Draw the domain shift between two sections, or between every pair of batches.

    For a source/target pair (two panels): the MMD^2 against its permutation null distribution, with
    the p-value and the proxy A-distance, and the genes whose mean expression shifts most
    (standardised mean difference, target minus source). For batches compared with ``batch_key``
    (two panels): heatmaps of the MMD^2 and of the proxy A-distance between every pair.

    Parameters
    ----------
    {adata}
    key
        ``key_added`` of :func:`sptl.tl.domain_shift`.
    n_genes
        Number of most shifted genes to draw (pair mode).
    title
        Figure title.
    {plot_common}

    Returns
    -------
    The axes if ``show=False``, else ``None``.

    Examples
    --------
    >>> import sptl
    >>> source, target = sptl.datasets.her2st("A1"), sptl.datasets.her2st("B1")
    >>> sptl.tl.domain_shift(source, target, n_permutations=50, progress=False)
    >>> axes = sptl.pl.domain_shift(target, show=False)
    """
    _validate.check_adata(adata, "adata")
    if key not in adata.uns or "mmd2" not in adata.uns[key]:
        msg = f"`adata.uns[{key!r}]` not found: run `sptl.tl.domain_shift(..., key_added={key!r})` first."
        raise KeyError(msg)
    if int(n_genes) < 1:
        msg = f"`n_genes` must be a positive integer, got {n_genes!r}."
        raise ValueError(msg)
    res = adata.uns[key]
    check_axes(ax, 2, "one per panel")
    fig, axes = panel_axes(ax, 2, (11, 4.2))
    if isinstance(res["mmd2"], pd.DataFrame):
        _heatmap(axes[0], res["mmd2"], "MMD$^2$", fig)
        _heatmap(axes[1], pd.DataFrame(res["a_distance"]), "proxy A-distance", fig, vmax=2.0)
    else:
        _null(axes[0], res)
        _genes(axes[1], pd.DataFrame(res["genes"]), int(n_genes))
    if title is not None:
        fig.suptitle(title)
    return finish(fig, axes, save=save, show=show)


def _null(ax: Axes, res: dict) -> None:
    null = np.asarray(res.get("null", []), dtype=float)
    observed = float(res["mmd2"])
    if len(null):
        ax.hist(null, bins=30, color="#bbbbbb", label="permutations")
    ax.axvline(observed, color="#d62728", lw=2, label="observed")
    ax.set_xlabel("MMD$^2$")
    ax.set_ylabel("permutations" if len(null) else "")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(
        f"MMD$^2$ {observed:.4f} ({res['estimator']}), p = {float(res['p_value']):.3g}\n"
        f"proxy A-distance {float(res['a_distance']):.2f} (0 same, 2 separable)",
        fontsize=10,
    )


def _genes(ax: Axes, genes: pd.DataFrame, n: int) -> None:
    top = genes.iloc[:n].iloc[::-1]
    if top.empty:
        ax.text(0.5, 0.5, "no gene ranking\n(computed with use_rep)", ha="center", va="center")
        ax.set_axis_off()
        return
    colors = np.where(top["smd"].to_numpy() > 0, "#d62728", "#1f77b4")
    ax.barh(top.index.astype(str), top["smd"].to_numpy(), color=colors)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("standardised mean difference (target - source)")
    ax.set_title(f"{len(top)} most shifted genes", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)


def _heatmap(ax: Axes, mat: pd.DataFrame, name: str, fig: plt.Figure, vmax: float | None = None) -> None:
    values = mat.to_numpy(dtype=float)
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=vmax if vmax is not None else max(values.max(), 1e-12))
    ax.set_xticks(range(len(mat)), mat.columns.astype(str), rotation=90)
    ax.set_yticks(range(len(mat)), mat.index.astype(str))
    ax.set_title(name, fontsize=10)
    if len(mat) <= 12:
        for i in range(len(mat)):
            for j in range(len(mat)):
                ax.text(j, i, f"{values[i, j]:.2g}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(im, ax=ax, shrink=0.7)
