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


@pytest.fixture(scope="session")
def _her2st_bags_session():
    """The six labelled HER2ST sections, 4x4-spot regions as bags ("cancer" if any invasive cancer spot),
    expression PCA (scanpy: log-normalised, HVGs across sections, scaled) as instance features."""
    return sptl.datasets.her2st_bags()


@pytest.fixture(scope="module")
def her2st_bags(_her2st_bags_session):
    """A copy of the HER2ST MIL bags for one test module."""
    return _her2st_bags_session.copy()
