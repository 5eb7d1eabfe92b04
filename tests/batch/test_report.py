"""``bench/report.py``: Markdown tables shaped like the paper's Tables 1–3 from run.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="module")
def report(bench_script):
    return bench_script("report")


def _run(root: Path, name: str, *, cross: bool, self_: bool, clip_t: float, warp: float, gpu: int | None = None,
         preset: str) -> dict:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"modulator": {"name": "st-layout"}, "modulation": {"modulate_cross": cross, "modulate_self": self_}}))
    run = {"phases": {"invert": 60.0, "denoise": 120.0}, "peak_rss_bytes": 2 << 30, "peak_gpu_bytes": gpu,
           "metrics": {"clip_t": clip_t, "clip_f": 97.0, "warp_err": warp, "q_edit": clip_t / warp,
                       "background": {"psnr": 30.0, "ssim": 0.9}, "regions": {"a": {"clip_t": 25.0}},
                       "settings": {"clip": {"model": "m"}}}}
    (folder / "run.json").write_text(json.dumps(run))
    return {"name": name, "status": "done", "output": str(folder),
            "axes": {"clip": "c", "prompt": "p", "preset": preset, "seed": 0}}


def test_report_tables_from_a_batch(report, tmp_path: Path) -> None:
    """Groups by preset; Q-edit of a group is mean CLIP-T / mean Warp-Err; ablation rows from config.yaml."""
    jobs = [
        _run(tmp_path, "c-p-base-s0", cross=False, self_=False, clip_t=30.0, warp=3.0, preset="base"),
        _run(tmp_path, "c-p-cross-s0", cross=True, self_=False, clip_t=33.0, warp=2.0, preset="cross"),
        _run(tmp_path, "c-p-full-s0", cross=True, self_=True, clip_t=36.0, warp=1.0, preset="full", gpu=16 << 30),
        _run(tmp_path, "c-p-full-s1", cross=True, self_=True, clip_t=34.0, warp=3.0, preset="full", gpu=18 << 30),
    ]
    (tmp_path / "batch.json").write_text(json.dumps({"jobs": jobs + [{"name": "x", "status": "failed"}]}))
    out = tmp_path / "report.md"
    assert report.main([str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    for title in ("Table 1 — automatic metrics", "Table 2 — efficiency", "Table 3 — ablation", "Table 4"):
        assert title in text
    assert "| full (n=2) | 97.00 | 35.00 | 2.00 | 17.50 |" in text  # Q-edit = 35 / 2, not mean(36, 11.33)
    assert "| full (n=2) | 3.00 | 17.00 | 2.00 |" in text  # minutes, GPU GB, RAM GB
    assert "| base (n=1) | 3.00 | — | 2.00 |" in text  # no GPU recorded
    ablation = text.split("Table 3")[1].split("Table 4")[0]
    assert [line.split("|")[1].strip() for line in ablation.splitlines() if line.startswith("| ")][2:] == [
        "baseline (n=1)", "+ cross (n=1)", "+ cross + self (n=2)"]


def test_variant_classification(report) -> None:
    assert report._variant({"modulator": {"name": "null"}}) == "baseline"
    assert report._variant({}) == "+ cross + self"
    assert report._variant({"modulation": {"modulate_self": False}}) == "+ cross"
    assert report._variant({"modulation": {"modulate_cross": False}}) == "+ self"
