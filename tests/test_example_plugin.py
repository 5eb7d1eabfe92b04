"""The example plugin package in docs/examples, installed as a real distribution (CI installs it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stmod.testing import run_cli

pytest.importorskip("stmod_example_plugin", reason="install docs/examples/stmod-example-plugin (the README does)")


def test_example_plugin_listed_in_plugins_json() -> None:
    """The installed example appears with its distribution, version and components."""
    data = json.loads(run_cli(["plugins", "--json"], env={}).stdout)
    example = next(p for p in data["plugins"] if p["name"] == "example")
    assert example["distribution"] == "stmod-example-plugin" and example["version"] == "0.1.0"
    assert not example["builtin"]
    assert example["components"] == {"layout": ["stripes"], "blender": ["fade"]}


def test_example_plugin_blocked_with_p_no() -> None:
    """-p no:example removes it and its components."""
    data = json.loads(run_cli(["-p", "no:example", "plugins", "--json"], env={}).stdout)
    assert "example" not in [p["name"] for p in data["plugins"]]
    assert "stripes" not in run_cli(["-p", "no:example", "list", "layouts"], env={}).stdout


def test_example_components_work() -> None:
    """Its stripes layout and fade blender do what they say."""
    from stmod import BlendContext
    from stmod.core.types import EditSpec, LayoutRequest, VideoSource
    from stmod.plugins.manager import make_plugin_manager

    registry = make_plugin_manager(env={}).registry
    stripes = registry.create("layout", "stripes", {"axis": "vertical"})
    spec = EditSpec(video=VideoSource(path="x.mp4", size=(128, 64)), prompt="p")
    frames = np.zeros((2, 64, 128, 3), np.uint8)
    request = LayoutRequest(spec=spec, frame_indices=[0, 1], source_size=(64, 128), transform=None, frames=frames)
    layout = stripes.layout(request, ["left", "right"])
    assert layout.names == ("left", "right")
    assert layout.masks[:, 0, :, :64].all() and not layout.masks[:, 0, :, 64:].any()
    assert torch.equal(layout.masks[:, 0] ^ layout.masks[:, 1], torch.ones(2, 64, 128, dtype=torch.bool))

    fade = registry.create("blender", "fade", {"ramp_steps": 4})
    latents, source = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    context = BlendContext(trajectory={10: source}, mask=torch.ones(2, 1, 8, 8), source_latents=source,
                           schedule=None, generator=torch.Generator())
    out = fade.blend(latents, step_index=1, timestep=20, next_timestep=10, context=context)
    assert torch.allclose(out, source + 0.5 * (latents - source))
