from __future__ import annotations

import anndata as ad
import pytest

from sptl._cli import main


def test_demo_writes_results_and_prints_scores(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "accuracy  0.729" in out and "macro-F1  0.577" in out
    result = ad.read_h5ad(tmp_path / "her2st_D1_from_F1.h5ad")
    assert {"sptl_label", "sptl_label_confidence", "label"} <= set(result.obs)
    assert (tmp_path / "her2st_D1_from_F1.png").stat().st_size > 20_000


def test_demo_rejects_bad_sections(tmp_path):
    with pytest.raises(SystemExit):
        main(["demo", "--source", "A1", "--target", "A1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["demo", "--source", "Z9", "--out", str(tmp_path)])
