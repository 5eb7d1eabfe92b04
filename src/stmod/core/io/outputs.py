"""The output folder of an edit, written atomically.

Everything goes into a temporary sibling folder that replaces the output folder only when complete,
so a failed run leaves earlier outputs untouched; the folder carries stmod's marker
(:mod:`stmod.core.io.ownership`), and only a marked folder is ever replaced.

``result.mp4`` / ``result.gif`` — the edit; ``side_by_side.mp4`` — source | edit; ``masks.mp4`` —
regions over the source; ``control.mp4`` — ControlNet images; ``eval/`` — lossless source, result
and exact masks for ``stmod-run eval`` (see :mod:`stmod.core.io.evaldata`); ``attention/`` and
``attention_effect.png`` — each local prompt's cross-attention without and with modulation (when
recorded); ``config.yaml`` — the resolved job; ``run.json`` — versions, seed, timings per phase,
peak memory, inversion cache use, in-region attention mass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stmod.core.config import dump_job
from stmod.core.io.evaldata import write_eval_frames
from stmod.core.pipeline.records import PhaseTimer, peak_gpu_bytes, peak_rss_bytes
from stmod.core.types import EditSpec, LayoutMasks
from stmod.core.io.ownership import atomic_folder
from stmod.core.io.video import SourceClip, write_gif, write_mp4
from stmod.core.io.visuals import colour_bar, heatmap_overlay, mask_overlay, side_by_side, tile

__all__ = ["write_outputs", "attention_figure", "attention_effect_figure", "region_labels"]


def attention_figure(recorder: Any, region: str, frames: np.ndarray) -> np.ndarray:
    """Per frame: the region's local-prompt attention without (top) and with (bottom) modulation."""
    plain = recorder.region_map(region, modulated=False).numpy()
    modulated = recorder.region_map(region, modulated=True).numpy()
    top = float(max(plain.max(), modulated.max()))
    images = [heatmap_overlay(f, m, vmin=0.0, vmax=top) for f, m in zip(frames, plain)]
    images += [heatmap_overlay(f, m, vmin=0.0, vmax=top) for f, m in zip(frames, modulated)]
    titles = [f"f{i} plain" for i in range(len(frames))] + [f"f{i} modulated" for i in range(len(frames))]
    return tile(images, titles=titles, columns=len(frames))


def region_labels(spec: EditSpec, names: Sequence[str]) -> list[str]:
    """Legend entries ``"name: local prompt"`` (just the name for a region without a prompt)."""
    prompts = {r.name: r.prompt for r in spec.regions}
    return [f"{name}: {prompts[name]}" if prompts.get(name) else name for name in names]


def attention_effect_figure(recorder: Any, layout: LayoutMasks, frames: np.ndarray,
                            prompts: Mapping[str, str] | None = None, frame_index: int | None = None) -> np.ndarray:
    """One row per local prompt: its mask, its attention without and with modulation, mass inside.

    Titles name the frame, the local prompt and the region's share of the frame (the "inside" mass
    attention spread evenly would have); a colour bar gives the heat maps' common scale.
    """
    middle = len(frames) // 2
    factor = max(1, int(np.ceil(256 / min(frames.shape[1:3]))))  # small clips: upscale so titles stay legible
    frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    masks = layout.masks.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    shown = middle if frame_index is None else frame_index
    maps, titles, top = [], [], 0.0
    for region in recorder.regions:
        k = layout.names.index(region)
        plain = recorder.region_map(region, modulated=False)[middle].numpy()
        modulated = recorder.region_map(region, modulated=True)[middle].numpy()
        top = max(top, float(plain.max()), float(modulated.max()))
        maps.append((k, plain, modulated))
    cells = []
    for region, (k, plain, modulated) in zip(recorder.regions, maps):
        share = float(masks[middle, k].float().mean())
        prompt = (prompts or {}).get(region) or region
        cells += [
            mask_overlay(frames[middle:middle + 1], masks[middle:middle + 1, k:k + 1], [region],
                         with_legend=False)[0],
            heatmap_overlay(frames[middle], plain, vmin=0.0, vmax=top),
            heatmap_overlay(frames[middle], modulated, vmin=0.0, vmax=top),
        ]
        titles += [
            f"frame {shown}: {region} = \"{prompt}\" ({100 * share:.0f}% of the frame)",
            f"plain: {100 * recorder.mass_inside(region, modulated=False):.0f}% inside",
            f"modulated: {100 * recorder.mass_inside(region, modulated=True):.0f}% inside",
        ]
    grid = tile(cells, titles=titles, columns=3)
    bar = colour_bar(grid.shape[0] - 8, vmin=0.0, vmax=top, label="attention")
    bar = np.pad(bar, ((4, grid.shape[0] - bar.shape[0] - 4), (4, 4), (0, 0)), constant_values=255)
    return np.concatenate([grid, bar], axis=1)


def _video_tags(spec: EditSpec, run: Mapping[str, Any]) -> dict[str, str]:
    """Container tags of the edited videos: what made them, so a file found later still says so."""
    version = (run.get("versions") or {}).get("stmod", "")
    # (the mp4 muxer writes its own "encoder" tag, so stmod's version goes into the comment)
    maker = " ".join(part for part in ("stmod", version) if part)
    return {"title": spec.prompt, "comment": f"{maker} job (seed {spec.seed}):\n" + dump_job(spec, rerunnable=True)}


def _captions(spec: EditSpec) -> tuple[str, str]:
    """What ``side_by_side.mp4`` says under the source and under the edit: the prompts."""
    edit = "\n".join([spec.prompt] + [f"{r.name}: {r.prompt}" for r in spec.regions if r.prompt])
    return spec.source_prompt or "(no source prompt)", edit


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


def write_outputs(
    spec: EditSpec,
    *,
    clip: SourceClip,
    frames: np.ndarray,
    layout: LayoutMasks,
    control_images: list[np.ndarray],
    recorder: Any,
    run: dict[str, Any],
    timer: PhaseTimer,
) -> dict[str, Any]:
    """Write the whole output folder of one edit (atomically replacing ``spec.output``); returns run.json's record."""
    fps = clip.fps
    tags = _video_tags(spec, run)
    with atomic_folder(spec.output, kind="edit output") as folder:
        write_mp4(folder / "result.mp4", frames, fps, metadata=tags)
        write_gif(folder / "result.gif", frames, fps)
        write_mp4(folder / "side_by_side.mp4", side_by_side(clip.frames, frames, captions=_captions(spec),
                                                            min_height=256), fps, metadata=tags)
        if layout.names:
            write_mp4(folder / "masks.mp4", mask_overlay(clip.frames, layout.masks, layout.names,
                                                         labels=region_labels(spec, layout.names)), fps)
        if control_images:
            write_mp4(folder / "control.mp4", np.concatenate(control_images, axis=2), fps)
        write_eval_frames(folder, source=clip.frames, result=frames, layout=layout, fps=fps)
        recorded = recorder is not None and bool(recorder.grids) and bool(recorder.regions)
        if recorded:
            (folder / "attention").mkdir()
            for region in recorder.regions:
                _save_png(folder / "attention" / f"{region}.png", attention_figure(recorder, region, clip.frames))
            prompts = {r.name: r.prompt for r in spec.regions}
            _save_png(folder / "attention_effect.png", attention_effect_figure(
                recorder, layout, clip.frames, prompts, frame_index=clip.indices[len(clip.indices) // 2]))
        (folder / "config.yaml").write_text(dump_job(spec, rerunnable=True), encoding="utf-8")
        record = {
            **run,
            "phases": timer.snapshot(),
            "phases_run": list(timer.ran),
            "peak_rss_bytes": peak_rss_bytes(),
            "peak_gpu_bytes": peak_gpu_bytes(),
            "outputs": sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")),
        }
        (folder / "run.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record
