from __future__ import annotations

import re

import anndata as ad
import pytest

from sptl._cli import main


def test_demo_writes_results_and_prints_scores(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    # measured 0.792 accuracy, 0.663 macro-F1 (seed 0); the printed scores must be the real ones
    acc = float(re.search(r"accuracy\s+([0-9.]+)", out).group(1))
    f1 = float(re.search(r"macro-F1\s+([0-9.]+)", out).group(1))
    assert acc >= 0.75 and f1 >= 0.62
    result = ad.read_h5ad(tmp_path / "her2st_D1_from_F1.h5ad")
    assert {"sptl_label", "sptl_label_confidence", "label"} <= set(result.obs)
    assert (tmp_path / "her2st_D1_from_F1.png").stat().st_size > 20_000


def test_demo_rejects_bad_sections(tmp_path):
    with pytest.raises(SystemExit):
        main(["demo", "--source", "A1", "--target", "A1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["demo", "--source", "Z9", "--out", str(tmp_path)])
