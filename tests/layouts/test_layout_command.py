"""``stmod-run layout``: masks.mp4 and PNG folders the ``masks`` provider reads back exactly; clean failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from stmod.core.config import load_job
from stmod.core.io.layout_outputs import masks_to_source
from stmod.core.types import EditSpec
from stmod.core.io.video import FrameTransform, probe_video
from stmod.layouts.masks import MaskFolderProvider, MasksOptions
from stmod.testing import run_cli
from stmod.core.io.video import plan_clip

ENV = {"STMOD_LOAD_PLUGINS": ""}


def _read_back(spec: EditSpec, folder: Path, request_for) -> np.ndarray:
    """The layout of ``spec`` with its masks taken from ``folder`` by the ``masks`` provider: bool (F, K, H, W)."""
    provider = MaskFolderProvider(MasksOptions(dir=folder))
    provider.check(spec, spec.region_names, plan_clip(spec.video))
    return provider.layout(request_for(spec), spec.region_names).masks.numpy()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("source, size", [((96, 160), (128, 64)), ((96, 160), (64, 64)), ((100, 70), (64, 64)),
                                          ((64, 64), (64, 64))])
def test_masks_to_source_is_exact(source: tuple[int, int], size: tuple[int, int]) -> None:
    """Mapping edit-size masks back to the source size and through the transform again changes nothing."""
    transform = FrameTransform(source_height=source[0], source_width=source[1], height=size[1], width=size[0])
    masks = np.random.default_rng(0).random((3, size[1], size[0])) > 0.5
    back = masks_to_source(masks, transform)
    assert back.shape == (3, *source) and np.array_equal(transform(back), masks)


def test_layout_round_trip_through_masks_provider(scene, request_for) -> None:
    """Scaled and cropped frames 1, 3, 5: PNGs named by source frame at source size; read back with IoU 1.0."""
    job = scene.root / "job.yaml"
    job.write_text(yaml.safe_dump({
        "video": {"path": "clip", "size": [128, 64], "start": 1, "every": 2},
        "prompt": "a red and a blue box", "regions": {"red": "red", "blue": "blue"},
        "layout": {"name": "masks", "dir": "masks"}, "backbone": "identity", "modulator": "null", "output": "out"}))
    result = run_cli(["-p", "stmod.testing", "layout", str(job), "--quiet"], env=ENV)
    assert result.exit_code == 0, result.stderr
    out = scene.root / "out"
    assert {p.name for p in out.iterdir()} == {"masks.mp4", "masks", "layout.json", "config.yaml", ".stmod-owned"}
    assert sorted(p.name for p in (out / "masks" / "red").iterdir()) == ["00001.png", "00003.png", "00005.png"]
    with Image.open(out / "masks" / "red" / "00003.png") as png:
        assert png.mode == "L" and png.size == (160, 96)
    info = probe_video(out / "masks.mp4")
    assert info.frames == 3 and info.width == 128 and info.height > 64  # the legend strip below the frames
    record = json.loads((out / "layout.json").read_text())
    assert record["source_frames"] == [1, 3, 5] and record["regions"]["red"]["layout"] == "layout[0] (masks)"
    spec = load_job(job)
    original = _read_back(spec, scene.mask_dir, request_for)
    again = _read_back(spec, out / "masks", request_for)
    assert [_iou(original[:, k], again[:, k]) for k in range(2)] == [1.0, 1.0]
    assert np.array_equal(original, again)


def test_layout_command_with_kmeans(demo_job, request_for) -> None:
    """K-Means via the CLI: masks, clusters.mp4 and the cluster table; the masks read back exactly."""
    job = demo_job(layout={"name": "kmeans", "clusters": 3, "level": 0, "n_init": 2,
                           "assign": {"square": 0, "disc": [1, 2]}})
    result = run_cli(["layout", str(job), "--quiet"], env=ENV)
    assert result.exit_code == 0, result.stderr
    assert "clusters.mp4" in result.stdout
    out = Path(yaml.safe_load(job.read_text())["output"])
    assert {"masks.mp4", "clusters.mp4", "masks", "layout.json", "config.yaml", ".stmod-owned"} == {p.name for p in out.iterdir()}
    record = json.loads((out / "layout.json").read_text())
    table = record["clusters"]["layout[0] (kmeans)"]
    assert [c["id"] for c in table] == [0, 1, 2] and table[0]["region"] == "square"
    assert record["inversion"]["cached"] is False and "invert" in record["phases"]
    spec = load_job(job)
    again = _read_back(spec, out / "masks", request_for)
    first = np.stack([np.asarray(Image.open(out / "masks" / r / f"{i:05d}.png")) > 0 for i in range(4)
                      for r in spec.region_names]).reshape(4, 2, 64, 64)
    assert np.array_equal(again, first) and again.any(axis=(0, 2, 3)).all()


def test_unknown_cluster_word_exits_2_and_writes_nothing(demo_job) -> None:
    """A bad kmeans word is reported in one line before any model loads; no output folder appears."""
    job = demo_job(layout={"name": "kmeans", "assign": {"square": "giraffe", "disc": 1}})
    result = run_cli(["layout", str(job), "--quiet"], env=ENV)
    assert result.exit_code == 2 and result.stdout == "" and result.stderr.count("\n") == 1
    assert "'giraffe', which is not in the source prompt" in result.stderr
    out = Path(yaml.safe_load(job.read_text())["output"])
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]


def test_existing_output_needs_overwrite(demo_job) -> None:
    """An existing output folder is left alone without --overwrite; with it only stmod's own is replaced."""
    job = demo_job()
    out = Path(yaml.safe_load(job.read_text())["output"])
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli(["layout", str(job), "--quiet"], env=ENV)
    assert result.exit_code == 2 and "already exists; pass --overwrite" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    result = run_cli(["layout", str(job), "--quiet", "--overwrite"], env=ENV)
    assert result.exit_code == 2 and "no .stmod-owned marker" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / ".stmod-owned").write_text("{}")
    assert run_cli(["layout", str(job), "--quiet", "--overwrite"], env=ENV).exit_code == 0
    assert (out / "masks" / "square" / "00000.png").exists() and not (out / "keep.txt").exists()
