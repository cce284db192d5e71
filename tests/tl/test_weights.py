from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from helpers import assert_unchanged, snapshot

import sptl

METHODS = ["classifier", "kmm", "kliep"]


@pytest.fixture(scope="module")
def mixed_source():
    """A source made of two patients' sections (A1 and B1); the target is another section of patient A."""
    a1, b1 = sptl.datasets.her2st("A1"), sptl.datasets.her2st("B1")
    src = ad.concat([a1, b1], join="inner", label="section_of", keys=["A1", "B1"], index_unique="-")
    src.obsm["spatial"] = np.vstack([a1.obsm["spatial"], b1.obsm["spatial"]])
    return src, sptl.datasets.her2st("A2")


@pytest.mark.parametrize("method", METHODS)
def test_weights_shape_sum_and_resemblance(mixed_source, method):
    # measured mean weight of the A1 part / the B1 part (target A2): classifier 1.78, kmm 5.0, kliep 2.03
    source, target = mixed_source[0].copy(), mixed_source[1]
    sptl.tl.instance_weights(source, target, method=method, batch_key="section_of")
    w = source.obs["sptl_weight"].to_numpy()
    assert w.shape == (source.n_obs,) and w.dtype == np.float32
    assert (w >= 0).all() and np.isfinite(w).all()
    np.testing.assert_allclose(w.sum(), source.n_obs, rtol=1e-4)
    assert w.max() <= 20.0 + 1e-3
    # spots of the target's own patient resemble it more than those of another patient
    part = source.obs["section_of"].to_numpy()
    assert w[part == "A1"].mean() > 1.4 * w[part == "B1"].mean()
    info = source.uns["sptl_weight"]
    assert 1 <= info["effective_sample_size"] <= source.n_obs
    assert info["params"]["method"] == method and info["params"]["batch_key"] == "section_of"


def test_weights_feed_transfer_labels(her2st):
    source, target = her2st("F1"), her2st("D1")
    out = sptl.tl.instance_weights(source, target, method="kliep", key_added="w", copy=True)
    assert "w" not in source.obs and "w" in out.obs
    sptl.tl.transfer_labels(out, target, label_key="label", exclude=["undetermined"], weights_key="w", progress=False)
    assert target.uns["sptl_label"]["params"]["weights_key"] == "w"
    assert target.obs["sptl_label"].notna().all()


def test_max_weight_caps(her2st):
    source, target = her2st("B1"), her2st("F1")
    sptl.tl.instance_weights(source, target, method="classifier", max_weight=3.0)
    w = source.obs["sptl_weight"].to_numpy()
    assert w.max() <= 3.0 + 1e-3 and abs(w.mean() - 1) < 1e-4


def test_bad_input_leaves_source_untouched(her2st):
    source, target = her2st("A1"), her2st("B1")
    before = snapshot(source)
    with pytest.raises(ValueError, match="method"):
        sptl.tl.instance_weights(source, target, method="ratio")
    with pytest.raises(ValueError, match="max_weight"):
        sptl.tl.instance_weights(source, target, max_weight=1.0)
    renamed = target.copy()
    renamed.var_names = [f"g{i}" for i in range(renamed.n_vars)]
    with pytest.raises(ValueError, match="shared"):
        sptl.tl.instance_weights(source, renamed)
    with pytest.raises(ValueError, match="empty"):
        sptl.tl.instance_weights(source, target[:0].copy())
    with pytest.raises(KeyError, match="no_such_column"):
        sptl.tl.instance_weights(source, target, batch_key="no_such_column")
    with pytest.raises(KeyError, match="X_none"):
        sptl.tl.instance_weights(source, target, use_rep="X_none")
    assert_unchanged(source, before)
