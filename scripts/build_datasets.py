"""Convert the raw public data in ../shared/data into the compact h5ad files bundled with sptl.

Run from the repository root: ``python scripts/build_datasets.py [--only her2st ...]``.
"""

from __future__ import annotations

import argparse
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


BUILDERS = {"her2st": build_her2st}

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=list(BUILDERS))
    args = parser.parse_args()
    for name in args.only:
        BUILDERS[name]()
