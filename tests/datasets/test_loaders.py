"""Loaders of sptl.datasets other than HER2ST: the bundled data, and parsing raw files via ``path=``.

Each round trip writes a few spots and genes of the bundled data back into the raw release format (same
file names and layout), parses them with ``path=`` and compares with the bundled subset.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import sparse

import sptl
from sptl.datasets import _dlpfc
from sptl.datasets._registry import bundled_path
from sptl.datasets._visium import DG_CROP_ORIGIN_LOWRES, DG_LIBRARY_ID, PROSTATE_X_SHIFT

D = sptl.datasets
_CACHE: dict = {}


def bundled(name: str, *args):
    """Load a bundled set once per test session; return a copy."""
    key = (name, *args)
    if key not in _CACHE:
        _CACHE[key] = getattr(D, name)(*args)
    return _CACHE[key].copy()


def dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def assert_same(parsed, expected, *, obs_cols=None) -> None:
    """Same names, values, dtypes of X, spatial coordinates and the given obs columns."""
    assert list(parsed.obs_names) == list(expected.obs_names)
    assert list(parsed.var_names) == list(expected.var_names)
    assert sparse.issparse(parsed.X) and parsed.X.format == "csr"
    assert parsed.X.dtype == expected.X.dtype
    np.testing.assert_array_equal(dense(parsed.X), dense(expected.X))
    np.testing.assert_allclose(parsed.obsm["spatial"], expected.obsm["spatial"], rtol=0, atol=1e-6)
    for col in obs_cols if obs_cols is not None else expected.obs.columns:
        np.testing.assert_array_equal(parsed.obs[col].astype(str), expected.obs[col].astype(str), err_msg=col)


def check_common(adata, shape, *, x_dtype=np.int32, dim=2) -> None:
    assert adata.shape == shape
    assert sparse.issparse(adata.X) and adata.X.format == "csr"
    assert adata.X.dtype == x_dtype
    assert adata.obsm["spatial"].dtype == np.float64
    assert adata.obsm["spatial"].shape == (shape[0], dim)
    assert adata.obs_names.is_unique and adata.var_names.is_unique


def some_genes(adata, n: int) -> np.ndarray:
    """Indices of ``n`` genes with nonzero values, in gene order."""
    nz = np.flatnonzero(np.asarray(adata.X.sum(axis=0)).ravel() > 0)
    return np.sort(nz[:: max(1, len(nz) // n)][:n])


# ---------------------------------------------------------------------------------------------- breast


@pytest.mark.parametrize(
    ("slice_", "shape", "total", "first"),
    [
        (1, (254, 7998), 762301, ("13.064x6.086", 13.064, 6.086)),
        (2, (251, 7713), None, ("17.907x4.967", 17.907, 4.967)),
        (3, (264, 7453), None, ("23.19x8.03", 23.19, 8.03)),
        (4, (262, 7571), 792320, ("18.89x8.958", 18.89, 8.958)),
    ],
)
def test_breast_st_bundled(slice_, shape, total, first):
    adata = bundled("breast_st", slice_)
    check_common(adata, shape)
    assert adata.obs_names[0] == first[0]
    np.testing.assert_allclose(adata.obsm["spatial"][0], first[1:])
    assert (adata.obs["slice"] == str(slice_)).all()
    if total is not None:
        assert int(adata.X.sum()) == total


def test_breast_st_round_trip(tmp_path):
    full = bundled("breast_st", 2)
    sub = full[:12, some_genes(full, 30)].copy()
    counts = pd.DataFrame(dense(sub.X), index=sub.obs_names, columns=sub.var_names)
    counts.to_csv(tmp_path / "slice2.csv")  # header row starts with an empty cell, as in the release
    np.savetxt(tmp_path / "slice2_coor.csv", sub.obsm["spatial"], delimiter=",")
    assert (tmp_path / "slice2.csv").read_text().startswith(",")
    assert_same(D.breast_st(2, path=tmp_path), sub)


# -------------------------------------------------------------------------------------------- prostate


@pytest.mark.parametrize(("sample", "n_spots"), [("normal", 987), ("cancer", 1340)])
def test_visium_prostate_bundled(sample, n_spots):
    adata = bundled("visium_prostate", sample)
    check_common(adata, (n_spots, 1255))
    assert {"array_row", "array_col", "in_tissue", "sample"} <= set(adata.obs)
    assert list(adata.obs["sample"].cat.categories) == [sample]
    assert (adata.obs["in_tissue"] == 1).all()
    prefix = D.PROSTATE_SAMPLES[sample]
    assert adata.obs_names.str.startswith(prefix + "-").all()
    # each section in its own Space-Ranger-like frame: same array-to-pixel map, whole pixels
    xy = adata.obsm["spatial"]
    np.testing.assert_array_equal(xy, np.round(xy))
    design = np.c_[adata.obs["array_col"], adata.obs["array_row"], np.ones(adata.n_obs)]
    coef_x = np.linalg.lstsq(design, xy[:, 0], rcond=None)[0]
    coef_y = np.linalg.lstsq(design, xy[:, 1], rcond=None)[0]
    np.testing.assert_allclose(coef_x, [145.07, -0.40, 5097.8], atol=1.0)
    np.testing.assert_allclose(coef_y[1], 252.4, atol=0.5)


def test_visium_prostate_round_trip(tmp_path):
    parts = [bundled("visium_prostate", s) for s in ("normal", "cancer")]
    genes = some_genes(parts[0], 25)
    subs = [p[:8, genes].copy() for p in parts]
    cells = [c for s in subs for c in s.obs_names]
    X = np.vstack([dense(s.X) for s in subs]).T  # genes x spots
    lines = [" ".join(f'"{c}"' for c in cells)]
    lines += [f'"{g}" ' + " ".join(map(str, row)) for g, row in zip(subs[0].var_names, X, strict=True)]
    with gzip.open(tmp_path / "expression_matrix.txt.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    meta = ['"cell_ID" "in_tissue" "array_row" "array_col" "list_ID"']
    locs = ['"sdimx" "sdimy" "cell_ID"']
    for s in subs:
        list_id = D.PROSTATE_SAMPLES[s.obs["sample"].iloc[0]]
        for name, row, xy in zip(s.obs_names, s.obs.itertuples(), s.obsm["spatial"], strict=True):
            meta.append(f'"{name}" {row.in_tissue} {row.array_row} {row.array_col} "{list_id}"')
            locs.append(f'{float(xy[0] + PROSTATE_X_SHIFT[list_id])!r} {-int(xy[1])} "{name}"')
    raw = tmp_path / "Visium_multisample" / "Raw"  # the GiottoData layout; path= may point above it
    raw.mkdir(parents=True)
    (raw / "cell_metadata.txt").write_text("\n".join(meta) + "\n")
    (raw / "spatial_locs.txt").write_text("\n".join(locs) + "\n")
    shutil.move(tmp_path / "expression_matrix.txt.gz", raw / "expression_matrix.txt.gz")
    for sample, sub in zip(("normal", "cancer"), subs, strict=True):
        assert_same(D.visium_prostate(sample, path=tmp_path), sub)
        assert_same(D.visium_prostate(sample, path=raw), sub)


# ------------------------------------------------------------------------------------------------ cSCC


def test_cscc_st_bundled():
    adata = bundled("cscc_st")
    check_common(adata, (621, 3000), x_dtype=np.float32)
    assert list(adata.obs["cluster"].cat.categories) == [str(i) for i in range(1, 11)]
    assert adata.obs["cluster"].value_counts()["6"] == 132
    assert adata.obs_names[0] == "8x20" and adata.obs["col"].iloc[0] == 8 and adata.obs["row"].iloc[0] == 20
    np.testing.assert_array_equal(adata.obsm["spatial"], adata.obs[["col", "row"]].to_numpy(float))
    assert adata.X.min() >= 0 and not np.allclose(adata.X.data, np.round(adata.X.data))  # normalised


def test_cscc_st_round_trip(tmp_path):
    full = bundled("cscc_st")
    sub = full[::40, some_genes(full, 40)].copy()
    obs = sub.obs[["row", "col"]].copy()
    obs["cluster"] = sub.obs["cluster"].astype(int).to_numpy()  # the source stores int clusters
    src = ad.AnnData(X=dense(sub.X).astype(np.float32), obs=obs, var=pd.DataFrame(index=sub.var_names))
    src.write_h5ad(tmp_path / "GSM4284326_P10_ST_rep2.h5ad")
    parsed = D.cscc_st(path=tmp_path)
    assert_same(parsed, sub)
    assert list(parsed.obs["cluster"].cat.categories) == sorted(set(obs["cluster"].astype(str)), key=int)


# ---------------------------------------------------------------------------------------- mouse cortex


def test_mouse_cortex_smfish_bundled():
    adata = bundled("mouse_cortex_smfish")
    check_common(adata, (4840, 22))
    assert adata.var_names[:3].tolist() == ["Fezf2", "Pde1a", "Rorb"]
    assert list(adata.obs["cluster"].cat.categories) == ["1", "2", "3", "4", "5", "6"]
    assert adata.obs["cluster"].value_counts()["5"] == 1814
    np.testing.assert_array_equal(adata.obsm["spatial"], adata.obs[["x", "y"]].to_numpy())


def test_mouse_cortex_merfish_bundled():
    adata = bundled("mouse_cortex_merfish")
    check_common(adata, (2150, 253))
    assert {"x_um", "y_um", "rotated_x", "rotated_y"} <= set(adata.obs)
    assert "n_cells" in adata.var
    np.testing.assert_array_equal(adata.obsm["spatial"], adata.obs[["x", "y"]].to_numpy())


@pytest.mark.parametrize(
    ("loader", "raw_name"),
    [("mouse_cortex_smfish", "smFISH_anndata.h5ad"), ("mouse_cortex_merfish", "test_ad_sp_readytomap.h5ad")],
)
def test_mouse_cortex_round_trip(tmp_path, loader, raw_name):
    full = bundled(loader)
    sub = full[::200, some_genes(full, 15)].copy()
    obs = sub.obs.copy()
    if "cluster" in obs:
        obs["cluster"] = obs["cluster"].astype(int)  # the source stores int clusters
    # dense float32, as released
    src = ad.AnnData(X=dense(sub.X).astype(np.float32), obs=obs, var=sub.var.copy())
    src.write_h5ad(tmp_path / raw_name)
    assert_same(getattr(D, loader)(path=tmp_path), sub)


# -------------------------------------------------------------------------------- MERFISH hypothalamus

MERFISH_RAW = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "merfish_hypothalamus"


@pytest.mark.parametrize(
    ("section", "n_cells", "n_inhibitory", "n_ambiguous"),
    [("0.26", 5584, 1743, 752), ("animal1_bregma0.21", 5578, 1666, 791), (None, 11162, 3409, 1543)],
)
def test_merfish_hypothalamus_bundled(section, n_cells, n_inhibitory, n_ambiguous):
    adata = bundled("merfish_hypothalamus", section)
    check_common(adata, (n_cells, 161), x_dtype=np.float32)
    assert list(adata.obs["section"].cat.categories) == (
        list(D.MERFISH_SECTIONS.values()) if section is None else [D.MERFISH_SECTIONS.get(section, section)]
    )
    classes = adata.obs["Cell_class"]
    assert classes.cat.categories.size == 16 and "Ambiguous" in classes.cat.categories
    assert (classes == "Inhibitory").sum() == n_inhibitory and (classes == "Ambiguous").sum() == n_ambiguous
    # neuron clusters for the excitatory and inhibitory cells only, missing for all others
    neuron = adata.obs["Neuron_cluster_ID"]
    assert isinstance(neuron.dtype, pd.CategoricalDtype) and "" not in neuron.cat.categories
    np.testing.assert_array_equal(neuron.notna(), classes.isin(["Excitatory", "Inhibitory"]))
    if section is None:
        assert neuron.cat.categories.size == 61 and neuron.cat.categories[:8].tolist()[-1] == "E-10"
    # volume-normalised values: non-negative floats, not whole numbers
    assert adata.X.min() >= 0 and not np.allclose(adata.X.data, np.round(adata.X.data))
    blanks = [g for g in adata.var_names if g.startswith("Blank")]
    assert blanks == [f"Blank_{i}" for i in range(1, 6)]
    assert adata.X[:, adata.var_names.get_indexer(blanks)].mean() < 0.1 * adata.X.mean()  # controls, ~0
    np.testing.assert_array_equal(adata.obsm["spatial"], adata.obs[["sdimx", "sdimy"]].to_numpy())
    assert np.abs(adata.obsm["spatial"]).max() < 1000  # micrometres: a 1.8 mm field of view


def test_merfish_hypothalamus_round_trip(tmp_path):
    full = bundled("merfish_hypothalamus")
    sub = full[::150, some_genes(full, 20)].copy()
    obs = sub.obs.copy()
    obs.insert(0, "Cell_name", [f"uuid-{i}" for i in range(sub.n_obs)])  # dropped by the parser
    neuron = obs["Neuron_cluster_ID"]
    obs["Neuron_cluster_ID"] = neuron.cat.add_categories([""]).fillna("")  # the source writes '' for non-neurons
    for col in ("section", "bregma"):  # the source's categories are sorted alphabetically
        obs[col] = obs[col].cat.reorder_categories(sorted(obs[col].cat.categories))
    src = ad.AnnData(X=sparse.csr_matrix(sub.X), obs=obs, var=pd.DataFrame(index=sub.var_names))
    src.obsm["spatial"] = sub.obsm["spatial"]
    src.write_h5ad(tmp_path / "animal1_bregma0.26_0.21_161genes.h5ad")
    parsed = D.merfish_hypothalamus(path=tmp_path)
    assert_same(parsed, sub)
    assert list(parsed.obs.columns) == list(sub.obs.columns)
    for col in ("Neuron_cluster_ID", "section", "bregma"):
        assert list(parsed.obs[col].cat.categories) == list(sub.obs[col].cat.categories), col
    assert_same(D.merfish_hypothalamus("0.21", path=tmp_path), sub[sub.obs["bregma"] == "0.21"])


@pytest.mark.skipif(not MERFISH_RAW.exists(), reason=f"raw file folder {MERFISH_RAW} not present")
def test_merfish_hypothalamus_raw_equals_bundled():
    parsed, expected = D.merfish_hypothalamus(path=MERFISH_RAW), bundled("merfish_hypothalamus")
    assert_same(parsed, expected)
    assert parsed.obs.equals(expected.obs) and parsed.var.equals(expected.var)


# ---------------------------------------------------------------------------------------------- Visium


def write_10x_h5(adata, path, attrs_from) -> None:
    """Write ``adata`` (integer counts) as a Space Ranger v3 ``filtered_feature_bc_matrix.h5``."""
    X = sparse.csr_matrix(adata.X)  # spots x genes CSR == genes x spots CSC, the 10x layout
    with h5py.File(attrs_from, "r") as src, h5py.File(path, "w") as f:
        for k, v in src.attrs.items():
            f.attrs[k] = v
        m = f.create_group("matrix")
        m["barcodes"] = np.array(adata.obs_names, dtype="S")
        m["data"] = X.data.astype(np.int32)
        m["indices"] = X.indices.astype(np.int64)
        m["indptr"] = X.indptr.astype(np.int64)
        m["shape"] = np.array([adata.n_vars, adata.n_obs], dtype=np.int32)
        feats = m.create_group("features")
        feats["_all_tag_keys"] = np.array([b"genome"])
        for key, col in (("id", "gene_ids"), ("feature_type", "feature_types"), ("genome", "genome")):
            feats[key] = np.array(adata.var[col], dtype="S")
        feats["name"] = np.array(adata.var_names, dtype="S")


def test_visium_fixture_bundled():
    adata = bundled("visium_fixture")
    check_common(adata, (100, 100))
    assert int(adata.X.sum()) == 932 and adata.X.nnz == 656
    assert {"in_tissue", "array_row", "array_col"} <= set(adata.obs)
    assert adata.obs_names[0] == "AAACAAGTATCTCCCA-1"
    np.testing.assert_array_equal(adata.obsm["spatial"][0], [9811, 8513])  # (pxl_col, pxl_row) of the .csv
    lib = adata.uns["spatial"]["custom"]
    assert lib["images"]["lowres"].shape == (600, 600, 3) and lib["images"]["lowres"].dtype == np.uint8
    assert lib["images"]["hires"].shape == (2000, 2000, 4)
    assert lib["scalefactors"]["tissue_lowres_scalef"] == pytest.approx(0.045004502)
    assert lib["metadata"]["software_version"] == "spaceranger-1.0.0"
    on_image = adata.obsm["spatial"] * lib["scalefactors"]["tissue_lowres_scalef"]
    assert (on_image >= 0).all() and (on_image < 600).all()


def test_visium_fixture_round_trip(tmp_path):
    full = bundled("visium_fixture")
    sub = full[::5, some_genes(full, 20)].copy()
    write_10x_h5(
        sub,
        tmp_path / "filtered_feature_bc_matrix.h5",
        bundled_path("visium_fixture/filtered_feature_bc_matrix.h5"),
    )
    spatial = tmp_path / "spatial"
    spatial.mkdir()
    rows = [
        f"{b},{r.in_tissue},{r.array_row},{r.array_col},{int(xy[1])},{int(xy[0])}"
        for b, r, xy in zip(sub.obs_names, sub.obs.itertuples(), sub.obsm["spatial"], strict=True)
    ]
    (spatial / "tissue_positions_list.csv").write_text("\n".join(rows) + "\n")
    for name in ("scalefactors_json.json", "tissue_lowres_image.png", "tissue_hires_image.png"):
        shutil.copyfile(bundled_path(f"visium_fixture/spatial/{name}"), spatial / name)
    parsed = D.visium_fixture(path=tmp_path)
    assert_same(parsed, sub)
    assert parsed.var["gene_ids"].tolist() == sub.var["gene_ids"].tolist()
    np.testing.assert_array_equal(
        parsed.uns["spatial"]["custom"]["images"]["lowres"], full.uns["spatial"]["custom"]["images"]["lowres"]
    )


def test_visium_dentate_gyrus_bundled():
    adata = bundled("visium_dentate_gyrus")
    check_common(adata, (624, 634))
    lib = adata.uns["spatial"][DG_LIBRARY_ID]
    image = lib["images"]["lowres"]
    assert image.shape == (172, 243, 4) and image.dtype == np.uint8
    scale = lib["scalefactors"]["tissue_lowres_scalef"]
    assert scale == pytest.approx(0.051033426)
    np.testing.assert_allclose(lib["metadata"]["crop_origin_fullres"], np.array(DG_CROP_ORIGIN_LOWRES) / scale)
    xy = adata.obsm["spatial"] * scale
    assert (xy >= 0).all() and (xy[:, 0] < 243).all() and (xy[:, 1] < 172).all()
    # registration: spots rich in pyramidal/granule markers sit on the dark cell layers of the H&E
    darkness = 1 - image[..., :2].mean(axis=-1) / 255
    under = darkness[np.rint(xy[:, 1]).astype(int), np.rint(xy[:, 0]).astype(int)]
    marker = np.log1p(dense(adata[:, ["Hpca", "Prox1", "C1ql2"]].X)).sum(axis=1)
    top = marker >= np.quantile(marker, 0.9)
    assert under[top].mean() > under[~top].mean() + 0.05


def test_visium_dentate_gyrus_round_trip(tmp_path):
    full = bundled("visium_dentate_gyrus")
    sub = full[::25, some_genes(full, 20)].copy()
    lib = sub.uns["spatial"][DG_LIBRARY_ID]
    raw = tmp_path / "Visium" / "Raw"
    (raw / "images").mkdir(parents=True)
    lines = [" ".join(sub.obs_names)]
    lines += [f"{g} " + " ".join(map(str, row)) for g, row in zip(sub.var_names, dense(sub.X).T, strict=True)]
    with gzip.open(raw / "visium_DG_expr.txt.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    fullres = sub.obsm["spatial"] + lib["metadata"]["crop_origin_fullres"]
    locs = [f"{round(x)} {-round(y)}" for x, y in fullres]
    (raw / "visium_DG_locs.txt").write_text("\n".join(locs) + "\n")
    meta = [f"{b},{t}" for b, t in zip(sub.obs_names, sub.obs["in_tissue"], strict=True)]
    # in another order than the expression matrix: the parser joins by barcode
    (raw / "visium_DG_meta.txt").write_text("\n".join(["cell_ID,in_tissue", *reversed(meta)]) + "\n")
    (raw / "scalefactors_json.json").write_text(json.dumps(lib["scalefactors"]))
    Image.fromarray(lib["images"]["lowres"]).save(raw / "images" / "deg_image2.png")
    parsed = D.visium_dentate_gyrus(path=tmp_path)
    assert_same(parsed, sub)
    np.testing.assert_array_equal(parsed.uns["spatial"][DG_LIBRARY_ID]["images"]["lowres"], lib["images"]["lowres"])
    assert parsed.uns["spatial"][DG_LIBRARY_ID]["scalefactors"] == lib["scalefactors"]


# ----------------------------------------------------------------------------------------------- DLPFC


def dlpfc_folder(root, sample_id="151673"):
    """A DLPFC-layout folder made from the bundled Visium fixture and a small layer map."""
    spatial = root / sample_id / "spatial"
    spatial.mkdir(parents=True)
    shutil.copyfile(
        bundled_path("visium_fixture/filtered_feature_bc_matrix.h5"),
        root / sample_id / "filtered_feature_bc_matrix.h5",
    )
    for name in (
        "tissue_positions_list.csv",
        "scalefactors_json.json",
        "tissue_lowres_image.png",
        "tissue_hires_image.png",
    ):
        shutil.copyfile(bundled_path(f"visium_fixture/spatial/{name}"), spatial / name)
    barcodes = bundled("visium_fixture").obs_names
    layers = ["1", "Layer2", "L3", "Layer_4", "5", "6", "WM"]
    rows = [f"{b}\t{sample_id}\t{layers[i % 7]}" for i, b in enumerate(barcodes[:70])]
    rows += [f"{b}\t151507\tWM" for b in barcodes[70:]]  # another section: must be ignored
    (root / _dlpfc.LAYER_FILE).write_text("\n".join(rows) + "\n")
    return root


def test_dlpfc_from_local_folder(tmp_path):
    adata = D.dlpfc("151673", path=dlpfc_folder(tmp_path))
    check_common(adata, (100, 100))
    assert list(adata.obs["layer"].cat.categories) == list(D.DLPFC_LAYERS)
    counts = adata.obs["layer"].value_counts()
    assert counts.sum() == 70 and adata.obs["layer"].isna().sum() == 30
    assert counts["Layer1"] == 10 and counts["WM"] == 10
    assert adata.obs["layer"].iloc[0] == "Layer1" and adata.obs["layer"].iloc[2] == "Layer3"
    lib = adata.uns["spatial"]["151673"]
    assert lib["images"]["lowres"].shape == (600, 600, 3)
    assert set(lib["scalefactors"]) >= {
        "tissue_lowres_scalef",
        "tissue_hires_scalef",
        "spot_diameter_fullres",
    }
    assert (adata.obs["sample_id"] == "151673").all()
    np.testing.assert_array_equal(adata.obsm["spatial"], bundled("visium_fixture").obsm["spatial"])


def test_dlpfc_layer_map_with_header_and_two_columns(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("barcode,layer\nAAAC-1,Layer 6\nAAAG-1,wm\nAAAT-1,NA\n")
    layers = _dlpfc.read_layer_map(path, "151673")
    assert layers["AAAC-1"] == "Layer6" and layers["AAAG-1"] == "WM" and pd.isna(layers["AAAT-1"])
    path.write_text("barcode,layer\nAAAC-1,Layer9\n")
    with pytest.raises(ValueError, match="unknown layer labels"):
        _dlpfc.read_layer_map(path, "151673")


def test_dlpfc_trust_on_first_use(tmp_path, monkeypatch):
    source = dlpfc_folder(tmp_path / "remote")
    calls = []

    def fake_download(url, target):
        calls.append(url)
        template = next(k for k, v in _dlpfc.DLPFC_URLS.items() if v.format(sample="151673") == url)
        shutil.copyfile(source / template.format(sample="151673"), target)

    monkeypatch.setattr(_dlpfc, "_download", fake_download)
    cache = tmp_path / "cache"
    first = D.dlpfc("151673", cache_dir=cache)
    assert len(calls) == len(_dlpfc.DLPFC_URLS)
    assert calls[0].startswith("https://spatial-dlpfc.s3.us-east-2.amazonaws.com/h5/151673_")
    record = json.loads((cache / "dlpfc" / _dlpfc.RECORD_FILE).read_text())
    assert len(record) == len(_dlpfc.DLPFC_URLS) and all(len(v) == 64 for v in record.values())

    # the download skips the hires image: same layout as squidpy's reader, lowres only
    local = D.dlpfc("151673", path=source)
    assert set(first.uns["spatial"]["151673"]["images"]) == {"lowres"}
    assert set(local.uns["spatial"]["151673"]["images"]) == {"lowres", "hires"}
    assert_same(first, local)
    assert first.obs.equals(local.obs) and first.var.equals(local.var)
    lib, local_lib = first.uns["spatial"]["151673"], local.uns["spatial"]["151673"]
    assert lib["scalefactors"] == local_lib["scalefactors"] and lib["metadata"] == local_lib["metadata"]
    np.testing.assert_array_equal(lib["images"]["lowres"], local_lib["images"]["lowres"])

    second = D.dlpfc("151673", cache_dir=cache)  # from the cache, verified, no download
    assert len(calls) == len(_dlpfc.DLPFC_URLS)
    assert second.obs["layer"].equals(first.obs["layer"])

    with open(cache / "dlpfc" / _dlpfc.LAYER_FILE, "a") as f:
        f.write("AAAC-1\t151673\tWM\n")
    with pytest.raises(ValueError, match=r"sha256 of .* expected"):
        D.dlpfc("151673", cache_dir=cache)


@pytest.mark.internet
@pytest.mark.skipif(os.environ.get("SPTL_INTERNET") != "1", reason="needs the network: set SPTL_INTERNET=1")
def test_dlpfc_download(tmp_path):
    adata = D.dlpfc("151676", cache_dir=tmp_path)
    assert adata.n_obs > 3000 and adata.n_vars > 30000
    assert set(adata.obs["layer"].dropna().unique()) == set(D.DLPFC_LAYERS)
    assert "151676" in adata.uns["spatial"]


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "choice"),
    [
        (lambda: D.breast_st(5), "[1, 2, 3, 4]"),
        (lambda: D.visium_prostate("tumour"), "['normal', 'cancer']"),
        (lambda: D.dlpfc("151500"), "'151507'"),
        (lambda: D.merfish_hypothalamus("0.3"), "['0.26', '0.21', 'animal1_bregma0.26', 'animal1_bregma0.21']"),
    ],
)
def test_unknown_choice_lists_the_choices(call, choice):
    with pytest.raises(ValueError, match="choose one of") as err:
        call()
    assert choice in str(err.value)


def test_missing_raw_files_say_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"slice1\.csv"):
        D.breast_st(1, path=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"expression_matrix\.txt\.gz"):
        D.visium_prostate(path=tmp_path)
    with pytest.raises(FileNotFoundError, match="151673"):
        D.dlpfc("151673", path=tmp_path)
