"""What every plot does at the end: save, show, or hand back the axes."""

from __future__ import annotations

import os
from typing import TypeVar

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

T = TypeVar("T")


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
