"""Shared fixtures. No test touches the network: hub access fails at once instead of retrying."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402


def write_clip(path: Path, frames: int = 4, size: tuple[int, int] = (64, 64), fps: int = 8) -> Path:
    """A small H.264 clip of a moving square (written with PyAV directly)."""
    import av

    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), 40, dtype=np.uint8)
            image[8:24, 8 + 4 * i:24 + 4 * i] = (220, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Tiny models and inversion caches go to a per-session folder, never to ~/.cache."""
    os.environ["STMOD_CACHE_DIR"] = str(tmp_path_factory.mktemp("stmod-cache"))


TINY_FRAMES, TINY_STEPS, TINY_SIZE = 4, 3, (64, 64)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD-1.5-shaped model, written with save_pretrained like a user's model folder."""
    from stmod.backbones.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd15")


@pytest.fixture
def demo_job(tmp_path: Path, tiny_folder: Path):
    """``demo_job(**changes) -> job path``: the demo's synthetic clip, masks and job, made small.

    The backbone is ``sd15`` pointed at the saved tiny folder (the path users take with their own
    model folder) with its ControlNet for ``canny``.
    """
    from stmod.plugins.commands.demo import write_demo_inputs

    def make(**changes) -> Path:
        path = write_demo_inputs(tmp_path / "inputs", frames=TINY_FRAMES, size=TINY_SIZE, steps=TINY_STEPS)
        job = yaml.safe_load(path.read_text())
        job["backbone"] = {"name": "sd15", "model": str(tiny_folder), "device": "cpu"}
        job["control"] = [{"annotator": "canny", "model": str(tiny_folder / "controlnet"), "scale": 1.0}]
        job["output"] = str(tmp_path / "out")
        job["save_attention"] = False
        job.update(changes)
        path.write_text(yaml.safe_dump(job))
        return path

    return make


@pytest.fixture(scope="session")
def bench_script():
    """``bench_script("quality")`` imports ``bench/quality.py`` (the bench folder is not a package)."""
    bench = Path(__file__).resolve().parents[1] / "bench"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"stmod_bench_{name}", bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def make_clip():
    """``make_clip(path, frames=4, size=(h, w), fps=8)`` writes a small synthetic H.264 clip."""
    return write_clip


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_clip(tmp_path / "clip.mp4")


@pytest.fixture
def job_file(tmp_path: Path, clip: Path):
    """Write a job file next to the clip; returns ``write(**overrides) -> path``."""

    def write(name: str = "job.yaml", **overrides) -> Path:
        job = {
            "video": {"path": clip.name, "frames": 4, "size": [64, 64]},
            "prompt": "a red cat",
            "regions": {"cat": "red cat"},
            "layout": {"name": "full-frame"},
            "backbone": "identity",
            "modulator": "null",
            "output": "out",
        }
        job.update(overrides)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(job))
        return path

    return write


@pytest.fixture
def manifest(tmp_path: Path, make_clip):
    """Batch tests (identity-backbone jobs, no model, fast): ``manifest(**changes) -> path``: 2 clips × 2 prompts × 2 presets × 2 seeds = 16 jobs in 2 groups."""
    make_clip(tmp_path / "clip.mp4", frames=5)

    def write(**changes) -> Path:
        data = {
            "output": "runs",
            "base": {"video": {"path": "clip.mp4", "frames": 4, "size": [64, 64]}, "prompt": "a red cat",
                     "regions": {"cat": "red cat"}, "layout": {"name": "full-frame"}, "backbone": "identity",
                     "modulator": "null"},
            "clips": {"first": {}, "second": {"video": {"start": 1}}},
            "prompts": {"red": {}, "blue": {"prompt": "a blue cat", "regions": {"cat": "blue cat"}}},
            "presets": {"baseline": {"modulation": {"modulate_cross": False, "modulate_self": False}}, "full": {}},
            "seeds": [0, 1],
        }
        data.update(changes)
        path = tmp_path / "batch.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
