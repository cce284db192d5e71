"""Plots."""

from ._attention import attention
from ._training import training_curves
from ._transfer import transfer

__all__ = ["attention", "training_curves", "transfer"]
