"""``sd15`` refuses at load, in one line naming the key and value, checkpoints it would run wrongly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stmod.backbones.sd15 import SD15Options, StableDiffusionBackbone, refuse_unrunnable
from stmod.core.errors import CheckpointError


def test_v_prediction_scheduler_is_refused_at_load(tmp_path: Path, tiny_folder: Path) -> None:
    folder = shutil.copytree(tiny_folder, tmp_path / "v-model")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["prediction_type"] = "v_prediction"
    config_file.write_text(json.dumps(config))
    backbone = StableDiffusionBackbone(SD15Options(model=str(folder), device="cpu"))
    with pytest.raises(CheckpointError) as caught:
        backbone.load()
    message = str(caught.value)
    assert "\n" not in message and "prediction_type: 'v_prediction'" in message and str(folder) in message
    assert backbone.unet is None  # nothing half-loaded


def test_sd15_shaped_checkpoint_passes(tiny_folder: Path) -> None:
    backbone = StableDiffusionBackbone(SD15Options(model=str(tiny_folder), device="cpu"))
    backbone.load()
    assert backbone.unet is not None


@pytest.mark.parametrize(("unet", "key"), [
    ({"addition_embed_type": "text_time", "in_channels": 4, "out_channels": 4}, "unet addition_embed_type: 'text_time'"),
    ({"in_channels": 9, "out_channels": 4}, "unet in_channels: 9"),
])
def test_unets_not_sd15_shaped_are_refused(unet: dict, key: str) -> None:
    with pytest.raises(CheckpointError, match=key):
        refuse_unrunnable("some/model", {"prediction_type": "epsilon"}, unet)
