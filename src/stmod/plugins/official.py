"""Built-in plugin ``stmod.official``: run the official VideoGrain YAML configs directly.

It registers the job format ``videograin-official`` (hook ``stmod_register_job_formats``), so every
command that reads a job file (``edit``, ``check``, ``layout``, ``Editor.job``) accepts them.

:func:`is_official_config` recognises them (``pretrained_model_path`` / ``dataset_config`` /
``editing_config``); :func:`convert_official_config` maps their keys onto an stmod job mapping with the
``videograin`` preset (exact λ on) and blend, and the official pipeline's other parts as extensions:
``flatten_res`` → ``flatten`` (levels log2 of each factor), ``use_pnp``/``inject_step`` → ``pnp``,
``use_freeu`` → ``freeu``; ``blending_percentage`` → ``skip_fraction``. ``dwpose`` and ``depth_zoe``
control run with the closest annotator stmod has (controlnet-aux OpenPose, MiDaS depth), said in one
line; one of several ``editing_prompts`` is edited (``--prompt-index``). Overlapping masks stay as they are
(``layout_overlap: keep``: the official union and size terms add them up). Annotator weights are looked
for where the official repository keeps them (``./annotator/ckpts``), then in the HF cache; missing
weights name where the official README puts them (:data:`OFFICIAL_PLACES`). What stmod still does not
implement is refused with one line naming each, unless the caller allows editing without it
(``--allow-unsupported``), in which case each is logged as dropped.

Key meanings follow the official code's own reading of its configs (``dataset_config``,
``control_config``, ``editing_config``; its spelling ``negative_promot`` included).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stmod import hookimpl
from stmod.core.errors import ConfigError
from stmod.core.types import OFFICIAL_END_STEP

if TYPE_CHECKING:
    from stmod.core.registry import JobFormatRegistrar

__all__ = ["is_official_config", "convert_official_config", "stmod_register_job_formats", "OFFICIAL_ANNOTATOR_FOLDER",
           "OFFICIAL_PLACES"]

log = logging.getLogger(__name__)

_MARKERS = ("pretrained_model_path", "dataset_config", "editing_config")

#: ``control_type`` → stmod annotator; the two marked in :data:`_STANDINS` are the closest stmod has.
_ANNOTATORS = {"canny": "canny", "openpose": "openpose", "depth": "depth", "dwpose": "openpose", "depth_zoe": "depth"}
_STANDINS = {"dwpose": "controlnet-aux OpenPose, the closest to DWPose",
             "depth_zoe": "controlnet-aux MiDaS depth, the closest to ZoeDepth"}

#: Where the official repository keeps the annotator weights (its README: "extract them into
#: ./annotator/ckpts"), relative to the folder its configs run from, as the configs' other paths are.
OFFICIAL_ANNOTATOR_FOLDER = "./annotator/ckpts"
#: Then the HF cache of stmod's default annotator hub id (``stmod.backbones.annotators.ANNOTATOR_REPO``,
#: spelled out: importing it would load torch whenever a plugin list is built).
_ANNOTATOR_HUB = "lllyasviel/Annotators"
#: Where the official README puts what a converted config needs, by kind of file.
OFFICIAL_PLACES = {
    "model": "the official README downloads SD 1.5 into ./ckpt/stable-diffusion-v1-5 (bash download_all.sh)",
    "controlnet": "the official README downloads the ControlNets into ./ckpt/ (bash download_all.sh)",
    "annotator": f"the official README extracts the annotator checkpoints into {OFFICIAL_ANNOTATOR_FOLDER}",
}

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
                 editing: Mapping[str, Any]) -> list[str]:
    """What the official config asks for that stmod does not implement, one phrase each."""
    dropped: list[str] = []

    def unsupported(condition: bool, what: str) -> None:
        if condition:
            dropped.append(what)

    unsupported(dataset.get("crop", "center") != "center", f"crop {dataset.get('crop')!r} (only center crops)")
    unsupported(any(dataset.get("offset") or []) if isinstance(dataset.get("offset"), (list, tuple)) else
                bool(dataset.get("offset")), "dataset_config.offset (pre-crop offsets)")
    unsupported(dataset.get("stride", -1) not in (-1, None), "dataset_config.stride (several clips)")
    unsupported(bool(data.get("model_config")), "model_config (UNet changes)")
    unsupported(editing.get("use_invertion_latents", True) is False,
                "use_invertion_latents: false (broken in the official code)")
    unsupported(bool(editing.get("flatten_res")) and editing.get("old_qk", 1) != 1,
                f"editing_config.old_qk: {editing.get('old_qk')} (FLATTEN with the attention output as query and "
                "key; stmod's flatten takes the projections, old_qk: 1)")
    control_type = control.get("control_type")
    unsupported(control_type is not None and control_type not in _ANNOTATORS,
                f"control_type {control_type!r} (stmod has {', '.join(sorted(_ANNOTATORS))})")
    return dropped


def _chosen_prompt(prompts: Any, prompt_index: int | None, where: str) -> list[str]:
    """The ``[global, local_1, …]`` entry of ``editing_prompts`` to edit (``prompt_index``, default the first)."""
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ConfigError("editing_config.editing_prompts must hold [global prompt, local prompt, ...]", source=where)
    index = 0 if prompt_index is None else prompt_index
    if not 0 <= index < len(prompts):
        raise ConfigError(f"--prompt-index {index} is out of range: the config lists {len(prompts)} editing "
                          f"prompt(s), 0 to {len(prompts) - 1}", key="prompt_index", source=where)
    entry = prompts[index]
    if not isinstance(entry, (list, tuple)) or not entry:
        raise ConfigError(f"editing_config.editing_prompts[{index}] must be [global prompt, local prompt, ...]",
                          source=where)
    if len(prompts) > 1:
        log.warning("official config: %d editing prompts; editing prompt %d, %r (choose another with "
                    "--prompt-index K)", len(prompts), index, str(entry[0]))
    return [str(p) for p in entry]


def _control(control: Mapping[str, Any], *, replaced: bool) -> list[dict[str, Any]]:
    """The job's ``control`` list for ``control_config`` (empty without a supported ``control_type``);
    ``replaced``: the command line replaces it (``--no-control``, ``--control``), so nothing is said of it."""
    control_type = control.get("control_type")
    if control_type not in _ANNOTATORS:
        return []
    name = _ANNOTATORS[control_type]
    annotator: dict[str, Any] = {"name": name}
    if name == "canny":
        annotator.update({k: control[k] for k in ("low_threshold", "high_threshold") if k in control})
    if name == "openpose":
        annotator.update({k: bool(control[k]) for k in ("hand", "face") if k in control})
    if name in ("depth", "openpose"):  # the official place first, then the HF cache (--annotator-weights: then a folder)
        annotator["weights"] = [OFFICIAL_ANNOTATOR_FOLDER, _ANNOTATOR_HUB]
    model = control.get("pretrained_controlnet_path")
    if control_type in _STANDINS and not replaced:
        log.warning("official config: control_type %r runs as stmod's %r annotator (%s) with ControlNet %s; "
                    "--no-control drops it", control_type, name, _STANDINS[control_type],
                    model or f"the default for {name!r}")
    return [{"annotator": annotator, "model": model, "scale": float(control.get("controlnet_conditioning_scale", 1.0))}]


def _flatten_levels(factors: Any, where: str) -> list[int]:
    """stmod UNet levels of ``flatten_res``: factor f (latent size / f) is level log2(f)."""
    if not isinstance(factors, (list, tuple)):
        factors = [factors]
    levels = []
    for factor in factors:
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or factor & (factor - 1):
            raise ConfigError(f"editing_config.flatten_res holds {factor!r}; each entry is a power of two (1, 2, 4, "
                              "…: FLATTEN at the latent resolution divided by it)", key="flatten_res", source=where)
        levels.append(factor.bit_length() - 1)
    return sorted(set(levels))


def _extensions(editing: Mapping[str, Any], where: str) -> list[Any]:
    """The official pipeline's other parts as stmod extensions, PnP before FLATTEN (FLATTEN attends with
    the PnP-injected queries and keys)."""
    # FreeU only sets factors on the up blocks: its place in the list does not matter
    extensions: list[Any] = ["freeu"] if editing.get("use_freeu") else []  # defaults: the official values
    inject = editing.get("inject_step", 0)
    if isinstance(inject, bool) or not isinstance(inject, int) or inject < 0:
        raise ConfigError(f"editing_config.inject_step must be a whole number of steps, at least 0, got {inject!r}",
                          key="inject_step", source=where)
    if editing.get("use_pnp") and inject > 0:
        extensions.append({"name": "pnp", "inject_step": inject})
    elif editing.get("use_pnp"):
        log.info("official config: use_pnp with inject_step 0 injects nothing; PnP left out")
    if editing.get("flatten_res"):
        extensions.append({"name": "flatten", "levels": _flatten_levels(editing["flatten_res"], where)})
    return extensions


def _skip_fraction(editing: Mapping[str, Any], where: str) -> float:
    value = editing.get("blending_percentage", 0) or 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"editing_config.blending_percentage must be a number from 0 to below 1 (the fraction of "
                          f"denoising steps the official code skips), got {value!r}", key="blending_percentage",
                          source=where)
    return float(value)


def _refuse_or_drop(dropped: list[str], editing: Mapping[str, Any], allow_unsupported: bool, where: str) -> None:
    """Refuse what stmod does not implement (one line naming each), or log each as dropped when allowed."""
    if dropped and not allow_unsupported:
        raise ConfigError("official VideoGrain config uses what stmod does not implement: " + "; ".join(dropped)
                          + ". Rerun with --allow-unsupported to edit without them", source=where)
    for what in dropped:
        log.warning("official config: ignoring %s", what)
    if editing.get("cluster_inversion_feature"):  # analysis output only: the edit is the same without it
        log.info("official config: cluster_inversion_feature is not written (stmod's kmeans layout clusters "
                 "inversion features: docs/guide.md §3)")


def convert_official_config(data: Mapping[str, Any], *, source: Path, allow_unsupported: bool = False,
                            prompt_index: int | None = None,
                            overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An stmod job mapping equivalent to an official VideoGrain config.

    :param source: the config file (its name gives the official default output folder).
    :param allow_unsupported: drop unsupported features with a warning instead of refusing.
    :param prompt_index: which of ``editing_prompts`` to edit (default the first; the choice is logged
        when there are several).
    :param overrides: what the command line will merge over the result: a ``control`` there replaces
        ``control_config``, which is then not described.
    :raises ConfigError: for unknown keys or bad values, or unsupported features unless allowed.
    """
    where = str(source)
    _check_top(data, where)
    dataset = _section(data, "dataset_config", _DATASET, where)
    control = _section(data, "control_config", _CONTROL, where)
    editing = _section(data, "editing_config", _EDITING, where)
    global_prompt, *local_prompts = _chosen_prompt(editing.get("editing_prompts"), prompt_index, where)
    order = list(dataset.get("layout_mask_order") or [])
    if len(local_prompts) > len(order):
        raise ConfigError(f"{len(local_prompts)} local prompts but only {len(order)} masks in "
                          "dataset_config.layout_mask_order (they pair by position)", source=where)
    _refuse_or_drop(_unsupported(data, dataset, control, editing), editing, allow_unsupported, where)
    size = int(dataset.get("image_size", 512))
    job: dict[str, Any] = {
        "video": {"path": dataset.get("path"), "start": int(dataset.get("start_sample_frame", 0)),
                  "every": int(dataset.get("sampling_rate", 1)), "frames": int(dataset.get("n_sample_frame", 8)),
                  "size": [size, size]},
        "prompt": global_prompt,
        "source_prompt": str(dataset.get("prompt") or ""),
        "negative_prompt": str(dataset.get("negative_promot", dataset.get("negative_prompt")) or ""),
        "regions": {name: (local_prompts[i] if i < len(local_prompts) else "") for i, name in enumerate(order)},
        # the official code keeps overlapping masks: its region union and size terms add them up
        # (reference §1.5), which the videograin preset reproduces when the masks are left as they are
        "layout_overlap": "keep",
        "backbone": {"name": "sd15", "model": str(data.get("pretrained_model_path"))},
        "blend": "videograin",
        # the official code modulates its first 15 denoising steps whatever num_inference_steps says
        "modulation": {"preset": "videograin", "end_step": OFFICIAL_END_STEP, "exact_lambda": True,
                       "missing_local_prompt": "drop"},
        "steps": int(editing.get("num_inference_steps", 50)),
        "skip_fraction": _skip_fraction(editing, where),
        "guidance": float(editing.get("guidance_scale", 7.5)),
        "seed": int(data.get("seed", 42)),
        "save_attention": bool(editing.get("vis_cross_attn", False)),
        "output": str(data.get("logdir") or str(source.with_suffix("")).replace("config", "result")),
        "control": _control(control, replaced="control" in (overrides or {})),
    }
    if order:
        job["layout"] = {"name": "masks", "dir": dataset.get("layout_mask_dir")}
    extensions = _extensions(editing, where)
    if extensions:
        job["extensions"] = extensions
    return job


@hookimpl
def stmod_register_job_formats(register: JobFormatRegistrar) -> None:
    # Their paths are relative to the official repository's root, where its configs are run.
    register.add("videograin-official", detect=is_official_config, convert=convert_official_config, paths="cwd",
                 places=OFFICIAL_PLACES, summary="the official VideoGrain configs (pretrained_model_path / dataset_config / editing_config)")
