"""The built-in ``stmod.layouts`` plugin: registration and a job file driving the providers."""

from __future__ import annotations

import numpy as np

from stmod.core.config import load_job
from stmod.core.protocols import LayoutProvider
from stmod.plugins.manager import make_plugin_manager
from stmod.core.io.video import plan_clip


def test_registered_through_the_hook() -> None:
    """Both providers are registered by the built-in plugin with options classes."""
    registry = make_plugin_manager(load_entrypoints=False).registry
    layouts = registry.components("layout")
    assert {"masks", "boxes"} <= set(layouts)
    assert all(layouts[n].plugin == "stmod.layouts" and layouts[n].options is not None for n in ("masks", "boxes"))


def test_job_file_relative_dir(scene, request_for) -> None:
    """A job YAML with ``layout: {name: masks, dir: masks}`` resolves the folder against the job's folder."""
    job = scene.root / "job.yaml"
    job.write_text(
        "video: {path: clip, size: [128, 64], frames: 4}\n"
        "prompt: a red and a blue box\n"
        "regions: {red: a red box, blue: a blue box}\n"
        "layout: {name: masks, dir: masks}\n"
    )
    spec = load_job(job)
    registry = make_plugin_manager(load_entrypoints=False).registry
    ref = spec.layout[0]
    provider = registry.create("layout", ref.name, ref.options)
    assert isinstance(provider, LayoutProvider) and provider.feature_request is None
    provider.check(spec, spec.region_names, plan_clip(spec.video))
    masks = provider.layout(request_for(spec), spec.region_names)
    assert masks.names == ("red", "blue") and masks.masks.shape == (4, 2, 64, 128)
    assert np.array_equal(masks.masks[:, 1].numpy(), request_for(spec).transform(scene.masks["blue"][:4]))
