"""Plots."""

from ._training import training_curves
from ._transfer import transfer

__all__ = ["training_curves", "transfer"]
