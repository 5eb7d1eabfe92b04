"""Official VideoGrain YAML configs: detection, key mapping, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stmod.plugins.manager import load_job
from stmod.core.errors import ConfigError

# The shape of the official part-level demo config (config/part_level/...), abridged.
OFFICIAL = {
    "pretrained_model_path": "./ckpt/stable-diffusion-v1-5",
    "logdir": "./result/part_level/spider_polar",
    "dataset_config": {
        "path": "data/run_two_man/run_two_man",
        "prompt": "",
        "n_sample_frame": 16,
        "start_sample_frame": 0,
        "sampling_rate": 1,
        "layout_mask_dir": "./data/run_two_man/layout_masks",
        "layout_mask_order": ["left_man", "right_man", "bg"],
        "negative_promot": "ugly, blurry, low res",
    },
    "control_config": {
        "control_type": "openpose",
        "pretrained_controlnet_path": "./ckpt/control_v11p_sd15_openpose",
        "controlnet_conditioning_scale": 1.0,
        "hand": False,
        "face": False,
    },
    "editing_config": {
        "use_invertion_latents": True,
        "inject_step": 0,
        "old_qk": 1,
        "flatten_res": [1],
        "editing_prompts": [["Spiderman and Polar Bear on the snow", "Spiderman", "Polar Bear"]],
        "clip_length": "${..dataset_config.n_sample_frame}",
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
        "use_pnp": False,
        "use_freeu": False,
        "blending_percentage": 0,
        "vis_cross_attn": False,
        "cluster_inversion_feature": False,
        "sample_seeds": [0],
    },
    "test_pipeline_config": {"target": "video_diffusion.pipelines.ddim_spatial_temporal.X",
                             "num_inference_steps": "${..validation_sample_logger.num_inference_steps}"},
    "seed": 8888,
}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config" / "demo_config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_official_config_maps_flatten_to_the_extension(tmp_path: Path) -> None:
    """FLATTEN is the ``flatten`` extension at level log2(factor), no longer a refusal."""
    from stmod.plugins.official import convert_official_config

    job = convert_official_config(OFFICIAL, source=_write(tmp_path, OFFICIAL))
    assert job["extensions"] == [{"name": "flatten", "levels": [0]}]


def test_official_config_maps_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys map onto the job: positional mask↔prompt pairing, negative prompt, control, preset and blend."""
    monkeypatch.chdir(tmp_path)
    spec = load_job(_write(tmp_path, OFFICIAL))
    assert spec.prompt == "Spiderman and Polar Bear on the snow" and spec.source_prompt == ""
    assert [(r.name, r.prompt) for r in spec.regions] == [("left_man", "Spiderman"), ("right_man", "Polar Bear"),
                                                          ("bg", "")]
    assert spec.negative_prompt == "ugly, blurry, low res"
    assert (spec.video.frames, spec.video.start, spec.video.every, spec.video.size) == (16, 0, 1, (512, 512))
    assert spec.video.path == tmp_path / "data/run_two_man/run_two_man"  # relative to the working directory
    assert spec.layout[0].name == "masks" and spec.layout[0].options["dir"] == "./data/run_two_man/layout_masks"
    assert spec.control[0].annotator.name == "openpose" and spec.control[0].model == "./ckpt/control_v11p_sd15_openpose"
    assert dict(spec.control[0].annotator.options) == {"hand": False, "face": False,
                                                       "weights": ["./annotator/ckpts", "lllyasviel/Annotators"]}
    assert spec.backbone.options["model"] == "./ckpt/stable-diffusion-v1-5"
    assert spec.modulation.preset == "videograin" and spec.blend.name == "videograin"
    assert spec.modulation.exact_lambda is True and spec.skip_fraction == 0
    assert [(e.name, dict(e.options)) for e in spec.extensions] == [("flatten", {"levels": [0]})]
    assert (spec.steps, spec.guidance, spec.seed) == (50, 7.5, 8888)
    assert spec.output == tmp_path / "result/part_level/spider_polar"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset_config": {"crop": "random"}}, "crop 'random'"),
        ({"dataset_config": {"stride": 2}}, "dataset_config.stride"),
        ({"control_config": {"control_type": "hed"}}, "control_type 'hed'"),
        ({"editing_config": {"old_qk": 0}}, "editing_config.old_qk: 0"),
    ],
)
def test_official_unsupported_features_named(tmp_path: Path, change: dict, message: str) -> None:
    """Each still unsupported feature is named in the one-line refusal."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in OFFICIAL.items()}
    for section, values in change.items():
        data[section].update(values)
    with pytest.raises(ConfigError, match=message):
        load_job(_write(tmp_path, data))


def test_official_config_typo_is_an_error(tmp_path: Path) -> None:
    """The official code swallows misspelled keys; stmod names them."""
    data = {**OFFICIAL, "dataset_config": {**OFFICIAL["dataset_config"], "n_sample_frames": 8}}
    with pytest.raises(ConfigError, match="unknown key 'n_sample_frames' in dataset_config.*'n_sample_frame'"):
        load_job(_write(tmp_path, data), allow_unsupported=True)


def test_more_local_prompts_than_masks(tmp_path: Path) -> None:
    """Local prompts pair with masks by position; more prompts than masks is refused."""
    data = {**OFFICIAL, "dataset_config": {**OFFICIAL["dataset_config"], "layout_mask_order": ["left_man"]}}
    with pytest.raises(ConfigError, match="2 local prompts but only 1 masks"):
        load_job(_write(tmp_path, data), allow_unsupported=True)


def test_the_format_comes_from_its_plugin(tmp_path: Path) -> None:
    """Core knows no official config: the ``stmod.official`` plugin's job format converts it."""
    from stmod.core.config import load_job as load_stmod_job
    from stmod.testing import fresh_plugin_manager

    path = _write(tmp_path, OFFICIAL)
    info = fresh_plugin_manager().registry.job_formats["videograin-official"]
    assert info.plugin == "stmod.official" and info.paths == "cwd"
    with pytest.raises(ConfigError, match="unknown key"):  # read as an stmod job
        load_stmod_job(path)
    with pytest.raises(ConfigError, match="unknown key"):
        load_job(path, plugin_args=["no:stmod.official"])
    assert load_job(path).prompt == "Spiderman and Polar Bear on the snow"


def test_official_config_keeps_the_official_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The official code modulates its first 15 denoising steps whatever the step count: the converter says so."""
    monkeypatch.chdir(tmp_path)
    data = {**OFFICIAL, "editing_config": {**OFFICIAL["editing_config"], "num_inference_steps": 20}}
    spec = load_job(_write(tmp_path, data), allow_unsupported=True)
    assert spec.steps == 20 and spec.modulation.end_step == 15 and spec.modulation_window == (0, 15)
