"""Checks that need real SD 1.5 weights (marked `slow`; run with STMOD_RUN_SLOW=1 STMOD_SD15=<model>).

``STMOD_SD15`` is a hub id in the local HF cache or a diffusers folder; ``STMOD_CONTROLNET_CANNY``
optionally a canny ControlNet. Nothing here runs on CI: real quality needs real weights (and, in
practice, a GPU).
"""

from __future__ import annotations

import os

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.environ.get("STMOD_RUN_SLOW") and os.environ.get("STMOD_SD15")),
                       reason="needs STMOD_RUN_SLOW=1 and STMOD_SD15=<SD 1.5 hub id or folder>"),
]


def test_real_sd15_edit_moves_attention_into_regions(tmp_path) -> None:
    """With real weights, each local prompt's attention mass inside its region grows under modulation."""
    from stmod.core.config import load_job
    from stmod.plugins.commands.demo import write_demo_inputs
    from stmod.core.pipeline.editor import Editor
    from stmod.testing import fresh_plugin_manager

    job = write_demo_inputs(tmp_path / "inputs", frames=4, size=(256, 256), steps=20)
    control = [{"annotator": "canny", "model": os.environ["STMOD_CONTROLNET_CANNY"]}] \
        if os.environ.get("STMOD_CONTROLNET_CANNY") else []
    spec = load_job(job, {"backbone": {"name": "sd15", "model": os.environ["STMOD_SD15"]}, "control": control,
                          "output": str(tmp_path / "out")})
    result = Editor(fresh_plugin_manager().registry, progress=False).run(spec)
    for region, mass in result.run["attention"].items():
        assert mass["modulated"] > mass["plain"], region
