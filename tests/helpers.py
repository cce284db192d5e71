"""Assertions shared by the tests."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def snapshot(adata):
    """Everything a function could change in an AnnData, as comparable plain data."""
    X = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    return {
        "X": X.copy(),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "obsm": {k: np.asarray(v).copy() for k, v in adata.obsm.items()},
        "obsp": sorted(adata.obsp.keys()),
        "uns": sorted(adata.uns.keys()),
        "layers": sorted(adata.layers.keys()),
    }


def assert_unchanged(adata, before) -> None:
    after = snapshot(adata)
    np.testing.assert_array_equal(after["X"], before["X"])
    assert after["obs"].equals(before["obs"]), "obs changed"
    assert after["var"].equals(before["var"]), "var changed"
    assert after["obsm"].keys() == before["obsm"].keys(), "obsm keys changed"
    for k in before["obsm"]:
        np.testing.assert_array_equal(after["obsm"][k], before["obsm"][k])
    for k in ("obsp", "uns", "layers"):
        assert after[k] == before[k], f"{k} changed"
