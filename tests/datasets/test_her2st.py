from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import sptl
from sptl.datasets import HER2ST_LABELLED, HER2ST_SECTIONS
from sptl.datasets._her2st import _read_bundled_section, write_her2st_bundle

# spots under tissue x genes, and pathologist label counts, as parsed from the raw release
EXPECTED = {
    "A1": (346, 15045, {"invasive cancer": 282, "connective tissue": 24, "cancer in situ": 21}),
    "B1": (
        295,
        15109,
        {"connective tissue": 95, "adipose tissue": 70, "invasive cancer": 63, "breast glands": 41},
    ),
    "E1": (587, 15701, {"invasive cancer": 340, "immune infiltrate": 177, "undetermined": 53}),
}


def test_sections_listed():
    assert len(HER2ST_SECTIONS) == 36 and HER2ST_SECTIONS[0] == "A1" and HER2ST_SECTIONS[-1] == "H3"
    assert HER2ST_LABELLED == ("A1", "B1", "C1", "D1", "E1", "F1")


@pytest.mark.parametrize("section", sorted(EXPECTED))
def test_bundled_section(section):
    n_obs, n_vars, counts = EXPECTED[section]
    adata = sptl.datasets.her2st(section)
    assert adata.shape == (n_obs, n_vars)
    assert sparse.issparse(adata.X) and adata.X.dtype == np.int32 and adata.X.min() >= 0
    assert adata.obsm["spatial"].shape == (n_obs, 2) and np.isfinite(adata.obsm["spatial"]).all()
    vc = adata.obs["label"].value_counts()
    for label, n in counts.items():
        assert vc[label] == n
    assert set(adata.obs["section"]) == {section} and set(adata.obs["patient"]) == {section[0]}
    assert adata.obs_names.is_unique and adata.var_names.is_unique
    assert isinstance(adata.obs["cluster"].dtype, pd.CategoricalDtype)


def test_unlabelled_section_has_no_labels():
    adata = sptl.datasets.her2st("G2")
    assert adata.obs["label"].isna().all() and adata.n_obs > 100


def test_unknown_section():
    with pytest.raises(ValueError, match="`section='Z1'` is not valid; choose one of"):
        sptl.datasets.her2st("Z1")
    with pytest.raises(FileNotFoundError, match="raw HER2ST files"):
        sptl.datasets.her2st("A1", path="/nonexistent")


def _write_raw(adata, folder, section, rng):
    """Write a section in the raw release's file formats."""
    ax, ay = adata.obs["array_x"].to_numpy(), adata.obs["array_y"].to_numpy()
    ids = [f"{x}x{y}" for x, y in zip(ax, ay, strict=True)]
    counts = pd.DataFrame(adata.X.toarray(), index=ids, columns=adata.var_names)
    counts.to_csv(folder / f"{section}.tsv.gz", sep="\t")
    px, py = adata.obsm["spatial"].T
    sel = pd.DataFrame({"x": ax, "y": ay, "new_x": ax + 0.03, "new_y": ay - 0.02, "pixel_x": px, "pixel_y": py})
    sel["selected"] = 1
    # one spot off tissue, which the parser must drop
    sel = pd.concat(
        [
            sel,
            pd.DataFrame([{"x": 99, "y": 99, "new_x": 99, "new_y": 99, "pixel_x": 0, "pixel_y": 0, "selected": 0}]),
        ]
    )
    sel.to_csv(folder / f"{section}_selection.tsv", sep="\t", index=False)
    clusters = pd.DataFrame(
        {
            "patient_id": section[0],
            "ids": section,
            "label": adata.obs["cluster"].astype(object).to_numpy(),
            "x": ax,
            "y": ay,
        },
        index=[f"{a}x{b}" for a, b in zip(px, py, strict=True)],
    )
    clusters.to_csv(folder / f"{section}-cluster-annotation.tsv.gz", sep="\t")
    lab = adata.obs["label"].astype(object)
    known = lab.notna().to_numpy()
    jitter = rng.uniform(-0.3, 0.3, size=(known.sum(), 2))
    pd.DataFrame(
        {
            "x": ax[known] + jitter[:, 0],
            "y": ay[known] + jitter[:, 1],
            "pixel_x": px[known],
            "pixel_y": py[known],
            "label": lab[known],
        }
    ).to_csv(folder / f"{section}_labeled_coordinates.tsv", sep="\t")


def test_raw_parser_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    bundled = sptl.datasets.her2st("B1")
    small = bundled[::7, ::40].copy()
    small = small[:, np.asarray(small.X.sum(0)).ravel() >= 0].copy()
    _write_raw(small, tmp_path, "B1", rng)
    parsed = sptl.datasets.her2st("B1", path=tmp_path)
    assert parsed.obs_names.tolist() == small.obs_names.tolist()
    assert parsed.var_names.tolist() == small.var_names.tolist()
    np.testing.assert_array_equal(parsed.X.toarray(), small.X.toarray())
    np.testing.assert_allclose(parsed.obsm["spatial"], small.obsm["spatial"])
    for col in ("label", "cluster", "array_x", "array_y"):
        np.testing.assert_array_equal(parsed.obs[col].astype(str), small.obs[col].astype(str))


def test_bundle_writer_round_trip(tmp_path):
    sections = [sptl.datasets.her2st(s)[:40].copy() for s in ("C2", "D1")]
    path = tmp_path / "bundle.h5ad"
    write_her2st_bundle(sections, path)
    for original in sections:
        back = _read_bundled_section(original.obs["section"].iloc[0], path)
        assert set(back.var_names) == set(original.var_names)
        back = back[:, original.var_names]
        np.testing.assert_array_equal(back.X.toarray(), original.X.toarray())
        np.testing.assert_array_equal(back.obsm["spatial"], original.obsm["spatial"])
        np.testing.assert_array_equal(back.obs["label"].astype(str), original.obs["label"].astype(str))
