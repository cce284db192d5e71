"""UMAP of an integrated embedding, coloured by batch and by label."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from .. import _keys, _validate
from .._docs import inject_docs
from ._figure import check_axes, finish, panel_axes
from ._figure import spot_size as _spot_size
from ._transfer import MISSING_COLOR, _palette


@inject_docs
def integration(
    adata: AnnData,
    /,
    *,
    batch_key: str,
    key: str = _keys.INTEGRATE,
    label_key: str | None = None,
    n_neighbors: int = 15,
    spot_size: float | None = None,
    seed: int = 0,
    title: str | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> list[Axes] | None:
    """Draw the UMAP of an integrated embedding, coloured by batch (and by label).

    The UMAP is computed on a copy (scanpy ``neighbors`` + ``umap`` on ``obsm[f"X_{{key}}"]``); ``adata``
    is not changed. Well-integrated batches overlap in the left panel while labels stay apart in the
    right one.

    Parameters
    ----------
    {adata}
    batch_key
        Column of ``adata.obs`` with the batches.
    key
        ``key_added`` of :func:`sptl.tl.integrate` (the embedding is ``obsm[f"X_{{key}}"]``).
    label_key
        Column of ``adata.obs`` with labels for a second panel.
    n_neighbors
        Neighbours of the UMAP graph.
    spot_size
        Marker area in points^2; chosen from the number of spots when ``None``.
    seed
        Random seed of the UMAP.
    title
        Figure title.
    {plot_common}

    Returns
    -------
    The axes (one per panel) if ``show=False``, else ``None``.

    Examples
    --------
    >>> import anndata as ad, sptl
    >>> adata = ad.concat([sptl.datasets.her2st(s) for s in ("B1", "B2")], label="batch")
    >>> sptl.tl.integrate(adata, batch_key="batch", max_epochs=5, progress=False)
    >>> axes = sptl.pl.integration(adata, batch_key="batch", label_key="cluster", show=False)
    """
    _validate.check_adata(adata, "adata")
    emb = _keys.embedding(key)
    if emb not in adata.obsm:
        msg = f"`adata.obsm[{emb!r}]` not found: run `sptl.tl.integrate(..., key_added={key!r})` first."
        raise KeyError(msg)
    for k in [batch_key] + ([label_key] if label_key is not None else []):
        if k not in adata.obs:
            msg = f"`adata.obs[{k!r}]` not found (obs columns: {list(adata.obs.columns)})."
            raise KeyError(msg)
    n_panels = 2 if label_key is not None else 1
    check_axes(ax, n_panels, "one per panel")
    tmp = AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()))
    tmp.obsm["X"] = np.asarray(adata.obsm[emb], dtype=np.float32)
    sc.pp.neighbors(tmp, use_rep="X", n_neighbors=n_neighbors, random_state=seed)
    sc.tl.umap(tmp, random_state=seed)
    U = tmp.obsm["X_umap"]
    fig, axes = panel_axes(ax, n_panels, (5.2 * n_panels, 4.6))
    size = _spot_size(spot_size, adata.n_obs, 30000, 2, 40)
    columns = [batch_key] + ([label_key] if label_key is not None else [])
    for a, col in zip(axes, columns, strict=True):
        values = adata.obs[col].astype(object)
        classes = sorted({str(v) for v in values.dropna()})
        colors = _palette(classes, None)
        order = np.random.default_rng(seed).permutation(adata.n_obs)  # no batch drawn on top of the others
        cols = [colors[str(v)] if pd.notna(v) else MISSING_COLOR for v in values]
        a.scatter(U[order, 0], U[order, 1], c=[cols[i] for i in order], s=size, linewidths=0)
        a.set_xticks([])
        a.set_yticks([])
        a.set_xlabel("UMAP 1")
        a.set_ylabel("UMAP 2")
        a.set_title(col)
        handles = [Line2D([], [], marker="o", linestyle="", color=colors[c], label=c) for c in classes]
        a.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    if title is not None:
        fig.suptitle(title)
    return finish(fig, axes, save=save, show=show)
