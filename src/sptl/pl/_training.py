"""Training curves of the trained transfer models."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
from anndata import AnnData
from matplotlib.axes import Axes

from .. import _keys, _validate
from .._docs import inject_docs
from ._figure import finish


@inject_docs
def training_curves(
    adata: AnnData,
    /,
    *,
    key: str = _keys.TRANSFER,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes | None:
    """Draw the training losses of a transfer that trained a model (for example ``method="gnn"``).

    Parameters
    ----------
    {adata}
    key
        ``key_added`` of :func:`sptl.tl.transfer_labels`; the curves are read from ``uns[key]["history"]``.
    {plot_common}

    Returns
    -------
    The axes if ``show=False``, else ``None``.

    Examples
    --------
    >>> import sptl
    >>> source, target = sptl.datasets.her2st("F1"), sptl.datasets.her2st("D1")
    >>> sptl.tl.transfer_labels(
    ...     source, target, label_key="label", method="gnn", model_kwargs={"max_epochs": 10}, progress=False
    ... )
    >>> ax = sptl.pl.training_curves(target, show=False)
    """
    _validate.check_adata(adata, "adata")
    history = adata.uns.get(key, {}).get("history") if isinstance(adata.uns.get(key), dict) else None
    if not history or "loss" not in history:
        msg = (
            f"`adata.uns[{key!r}]['history']` not found: only transfers that train a model record curves"
            " (run `sptl.tl.transfer_labels(..., method='gnn')`)."
        )
        raise KeyError(msg)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    for name in ("loss", "classification", "adaptation"):
        values = history.get(name)
        if values is not None and any(v != 0 for v in values):
            ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"training: {key}")
    ax.legend(frameon=False)
    return finish(ax.figure, ax, save=save, show=show)
