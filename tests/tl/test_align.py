"""sptl.tl.align_slices on real sections moved by a known rigid transform."""

from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData
from helpers import assert_unchanged, snapshot
from scipy import sparse

import sptl
from sptl.metrics import alignment_accuracy, displacement, match_accuracy

# Floors measured on 20 known-transform cases (4 breast_st slices and 6 labelled HER2ST sections, two
# random angles each, mirrored or not, 10% spots dropped, counts thinned to 70%, jitter 0.1 spacing):
# the exact path matched 100% of spots in every case with a median displacement of 0.11-0.12 spot
# spacings (the jitter alone gives 0.118); the anchor path matched 96.5-99.7% (median 0.11-0.14).
MATCH_FLOOR = 0.95
DISPLACEMENT_CEILING = 0.3
ANCHOR_MATCH_FLOOR = 0.93


def moved_copy(adata: AnnData, angle: float, mirror: bool, seed: int = 0) -> tuple[AnnData, np.ndarray]:
    """Copy of ``adata`` rotated (and mirrored), shifted, jittered, 10% spots dropped, counts thinned to 70%."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(adata.n_obs, round(0.9 * adata.n_obs), replace=False))
    moved = adata[keep].copy()
    X = sparse.csr_matrix(moved.X)
    X.data = rng.binomial(X.data.astype(np.int64), 0.7).astype(np.float32)
    X.eliminate_zeros()
    moved.X = X
    th = np.deg2rad(angle)
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ np.diag([-1.0 if mirror else 1.0, 1.0])
    P = moved.obsm["spatial"]
    unit = np.median(np.sort(np.linalg.norm(P[:, None] - P[None], axis=2), axis=1)[:, 1])
    moved.obsm["spatial"] = P @ R.T + np.array([20.0, -7.0]) * unit + rng.normal(0, 0.1 * unit, P.shape)
    moved.obs_names = [f"moved_{n}" for n in moved.obs_names]
    return moved, keep


def cropped_copy(adata: AnnData, keep: float, angle: float, mirror: bool, seed: int = 0):
    """A crop (the spots on one side of a line), counts x0.3 with a gene-wise batch factor, moved."""
    rng = np.random.default_rng(seed)
    P = np.asarray(adata.obsm["spatial"], dtype=float)
    proj = P @ np.array([0.6, 0.8])
    kept = np.flatnonzero(proj <= np.quantile(proj, keep))
    moved = adata[kept].copy()
    X = sparse.csr_matrix(moved.X).astype(np.float64) @ sparse.diags(np.exp(rng.normal(0, 0.5, moved.n_vars)))
    X.data = rng.binomial(np.round(X.data).astype(np.int64), 0.3).astype(np.float32)
    X.eliminate_zeros()
    moved.X = X.astype(np.float32)
    th = np.deg2rad(angle)
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ np.diag([-1.0 if mirror else 1.0, 1.0])
    moved.obsm["spatial"] = P[kept] @ R.T + 3000.0
    moved.obs_names = [f"moved_{n}" for n in moved.obs_names]
    return moved, kept


def test_places_a_cropped_section_with_batch_effect_and_shallow_counts():
    # 65% of the tissue, counts x0.3, gene-wise batch sigma 0.5, rotated and mirrored: before the partial
    # transport candidate, 5-16% of spots found their own partner (median 2.5-3 spacings off); now 1.000
    ref = sptl.datasets.her2st("B1")
    moved, kept = cropped_copy(ref, 0.65, 100.0, True)
    sptl.tl.align_slices([ref, moved], progress=False)
    assert match_accuracy(moved.obs["spatial_aligned_match"], ref.obs_names[kept]) >= 0.9
    assert displacement(moved.obsm["spatial_aligned"], ref.obsm["spatial"][kept])["median"] <= DISPLACEMENT_CEILING
    info = moved.uns["spatial_aligned"]
    assert info["partial"] and 0.6 <= info["area_ratio"] <= 0.7 and info["mirror"]


@pytest.fixture(scope="module")
def breast1():
    return sptl.datasets.breast_st(1)


@pytest.mark.parametrize(
    ("loader", "angle", "mirror"),
    [
        (lambda: sptl.datasets.breast_st(1), 120.0, True),
        (lambda: sptl.datasets.breast_st(3), 35.0, False),
        (lambda: sptl.datasets.her2st("B1"), 170.0, True),
    ],
    ids=["breast_st1-120-mirror", "breast_st3-35", "her2st_B1-170-mirror"],
)
def test_recovers_a_known_rigid_transform(loader, angle, mirror):
    ref = loader()
    moved, keep = moved_copy(ref, angle, mirror)
    sptl.tl.align_slices([ref, moved], progress=False)

    assert match_accuracy(moved.obs["spatial_aligned_match"], ref.obs_names[keep]) >= MATCH_FLOOR
    assert displacement(moved.obsm["spatial_aligned"], ref.obsm["spatial"][keep])["median"] <= DISPLACEMENT_CEILING
    info = moved.uns["spatial_aligned"]
    assert info["mirror"] is mirror
    # the found transform undoes the applied one: its angle is minus the applied angle (mirror: the same)
    expected = angle % 360 if mirror else (-angle) % 360
    assert min(abs(info["angle"] - expected), 360 - abs(info["angle"] - expected)) < 3
    np.testing.assert_allclose(
        moved.obsm["spatial"] @ info["rotation"].T + info["translation"], moved.obsm["spatial_aligned"]
    )
    # the reference stays where it is and is matched back to the moved copy
    np.testing.assert_allclose(ref.obsm["spatial_aligned"], ref.obsm["spatial"])
    assert ref.uns["spatial_aligned"]["matched_to"] == 1
    # one-to-one matching: the dropped spots of the reference stay unmatched, the others match their counterpart
    back = ref.obs["spatial_aligned_match"].astype(object)
    assert back.notna().sum() == moved.n_obs and back.dropna().is_unique
    assert match_accuracy(back.iloc[keep], moved.obs_names) >= MATCH_FLOOR
    assert moved.obs["spatial_aligned_match_mass"].between(0, 1).all()
    assert info["params"]["alpha"] == 0.1 and info["mode"] == "exact"


def test_stack_of_three_lands_in_the_first_frame(breast1):
    first, keep1 = moved_copy(breast1, 60.0, False, seed=1)
    second, keep2 = moved_copy(breast1, 150.0, True, seed=2)
    sptl.tl.align_slices([breast1, first, second], progress=False)
    for moved, keep in ((first, keep1), (second, keep2)):
        assert (
            displacement(moved.obsm["spatial_aligned"], breast1.obsm["spatial"][keep])["median"] <= DISPLACEMENT_CEILING
        )
    assert second.uns["spatial_aligned"]["matched_to"] == 1 and second.uns["spatial_aligned"]["slice"] == 2
    assert "spatial_aligned_3d" not in second.obsm


def _sample(img: np.ndarray, xy: np.ndarray, blur: float = 0) -> np.ndarray:
    """Bilinear colour of ``img`` (blurred by ``blur`` pixels) at pixel positions ``xy`` (x = column, y = row)."""
    from scipy import ndimage

    return np.stack(
        [
            ndimage.map_coordinates(
                ndimage.gaussian_filter(img[..., c].astype(float), blur), [xy[:, 1], xy[:, 0]], order=1
            )
            for c in range(3)
        ],
        1,
    )


def test_images_move_with_the_spots():
    ref, moved = sptl.datasets.mouse_olfactory_bulb("MOB1"), sptl.datasets.mouse_olfactory_bulb("MOB2")
    # turn MOB2 (image and spots together) by 90 degrees, so the alignment must turn it back
    library = moved.uns["spatial"]["MOB2"]
    image = library["images"]["hires"]
    scale = library["scalefactors"]["tissue_hires_scalef"]
    library["images"]["hires"] = np.ascontiguousarray(np.rot90(image))
    xy = moved.obsm["spatial"] * scale
    moved.obsm["spatial"] = np.column_stack([xy[:, 1], image.shape[1] - 1 - xy[:, 0]]) / scale
    sptl.tl.align_slices([ref, moved], progress=False)
    assert abs(((moved.uns["spatial_aligned"]["angle"] + 180) % 360) - 270) < 20  # undoes the turn (+ ~8 deg)
    assert set(moved.uns["spatial"]) == {"MOB2", "MOB2_spatial_aligned"} and set(ref.uns["spatial"]) == {"MOB1"}
    warped = moved.uns["spatial"]["MOB2_spatial_aligned"]["images"]["hires"]
    assert warped.dtype == np.uint8 and warped.ndim == 3
    # every spot shows the same tissue in the moved image at its aligned position as in its own image
    own = _sample(library["images"]["hires"], moved.obsm["spatial"] * scale)
    there = _sample(warped, moved.obsm["spatial_aligned"] * scale)
    assert np.abs(own - there).mean() < 6  # measured 3.6 (two bilinear resamplings); shuffled spots: ~36
    # and the moved image lies over the reference section: the tissue's brightness around the reference
    # spots (blurred over half a spot) agrees; measured r 0.67 (the unturned MOB2 image over MOB1: 0.33)
    ref_scale = ref.uns["spatial"]["MOB1"]["scalefactors"]["tissue_hires_scalef"]
    a = _sample(ref.uns["spatial"]["MOB1"]["images"]["hires"], ref.obsm["spatial"] * ref_scale, 8).mean(1)
    b = _sample(warped, ref.obsm["spatial"] * scale, 8).mean(1)
    turned = _sample(library["images"]["hires"], ref.obsm["spatial"] * scale, 8).mean(1)
    assert np.corrcoef(a, b)[0, 1] > 0.5 > np.corrcoef(a, turned)[0, 1]


def test_stack_in_3d_and_a_unit_mismatch_warning(breast1):
    moved, keep = moved_copy(breast1, 60.0, False, seed=1)
    out = sptl.tl.align_slices([breast1, moved], section_spacing=20.0, progress=False, copy=True)
    xyz = out[1].obsm["spatial_aligned_3d"]
    assert (
        xyz.shape == (moved.n_obs, 3)
        and np.all(xyz[:, 2] == 20.0)
        and np.all(out[0].obsm["spatial_aligned_3d"][:, 2] == 0)
    )
    np.testing.assert_array_equal(xyz[:, :2], out[1].obsm["spatial_aligned"])
    assert out[1].uns["spatial_aligned"]["params"]["section_spacing"] == [0.0, 20.0]
    scaled = moved.copy()
    scaled.obsm["spatial"] = scaled.obsm["spatial"] * 5  # e.g. pixels of an image at another resolution
    with pytest.warns(UserWarning, match="different units"):
        sptl.tl.align_slices([breast1, scaled], progress=False, copy=True)


def test_consecutive_sections_match_study_clusters():
    # HER2ST B4 onto B3 (283 and 298 spots): measured accuracy 0.764 (30 PCs: 0.729; PASTE on spot units: 0.729)
    ref, moved = sptl.datasets.her2st("B3"), sptl.datasets.her2st("B4")
    plan = np.asarray(sptl.tl.align_slices([ref, moved], return_plan=True, progress=False)[0])
    assert alignment_accuracy(plan, moved.obs["cluster"], ref.obs["cluster"]) >= 0.74
    # a one-to-one matching: every spot of the smaller slice has one partner, 15 spots of B3 have none
    assert plan.sum() == pytest.approx(1.0) and ((plan > 0).sum(axis=1) == 1).all()
    assert ((plan > 0).sum(axis=0) <= 1).all() and (plan.sum(axis=0) == 0).sum() == ref.n_obs - moved.n_obs
    assert ref.obs["spatial_aligned_match"].isna().sum() == ref.n_obs - moved.n_obs


def test_consecutive_sections_of_a_patient_never_used_for_tuning():
    # HER2ST H2 onto H1 (patient H was held out when the defaults were chosen): measured 0.803 (30 PCs:
    # 0.777; PASTE on spot units 0.797)
    ref, moved = sptl.datasets.her2st("H1"), sptl.datasets.her2st("H2")
    plan = sptl.tl.align_slices([ref, moved], return_plan=True, progress=False)[0]
    assert alignment_accuracy(plan, moved.obs["cluster"], ref.obs["cluster"]) >= 0.77


def test_anchor_path_for_large_slices():
    ref = sptl.datasets.her2st("F1")
    moved, keep = moved_copy(ref, 100.0, True, seed=3)
    plans = sptl.tl.align_slices([ref, moved], max_exact=100, n_anchors=150, return_plan=True, progress=False)
    assert moved.uns["spatial_aligned"]["mode"] == "anchors"
    assert sparse.issparse(plans[0]) and plans[0].shape == (moved.n_obs, ref.n_obs)
    assert plans[0].nnz <= moved.n_obs * 10  # n_local partners per spot: memory linear in the spots
    assert match_accuracy(moved.obs["spatial_aligned_match"], ref.obs_names[keep]) >= ANCHOR_MATCH_FLOOR
    assert displacement(moved.obsm["spatial_aligned"], ref.obsm["spatial"][keep])["median"] <= DISPLACEMENT_CEILING


def test_partial_overlap():
    # two overlapping 70% strips of one section; measured: 97.2% of the shared spots matched, median 0.12
    ad = sptl.datasets.her2st("F1")
    x = ad.obsm["spatial"][:, 0]
    lo, hi = np.quantile(x, [0.3, 0.7])
    ref, part = ad[x > lo].copy(), ad[x < hi].copy()
    moved, keep = moved_copy(part, 75.0, True, seed=3)
    sptl.tl.align_slices([ref, moved], overlap=0.6, progress=False)
    shared = part.obs_names[keep].isin(ref.obs_names)
    assert match_accuracy(moved.obs["spatial_aligned_match"][shared], part.obs_names[keep][shared]) >= 0.9
    assert displacement(moved.obsm["spatial_aligned"], part.obsm["spatial"][keep])["median"] <= DISPLACEMENT_CEILING


def test_plan_and_copy(breast1):
    other = sptl.datasets.breast_st(2)
    before = [snapshot(breast1), snapshot(other)]
    out, plans = sptl.tl.align_slices([breast1, other], copy=True, return_plan=True, progress=False)
    assert_unchanged(breast1, before[0])
    assert_unchanged(other, before[1])
    assert [ad.n_obs for ad in out] == [254, 251]
    assert plans[0].shape == (251, 254)
    assert plans[0].sum() == pytest.approx(1.0, abs=1e-6)
    assert np.asarray(plans[0]).sum(axis=1) == pytest.approx(np.full(251, 1 / 251), abs=1e-6)
    for ad in out:
        assert {"spatial_aligned"} <= set(ad.obsm) and "spatial_aligned_match" in ad.obs


def _bad_inputs(breast1):
    other = sptl.datasets.breast_st(2)
    renamed = other.copy()
    renamed.var_names = [f"x{i}" for i in range(renamed.n_vars)]
    no_coords = other.copy()
    del no_coords.obsm["spatial"]
    nan_coords = other.copy()
    nan_coords.obsm["spatial"][3, 0] = np.nan
    flat = other.copy()
    flat.obsm["spatial"] = np.c_[flat.obsm["spatial"], np.zeros(flat.n_obs)]
    return [
        ([breast1, renamed], {}, ValueError, "genes are shared"),
        ([breast1, no_coords], {}, KeyError, r"slices\[1\]\.obsm\['spatial'\]"),
        ([breast1, nan_coords], {}, ValueError, "NaN or infinite coordinates in 1 rows"),
        ([breast1, flat], {}, ValueError, "2-D coordinates"),
        ([breast1], {}, ValueError, "at least two sections"),
        (breast1, {}, ValueError, "at least two sections"),
        ([breast1, other], {"alpha": 1.5}, ValueError, "alpha"),
        ([breast1, other], {"overlap": 0.0}, ValueError, "overlap"),
        ([breast1, other], {"method": "paste"}, ValueError, "method"),
        ([breast1, other], {"section_spacing": -1.0}, ValueError, "`section_spacing` must be positive"),
        ([breast1, other], {"section_spacing": [0, 1, 2]}, ValueError, "2 finite heights"),
    ]


def test_bad_input_raises_and_leaves_slices_untouched(breast1):
    for slices, kwargs, error, message in _bad_inputs(breast1):
        items = slices if isinstance(slices, list) else [slices]
        before = [snapshot(ad) for ad in items]
        with pytest.raises(error, match=message):
            sptl.tl.align_slices(slices, progress=False, **kwargs)
        for ad, snap in zip(items, before, strict=True):
            assert_unchanged(ad, snap)
