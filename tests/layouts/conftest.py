"""Synthetic scenes for layout tests: a frames folder with two moving rectangles and their mask folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from PIL import Image

from stmod.core.types import EditSpec, LayoutRequest, Region, VideoSource
from stmod.core.io.video import write_frames
from stmod.testing import layout_request

FRAMES, HEIGHT, WIDTH = 6, 96, 160  # non-square source; the edit size (128, 64) needs a scale and a crop


@attrs.frozen
class Scene:
    """A clip on disk with ground truth: ``frames`` uint8 (F, H, W, 3), ``masks`` {name: bool (F, H, W)}."""

    root: Path
    video: Path
    mask_dir: Path
    frames: np.ndarray = attrs.field(eq=False)
    masks: dict[str, np.ndarray] = attrs.field(eq=False)


def _draw(frames: int, height: int, width: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([40 + xx % 32, 40 + yy % 32, np.full_like(xx, 60)], axis=-1).astype(np.uint8)
    video = np.repeat(background[None], frames, axis=0)
    masks = {"red": np.zeros((frames, height, width), bool), "blue": np.zeros((frames, height, width), bool)}
    for i in range(frames):
        masks["red"][i, 10:34, 8 + 16 * i:32 + 16 * i] = True
        masks["blue"][i, 56:80, 120 - 12 * i:140 - 12 * i] = True
        video[i][masks["red"][i]] = (230, 20, 20)
        video[i][masks["blue"][i]] = (20, 20, 230)
    return video, masks


def write_mask_folders(
    mask_dir: Path, masks: dict[str, np.ndarray], names: Callable[[int], str] = "{:05d}.png".format
) -> None:
    """One folder per region with 0/255 PNGs."""
    for name, stack in masks.items():
        (mask_dir / name).mkdir(parents=True, exist_ok=True)
        for i, mask in enumerate(stack):
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / name / names(i))


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    """Frames folder ``clip/`` and mask folders ``masks/red``, ``masks/blue`` under ``tmp_path``."""
    frames, masks = _draw(FRAMES, HEIGHT, WIDTH)
    write_frames(tmp_path / "clip", frames)
    write_mask_folders(tmp_path / "masks", masks)
    return Scene(root=tmp_path, video=tmp_path / "clip", mask_dir=tmp_path / "masks", frames=frames, masks=masks)


@pytest.fixture
def make_spec(scene: Scene) -> Callable[..., EditSpec]:
    """``make_spec(regions=("red", "blue"), size=(128, 64), **video_options)`` → an EditSpec on the scene."""

    def make(regions: tuple[str, ...] = ("red", "blue"), size: tuple[int, int] = (128, 64), **video: Any) -> EditSpec:
        return EditSpec(video=VideoSource(path=scene.video, size=size, **video), prompt="a test clip",
                        regions=tuple(Region(name=r) for r in regions), base_dir=scene.root)

    return make


@pytest.fixture
def write_masks() -> Callable[..., None]:
    """``write_masks(mask_dir, {name: bool (F, H, W)}, names=callable)``: write region mask folders."""
    return write_mask_folders


@pytest.fixture
def request_for() -> Callable[[EditSpec], LayoutRequest]:
    """``request_for(spec)`` → the LayoutRequest the editor would build (frames read and transformed)."""

    return layout_request
