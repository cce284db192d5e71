"""Slice alignment: sptl.tl.align_slices side by side with PASTE, in one run.

(a) Known transform. Every PASTE breast section (``sptl.datasets.breast_st`` 1-4) and every labelled
    HER2ST section (A1-F1) against a copy of itself moved by a known rigid transform: rotation drawn
    in 0-180 degrees, mirrored in every second case, translated by (20, -7) spot spacings, jittered
    by 0.1 spacing, 10% of the spots removed and counts thinned to 70% (binomial). Two cases per
    section. Scores: share of moved spots whose best match is their true counterpart, median
    displacement of the aligned spots from their counterparts (in spot spacings, in each method's
    output frame), seconds, peak memory.
(b) Consecutive sections. HER2ST patients A-H, each pair of consecutive sections (A-D: 6 sections,
    5 pairs each; E-H: 3 sections, 2 pairs each; 28 pairs; ``--b-patients`` for a subset):
    PASTE's accuracy (share of transported mass between spots of the same study cluster,
    ``obs['cluster']``), seconds.
(d) Crossed perturbations (issue 14). HER2ST A1, C1, E1 and PASTE's breast section 1 (``--d-sections``)
    against a copy cropped to 100/80/65/50% of the tissue (the spots on one side of a random line),
    counts thinned to x1/x0.3/x0.1, a gene-wise log-normal batch factor (sigma 0/0.5/1), rotated in
    0-180 degrees, with and without a mirror (:func:`perturbed_copy`). By default the issue's crossing
    (65%, x0.3, sigma 0.5) and each axis varied around it; ``--d-full`` runs all 36 conditions.
    Scores as in (a).
(e) Stacks (issue 14). HER2ST B1, D1 and PASTE's breast section 2, each with 5 perturbed copies (80% crops,
    counts x0.3, batch sigma 0.5, rotations 47-235 degrees, every second mirrored) stacked in one
    ``align_slices`` call: median displacement of each copy from its true position in the frame of the
    first (spot spacings), so the drift of chained pairwise transforms shows. Runs in this process.
(c) Scale. Synthetic sections (grid of spots, Voronoi domains plus smooth gradients, 60 genes) of
    n spots against a moved, resampled copy: seconds and peak memory of both, PASTE where it fits.

Every alignment runs in a fresh worker process (sptl: this file with ``--worker``; PASTE:
``benchmarks/peers/paste.py`` in ``.venv-paste``), which reports its wall time and its peak resident
memory during the alignment above the level when it started (polled every 20 ms).

Run: ``OMP_NUM_THREADS=1 python benchmarks/alignment.py`` (``--parts a b c d e``, ``--d-methods sptl``, ``--sizes``,
``--paste-sizes``; PASTE's venv: ``bash benchmarks/peers/setup_paste.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------- data
def spacing(coords: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    d, _ = cKDTree(coords).query(coords, k=2)
    return float(np.median(d[:, 1]))


def moved_copy(adata, angle: float, mirror: bool, seed: int):
    """Copy rotated (mirrored), shifted, jittered, 10% spots dropped, counts thinned to 70%."""
    from scipy import sparse

    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(adata.n_obs, round(0.9 * adata.n_obs), replace=False))
    moved = adata[keep].copy()
    X = sparse.csr_matrix(moved.X)
    X.data = rng.binomial(X.data.astype(np.int64), 0.7).astype(np.float32)
    X.eliminate_zeros()
    moved.X = X
    th = np.deg2rad(angle)
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ np.diag([-1.0 if mirror else 1.0, 1.0])
    P = np.asarray(moved.obsm["spatial"], dtype=float)
    unit = spacing(np.asarray(adata.obsm["spatial"], dtype=float))
    moved.obsm["spatial"] = P @ R.T + np.array([20.0, -7.0]) * unit + rng.normal(0, 0.1 * unit, P.shape)
    moved.obs_names = [f"moved_{n}" for n in moved.obs_names]
    return moved, keep


def perturbed_copy(adata, *, keep: float, thin: float, sigma: float, angle: float, mirror: bool, seed: int):
    """Crop to ``keep`` of the tissue, thin counts, gene-wise batch factor, rotate (mirror), shift, jitter.

    The crop keeps the spots on one side of a random line through the section (``keep`` of them); counts
    are multiplied gene-wise by ``exp(N(0, sigma))`` and binomially thinned to ``thin``; the copy is then
    rotated by ``angle`` (after mirroring x when ``mirror``), shifted by (20, -7) spot spacings and
    jittered by 0.1 spacing. Returns the copy and the indices of its spots in ``adata``.
    """
    from scipy import sparse

    rng = np.random.default_rng(seed)
    P = np.asarray(adata.obsm["spatial"], dtype=float)
    direction = rng.normal(size=2)
    proj = P @ (direction / np.linalg.norm(direction))
    kept = np.flatnonzero(proj <= np.quantile(proj, keep)) if keep < 1 else np.arange(adata.n_obs)
    moved = adata[kept].copy()
    X = sparse.csr_matrix(moved.X).astype(np.float64)
    if sigma > 0:
        X = X @ sparse.diags(np.exp(rng.normal(0, sigma, moved.n_vars)))
    X.data = rng.binomial(np.round(X.data).astype(np.int64), thin).astype(np.float32)
    X.eliminate_zeros()
    moved.X = X.astype(np.float32)
    th = np.deg2rad(angle)
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @ np.diag([-1.0 if mirror else 1.0, 1.0])
    unit = spacing(P)
    moved.obsm["spatial"] = P[kept] @ R.T + np.array([20.0, -7.0]) * unit + rng.normal(0, 0.1 * unit, (len(kept), 2))
    moved.obs_names = [f"moved_{n}" for n in moved.obs_names]
    return moved, kept


def synthetic_section(n: int, *, n_genes: int = 60, n_domains: int = 6, seed: int = 0):
    """A square grid of about ``n`` spots with Voronoi domains and smooth gradients, Poisson counts."""
    import anndata as ad
    from scipy import sparse
    from scipy.spatial import cKDTree

    side = int(np.ceil(np.sqrt(n)))
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n].astype(float)
    layout = np.random.default_rng(1)
    centres = layout.uniform(0, side, size=(4 * n_domains, 2))
    owner = layout.integers(n_domains, size=len(centres))
    domain = owner[cKDTree(centres).query(grid)[1]]
    profile = layout.gamma(2.0, 1.0, size=(n_domains, n_genes))
    waves = layout.uniform(0.5, 3, size=(n_genes, 2)) * 2 * np.pi / side
    phase = layout.uniform(0, 2 * np.pi, n_genes)
    gradient = np.exp(0.5 * np.sin(grid @ waves.T + phase))
    rng = np.random.default_rng(seed)
    counts = sparse.csr_matrix(rng.poisson(profile[domain] * gradient * 2).astype(np.int32))
    adata = ad.AnnData(counts, var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]))
    adata.obs_names = [f"s{i}" for i in range(len(grid))]
    adata.obsm["spatial"] = grid
    return adata


# ------------------------------------------------------------------------------------ workers
def sptl_worker(ref_path: str, moved_path: str, out_path: str, plan: bool) -> None:
    """Run align_slices on two h5ad files in this process; same outputs as the PASTE worker."""
    import time

    import anndata as ad

    import sptl

    ref, moved = ad.read_h5ad(ref_path), ad.read_h5ad(moved_path)
    from benchmarks.peers.paste import PeakRSS

    memory = PeakRSS()
    start = time.perf_counter()
    plans = sptl.tl.align_slices([ref, moved], return_plan=True, progress=False)
    seconds = time.perf_counter() - start
    peak = memory.stop()
    match = ref.obs_names.get_indexer(moved.obs["spatial_aligned_match"].astype(object).fillna("").to_numpy())
    out = {
        "match": match,
        "match_mass": moved.obs["spatial_aligned_match_mass"].to_numpy(),
        "aligned_ref": ref.obsm["spatial_aligned"],
        "aligned_moved": moved.obsm["spatial_aligned"],
        "seconds": seconds,
        "peak_mb": peak,
        "mode": moved.uns["spatial_aligned"]["mode"],
    }
    if plan:
        from scipy import sparse

        P = sparse.coo_matrix(plans[0])
        out.update(plan_row=P.row, plan_col=P.col, plan_val=P.data, plan_shape=np.array(P.shape))
    np.savez_compressed(out_path, **out)


def run_method(method: str, ref, moved, *, plan: bool = True, timeout: float = 1800) -> dict:
    """Align ``moved`` onto ``ref`` with ``method`` ("sptl" or "paste") in a fresh process."""
    if method == "paste":
        from benchmarks.peers.paste import paste_align

        res = paste_align(ref, moved, plan=plan, timeout=timeout)
        if plan:
            from scipy import sparse

            res["plan"] = sparse.csr_matrix(res["plan"])
        return res
    with tempfile.TemporaryDirectory(prefix="sptl-align-") as tmp:
        paths = [str(Path(tmp) / n) for n in ("ref.h5ad", "moved.h5ad", "out.npz")]
        ref.write_h5ad(paths[0])
        moved.write_h5ad(paths[1])
        cmd = [sys.executable, __file__, "--worker", *paths] + ([] if plan else ["--no-plan"])
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if run.returncode != 0:
            msg = f"sptl worker failed: {run.stderr[-1500:]}"
            raise RuntimeError(msg)
        with np.load(paths[2], allow_pickle=False) as f:
            res = {k: f[k] for k in f.files}
    if plan:
        from scipy import sparse

        res["plan"] = sparse.csr_matrix(
            (res["plan_val"], (res["plan_row"], res["plan_col"])), shape=tuple(res["plan_shape"])
        )
    return res


def safe_run(method, ref, moved, **kw) -> dict | str:
    try:
        return run_method(method, ref, moved, **kw)
    except Exception as e:  # a crashing peer is reported, not hidden
        return f"{type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}"[:200]


# --------------------------------------------------------------------------------------- parts
METHODS = ("sptl", "paste")
#: Part (b) also runs PASTE on coordinates divided by the spot spacing (HER2ST coordinates are image
#: pixels; sptl rescales to spot spacings itself, PASTE uses the raw distances by default).
B_METHODS = ("sptl", "paste", "paste, spot units")


def scores(res: dict | str, kept: np.ndarray, unit: float) -> dict:
    """Match rate, median displacement (spot spacings), seconds and peak memory of a worker's result."""
    if isinstance(res, str):
        return {"error": res}
    disp = np.linalg.norm(res["aligned_moved"] - res["aligned_ref"][kept], axis=1) / unit
    return {
        "matched": float((res["match"] == kept).mean()),
        "displacement": float(np.median(disp)),
        "seconds": float(res["seconds"]),
        "peak_mb": float(res["peak_mb"]),
    }


def part_a() -> pd.DataFrame:
    import sptl

    sections = [(f"breast_st {i}", sptl.datasets.breast_st(i)) for i in sptl.datasets.BREAST_ST_SLICES]
    sections += [(f"HER2ST {s}", sptl.datasets.her2st(s)) for s in sptl.datasets.HER2ST_LABELLED]
    rng = np.random.default_rng(0)
    rows = []
    case = 0
    for name, ref in sections:
        unit = spacing(np.asarray(ref.obsm["spatial"], dtype=float))
        for mirror in (False, True):
            angle = float(rng.uniform(0, 180))
            moved, keep = moved_copy(ref, angle, mirror, seed=case)
            case += 1
            for method in METHODS:
                res = safe_run(method, ref, moved, plan=False)
                row = {"section": name, "angle": round(angle), "mirror": mirror, "method": method}
                rows.append({**row, **scores(res, keep, unit)})
                print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def part_b(methods: tuple[str, ...] = B_METHODS, patients: str = "ABCDEFGH") -> pd.DataFrame:
    import sptl
    from sptl.datasets import HER2ST_SECTIONS
    from sptl.metrics import alignment_accuracy

    rows = []
    for patient in patients:
        n_sections = sum(s[0] == patient for s in HER2ST_SECTIONS)
        for i in range(1, n_sections):
            ref, moved = sptl.datasets.her2st(f"{patient}{i}"), sptl.datasets.her2st(f"{patient}{i + 1}")
            for method in methods:
                if method == "paste, spot units":
                    unit = spacing(np.asarray(ref.obsm["spatial"], dtype=float))
                    a, b = ref.copy(), moved.copy()
                    a.obsm["spatial"] = a.obsm["spatial"] / unit
                    b.obsm["spatial"] = b.obsm["spatial"] / unit
                    res = safe_run("paste", a, b, plan=True)
                else:
                    res = safe_run(method, ref, moved, plan=True)
                row = {"pair": f"{patient}{i + 1} -> {patient}{i}", "method": method}
                if isinstance(res, str):
                    row["error"] = res
                else:
                    acc = alignment_accuracy(res["plan"], moved.obs["cluster"], ref.obs["cluster"])
                    row.update(accuracy=acc, seconds=float(res["seconds"]), peak_mb=float(res["peak_mb"]))
                rows.append(row)
                print(row, flush=True)
    return pd.DataFrame(rows)


#: Part (d) conditions (overlap, counts, batch sigma): the issue-14 crossing and each axis around it.
D_CONDITIONS = (
    (1.0, 1.0, 0.0),
    (0.65, 0.3, 0.5),
    (1.0, 0.3, 0.5),
    (0.8, 0.3, 0.5),
    (0.5, 0.3, 0.5),
    (0.65, 0.1, 0.5),
    (0.65, 0.3, 1.0),
)
D_SECTIONS = ("HER2ST A1", "HER2ST C1", "HER2ST E1", "breast_st 1")


def _section(name: str):
    import sptl

    kind, which = name.split()
    return sptl.datasets.breast_st(int(which)) if kind == "breast_st" else sptl.datasets.her2st(which)


def part_d(methods: tuple[str, ...] = METHODS, sections: tuple[str, ...] = D_SECTIONS, full: bool = False):
    """Crossed perturbations: crop, shallow counts, gene-wise batch factor, rotation and mirror."""
    import itertools

    conditions = (
        list(itertools.product((1.0, 0.8, 0.65, 0.5), (1.0, 0.3, 0.1), (0.0, 0.5, 1.0))) if full else D_CONDITIONS
    )
    rows = []
    for name in sections:
        ref = _section(name)
        unit = spacing(np.asarray(ref.obsm["spatial"], dtype=float))
        for c, (keep, thin, sigma) in enumerate(conditions):
            for mirror in (False, True):
                angle = float(np.random.default_rng([c, int(mirror)]).uniform(0, 180))
                moved, kept = perturbed_copy(
                    ref, keep=keep, thin=thin, sigma=sigma, angle=angle, mirror=mirror, seed=c * 2 + mirror
                )
                for method in methods:
                    res = safe_run(method, ref, moved, plan=False)
                    row = {
                        "section": name,
                        "overlap": keep,
                        "counts": thin,
                        "sigma": sigma,
                        "mirror": mirror,
                        "angle": round(angle),
                        "method": method,
                    }
                    rows.append({**row, **scores(res, kept, unit)})
                    print(rows[-1], flush=True)
    return pd.DataFrame(rows)


E_SECTIONS = ("HER2ST B1", "HER2ST D1", "breast_st 2")


def part_e(sections: tuple[str, ...] = E_SECTIONS, n: int = 6) -> pd.DataFrame:
    """Stacks of ``n`` sections with known transforms: drift of every section from its true position."""
    import time

    import sptl

    rows = []
    for name in sections:
        ref = _section(name)
        unit = spacing(np.asarray(ref.obsm["spatial"], dtype=float))
        stack, kept = [ref.copy()], [np.arange(ref.n_obs)]
        for k in range(1, n):
            moved, keep = perturbed_copy(
                ref, keep=0.8, thin=0.3, sigma=0.5, angle=float(k * 47 % 180), mirror=bool(k % 2), seed=100 + k
            )
            moved.obs_names = [f"s{k}_{o}" for o in ref.obs_names[keep]]
            stack.append(moved)
            kept.append(keep)
        start = time.perf_counter()
        sptl.tl.align_slices(stack, progress=False)
        seconds = time.perf_counter() - start
        for k in range(1, n):
            disp = np.linalg.norm(stack[k].obsm["spatial_aligned"] - ref.obsm["spatial"][kept[k]], axis=1) / unit
            row = {"section": name, "slice": k, "displacement": float(np.median(disp)), "seconds": seconds}
            rows.append(row)
            print(row, flush=True)
    return pd.DataFrame(rows)


def part_c(sizes: list[int], paste_sizes: list[int]) -> pd.DataFrame:
    rows = []
    for n in sorted(set(sizes) | set(paste_sizes)):
        ref = synthetic_section(n, seed=0)
        moved, keep = moved_copy(synthetic_section(n, seed=1), 30.0, False, seed=2)
        for method in METHODS:
            if n not in (sizes if method == "sptl" else paste_sizes):
                continue
            res = safe_run(method, ref, moved, plan=False, timeout=3600)
            row = {"spots": n, "method": method}
            if isinstance(res, str):
                row["error"] = res
            else:
                disp = np.linalg.norm(res["aligned_moved"] - res["aligned_ref"][keep], axis=1)
                row.update(
                    seconds=float(res["seconds"]),
                    peak_mb=float(res["peak_mb"]),
                    matched=float((res["match"] == keep).mean()),
                    displacement=float(np.median(disp)),
                    mode=str(res.get("mode", "")),
                )
            rows.append(row)
            print(row, flush=True)
    return pd.DataFrame(rows)


def exponent(df: pd.DataFrame, method: str, lo: int = 0, hi: float = np.inf) -> float:
    """Slope of log(seconds) against log(spots) over the sizes run in ``[lo, hi]``."""
    d = df[(df["method"] == method) & df["seconds"].notna() & df["spots"].between(lo, hi)].sort_values("spots")
    if len(d) < 2:
        return float("nan")
    return float(np.polyfit(np.log(d["spots"]), np.log(d["seconds"]), 1)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--parts", nargs="*", default=["a", "b", "c", "d", "e"])
    p.add_argument("--sizes", nargs="*", type=int, default=[1_000, 10_000, 100_000])
    p.add_argument("--paste-sizes", nargs="*", type=int, default=[1_000, 2_500])
    p.add_argument("--b-methods", nargs="*", default=list(B_METHODS), help="methods of part (b)")
    p.add_argument("--b-patients", default="ABCDEFGH", help="HER2ST patients of part (b)")
    p.add_argument("--d-methods", nargs="*", default=list(METHODS), help="methods of part (d)")
    p.add_argument("--d-sections", nargs="*", default=list(D_SECTIONS), help='e.g. "HER2ST B1" "breast_st 2"')
    p.add_argument("--d-full", action="store_true", help="part (d): the full 4 x 3 x 3 crossing")
    p.add_argument("--out", default=None, help="folder for the per-case tables (csv)")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--no-plan", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        sptl_worker(*args.worker, plan=not args.no_plan)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.width", 200)
    if "a" in args.parts:
        a = part_a()
        if out:
            a.to_csv(out / "alignment_a.csv", index=False)
        print("\n(a) known transform, 20 cases")
        print(a.groupby("method")[["matched", "displacement", "seconds", "peak_mb"]].agg(["mean", "median", "min"]))
        print("failures:", a.get("error", pd.Series(dtype=object)).notna().groupby(a["method"]).sum().to_dict())
    if "b" in args.parts:
        b = part_b(tuple(args.b_methods), args.b_patients)
        if out:
            b.to_csv(out / "alignment_b.csv", index=False)
        print(f"\n(b) consecutive HER2ST sections, {b['pair'].nunique()} pairs")
        print(b.groupby("method")[["accuracy", "seconds"]].agg(["mean", "median"]))
        wide = b.pivot(index="pair", columns="method", values="accuracy")
        for peer in wide.columns.drop("sptl", errors="ignore"):
            if "sptl" in wide:
                print(f"pairs where sptl > {peer}:", int((wide["sptl"] > wide[peer]).sum()), "of", len(wide))
    if "d" in args.parts:
        d = part_d(tuple(args.d_methods), tuple(args.d_sections), args.d_full)
        if out:
            d.to_csv(out / "alignment_d.csv", index=False)
        print("\n(d) crossed perturbations: mean over sections and rotation / mirror cases")
        table = d.groupby(["overlap", "counts", "sigma", "method"], sort=False)[
            ["matched", "displacement", "seconds", "peak_mb"]
        ].mean()
        print(table.round(3).to_markdown())
        print("failures:", d.get("error", pd.Series(dtype=object)).notna().groupby(d["method"]).sum().to_dict())
    if "e" in args.parts:
        e = part_e()
        if out:
            e.to_csv(out / "alignment_e.csv", index=False)
        print("\n(e) stacks of 6: median displacement (spot spacings) of every slice from its true position")
        print(e.pivot(index="section", columns="slice", values="displacement").round(3).to_markdown())
    if "c" in args.parts:
        c = part_c(args.sizes, args.paste_sizes)
        if out:
            c.to_csv(out / "alignment_c.csv", index=False)
        print("\n(c) scale")
        print(c.to_string(index=False))
        # sptl switches from exact transport to the anchor path above 2000 spots: one slope per path
        slopes = {m: exponent(c, m) for m in METHODS if m != "sptl"}
        slopes["sptl (exact, <= 2000 spots)"] = exponent(c, "sptl", hi=2000)
        slopes["sptl (anchors, > 2000 spots)"] = exponent(c, "sptl", lo=2001)
        print("growth exponents:", json.dumps(slopes))


if __name__ == "__main__":
    main()
