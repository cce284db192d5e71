"""A grid of the image patches of chosen spots."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _keys, _validate
from .._docs import inject_docs
from ..pp._patches import PatchDataset
from ._figure import finish


@inject_docs
def patches(
    adata: AnnData,
    /,
    *,
    obs_names: Sequence[str] | None = None,
    n: int = 8,
    groupby: str | None = None,
    patches_key: str = _keys.PATCHES,
    ncols: int = 8,
    seed: int = 0,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> np.ndarray | None:
    """Draw the image patches of some spots (as :func:`sptl.pp.extract_patches` describes them).

    Parameters
    ----------
    {adata}
    obs_names
        Spots to draw; ``None`` draws ``n`` random spots, or ``n`` per group with ``groupby``.
    n
        Number of random spots (per group with ``groupby``).
    groupby
        Column of ``.obs``: one row of patches per category, titled with it.
    patches_key
        Key of the patch record in ``.uns``.
    ncols
        Patches per row (without ``groupby``).
    seed
        Random seed of the spot choice.
    {plot_common}

    Returns
    -------
    The array of axes if ``show=False``, else ``None``.

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.visium_fixture()
    >>> sptl.pp.extract_patches(adata, img_key="lowres", patch_size=2, size=32)
    >>> axes = sptl.pl.patches(adata, n=4, show=False)
    >>> axes.shape
    (1, 4)
    """
    _validate.check_adata(adata)
    ds = PatchDataset.from_adata(adata, patches_key)
    rng = np.random.default_rng(seed)
    if obs_names is not None:
        idx = adata.obs_names.get_indexer(list(obs_names))
        if (idx < 0).any():
            missing = [o for o, i in zip(obs_names, idx, strict=True) if i < 0][:5]
            msg = f"`obs_names` {missing} are not in `adata.obs_names`."
            raise KeyError(msg)
        rows, labels = [idx[i : i + ncols] for i in range(0, len(idx), ncols)], None
    elif groupby is not None:
        if groupby not in adata.obs:
            msg = f"`adata.obs[{groupby!r}]` not found (obs columns: {list(adata.obs.columns)})."
            raise KeyError(msg)
        groups = adata.obs[groupby].astype("category")
        labels = [str(c) for c in groups.cat.categories if (groups == c).any()]
        rows = []
        for c in labels:
            members = np.flatnonzero((groups.astype(str) == c).to_numpy())
            rows.append(rng.choice(members, size=min(n, len(members)), replace=False))
    else:
        chosen = rng.choice(adata.n_obs, size=min(n, adata.n_obs), replace=False)
        rows, labels = [chosen[i : i + ncols] for i in range(0, len(chosen), ncols)], None
    nrow, ncol = len(rows), max(len(r) for r in rows)
    if ax is None:
        fig, axes = plt.subplots(nrow, ncol, figsize=(1.3 * ncol, 1.4 * nrow), squeeze=False, layout="constrained")
    else:
        axes = np.asarray(ax, dtype=object).reshape(nrow, ncol)
        fig = axes.flat[0].figure
    for r, row in enumerate(rows):
        for c in range(ncol):
            a = axes[r, c]
            a.axis("off")
            if c < len(row):
                a.imshow(ds[int(row[c])].permute(1, 2, 0).numpy())
                a.set_title(adata.obs_names[int(row[c])][:12], fontsize=7)
        if labels is not None:
            axes[r, 0].text(-0.1, 0.5, labels[r], transform=axes[r, 0].transAxes, ha="right", va="center")
    return finish(fig, axes, save=save, show=show)
