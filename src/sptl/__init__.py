"""sptl: spatial-omics transfer learning for the scverse ecosystem."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets, metrics, models, pl, pp, tl

try:
    __version__ = version("sptl")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["datasets", "metrics", "models", "pl", "pp", "tl"]
