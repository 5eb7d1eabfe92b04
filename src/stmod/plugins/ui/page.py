"""The ``stmod-run ui`` page: Gradio widgets laid out in the order people think (clip, prompts and
regions, model and run) and wired to :class:`~stmod.plugins.ui.app.UiApp`, which does the work.

Every action replaces what it supersedes: a new clip clears the masks of the last one, a preview clears
the old masks before it starts, a run clears the last run's note (a failed run's error) before it
starts, and a cancelled run leaves the last good result in place. Each action shows one progress
indicator, on its note. Import this module only after checking that Gradio is installed (the command does).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gradio as gr

from stmod.core.errors import StmodError
from stmod.plugins.ui.app import EditCancelled, UiApp
from stmod.plugins.ui.clips import EXAMPLES
from stmod.plugins.ui.state import BACKBONES, MAX_REGIONS, MODES, Settings, clear_region, error_line

__all__ = ["build"]

#: Picture heights on the page, in CSS pixels: large enough to judge a mask or an edit without zooming
#: (the keyframe comes zoomed to about 512 pixels, state.display_scale; Gradio only ever shrinks it).
KEYFRAME_HEIGHT, PICTURE_HEIGHT = 520, 420


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def _clip_section(ui: dict[str, Any]) -> None:
    gr.Markdown("### 1 · Clip: upload one, pick an example, or type a path")
    with gr.Row():
        with gr.Column(scale=3):
            ui["upload"] = gr.File(label="upload a clip (mp4, mov, webm, gif): it loads at once", type="filepath",
                                   elem_id="clip-upload")
            with gr.Row():
                ui["examples"] = [gr.Button(f"Example: {name}", size="sm", elem_id=f"example-{i + 1}")
                                  for i, name in enumerate(EXAMPLES)]
            ui["path"] = gr.Textbox(label="... or the path of a clip or a folder of frames (Enter loads it)",
                                    elem_id="clip-path")
            with gr.Row():
                ui["start"] = gr.Number(0, label="first frame", precision=0, elem_id="start")
                ui["every"] = gr.Number(1, label="every", precision=0, elem_id="every")
                ui["count"] = gr.Number(8, label="frames", precision=0, elem_id="count")
                ui["load"] = gr.Button("Load clip", elem_id="load")
            ui["clip_note"] = gr.Markdown(elem_id="clip-note")
        with gr.Column(scale=2):
            ui["clip_video"] = gr.Video(label="the selected frames", interactive=False, elem_id="clip-video",
                                        height=300)


def _region_rows(ui: dict[str, Any]) -> None:
    ui["names"], ui["locals"], ui["flags"] = [], [], []
    for i in range(MAX_REGIONS):
        with gr.Row(equal_height=True):
            ui["names"].append(gr.Textbox(label=f"region {i + 1} name", elem_id=f"name-{i + 1}", scale=1))
            ui["locals"].append(gr.Textbox(label=f"region {i + 1} local prompt (words of the global prompt)",
                                           elem_id=f"local-{i + 1}", scale=2))
            ui["flags"].append(gr.Markdown(elem_id=f"flag-{i + 1}"))


def _region_section(ui: dict[str, Any]) -> None:
    gr.Markdown("### 2 · Prompts and regions: pick a region, click two corners of a box around it on the keyframe")
    ui["prompt"] = gr.Textbox(label="global prompt: the whole edited clip (each local prompt must be words of it)",
                              elem_id="prompt")
    ui["source_prompt"] = gr.Textbox(label="source prompt: what the clip shows (optional)", elem_id="source-prompt")
    with gr.Row():
        with gr.Column(scale=3):
            ui["image"] = gr.Image(label="keyframe: the edit keeps the outlined part", type="numpy",
                                   interactive=False, format="png", height=KEYFRAME_HEIGHT, elem_id="keyframe")
        with gr.Column(scale=2):
            ui["frame"] = gr.Dropdown(label="keyframe (source frame)", choices=[], elem_id="keyframe-choice")
            with gr.Row():
                ui["width"] = gr.Number(128, label="edit width", precision=0, elem_id="width")
                ui["height"] = gr.Number(128, label="edit height", precision=0, elem_id="height")
            ui["slot"] = gr.Radio([str(i + 1) for i in range(MAX_REGIONS)], value="1", label="region",
                                  elem_id="slot")
            ui["mode"] = gr.Radio(list(MODES), value=MODES[0], label="a click adds", elem_id="mode")
            ui["click_note"] = gr.Markdown(elem_id="click-note")
            ui["clear"] = gr.Button("Clear the picked region", elem_id="clear")
    _region_rows(ui)
    ui["preview"] = gr.Button("Preview masks on every frame", elem_id="preview")
    ui["preview_note"] = gr.Markdown(elem_id="preview-note")
    ui["masks_sheet"] = gr.Image(label="masks on the selected frames", format="png", height=PICTURE_HEIGHT,
                                 interactive=False, elem_id="masks-sheet")
    ui["masks_video"] = gr.Video(label="masks.mp4", height=PICTURE_HEIGHT, interactive=False, elem_id="masks-video")


def _edit_section(app: UiApp, ui: dict[str, Any]) -> None:
    blenders = sorted(app.registry.components("blender"))
    gr.Markdown("### 3 · Model and run")
    with gr.Row():
        ui["backbone"] = gr.Dropdown(list(BACKBONES), value=app.backbone, label="backbone", elem_id="backbone",
                                     scale=1)
        ui["model"] = gr.Textbox(app.model, label="sd15 weights: a diffusers folder, a .safetensors file or a hub id "
                                 "(empty: stable-diffusion-v1-5/stable-diffusion-v1-5)", elem_id="model", scale=3,
                                 visible=app.backbone == "sd15")
    ui["backbone_note"] = gr.Markdown(app.backbone_note(app.backbone, app.model), elem_id="backbone-note")
    with gr.Row():
        ui["blend"] = gr.Dropdown(blenders, value="latent" if "latent" in blenders else blenders[0],
                                  label="blend", elem_id="blend")
        ui["preset"] = gr.Radio(["videograin", "paper"], value="videograin", label="preset", elem_id="preset")
        ui["steps"] = gr.Number(20, label="steps", precision=0, elem_id="steps")
        ui["seed"] = gr.Number(0, label="seed", precision=0, elem_id="seed")
    with gr.Row():
        ui["run"] = gr.Button("Run the edit", variant="primary", elem_id="run")
        ui["cancel"] = gr.Button("Cancel", variant="stop", elem_id="cancel")
    ui["run_note"] = gr.Markdown(elem_id="run-note")
    ui["result"] = gr.Video(label="side_by_side.mp4 (source | edit)", height=PICTURE_HEIGHT, elem_id="result-video")
    ui["attention"] = gr.Image(label="attention_effect.png: each local prompt's attention, plain and modulated",
                               format="png", height=PICTURE_HEIGHT, elem_id="attention")
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
    # A new clip supersedes the masks previewed on the last one: they are cleared with it.
    shown = [st["clip"], st["notes"], st["pending"], ui["frame"], ui["image"], ui["clip_note"], ui["clip_video"],
             ui["masks_video"], ui["masks_sheet"], ui["preview_note"]]

    def load(upload, path, start, every, count, width, height, *names):
        clip, frames, note, video = app.load_clip(upload, path, start, every, count, width, height)
        return (clip, {}, None, gr.update(choices=frames, value=frames[0]),
                app.keyframe(clip, frames[0], {}, None, list(names)), note, video, None, None, "")

    form = [ui[k] for k in ("upload", "path", "start", "every", "count", "width", "height")] + ui["names"]
    guarded = _guarded(load, len(shown), 5)  # a clip that fails to load leaves the loaded one as it was
    ui["load"].click(guarded, form, shown)
    ui["path"].submit(guarded, form, shown)
    ui["upload"].upload(guarded, form, shown)  # an upload loads at once

    def resize(clip, frame, notes, pending, width, height, *names):
        clip, note = app.resize(clip, width, height)
        return clip, app.keyframe(clip, frame, notes, pending, list(names)), note

    sized = [st["clip"], ui["frame"], st["notes"], st["pending"], ui["width"], ui["height"]] + ui["names"]
    for box in (ui["width"], ui["height"]):
        for event in (box.submit, box.blur):
            event(_guarded(resize, 3, 2), sized, [st["clip"], ui["image"], ui["click_note"]])
    ui["frame"].change(lambda c, f, a, p, *n: app.keyframe(c, f, a, p, list(n)),
                       [st["clip"], ui["frame"], st["notes"], st["pending"]] + ui["names"], ui["image"])


def _wire_examples(app: UiApp, ui: dict[str, Any], st: dict[str, Any]) -> None:
    outputs = ([st["clip"], st["notes"], st["pending"], ui["frame"], ui["image"], ui["clip_note"], ui["clip_video"],
                ui["masks_video"], ui["masks_sheet"], ui["preview_note"], ui["prompt"], ui["source_prompt"],
                ui["width"], ui["height"], ui["count"], ui["start"], ui["every"], ui["path"]]
               + ui["names"] + ui["locals"])

    def pick(name: str) -> Callable[[], tuple[Any, ...]]:
        def load():
            clip, frames, note, video, notes, names, locals_, prompt, source = app.example(name)
            return (clip, notes, None, gr.update(choices=frames, value=frames[0]),
                    app.keyframe(clip, frames[0], notes, None, names), note, video, None, None, "", prompt, source,
                    clip.size[0], clip.size[1], clip.frames, 0, 1, clip.path, *names, *locals_)

        return load

    for button, name in zip(ui["examples"], EXAMPLES):
        button.click(_guarded(pick(name), len(outputs), 5), None, outputs)


def _wire_regions(app: UiApp, ui: dict[str, Any], st: dict[str, Any]) -> None:
    # Gradio injects its event objects into leading positional parameters only: they come first. It finds them
    # by the callbacks' annotations (typing.get_type_hints, at run time): annotate with names this module imports
    # at run time only, so that they resolve; the component values Gradio passes are Any.
    def on_click(evt: gr.SelectData, clip: Any, frame: Any, notes: Any, pending: Any, slot: Any, mode: Any,
                 *names: Any) -> tuple[Any, ...]:
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


def _wire_preview(app: UiApp, ui: dict[str, Any], st: dict[str, Any]) -> None:
    def preview(clip, notes, backbone, model, *texts):
        names, locals_ = _split(texts)
        video, sheet = app.preview(clip, names, locals_, notes, Settings(prompt="-", backbone=backbone, model=model))
        return video, sheet, "masks of every frame (the edit computes them again from the same boxes and clicks)"

    outputs = [ui["masks_video"], ui["masks_sheet"], ui["preview_note"]]
    # The old masks go first: a preview that fails must not leave the last one's masks looking current.
    ui["preview"].click(lambda: (None, None, "computing the masks ..."), None, outputs, queue=False,
                        show_progress="hidden").then(
        _guarded(preview, 3, 2), [st["clip"], st["notes"], ui["backbone"], ui["model"]] + ui["names"] + ui["locals"],
        outputs, show_progress_on=ui["preview_note"])


def _wire_checks(app: UiApp, ui: dict[str, Any]) -> None:
    def flags(backbone, model, prompt, *locals_):
        return tuple(app.flags(backbone, model, prompt, list(locals_)))

    for box in [ui["prompt"], ui["backbone"], ui["model"], *ui["locals"]]:  # flagged as the user types
        box.change(flags, [ui["backbone"], ui["model"], ui["prompt"], *ui["locals"]], ui["flags"])

    def backbone_note(backbone, model):
        return gr.update(visible=backbone == "sd15"), app.backbone_note(backbone, model)

    ui["backbone"].change(backbone_note, [ui["backbone"], ui["model"]], [ui["model"], ui["backbone_note"]])
    ui["model"].blur(backbone_note, [ui["backbone"], ui["model"]], [ui["model"], ui["backbone_note"]])


def _wire_edit(app: UiApp, ui: dict[str, Any], st: dict[str, Any]) -> None:
    def run(request: gr.Request, progress: gr.Progress = gr.Progress(), *values: Any) -> tuple[Any, ...]:
        clip, notes, prompt, source, backbone, model, blend, preset, steps, seed = values[:10]
        names, locals_ = _split(values[10:])
        settings = Settings(prompt=prompt, source_prompt=source, backbone=backbone, model=model, blend=blend,
                            preset=preset, steps=int(steps), seed=int(seed))
        try:
            return app.run(clip, names, locals_, notes, settings, _session(request), progress)
        except EditCancelled as exc:  # the last good result stays on the page
            return gr.skip(), gr.skip(), gr.skip(), str(exc)

    inputs = [st["clip"], st["notes"]] + [ui[k] for k in ("prompt", "source_prompt", "backbone", "model", "blend",
                                                          "preset", "steps", "seed")] + ui["names"] + ui["locals"]
    # The last run's note (an error, say) goes before this run starts: it is not this run's.
    ui["run"].click(lambda: "starting the run ...", None, ui["run_note"], queue=False, show_progress="hidden").then(
        _guarded(run, 4, 3), inputs, [ui["result"], ui["attention"], ui["metrics"], ui["run_note"]],
        show_progress_on=ui["run_note"])  # one progress bar, not one per output

    def cancel(request: gr.Request) -> str:
        return app.cancel(_session(request))

    ui["cancel"].click(cancel, None, ui["run_note"], queue=False)  # not queued behind the run it stops


def build(app: UiApp) -> gr.Blocks:
    """The page: clip, prompts and regions, model and run; each section's events call :class:`UiApp`."""
    ui: dict[str, Any] = {}
    with gr.Blocks(title="stmod: multi-grained video editing") as page:
        gr.Markdown("## stmod: edit regions of a clip with their own prompts (ST-Modulator / VideoGrain)")
        st = {"clip": gr.State(None), "notes": gr.State({}), "pending": gr.State(None)}
        _clip_section(ui)
        _region_section(ui)
        _edit_section(app, ui)
        _wire_clip(app, ui, st)
        _wire_examples(app, ui, st)
        _wire_regions(app, ui, st)
        _wire_preview(app, ui, st)
        _wire_checks(app, ui)
        _wire_edit(app, ui, st)
    return page
