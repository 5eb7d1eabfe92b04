"""Every input read as it is, or refused: 16-bit, greyscale, palette and alpha frames; masks drawn in
their alpha channel; a FIFO or device given as the video, the job or a frame, refused before any read
that could block."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stmod.core.errors import InputError
from stmod.core.io.images import image_rgb, mask_plane, regular_file_problem
from stmod.core.io.video import probe_video, read_video
from stmod.testing import run_cli

from .test_no_data_lost import ENV, TESTING, _refused

RNG = np.random.default_rng()


def _grey16() -> np.ndarray:
    return RNG.integers(0, 65536, size=(4, 16, 16)).astype(np.uint16)


def _frames_folder(tmp_path: Path, images: list[Image.Image]) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, img in enumerate(images):
        img.save(folder / f"{i:05d}.png")
    return folder


def test_16_bit_grey_frames_keep_their_brightness(tmp_path: Path) -> None:
    """An I;16 frame of mean 91 (8-bit) used to read as all white (mean 255)."""
    values = _grey16()
    values[0] = 91 * 257
    folder = _frames_folder(tmp_path, [Image.fromarray(v) for v in values])
    frames, _ = read_video(folder)
    expected = np.rint(values.astype(np.float64) / 257.0).astype(np.uint8)  # float64 reference
    assert np.array_equal(frames, np.repeat(expected[..., None], 3, axis=3))
    assert frames[0].mean() == 91


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1"])
def test_grey_palette_and_alpha_frames_read_as_they_look(tmp_path: Path, mode: str) -> None:
    rgb = RNG.integers(0, 256, size=(16, 16, 3)).astype(np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    folder = _frames_folder(tmp_path, [img])
    frames, _ = read_video(folder)
    assert np.array_equal(frames[0], np.asarray(img.convert("RGB")))


def test_float_images_are_refused(tmp_path: Path) -> None:
    img = Image.fromarray(RNG.random((8, 8)).astype(np.float32), mode="F")
    with pytest.raises(ValueError, match="float"):
        image_rgb(img)


def test_mask_drawn_in_the_alpha_channel_is_read_by_its_alpha() -> None:
    shape = RNG.random((16, 16)) > 0.5
    for colour in (0, 255):  # black or white everywhere: only the alpha tells the shape
        rgba = np.zeros((16, 16, 4), np.uint8)
        rgba[..., :3] = colour
        rgba[..., 3] = np.where(shape, 255, 0)
        assert np.array_equal(mask_plane(Image.fromarray(rgba, "RGBA")) > 0, shape)
    opaque = np.zeros((16, 16, 4), np.uint8)
    opaque[..., 0], opaque[..., 3] = np.where(shape, 200, 0), 255  # constant alpha: the colours say it
    assert np.array_equal(mask_plane(Image.fromarray(opaque, "RGBA")) > 0, shape)


def test_16_bit_mask_with_small_values_is_not_lost() -> None:
    shape = RNG.random((16, 16)) > 0.5
    values = np.where(shape, 1, 0).astype(np.uint16)  # 1/65535: nearly black, still inside
    assert np.array_equal(mask_plane(Image.fromarray(values)) > 0, shape)


def test_alpha_mask_folder_passes_check(job_file, tmp_path: Path) -> None:
    folder = tmp_path / "masks" / "cat"
    folder.mkdir(parents=True)
    for i in range(4):
        rgba = np.zeros((64, 64, 4), np.uint8)
        rgba[8:24, 8:24, 3] = 255
        Image.fromarray(rgba, "RGBA").save(folder / f"{i:05d}.png")
    job = job_file(layout={"name": "masks", "dir": "masks"})
    result = run_cli([*TESTING, "check", str(job)], env=ENV)
    assert result.exit_code == 0, result.stderr


def test_regular_file_problem(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert "FIFO" in regular_file_problem(fifo)
    assert "device" in regular_file_problem("/dev/null")
    assert regular_file_problem(tmp_path) is None and regular_file_problem(tmp_path / "missing") is None
    def blocked(*_):
        raise AssertionError("probe_video blocked on the FIFO")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(20)
    try:
        with pytest.raises(InputError, match="FIFO"):
            probe_video(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _cli_in_a_child(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A subprocess with a timeout: a read that blocks on a FIFO fails the test instead of hanging it."""
    env = {**os.environ, **ENV}
    return subprocess.run([sys.executable, "-m", "stmod", *TESTING, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("where", ["video", "job", "frame", "mask"])
def test_fifo_inputs_are_refused_without_blocking(job_file, tmp_path: Path, where: str) -> None:
    job = job_file()
    if where == "video":
        os.mkfifo(tmp_path / "pipe.mp4")
        job = job_file(video={"path": "pipe.mp4", "frames": 4, "size": [64, 64]})
    elif where == "job":
        job = tmp_path / "pipe.yaml"
        os.mkfifo(job)
    elif where == "frame":
        folder = tmp_path / "frames"
        folder.mkdir()
        Image.new("RGB", (64, 64)).save(folder / "00000.png")
        os.mkfifo(folder / "00001.png")  # not a regular file: not a frame either
        job = job_file(video={"path": "frames", "frames": 2, "size": [64, 64]})
    else:
        folder = tmp_path / "masks" / "cat"
        folder.mkdir(parents=True)
        for i in range(4):
            os.mkfifo(folder / f"{i:05d}.png")
        job = job_file(layout={"name": "masks", "dir": "masks"})
    result = _cli_in_a_child(["check", str(job)], tmp_path)
    if where == "frame":  # the FIFO is skipped like any non-file: a one-frame folder, 2 asked
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        return
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "FIFO" in result.stderr, result.stderr
