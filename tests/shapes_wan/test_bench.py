"""``bench/quality.py --backbone shapes-wan``: the benchmark's cases on the shipped Wan-layout model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_quality_runs_on_shapes_wan(bench_script, tmp_path: Path) -> None:
    quality = bench_script("quality")
    assert quality.main(["--backbone", "shapes-wan", "--per-kind", "1", "--rows", "none", "--frames", "5",
                         "--steps", "2", "--out", str(tmp_path / "bench")]) == 0
    results = json.loads((tmp_path / "bench" / "quality.json").read_text())
    assert results["backbone"] == "shapes-wan" and len(results["records"]) == 5
    config = (tmp_path / "bench" / "runs" / "none" / "class-00" / "config.yaml").read_text()
    assert "shapes-wan" in config


def test_a_folder_without_a_transformer_is_refused(bench_script, tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    with pytest.raises(SystemExit, match=r"--model .*weights is not a diffusers model folder \(no transformer\)"):
        bench_script("quality").main(["--backbone", "shapes-wan", "--model", str(tmp_path / "weights"),
                                      "--out", str(tmp_path / "bench")])
    assert not (tmp_path / "bench").exists()
