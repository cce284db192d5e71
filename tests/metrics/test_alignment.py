"""Alignment and integration scores on small known cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from sptl.metrics import alignment_accuracy, batch_mixing, displacement, label_conservation, match_accuracy


def test_alignment_accuracy_counts_mass_between_equal_labels():
    plan = np.array([[0.3, 0.1, 0.0], [0.0, 0.2, 0.2], [0.1, 0.0, 0.1]])
    rows, cols = ["a", "b", None], ["a", "b", "a"]
    # the third row has no label: its mass is left out; same-label mass 0.3 + 0.2 of 0.8
    assert alignment_accuracy(plan, rows, cols) == pytest.approx(0.5 / 0.8)
    assert alignment_accuracy(sparse.csr_matrix(plan), rows, cols) == pytest.approx(0.5 / 0.8)
    with pytest.raises(ValueError, match="shape"):
        alignment_accuracy(plan, rows[:2], cols)


def test_match_accuracy_and_displacement():
    assert match_accuracy(["x", None, "z"], ["x", "y", "q"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="entries"):
        match_accuracy(["x"], ["x", "y"])
    grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2) * 3
    shifted = grid + np.array([0.0, 1.5])
    assert displacement(shifted, grid)["median"] == pytest.approx(0.5)
    assert displacement(shifted, grid, unit=1.5)["p90"] == pytest.approx(1.0)


def test_batch_mixing_and_label_conservation():
    rng = np.random.default_rng(0)
    labels = np.repeat(["t", "u"], 100)
    centres = np.where(labels == "t", 0.0, 6.0)[:, None]
    batch = np.tile(["b1", "b2"], 100)
    mixed = rng.normal(size=(200, 4)) + centres
    separated = mixed + np.where(batch == "b1", 0.0, 30.0)[:, None]
    assert batch_mixing(mixed, batch) > 0.8
    assert batch_mixing(separated, batch) < 0.05
    good = label_conservation(mixed, labels)
    assert good["ari"] > 0.95 and good["silhouette"] > 0.7
    # when the batch split dominates, k-means finds batches, not labels
    assert label_conservation(separated, labels)["ari"] < 0.2
    with pytest.raises(ValueError, match="at least two"):
        batch_mixing(mixed, np.repeat("b", 200))
