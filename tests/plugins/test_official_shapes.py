"""Every shape of config the official VideoGrain code ships, as synthetic stand-ins with the same keys.

``SHAPES`` mirrors the 30 shipped YAMLs (reference §6.2): 8–28 frames, sampling rate 1–2, 1–5 masks,
0–5 local prompts, ControlNet dwpose/openpose/depth_zoe/depth at 0.53–1.0, ``flatten_res`` [1] |
[1, 2] | [1, 2, 4], PnP with ``inject_step`` 0–40, FreeU, ``blending_percentage`` 0.25, several
editing prompts. Each converts to the job the official pipeline corresponds to; the same configs
without FLATTEN and PnP (whose extensions live in other branches) run end to end on the ``tiny``
backbone at 64×64 with two steps.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import attrs
import cv2
import numpy as np
import pytest
import yaml

import stmod.testing
from stmod.backbones.annotators import ANNOTATOR_REPO
from stmod.plugins.manager import load_job
from stmod.core.errors import ConfigError
from stmod.core.pipeline.editor import Editor
from stmod.plugins.official import convert_official_config
from stmod.testing import fresh_plugin_manager, run_cli

LOCAL_PROMPTS = ["red cat", "polar bear", "cherry trees", "blue car", "green grass"]


@attrs.frozen
class Shape:
    """One shipped config's shape: the keys that vary between the official configs."""

    frames: int
    rate: int
    masks: int
    locals: int
    control: str
    scale: float = 1.0
    hand: bool | None = None
    face: bool | None = None
    flatten: tuple[int, ...] = (1,)
    pnp: bool = False
    inject: int = 0
    freeu: bool = False
    blending: float = 0
    prompts: int = 1
    extra: tuple[tuple[str, str, Any], ...] = ()  # (section, key, value) present in that config only


SHAPES = {  # named after the shipped config each mirrors
    "class_level/car/posche": Shape(12, 1, 2, 2, "depth_zoe", pnp=True, inject=10,
                                    extra=(("", "model_config", None), ("editing_config", "modulated_percentage", 0.3))),
    "class_level/running_two_man/man2spider": Shape(16, 2, 3, 3, "dwpose", hand=True, face=False),
    "class_level/tennis/1cls_man2iron_man": Shape(24, 2, 1, 0, "openpose", hand=False, face=False, blending=0.25),
    "class_level/wolf/wolf": Shape(16, 2, 2, 2, "depth_zoe", 0.7, flatten=(1, 2, 4), prompts=4),
    "demo_config": Shape(16, 2, 4, 4, "dwpose", hand=True, face=False, extra=(("editing_config", "vis_cross_attn", True),)),
    "instance_level/2_cars/left_firetruck_right_bus": Shape(14, 1, 3, 3, "depth_zoe", 0.7, flatten=(1, 2, 4),
                                                            pnp=True, inject=30, freeu=True),
    "instance_level/2_cats/4cls_panda_vs_poddle": Shape(24, 1, 4, 4, "depth", 0.53, flatten=(1, 2, 4)),
    "instance_level/2_cats/3cls_samoyed_vs_tiger_sunrise": Shape(24, 1, 3, 3, "depth", 0.7),
    "instance_level/badminton/2cls_wonder_woman_spiderman": Shape(
        24, 1, 3, 3, "dwpose", hand=True, face=True, flatten=(1, 2), pnp=True, inject=12,
        extra=(("editing_config", "use_inversion_attention", True),)),
    "instance_level/soap-box/soap-box": Shape(16, 2, 5, 5, "depth_zoe", hand=False, face=False, pnp=True, inject=5),
    "instance_level/soely_edit/joint_edit": Shape(16, 2, 3, 2, "dwpose", hand=True, face=False),
    "instance_level/soely_edit/only_right": Shape(16, 2, 2, 2, "dwpose", hand=True, face=False, pnp=True, inject=0),
    "part_level/adding_new_object/boxer-punching/thor_in_sunglasses": Shape(28, 1, 4, 4, "depth", flatten=(1, 2, 4),
                                                                            pnp=True, inject=10, freeu=True),
    "part_level/modification/cat_flower/ginger_head": Shape(8, 1, 1, 1, "depth_zoe", pnp=True, inject=40),
}

_CONTROLNET = {"dwpose": "openpose", "openpose": "openpose", "depth_zoe": "depth", "depth": "depth"}


def official_config(name: str, shape: Shape, *, size: int = 512, steps: int = 50) -> dict[str, Any]:
    """A config with the keys (and spellings) of the shipped one ``shape`` mirrors."""
    locals_ = LOCAL_PROMPTS[:shape.locals]
    target = " and ".join(locals_ or ["iron man"]) + " on the snow"
    prompts = [[target, *locals_]] + [[f"{target} in the park {i}", *locals_] for i in range(1, shape.prompts)]
    control: dict[str, Any] = {"control_type": shape.control,
                               "pretrained_controlnet_path": f"./ckpt/control_v11p_sd15_{_CONTROLNET[shape.control]}",
                               "controlnet_conditioning_scale": shape.scale}
    control.update({k: v for k, v in (("hand", shape.hand), ("face", shape.face)) if v is not None})
    config: dict[str, Any] = {
        "pretrained_model_path": "./ckpt/stable-diffusion-v1-5",
        "logdir": f"./result/{name}",
        "dataset_config": {"path": f"data/{name}/frames", "prompt": "a man on the snow", "n_sample_frame": shape.frames,
                           "start_sample_frame": 0, "sampling_rate": shape.rate,
                           "layout_mask_dir": f"./data/{name}/layout_masks",
                           "layout_mask_order": [f"part{k}" for k in range(shape.masks)],
                           "negative_promot": "ugly, blurry, low res", "image_size": size},
        "control_config": control,
        "editing_config": {"use_invertion_latents": True, "inject_step": shape.inject, "old_qk": 1,
                           "flatten_res": list(shape.flatten), "guidance_scale": 7.5, "use_pnp": shape.pnp,
                           "use_freeu": shape.freeu, "editing_prompts": prompts,
                           "clip_length": "${..dataset_config.n_sample_frame}", "sample_seeds": [0],
                           "num_inference_steps": steps, "blending_percentage": shape.blending},
        "test_pipeline_config": {"target": "video_diffusion.pipelines.ddim_spatial_temporal."
                                           "DDIMSpatioTemporalStableDiffusionPipeline",
                                 "num_inference_steps": "${..validation_sample_logger.num_inference_steps}"},
        "seed": 42,
    }
    for section, key, value in shape.extra:
        (config[section] if section else config)[key] = value
    return config


def expected_extensions(shape: Shape) -> list[Any]:
    """FreeU at its official defaults, PnP (only when it injects), then FLATTEN at levels log2(factor)."""
    out: list[Any] = ["freeu"] if shape.freeu else []
    out += [{"name": "pnp", "inject_step": shape.inject}] if shape.pnp and shape.inject else []
    return out + ([{"name": "flatten", "levels": sorted({f.bit_length() - 1 for f in shape.flatten})}]
                  if shape.flatten else [])


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_shipped_shape_converts(name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No refusal: FLATTEN, PnP, FreeU, blending_percentage, dwpose/depth_zoe and several prompts all map."""
    shape = SHAPES[name]
    caplog.set_level(logging.INFO, logger="stmod.plugins.official")
    job = convert_official_config(official_config(name, shape), source=tmp_path / "config" / f"{name}.yaml")
    assert job.get("extensions", []) == expected_extensions(shape)
    assert job["modulation"] == {"preset": "videograin", "end_step": 15, "exact_lambda": True,
                                 "missing_local_prompt": "drop"}
    assert job["blend"] == "videograin"
    assert job["skip_fraction"] == shape.blending
    assert (job["video"]["frames"], job["video"]["every"]) == (shape.frames, shape.rate)
    assert list(job["regions"]) == [f"part{k}" for k in range(shape.masks)]
    assert list(job["regions"].values()) == LOCAL_PROMPTS[:shape.locals] + [""] * (shape.masks - shape.locals)
    [control] = job["control"]
    annotator = {"name": _CONTROLNET[shape.control],
                 **({k: v for k, v in (("hand", shape.hand), ("face", shape.face)) if v is not None}
                    if _CONTROLNET[shape.control] == "openpose" else {}),
                 "weights": ["./annotator/ckpts", ANNOTATOR_REPO]}  # the official place, then the HF cache
    assert control == {"annotator": annotator, "scale": shape.scale,
                       "model": f"./ckpt/control_v11p_sd15_{_CONTROLNET[shape.control]}"}
    said = [r.getMessage() for r in caplog.records]
    standin = [m for m in said if f"control_type {shape.control!r} runs as" in m]
    assert len(standin) == (shape.control in ("dwpose", "depth_zoe"))  # one line, and only for a stand-in
    assert any("editing prompt 0" in m for m in said) == (shape.prompts > 1)


def _write_data(root: Path, name: str, shape: Shape, size: int) -> None:
    """Frames and ``%05d.png`` masks by absolute frame index, as the official data folders hold them."""
    frames = root / "data" / name / "frames"
    frames.mkdir(parents=True)
    count = shape.frames * shape.rate
    for i in range(count):
        image = np.full((size, size, 3), 60, np.uint8)
        image[8:24, (2 * i) % (size - 16):(2 * i) % (size - 16) + 16] = (220, 40, 40)
        cv2.imwrite(str(frames / f"{i:05d}.png"), image)
    for k in range(shape.masks):  # disjoint vertical stripes, the last to the right edge
        folder = root / "data" / name / "layout_masks" / f"part{k}"
        folder.mkdir(parents=True)
        mask = np.zeros((size, size), np.uint8)
        mask[:, k * size // shape.masks:(k + 1) * size // shape.masks] = 255
        for i in range(count):
            cv2.imwrite(str(folder / f"{i:05d}.png"), mask)


#: One shape per combination the runs can tell apart (control type, 1 mask without a local prompt and
#: ``blending_percentage``, several prompts, 5 masks, masks without prompts, FreeU, 8–24 frames, rate 1 and 2).
RUNNABLE = ["class_level/tennis/1cls_man2iron_man", "class_level/wolf/wolf", "instance_level/soap-box/soap-box",
            "instance_level/2_cars/left_firetruck_right_bus",
            "instance_level/soely_edit/joint_edit", "instance_level/2_cats/3cls_samoyed_vs_tiger_sunrise",
            "part_level/modification/cat_flower/ginger_head"]


@pytest.mark.parametrize("name", RUNNABLE)
def test_shapes_run_end_to_end(name: str, tmp_path: Path, monkeypatch, tiny_folder) -> None:
    """The configs edit on the tiny backbone with every official part they ask for (FreeU, PnP, FLATTEN;
    the ControlNet fed by a stand-in annotator, as controlnet-aux's detectors need weights): every frame,
    steps skipped as the config says, no ``--allow-unsupported``."""
    shape = SHAPES[name]
    size = 64
    monkeypatch.chdir(tmp_path)
    _write_data(tmp_path, name, shape, size)
    path = tmp_path / "config" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(official_config(name, shape, size=size, steps=2)))
    converted = load_job(path)
    assert converted.control[0].scale == shape.scale
    names = [e if isinstance(e, str) else e["name"] for e in expected_extensions(shape)]
    assert [e.name for e in converted.extensions] == names
    spec = load_job(path, {"backbone": {"name": "tiny", "folder": str(tiny_folder)},
                           "control": [{"annotator": "passthrough", "scale": shape.scale}]})
    result = Editor(fresh_plugin_manager(stmod.testing).registry, progress=False, cache=False).run(spec)
    assert result.frames.shape == (shape.frames, size, size, 3)
    run = json.loads((result.output / "run.json").read_text())
    assert run["skipped_steps"] == int(2 * shape.blending)
    if names:  # what the extensions ran with reached the run's record
        assert run["inversion"]["cached"] is False


def test_no_control_and_prompt_index_from_the_command_line(tmp_path: Path, monkeypatch, tiny_folder) -> None:
    """``--no-control`` drops the ControlNet, ``--prompt-index`` picks an editing prompt and says which."""
    name = "class_level/wolf/wolf"
    shape = attrs.evolve(SHAPES[name], flatten=())
    monkeypatch.chdir(tmp_path)
    _write_data(tmp_path, name, shape, 64)
    path = tmp_path / "config" / "wolf.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(official_config(name, shape, size=64, steps=2)))
    env = {"STMOD_LOAD_PLUGINS": ""}
    base = ["check", str(path), "--backbone", "tiny", "--print"]
    result = run_cli([*base, "--no-control", "--prompt-index", "2"], env=env)
    assert result.exit_code == 0, result.stderr
    printed = yaml.safe_load(result.stdout[result.stdout.index("video:"):result.stdout.index("\nok: ")])
    assert printed["control"] == [] and printed["prompt"].endswith("in the park 2")
    assert "4 editing prompts; editing prompt 2" in result.stderr
    bad = run_cli([*base, "--prompt-index", "4"], env=env)
    assert bad.exit_code == 2 and "--prompt-index 4 is out of range: the config lists 4 editing prompt(s), 0 to 3" \
        in bad.stderr
    both = run_cli([*base, "--no-control", "--control", "canny"], env=env)
    assert both.exit_code == 2 and "--control and --no-control" in both.stderr


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("editing_config", "old_qk", 0, "editing_config.old_qk: 0 (FLATTEN with the attention output"),
    ("dataset_config", "crop", "random", "crop 'random'"),
    ("dataset_config", "stride", 4, "dataset_config.stride (several clips)"),
    ("control_config", "control_type", "hed", "control_type 'hed' (stmod has canny, depth, depth_zoe, dwpose, openpose)"),
    ("editing_config", "use_invertion_latents", False, "use_invertion_latents: false"),
])
def test_still_unsupported_is_refused_in_one_line(tmp_path: Path, section: str, key: str, value: Any,
                                                  message: str) -> None:
    """What stmod still lacks is named in one line (and --allow-unsupported drops it, saying so)."""
    name = "demo_config"
    config = official_config(name, SHAPES[name])
    config[section][key] = value
    with pytest.raises(ConfigError) as error:
        convert_official_config(config, source=tmp_path / "x.yaml")
    assert message in str(error.value) and "--allow-unsupported" in str(error.value)
    assert "\n" not in str(error.value)
    job = convert_official_config(config, source=tmp_path / "x.yaml", allow_unsupported=True)
    assert job["prompt"] == config["editing_config"]["editing_prompts"][0][0]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("flatten_res", [3], "flatten_res holds 3; each entry is a power of two"),
    ("blending_percentage", 1.0, "blending_percentage must be a number from 0 to below 1"),
    ("inject_step", -1, "inject_step must be a whole number of steps"),
])
def test_bad_values_of_the_mapped_keys(tmp_path: Path, key: str, value: Any, message: str) -> None:
    config = official_config("demo_config", attrs.evolve(SHAPES["demo_config"], pnp=True))
    config["editing_config"][key] = value
    with pytest.raises(ConfigError, match=message):
        convert_official_config(config, source=tmp_path / "x.yaml", allow_unsupported=True)


def test_old_qk_does_not_matter_without_flatten(tmp_path: Path) -> None:
    config = official_config("demo_config", attrs.evolve(SHAPES["demo_config"], flatten=()))
    config["editing_config"]["old_qk"] = 0
    assert "extensions" not in convert_official_config(config, source=tmp_path / "x.yaml")


def test_a_local_prompt_inside_a_word_is_dropped_as_the_official_code_does(tmp_path: Path, monkeypatch, tiny_folder,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    """``demo_config.yaml``'s 'man' in "Spiderman and Polar Bear …": the official code gives that region no
    text; so does the converted job (saying so), instead of stopping as an stmod job does."""
    name = "demo_config"
    shape = attrs.evolve(SHAPES[name], flatten=())
    monkeypatch.chdir(tmp_path)
    _write_data(tmp_path, name, shape, 64)
    config = official_config(name, shape, size=64, steps=2)
    config["editing_config"]["editing_prompts"] = [["Spiderman and Polar Bear on the snow with cherry trees", "man",
                                                    "Polar Bear", "cherry trees", ""]]
    path = tmp_path / "config" / "demo.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(config))
    spec = load_job(path, {"backbone": {"name": "tiny", "folder": str(tiny_folder)}, "control": []})
    components = Editor(fresh_plugin_manager().registry, progress=False, cache=False).check(spec)
    assert [s is None for s in components.spans] == [True, False, False, True]
    assert any("'man' is not a token" in r.getMessage() for r in caplog.records)
    strict = attrs.evolve(spec, modulation=attrs.evolve(spec.modulation, missing_local_prompt="error"))
    with pytest.raises(Exception, match="'man' is not a token"):
        Editor(fresh_plugin_manager().registry, progress=False, cache=False).check(strict)
