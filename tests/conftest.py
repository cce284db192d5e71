from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import scanpy as sc

import sptl

sc.settings.verbosity = 0


@pytest.fixture(scope="session")
def _her2st_cache():
    return {}


@pytest.fixture
def her2st(_her2st_cache):
    """Load a bundled HER2ST section; each call returns a fresh copy."""

    def load(section: str):
        if section not in _her2st_cache:
            _her2st_cache[section] = sptl.datasets.her2st(section)
        return _her2st_cache[section].copy()

    return load
