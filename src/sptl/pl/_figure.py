"""What every plot does at the end: save, show, or hand back the axes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

T = TypeVar("T")


def check_axes(ax: Sequence[Axes] | None, n: int, panels: str) -> None:
    """Refuse user axes that are not one per panel (``panels`` names them in the message)."""
    if ax is not None and len(ax) != n:
        msg = f"`ax` must hold {n} axes ({panels}), got {len(ax)}."
        raise ValueError(msg)


def panel_axes(ax: Sequence[Axes] | None, n: int, figsize: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """The user's axes (checked by :func:`check_axes`) with their figure, or a new row of ``n`` panels."""
    if ax is not None:
        return ax[0].figure, list(ax)
    fig, axes = plt.subplots(1, n, figsize=figsize, layout="constrained")
    return fig, list(np.atleast_1d(axes))


def spot_size(size: float | None, n_obs: int, area: float, lo: float, hi: float) -> float:
    """Marker area: ``size`` when given, else ``area / n_obs`` clipped to ``[lo, hi]`` (more spots, smaller marks)."""
    return size if size is not None else float(np.clip(area / max(n_obs, 1), lo, hi))


def finish(fig: Figure, axes: T, *, save: str | os.PathLike | None, show: bool | None) -> T | None:
    """Save ``fig`` if asked, then show it (default when not saving) or return ``axes``."""
    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if show is None:
        show = save is None
    if show:
        plt.show()
        return None
    return axes
