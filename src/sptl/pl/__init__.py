"""Plots."""

from ._align import aligned
from ._attention import attention
from ._histology import patches
from ._integrate import integration
from ._shift import domain_shift
from ._training import training_curves
from ._transfer import transfer

__all__ = ["aligned", "attention", "domain_shift", "integration", "patches", "training_curves", "transfer"]
