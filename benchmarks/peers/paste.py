"""PASTE (``paste-bio``) as an alignment peer, and the worker that runs it.

PASTE lives in its own venv (``paste-bio`` 1.4.0 crashes on POT >= 0.9.5), built by
``bash benchmarks/peers/setup_paste.sh`` (default ``.venv-paste`` at the repository root; set
``PASTE_VENV`` to use another). From the main venv, :func:`paste_align` writes the two slices to a
temporary folder and runs this same file with the PASTE venv's python:

    .venv-paste/bin/python benchmarks/peers/paste.py REF.h5ad MOVED.h5ad OUT.npz [--alpha 0.1] [--no-plan]

The worker runs ``paste.pairwise_align(ref, moved, alpha)`` (KL dissimilarity on raw counts, PASTE's
defaults) and ``paste.stack_slices_pairwise`` for the aligned coordinates, and stores in OUT.npz: the
best match of every moved spot (index into REF), the aligned coordinates of both slices, the plan
(rows = moved spots, columns = reference spots; unless ``--no-plan``), the wall time of those two
calls and the peak resident memory of the process during them, above its level when they started
(polled every 20 ms).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETUP = Path(__file__).with_name("setup_paste.sh")


def paste_python() -> Path:
    """Python interpreter of the PASTE venv (``$PASTE_VENV`` or ``.venv-paste``)."""
    return Path(os.environ.get("PASTE_VENV", ROOT / ".venv-paste")) / "bin" / "python"


def paste_align(ref, moved, *, alpha: float = 0.1, plan: bool = True, timeout: float = 1800) -> dict:
    """Align ``moved`` onto ``ref`` with PASTE in its venv; returns the worker's arrays as a dict.

    Both AnnData need raw counts in ``.X`` and coordinates in ``obsm['spatial']``. Raises
    ``RuntimeError`` (with PASTE's error) if the worker fails or runs past ``timeout`` seconds.
    """
    import numpy as np
    import pandas as pd
    from anndata import AnnData

    python = paste_python()
    if not python.exists():
        msg = f"PASTE venv not found ({python}); build it with `bash {SETUP.relative_to(ROOT)}`."
        raise FileNotFoundError(msg)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="sptl-paste-") as tmp:
        paths = [Path(tmp) / n for n in ("ref.h5ad", "moved.h5ad", "out.npz")]
        for ad, path in zip((ref, moved), paths[:2], strict=False):
            slim = AnnData(X=ad.X, obs=pd.DataFrame(index=ad.obs_names.copy()), var=pd.DataFrame(index=ad.var_names))
            slim.obsm["spatial"] = np.asarray(ad.obsm["spatial"], dtype=float)
            slim.write_h5ad(path)
        cmd = [str(python), __file__, *map(str, paths), "--alpha", str(alpha)] + ([] if plan else ["--no-plan"])
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired as e:
            msg = f"PASTE did not finish in {timeout:.0f} s"
            raise RuntimeError(msg) from e
        if run.returncode != 0:
            msg = f"PASTE failed (exit {run.returncode}): {run.stderr.strip().splitlines()[-1] if run.stderr else ''}"
            raise RuntimeError(msg)
        with np.load(paths[2]) as f:
            return {k: f[k] for k in f.files}


class PeakRSS:
    """Peak resident memory (MB) of this process above its level at start, polled every 20 ms."""

    def __init__(self) -> None:
        import threading

        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())
        return self.peak - self.start


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _worker(argv: list[str]) -> None:
    import argparse
    import time

    # this file is named paste.py: take its folder off sys.path so `import paste` finds the package
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    import anndata as ad
    import numpy as np
    import paste as pst

    p = argparse.ArgumentParser(description="Run PASTE pairwise_align on two h5ad files.")
    p.add_argument("ref")
    p.add_argument("moved")
    p.add_argument("out")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--no-plan", action="store_true")
    args = p.parse_args(argv)
    ref, moved = ad.read_h5ad(args.ref), ad.read_h5ad(args.moved)
    memory = PeakRSS()
    start = time.perf_counter()
    pi = pst.pairwise_align(ref, moved, alpha=args.alpha)
    aligned = pst.stack_slices_pairwise([ref, moved], [pi])
    seconds = time.perf_counter() - start
    peak = memory.stop()
    plan = np.asarray(pi).T  # rows = moved spots
    out = {
        "match": plan.argmax(axis=1),
        "match_mass": plan.max(axis=1) * plan.shape[0],
        "aligned_ref": np.asarray(aligned[0].obsm["spatial"]),
        "aligned_moved": np.asarray(aligned[1].obsm["spatial"]),
        "seconds": seconds,
        "peak_mb": peak,
    }
    if not args.no_plan:
        out["plan"] = plan
    np.savez_compressed(args.out, **out)


if __name__ == "__main__":
    _worker(sys.argv[1:])
