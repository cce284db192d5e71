"""Tangram as a label-transfer peer, called from the main venv.

Tangram (``tangram-sc``) lives in its own venv, built by ``bash benchmarks/peers/setup_tangram.sh``
(default ``.venv-tangram`` at the repository root; set ``TANGRAM_VENV`` to use another). The sections
travel as h5ad files through a temporary folder to ``tangram_transfer.py``, run with that venv's python.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("tangram_transfer.py")
SETUP = Path(__file__).with_name("setup_tangram.sh")


def tangram_python() -> Path:
    """Python interpreter of the tangram venv (``$TANGRAM_VENV`` or ``.venv-tangram``)."""
    return Path(os.environ.get("TANGRAM_VENV", ROOT / ".venv-tangram")) / "bin" / "python"


def _slim(adata: AnnData, keys: Sequence[str] = ()) -> AnnData:
    """Counts, obs names, var names and the given obs columns: all the script reads."""
    return AnnData(X=adata.X, obs=adata.obs[list(keys)].copy(), var=pd.DataFrame(index=adata.var_names.copy()))


def tangram_labels(
    source: AnnData,
    target: AnnData,
    *,
    label_key: str = "label",
    exclude: Sequence[str] = ("undetermined",),
    timeout: float = 600,
    device: str = "cpu",
    mode: str = "cells",
    density_prior: str = "rna_count_based",
    genes: str = "markers",
    normalize: str = "1e4",
    readout: str = "mass",
    extra_args: Sequence[str] = (),
) -> np.ndarray:
    """Labels of ``target`` spots transferred from ``source`` by Tangram.

    Both AnnData need raw counts in ``.X`` (or non-negative normalised values, e.g. with
    ``normalize="none"``); ``source.obs[label_key]`` holds the labels. ``mode``, ``density_prior``,
    ``genes``, ``normalize`` and ``readout`` are the options of the same names of
    ``tangram_transfer.py`` (defaults: its defaults, Tangram's cells mode on marker genes); ``extra_args``
    go to it as they are (for example ``["--epochs", "500"]``). Returns the predicted label of each
    target spot, in ``target.obs_names`` order.
    """
    if label_key not in source.obs:
        msg = f"source.obs has no column {label_key!r}"
        raise KeyError(msg)
    python = tangram_python()
    if not python.exists():
        msg = f"Tangram venv not found ({python}); build it with `bash {SETUP.relative_to(ROOT)}`."
        raise FileNotFoundError(msg)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    with tempfile.TemporaryDirectory(prefix="sptl-tangram-") as tmp:
        src, tgt, out = (Path(tmp) / name for name in ("source.h5ad", "target.h5ad", "out.csv"))
        _slim(source, [label_key]).write_h5ad(src)
        _slim(target).write_h5ad(tgt)
        cmd = [str(python), str(SCRIPT), str(src), str(tgt), str(out), "--label-key", label_key, "--device", device]
        cmd += ["--mode", mode, "--density-prior", density_prior, "--genes", genes, "--normalize", normalize]
        cmd += ["--readout", readout, "--exclude", *exclude, *extra_args]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired as e:
            msg = f"tangram_transfer.py did not finish in {timeout} s"
            raise RuntimeError(msg) from e
        if run.returncode != 0:
            msg = f"tangram_transfer.py failed (exit {run.returncode}):\n{run.stderr[-2000:]}"
            raise RuntimeError(msg)
        df = pd.read_csv(out, dtype={"obs_name": str, "predicted": str}, keep_default_na=False)
    names = df["obs_name"].tolist()
    if names == list(target.obs_names):
        return df["predicted"].to_numpy(dtype=object)
    pred = df.set_index("obs_name")["predicted"].reindex(target.obs_names)
    if pred.isna().any():
        msg = "tangram_transfer.py returned no prediction for some target spots"
        raise RuntimeError(msg)
    return pred.to_numpy(dtype=object)
