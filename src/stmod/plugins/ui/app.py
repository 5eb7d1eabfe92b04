"""The ``stmod-run ui`` page: Gradio widgets over :class:`UiApp`, which drives the ordinary Editor.

:class:`UiApp` does the work of each button and click (load a clip, draw regions, preview the masks,
check prompts, run, cancel) and knows nothing of widgets beyond Gradio's progress and request
objects; :func:`build` lays the page out and wires the events. Every edit is a job file written to
``<out>/run-NNN/job.yaml`` and loaded back with :func:`~stmod.core.config.load_job`, then run by the
same :class:`~stmod.core.pipeline.editor.Editor` as ``stmod-run edit``, so the page validates, edits
and writes exactly what the CLI would, and ``stmod-run edit <out>/run-NNN/job.yaml`` reruns it.
Import this module only after checking that Gradio is installed (the command does).
"""

from __future__ import annotations

import functools
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import yaml
from PIL import Image

from stmod.core.config import job_from_mapping, load_job
from stmod.core.errors import StmodError, UsageError
from stmod.core.io.layout_outputs import write_layout_outputs
from stmod.core.io.video import plan_clip, read_video
from stmod.core.io.visuals import mask_overlay, tile
from stmod.core.pipeline.editor import Editor
from stmod.core.registry import Registry
from stmod.core.types import EditSpec, VideoSource
from stmod.plugins.commands.prediction import prediction_lines
from stmod.plugins.ui.state import (MAX_REGIONS, MODES, Clip, Settings, clear_region, click, display_scale,
                                    draw_keyframe,
                                    error_line, job_mapping, metrics_markdown, prompt_flags)

__all__ = ["UiApp", "EditCancelled", "build", "BACKBONES"]

log = logging.getLogger(__name__)

#: Backbones the page offers: the shipped trained toy model (a real edit on the CPU) and the test model.
BACKBONES = ("shapes", "tiny")


class EditCancelled(Exception):
    """Raised from the progress callback when the page's cancel button was pressed."""


class UiApp:
    """State shared by all browser sessions of one ``stmod-run ui``: the registry, one Editor (so a loaded
    model is reused by the next run), the output folder, the tokenizers and the cancel flags."""

    def __init__(self, registry: Registry, workdir: Path, *, cache: Any = None) -> None:
        self.registry = registry
        self.workdir = workdir
        self.editor = Editor(registry, progress=False, cache=cache)
        self._tokenizers: dict[str, Any] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    # -- folders ---------------------------------------------------------------------------------
    def _next_folder(self, prefix: str) -> Path:
        with self._lock:  # two sessions must not pick the same number
            self.workdir.mkdir(parents=True, exist_ok=True)
            taken = {p.name for p in self.workdir.iterdir()}
            n = 1
            while f"{prefix}-{n:03d}" in taken:
                n += 1
            folder = self.workdir / f"{prefix}-{n:03d}"
            folder.mkdir()
            return folder

    def _clip_path(self, upload: str | None, path: str) -> Path:
        if upload:
            clips = self.workdir / "clips"
            clips.mkdir(parents=True, exist_ok=True)
            target = clips / Path(upload).name
            shutil.copyfile(upload, target)  # Gradio's upload cache is temporary; the job file must outlive it
            return target
        if not path.strip():
            raise UsageError("no clip: upload one or type the path of a video file or a folder of frames")
        return Path(path.strip()).expanduser().absolute()

    # -- 1. the clip -----------------------------------------------------------------------------
    def load_clip(self, upload: str | None, path: str, start: float, every: float, count: float, width: float,
                  height: float) -> tuple[Clip, list[int], str]:
        """The clip and its frame selection, validated as a job's ``video`` entry; raises the CLI's errors."""
        source = self._clip_path(upload, path)
        video = {"path": str(source), "start": int(start), "every": int(every), "frames": int(count),
                 "size": [int(width), int(height)]}
        spec = job_from_mapping({"video": video, "prompt": "-"}, base_dir=self.workdir, source="the clip form")
        plan = plan_clip(spec.video)
        info, indices = plan.info, plan.indices
        images, _ = read_video(spec.video.path, indices, info=info)
        clip = Clip(path=str(source), start=int(start), every=int(every), frames=len(indices),
                    size=(int(width), int(height)), indices=indices, images=images)
        note = (f"{source.name}: {info.width}x{info.height}, {info.frames} frames; editing source frames "
                f"{', '.join(map(str, indices[:8]))}{', ...' if len(indices) > 8 else ''} at {int(width)}x{int(height)}")
        return clip, list(indices), note

    def keyframe(self, clip: Clip | None, frame: int | None, annotations: dict, pending: list | None,
                 names: list[str]) -> np.ndarray | None:
        """The keyframe at the source size with the regions drawn on it."""
        if clip is None or frame is None:
            return None
        image = clip.images[list(clip.indices).index(int(frame))]
        return draw_keyframe(image, annotations, int(frame), names, pending, scale=display_scale(*image.shape[:2]))

    # -- 2. regions ------------------------------------------------------------------------------
    def click(self, clip: Clip | None, frame: int | None, annotations: dict, pending: list | None, slot: int,
              mode: str, xy: tuple[float, float]) -> tuple[dict, list | None, str]:
        if clip is None or frame is None:
            return annotations, pending, "load a clip first"
        scale = display_scale(*clip.images.shape[1:3])  # the page shows the keyframe zoomed
        return click(annotations, pending, slot=slot, frame=int(frame), x=float(xy[0]) / scale,
                     y=float(xy[1]) / scale, mode=mode)

    def _tokenizer(self, backbone: str) -> Any:
        if backbone not in self._tokenizers:
            component = self.registry.create("backbone", backbone, {})
            self.workdir.mkdir(parents=True, exist_ok=True)
            # check() makes sure the weights folder is there (tiny writes its own) before the tokenizer is read
            component.check(EditSpec(video=VideoSource(path=self.workdir), prompt="-", base_dir=self.workdir))
            self._tokenizers[backbone] = component.load_tokenizer(self.workdir)
        return self._tokenizers[backbone]

    def flags(self, backbone: str, prompt: str, locals_: list[str]) -> list[str]:
        """Per local prompt, the CLI's verdict on it as a token span of the global prompt."""
        try:
            tokenizer = self._tokenizer(backbone)
        except StmodError as exc:
            return [error_line(exc)] + [""] * (len(locals_) - 1)
        if tokenizer is None:
            return [""] * len(locals_)
        return prompt_flags(tokenizer, prompt, locals_)

    def _write_job(self, prefix: str, clip: Clip | None, names: list[str], locals_: list[str], annotations: dict,
                   settings: Settings) -> Path:
        if clip is None:
            raise UsageError("no clip loaded: upload a clip or type its path, then press Load clip")
        job = job_mapping(clip, names, locals_, annotations, settings)
        folder = self._next_folder(prefix)
        path = folder / "job.yaml"
        header = f"# Written by stmod-run ui; rerun with: stmod-run edit {path}\n"
        path.write_text(header + yaml.safe_dump(job, sort_keys=False, allow_unicode=True), encoding="utf-8")
        return path

    def preview(self, clip: Clip | None, names: list[str], locals_: list[str], annotations: dict,
                backbone: str) -> tuple[str, np.ndarray]:
        """``stmod-run layout`` of the regions (prompts are not needed yet): ``masks.mp4`` and a contact sheet."""
        settings = Settings(prompt=" ".join(n for n in names if n) or "a clip", backbone=backbone)
        job = self._write_job("preview", clip, names, [""] * MAX_REGIONS, annotations, settings)
        spec = load_job(job)
        result = self.editor.layout(spec)
        write_layout_outputs(spec, result)
        overlay = mask_overlay(result.clip.frames, result.layout.masks.numpy(), result.layout.names, with_legend=False)
        picks = np.linspace(0, len(overlay) - 1, min(len(overlay), 12)).round().astype(int)
        sheet = tile([overlay[i] for i in picks], titles=[f"frame {result.clip.indices[i]}" for i in picks],
                     columns=min(6, len(picks)))
        Image.fromarray(sheet).save(spec.output / "masks.png")
        return str(spec.output / "masks.mp4"), sheet

    # -- 3. the edit -----------------------------------------------------------------------------
    def run(self, clip: Clip | None, names: list[str], locals_: list[str], annotations: dict, settings: Settings,
            session: str, progress: Any = None) -> tuple[str, str | None, str, str]:
        """Write the job, run it through the Editor; returns (side_by_side.mp4, attention picture, metrics, note)."""
        job = self._write_job("run", clip, names, locals_, annotations, settings)
        spec = load_job(job)
        prediction = self._prediction(spec)
        cancel = threading.Event()
        self._cancels[session] = cancel

        def report(phase: str, done: int, total: int) -> None:
            if cancel.is_set():
                raise EditCancelled
            if progress is not None:
                progress((done, total), desc=phase)

        self.editor.on_progress = report
        try:
            result = self.editor.run(spec)
        finally:
            self.editor.on_progress = None
            self._cancels.pop(session, None)
        attention = result.output / "attention_effect.png"
        note = f"wrote {result.output}; rerun from a shell with: `stmod-run edit {job}`"
        return (str(result.output / "side_by_side.mp4"), str(attention) if attention.exists() else None,
                metrics_markdown(result.run) + prediction, note)

    def _prediction(self, spec: EditSpec) -> str:
        """What ``stmod-run check`` predicts for the job (peak memory by part, seconds per phase), as Markdown
        shown beside the measured figures."""
        backbone = self.editor.build(spec, check_output=False).backbone
        lines = prediction_lines(spec, backbone, spec.video.frames or 1)
        return "\n\n**predicted before the run** (as `stmod-run check` prints it):\n\n```\n" + "\n".join(lines) + "\n```"

    def cancel(self, session: str) -> str:
        event = self._cancels.get(session)
        if event is None:
            return "nothing is running"
        event.set()
        return "cancelling after the current step ..."


# -- the page --------------------------------------------------------------------------------------

def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def _clip_section(ui: dict[str, Any]) -> None:
    with gr.Column():
        gr.Markdown("### 1 · Clip")
        ui["upload"] = gr.File(label="upload a clip (mp4, mov, webm, gif)", type="filepath", elem_id="clip-upload")
        ui["path"] = gr.Textbox(label="... or the path of a clip or a folder of frames", elem_id="clip-path")
        with gr.Row():
            ui["start"] = gr.Number(0, label="start", precision=0, elem_id="start")
            ui["every"] = gr.Number(1, label="every", precision=0, elem_id="every")
            ui["count"] = gr.Number(8, label="frames", precision=0, elem_id="count")
            ui["width"] = gr.Number(128, label="width", precision=0, elem_id="width")
            ui["height"] = gr.Number(128, label="height", precision=0, elem_id="height")
        ui["load"] = gr.Button("Load clip", elem_id="load")
        ui["clip_note"] = gr.Markdown(elem_id="clip-note")


def _region_section(ui: dict[str, Any]) -> None:
    with gr.Column():
        gr.Markdown("### 2 · Regions: pick one, then click two corners of a box around it (clicks refine it)")
        with gr.Row():
            ui["frame"] = gr.Dropdown(label="keyframe (source frame)", choices=[], elem_id="keyframe-choice")
            ui["slot"] = gr.Radio([str(i + 1) for i in range(MAX_REGIONS)], value="1", label="region",
                                  elem_id="slot")
            ui["mode"] = gr.Radio(list(MODES), value=MODES[0], label="a click adds", elem_id="mode")
        ui["image"] = gr.Image(label="keyframe", type="numpy", interactive=False, format="png", height=384,
                               elem_id="keyframe")
        ui["click_note"] = gr.Markdown(elem_id="click-note")
        ui["names"], ui["locals"], ui["flags"] = [], [], []
        for i in range(MAX_REGIONS):
            with gr.Row():
                ui["names"].append(gr.Textbox(label=f"region {i + 1} name", elem_id=f"name-{i + 1}", scale=1))
                ui["locals"].append(gr.Textbox(label=f"region {i + 1} local prompt", elem_id=f"local-{i + 1}",
                                               scale=2))
                ui["flags"].append(gr.Markdown(elem_id=f"flag-{i + 1}"))
        with gr.Row():
            ui["clear"] = gr.Button("Clear the picked region", elem_id="clear")
            ui["preview"] = gr.Button("Preview masks on every frame", elem_id="preview")
        ui["preview_note"] = gr.Markdown(elem_id="preview-note")
        with gr.Row():
            ui["masks_video"] = gr.Video(label="masks.mp4", elem_id="masks-video")
            ui["masks_sheet"] = gr.Image(label="masks", format="png", elem_id="masks-sheet")


def _edit_section(app: UiApp, ui: dict[str, Any]) -> None:
    blenders = sorted(app.registry.components("blender"))
    with gr.Column():
        gr.Markdown("### 3 · Edit")
        ui["prompt"] = gr.Textbox(label="global prompt (each local prompt must be words of it)", elem_id="prompt")
        ui["source_prompt"] = gr.Textbox(label="source prompt (what the clip shows; optional)", elem_id="source-prompt")
        with gr.Row():
            ui["backbone"] = gr.Dropdown(list(BACKBONES), value=BACKBONES[0], label="backbone", elem_id="backbone")
            ui["blend"] = gr.Dropdown(blenders, value="latent" if "latent" in blenders else blenders[0],
                                      label="blend", elem_id="blend")
            ui["preset"] = gr.Radio(["videograin", "paper"], value="videograin", label="preset", elem_id="preset")
            ui["steps"] = gr.Number(20, label="steps", precision=0, elem_id="steps")
            ui["seed"] = gr.Number(0, label="seed", precision=0, elem_id="seed")
        with gr.Row():
            ui["run"] = gr.Button("Run the edit", variant="primary", elem_id="run")
            ui["cancel"] = gr.Button("Cancel", variant="stop", elem_id="cancel")
        ui["run_note"] = gr.Markdown(elem_id="run-note")
        with gr.Row():
            ui["result"] = gr.Video(label="side_by_side.mp4 (source | edit)", elem_id="result-video")
            ui["attention"] = gr.Image(label="attention_effect.png", format="png", elem_id="attention")
        ui["metrics"] = gr.Markdown(elem_id="metrics")


def _guarded(fn: Any, error_outputs: int, note_index: int) -> Any:
    """``fn``, with a user error shown as the CLI's one line in output ``note_index`` (others unchanged)."""

    @functools.wraps(fn)  # Gradio reads the wrapped signature to inject its request and progress objects
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except StmodError as exc:
            out = [gr.skip()] * error_outputs
            out[note_index] = error_line(exc)
            return tuple(out)

    return wrapper


def _split(texts: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Region names and local prompts from the inputs ``names + locals``."""
    return list(texts[:MAX_REGIONS]), list(texts[MAX_REGIONS:2 * MAX_REGIONS])


def _wire_clip(app: UiApp, ui: dict[str, Any], st: dict[str, Any]) -> None:
    def load(upload, path, start, every, count, width, height, *names):
        clip, frames, note = app.load_clip(upload, path, start, every, count, width, height)
        return (clip, {}, None, gr.update(choices=frames, value=frames[0]),
                app.keyframe(clip, frames[0], {}, None, list(names)), note)

    ui["load"].click(_guarded(load, 6, 5),
                     [ui[k] for k in ("upload", "path", "start", "every", "count", "width", "height")] + ui["names"],
                     [st["clip"], st["notes"], st["pending"], ui["frame"], ui["image"], ui["clip_note"]])
    ui["frame"].change(lambda c, f, a, p, *n: app.keyframe(c, f, a, p, list(n)),
                       [st["clip"], ui["frame"], st["notes"], st["pending"]] + ui["names"], ui["image"])


def _wire_regions(app: UiApp, ui: dict[str, Any], st: dict[str, Any]) -> None:
    # Gradio injects its event objects into leading positional parameters only: they come first.
    def on_click(evt: gr.SelectData, clip, frame, notes, pending, slot, mode, *names):
        notes, pending, note = app.click(clip, frame, notes, pending, int(slot) - 1, mode, evt.index)
        return notes, pending, app.keyframe(clip, frame, notes, pending, list(names)), note

    ui["image"].select(on_click, [st["clip"], ui["frame"], st["notes"], st["pending"], ui["slot"], ui["mode"]]
                       + ui["names"], [st["notes"], st["pending"], ui["image"], ui["click_note"]])

    def clear(clip, frame, notes, slot, *names):
        notes = clear_region(notes, int(slot) - 1)
        return notes, None, app.keyframe(clip, frame, notes, None, list(names))

    ui["clear"].click(clear, [st["clip"], ui["frame"], st["notes"], ui["slot"]] + ui["names"],
                      [st["notes"], st["pending"], ui["image"]])
    for name in ui["names"]:  # labels on the keyframe follow the names
        name.change(lambda c, f, a, p, *n: app.keyframe(c, f, a, p, list(n)),
                    [st["clip"], ui["frame"], st["notes"], st["pending"]] + ui["names"], ui["image"])

    def preview(clip, notes, backbone, *texts):
        names, locals_ = _split(texts)
        video, sheet = app.preview(clip, names, locals_, notes, backbone)
        return video, sheet, "masks of every frame (the edit uses exactly these)"

    ui["preview"].click(_guarded(preview, 3, 2), [st["clip"], st["notes"], ui["backbone"]] + ui["names"] + ui["locals"],
                        [ui["masks_video"], ui["masks_sheet"], ui["preview_note"]])

    def flags(backbone, prompt, *locals_):
        return tuple(app.flags(backbone, prompt, list(locals_)))

    for box in [ui["prompt"], ui["backbone"], *ui["locals"]]:  # flagged as the user types
        box.change(flags, [ui["backbone"], ui["prompt"], *ui["locals"]], ui["flags"])


def _wire_edit(app: UiApp, ui: dict[str, Any], st: dict[str, Any]) -> None:
    def run(request: gr.Request, progress=gr.Progress(), *values):
        clip, notes, prompt, source, backbone, blend, preset, steps, seed = values[:9]
        names, locals_ = _split(values[9:])
        settings = Settings(prompt=prompt, source_prompt=source, backbone=backbone, blend=blend, preset=preset,
                            steps=int(steps), seed=int(seed))
        try:
            return app.run(clip, names, locals_, notes, settings, _session(request), progress)
        except EditCancelled:
            return None, None, "", "cancelled; nothing was written"

    inputs = [st["clip"], st["notes"]] + [ui[k] for k in ("prompt", "source_prompt", "backbone", "blend", "preset",
                                                          "steps", "seed")] + ui["names"] + ui["locals"]
    ui["run"].click(_guarded(run, 4, 3), inputs, [ui["result"], ui["attention"], ui["metrics"], ui["run_note"]])

    def cancel(request: gr.Request) -> str:
        return app.cancel(_session(request))

    ui["cancel"].click(cancel, None, ui["run_note"], queue=False)  # not queued behind the run it stops


def build(app: UiApp) -> gr.Blocks:
    """The page: clip, regions, edit; each section's events call :class:`UiApp`."""
    ui: dict[str, Any] = {}
    with gr.Blocks(title="stmod: multi-grained video editing") as page:
        gr.Markdown("## stmod: edit regions of a clip with their own prompts (ST-Modulator / VideoGrain)")
        st = {"clip": gr.State(None), "notes": gr.State({}), "pending": gr.State(None)}
        _clip_section(ui)
        _region_section(ui)
        _edit_section(app, ui)
        _wire_clip(app, ui, st)
        _wire_regions(app, ui, st)
        _wire_edit(app, ui, st)
    return page
