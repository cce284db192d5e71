"""Where bundled data live, and the download cache for public sets too large to ship."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import anndata as ad
from anndata import AnnData

#: Package folder holding the bundled, compressed h5ad files.
BUNDLED = files("sptl.datasets") / "_data"


def bundled_path(name: str) -> Path:
    """Path of a bundled data file, e.g. ``"her2st/A1.h5ad"``."""
    path = Path(str(BUNDLED / name))
    if not path.exists():
        msg = f"Bundled data file {name!r} is missing from the sptl installation ({path})."
        raise FileNotFoundError(msg)
    return path


def load_bundled(name: str) -> AnnData:
    """Read a bundled h5ad file into memory."""
    return ad.read_h5ad(bundled_path(name))


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """Download cache: ``cache``, else ``$SPTL_DATA_DIR``, else the OS user cache (``sptl``)."""
    if cache is not None:
        return Path(cache)
    if "SPTL_DATA_DIR" in os.environ:
        return Path(os.environ["SPTL_DATA_DIR"])
    import pooch

    return Path(pooch.os_cache("sptl"))
