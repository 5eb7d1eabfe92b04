"""The one-file layout provider of docs/writing_plugins.md registers and works as written."""

from __future__ import annotations

import re
import types
from pathlib import Path

import numpy as np

from stmod import EditSpec, LayoutProvider, LayoutRequest
from stmod.core.types import VideoSource
from stmod.testing import fresh_plugin_manager

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "writing_plugins.md"


def test_one_file_layout_provider_from_the_guide() -> None:
    section = GUIDE.read_text().split("## 0.")[1].split("\n## ")[0]
    source = re.search(r"```python\n# my_layouts.py\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("my_layouts")
    exec(compile(source, "my_layouts.py", "exec"), module.__dict__)  # noqa: S102 - our own docs
    registry = fresh_plugin_manager(module).registry
    provider = registry.create("layout", "top-half", {})
    assert isinstance(provider, LayoutProvider) and registry.components("layout")["top-half"].plugin == "my_layouts"
    spec = EditSpec(video=VideoSource(path="clip.mp4", size=(64, 64)), prompt="a cat")
    request = LayoutRequest(spec=spec, frame_indices=(0, 1), source_size=(64, 64), transform=None,
                            frames=np.zeros((2, 64, 64, 3), np.uint8))
    masks = provider.layout(request, ["cat"])
    assert masks.names == ("cat",) and masks.masks[:, 0, :32].all() and not masks.masks[:, 0, 32:].any()
