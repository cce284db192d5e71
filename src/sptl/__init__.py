"""sptl: spatial-omics transfer learning for the scverse ecosystem."""

import warnings as _warnings
from importlib.metadata import PackageNotFoundError as _NotFound
from importlib.metadata import version as _version

# squidpy's docstring templating (docrep) warns at import time about its own docstrings
_warnings.filterwarnings("ignore", category=SyntaxWarning, module="docrep")

from . import datasets, metrics, models, pl, pp, tl  # noqa: E402

try:
    __version__ = _version("sptl")
except _NotFound:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["datasets", "metrics", "models", "pl", "pp", "tl"]
