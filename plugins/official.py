"""Built-in plugin ``stmod.official``: run the official VideoGrain YAML configs directly.

It registers the job format ``videograin-official`` (hook ``stmod_register_job_formats``), so every
command that reads a job file (``edit``, ``check``, ``layout``, ``stmod.load_job``) accepts them.

:func:`is_official_config` recognises them (``pretrained_model_path`` / ``dataset_config`` /
``editing_config``); :func:`convert_official_config` maps their keys onto an stmod job mapping with the
``videograin`` preset and blend. Features of the official code that stmod does not implement (FLATTEN
trajectory attention, PnP injection, FreeU, ``blending_percentage``, dwpose/zoe annotators, several
editing prompts in one run) are refused with one line naming them, unless the caller allows editing
without them (``--allow-unsupported``), in which case each is logged as dropped.

Key meanings follow the official code's own reading of its configs (``dataset_config``,
``control_config``, ``editing_config``; its spelling ``negative_promot`` included).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stmod import hookimpl
from stmod.core.errors import ConfigError
from stmod.core.types import OFFICIAL_END_STEP

__all__ = ["is_official_config", "convert_official_config", "stmod_register_job_formats"]

log = logging.getLogger(__name__)

_MARKERS = ("pretrained_model_path", "dataset_config", "editing_config")

_ANNOTATORS = {"canny": "canny", "openpose": "openpose", "depth": "depth"}

_TOP = {"pretrained_model_path", "logdir", "seed", "dataset_config", "control_config", "editing_config",
        "test_pipeline_config", "model_config", "mixed_precision", "batch_size", "gradient_accumulation_steps"}
_DATASET = {"path", "prompt", "n_sample_frame", "start_sample_frame", "sampling_rate", "layout_mask_dir",
            "layout_mask_order", "negative_promot", "negative_prompt", "stride", "image_mode", "image_size", "crop",
            "offset", "class_data_root"}
_CONTROL = {"control_type", "pretrained_controlnet_path", "controlnet_conditioning_scale", "hand", "face",
            "low_threshold", "high_threshold", "bg_threshold", "value_threshold", "distance_threshold", "value"}
_EDITING = {"editing_prompts", "clip_length", "num_inference_steps", "guidance_scale", "sample_seeds",
            "use_invertion_latents", "use_pnp", "inject_step", "old_qk", "flatten_res", "use_freeu",
            "blending_percentage", "vis_cross_attn", "cluster_inversion_feature", "modulated_percentage",
            "use_inversion_attention", "subdir", "annotate", "make_grid", "strength"}


def is_official_config(data: Mapping[str, Any]) -> bool:
    """Whether a YAML mapping is an official VideoGrain config rather than an stmod job."""
    return any(key in data for key in _MARKERS)


def _section(data: Mapping[str, Any], name: str, allowed: set[str], source: str) -> dict[str, Any]:
    section = data.get(name) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{name} must be a mapping in an official VideoGrain config", place=name, source=source)
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {key!r} in {name} of an official VideoGrain config{hint}",
                              key=str(key), place=name, suggestion=close[0] if close else None, source=source)
    return dict(section)


def _check_top(data: Mapping[str, Any], where: str) -> None:
    for key in data:
        if key not in _TOP:
            close = difflib.get_close_matches(str(key), sorted(_TOP), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {key!r} at the top level of an official VideoGrain config{hint}",
                              key=str(key), suggestion=close[0] if close else None, source=where)


def _unsupported(data: Mapping[str, Any], dataset: Mapping[str, Any], control: Mapping[str, Any],
                 editing: Mapping[str, Any], prompts: list[Any]) -> list[str]:
    """What the official config asks for that stmod does not implement, one phrase each."""
    dropped: list[str] = []

    def unsupported(condition: bool, what: str) -> None:
        if condition:
            dropped.append(what)

    unsupported(len(prompts) > 1, f"{len(prompts)} editing prompts in one run (stmod edits one per job)")
    unsupported(dataset.get("crop", "center") != "center", f"crop {dataset.get('crop')!r} (only center crops)")
    unsupported(any(dataset.get("offset") or []) if isinstance(dataset.get("offset"), (list, tuple)) else
                bool(dataset.get("offset")), "dataset_config.offset (pre-crop offsets)")
    unsupported(dataset.get("stride", -1) not in (-1, None), "dataset_config.stride (several clips)")
    unsupported(bool(data.get("model_config")), "model_config (UNet changes)")
    unsupported(bool(editing.get("use_pnp")), "PnP feature injection (editing_config.use_pnp)")
    unsupported(bool(editing.get("flatten_res")), f"FLATTEN flow attention (editing_config.flatten_res="
                                                  f"{editing.get('flatten_res')})")
    unsupported(bool(editing.get("use_freeu")), "FreeU (editing_config.use_freeu)")
    unsupported(bool(editing.get("blending_percentage")), "editing_config.blending_percentage")
    unsupported(editing.get("use_invertion_latents", True) is False,
                "use_invertion_latents: false (broken in the official code)")
    control_type = control.get("control_type")
    unsupported(control_type is not None and control_type not in _ANNOTATORS,
                f"control_type {control_type!r} (stmod has canny, openpose, depth and precomputed frames)")
    unsupported(bool(control.get("hand")) or bool(control.get("face")), "openpose hand/face drawing")
    return dropped


def convert_official_config(data: Mapping[str, Any], *, source: Path, allow_unsupported: bool = False) -> dict[str, Any]:
    """An stmod job mapping equivalent to an official VideoGrain config.

    :param source: the config file (its name gives the official default output folder).
    :param allow_unsupported: drop unsupported features with a warning instead of refusing.
    :raises ConfigError: for unknown keys, or unsupported features unless allowed.
    """
    where = str(source)
    _check_top(data, where)
    dataset = _section(data, "dataset_config", _DATASET, where)
    control = _section(data, "control_config", _CONTROL, where)
    editing = _section(data, "editing_config", _EDITING, where)
    prompts = editing.get("editing_prompts") or []
    if not prompts or not isinstance(prompts[0], (list, tuple)) or not prompts[0]:
        raise ConfigError("editing_config.editing_prompts must hold [global prompt, local prompt, ...]", source=where)
    global_prompt, *local_prompts = (str(p) for p in prompts[0])
    order = list(dataset.get("layout_mask_order") or [])
    if len(local_prompts) > len(order):
        raise ConfigError(f"{len(local_prompts)} local prompts but only {len(order)} masks in "
                          "dataset_config.layout_mask_order (they pair by position)", source=where)
    size = int(dataset.get("image_size", 512))
    control_type = control.get("control_type")
    dropped = _unsupported(data, dataset, control, editing, prompts)
    if dropped:
        if not allow_unsupported:
            raise ConfigError("official VideoGrain config uses what stmod does not implement: " + "; ".join(dropped)
                              + ". Rerun with --allow-unsupported to edit without them", source=where)
        for what in dropped:
            log.warning("official config: ignoring %s", what)

    regions = {name: (local_prompts[i] if i < len(local_prompts) else "") for i, name in enumerate(order)}
    job: dict[str, Any] = {
        "video": {"path": dataset.get("path"), "start": int(dataset.get("start_sample_frame", 0)),
                  "every": int(dataset.get("sampling_rate", 1)), "frames": int(dataset.get("n_sample_frame", 8)),
                  "size": [size, size]},
        "prompt": global_prompt,
        "source_prompt": str(dataset.get("prompt") or ""),
        "negative_prompt": str(dataset.get("negative_promot", dataset.get("negative_prompt")) or ""),
        "regions": regions,
        "backbone": {"name": "sd15", "model": str(data.get("pretrained_model_path"))},
        "blend": "videograin",
        # the official code modulates its first 15 denoising steps whatever num_inference_steps says
        "modulation": {"preset": "videograin", "end_step": OFFICIAL_END_STEP},
        "steps": int(editing.get("num_inference_steps", 50)),
        "guidance": float(editing.get("guidance_scale", 7.5)),
        "seed": int(data.get("seed", 42)),
        "save_attention": bool(editing.get("vis_cross_attn", False)),
        "output": str(data.get("logdir") or str(source.with_suffix("")).replace("config", "result")),
    }
    if order:
        job["layout"] = {"name": "masks", "dir": dataset.get("layout_mask_dir")}
    if control_type in _ANNOTATORS:
        annotator: dict[str, Any] = {"name": _ANNOTATORS[control_type]}
        if control_type == "canny":
            annotator.update({k: control[k] for k in ("low_threshold", "high_threshold") if k in control})
        job["control"] = [{"annotator": annotator, "model": control.get("pretrained_controlnet_path"),
                           "scale": float(control.get("controlnet_conditioning_scale", 1.0))}]
    return job


@hookimpl
def stmod_register_job_formats(register) -> None:
    # Their paths are relative to the official repository's root, where its configs are run.
    register.add("videograin-official", detect=is_official_config, convert=convert_official_config, paths="cwd",
                 summary="the official VideoGrain configs (pretrained_model_path / dataset_config / editing_config)")
