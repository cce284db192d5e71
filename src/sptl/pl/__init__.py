"""Plots."""

from ._transfer import transfer

__all__ = ["transfer"]
