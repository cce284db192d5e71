"""Plots."""

from ._attention import attention
from ._histology import patches
from ._shift import domain_shift
from ._training import training_curves
from ._transfer import transfer

__all__ = ["attention", "domain_shift", "patches", "training_curves", "transfer"]
