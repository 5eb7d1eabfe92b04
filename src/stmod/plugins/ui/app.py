"""What the ``stmod-run ui`` page does: :class:`UiApp` drives the ordinary Editor (no Gradio here).

:class:`UiApp` does the work of each button and click (load a clip or an example, draw regions, preview
the masks, check prompts and the model, run, cancel) and knows nothing of widgets beyond a progress
callable; :func:`stmod.plugins.ui.page.build` lays the page out and wires the events. Every edit is a job file written to
``<out>/run-NNN/job.yaml`` and loaded back with :func:`~stmod.core.config.load_job`, then run by the
same :class:`~stmod.core.pipeline.editor.Editor` as ``stmod-run edit``, so the page validates, edits
and writes exactly what the CLI would, and ``stmod-run edit <out>/run-NNN/job.yaml`` reruns it (the job
leaves every default to the job loader, as a hand-written job does).

What the page leaves in ``<out>``: ``run-NNN/`` per finished run (a refused or cancelled run removes
its folder), one ``preview/`` that each mask preview replaces, and ``clips/<content digest>/`` for
uploads and examples. Import this module only after checking that Gradio is installed (the command does).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from stmod.core.config import job_from_mapping, load_job
from stmod.core.errors import EditCancelled as CoreEditCancelled
from stmod.core.errors import StmodError, UsageError
from stmod.core.io.layout_outputs import write_layout_outputs
from stmod.core.io.ownership import atomic_path
from stmod.core.io.video import plan_clip, read_video, write_mp4
from stmod.core.io.visuals import mask_overlay, tile
from stmod.core.pipeline.editor import Editor
from stmod.core.registry import Registry
from stmod.core.types import EditSpec, VideoSource
from stmod.plugins.commands.jobargs import model_location
from stmod.plugins.commands.prediction import prediction_lines
from stmod.plugins.ui.clips import EXAMPLES, store_clip
from stmod.plugins.ui.state import (BACKBONES, MAX_REGIONS, Clip, Settings, click, crop_box, display_scale,
                                    draw_keyframe, error_line, job_mapping, metrics_markdown, prompt_flags)

__all__ = ["UiApp", "EditCancelled", "BACKBONES"]

log = logging.getLogger(__name__)


class EditCancelled(CoreEditCancelled):
    """The page's Cancel stopped a run; ``str()`` says what was (not) written and what the page still shows."""


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _remove_refused(folder: Path) -> None:
    """Remove a run folder this app made for a run that was refused or cancelled before it wrote a result:
    it holds the job file only (anything else there is left alone, and so is the folder)."""
    if (folder / "result").exists():
        return
    (folder / "job.yaml").unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        log.warning("left %s: it holds files this page did not write", folder)


class UiApp:
    """State shared by all browser sessions of one ``stmod-run ui``: the registry, one Editor (so a loaded
    model is reused by the next run), the output folder, the tokenizers and the cancel flags.

    ``backbone`` and ``model`` are what the page offers first (``stmod-run ui --backbone/--model``)."""

    def __init__(self, registry: Registry, workdir: Path, *, cache: Any = None, backbone: str = "shapes",
                 model: str = "") -> None:
        if backbone not in BACKBONES:
            raise UsageError(f"--backbone {backbone}: the page offers {', '.join(BACKBONES)}")
        self.registry = registry
        self.workdir = workdir
        self.backbone, self.model = backbone, model_location(model) if model else ""
        self.editor = Editor(registry, progress=False, cache=cache)
        self._tokenizers: dict[tuple[str, str], Any] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._last_result: dict[str, Path] = {}
        self._lock = threading.Lock()
        # Held while models are built, checked or run: the page's events run in threads, and the lazy
        # modules of diffusers and transformers fail when two threads import them at once (a prompt
        # check building the first tokenizer while a run loads its model).
        self._models = threading.RLock()
        self._videos = 0
        # The clip previews (mp4s of the selected frames) live outside <out>: nothing a user keeps.
        self.scratch = Path(tempfile.mkdtemp(prefix="stmod-ui-"))
        weakref.finalize(self, shutil.rmtree, self.scratch, True)

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
        if upload:  # Gradio's upload cache is temporary; the job file must outlive it
            return store_clip(Path(upload), self.workdir / "clips")
        if not path.strip():
            raise UsageError("no clip: upload one, pick an example, or type the path of a video file or a folder "
                             "of frames")
        return Path(path.strip()).expanduser().absolute()

    # -- 1. the clip -----------------------------------------------------------------------------
    def load_clip(self, upload: str | None, path: str, start: float, every: float, count: float, width: float,
                  height: float) -> tuple[Clip, list[int], str, str]:
        """The clip and its frame selection, validated as a job's ``video`` entry; raises the CLI's errors.

        Returns the clip, its source frame numbers, a line about it and an mp4 of the selected frames."""
        source = self._clip_path(upload, path)
        video = {"path": str(source), "start": int(start), "every": int(every), "frames": int(count),
                 "size": [int(width), int(height)]}
        spec = job_from_mapping({"video": video, "prompt": "-"}, base_dir=self.workdir, source="the clip form")
        plan = plan_clip(spec.video)
        info, indices = plan.info, plan.indices
        images, fps = read_video(spec.video.path, indices, info=info)
        clip = Clip(path=str(source), start=int(start), every=int(every), frames=len(indices),
                    size=(int(width), int(height)), indices=indices, images=images)
        note = (f"{source.name}: {info.width}x{info.height}, {info.frames} frames"
                f"{' (its sound track is not edited)' if info.audio else ''}; editing source frames "
                f"{', '.join(map(str, indices[:8]))}{', ...' if len(indices) > 8 else ''} at {int(width)}x{int(height)}")
        return clip, list(indices), note, str(self._clip_video(clip, fps / max(1, int(every))))

    def _clip_video(self, clip: Clip, fps: float) -> Path:
        """The selected frames as an mp4 a browser plays (any source: a gif, a folder of frames, a webm)."""
        with self._lock:
            self._videos += 1
            path = self.scratch / f"clip-{self._videos:04d}.mp4"
        return write_mp4(path, clip.images, fps=max(1.0, fps))

    def resize(self, clip: Clip | None, width: float, height: float) -> tuple[Clip | None, str]:
        """The clip at another edit size (the regions stay: they are in source pixels)."""
        if clip is None:
            return None, ""
        video = {"path": clip.path, "size": [int(width), int(height)]}
        job_from_mapping({"video": video, "prompt": "-"}, base_dir=self.workdir, source="the clip form")
        clip = Clip(path=clip.path, start=clip.start, every=clip.every, frames=clip.frames,
                    size=(int(width), int(height)), indices=clip.indices, images=clip.images)
        return clip, f"editing at {int(width)}x{int(height)}: the outlined part of the keyframe"

    def example(self, name: str) -> tuple[Clip, list[int], str, str, dict, list[str], list[str], str, str]:
        """An example clip loaded with its regions, boxes and prompts: ``(clip, frames, note, clip video,
        annotations, names, local prompts, prompt, source prompt)``."""
        path, example = EXAMPLES[name](self.workdir / "clips")
        width, height = example.size
        clip, frames, note, video = self.load_clip(None, str(path), 0, 1, example.frames, width, height)
        names = list(example.regions) + [""] * (MAX_REGIONS - len(example.regions))
        locals_ = [p for p, _ in example.regions.values()] + [""] * (MAX_REGIONS - len(example.regions))
        notes = {slot: {frames[0]: {"box": [float(v) for v in box], "points": [], "labels": []}}
                 for slot, (_, box) in enumerate(example.regions.values())}
        return clip, frames, f"example: {example.label}. {note}", video, notes, names, locals_, example.prompt, \
            example.source_prompt

    def keyframe(self, clip: Clip | None, frame: int | None, annotations: dict, pending: list | None,
                 names: list[str]) -> np.ndarray | None:
        """The keyframe at the source size with the edit's crop outlined and the regions drawn on it."""
        if clip is None or frame is None or int(frame) not in clip.indices:
            return None
        image = clip.images[list(clip.indices).index(int(frame))]
        crop = crop_box(image.shape[1], image.shape[0], *clip.size)
        return draw_keyframe(image, annotations, int(frame), names, pending, scale=display_scale(*image.shape[:2]),
                             crop=crop)

    # -- 2. regions ------------------------------------------------------------------------------
    def click(self, clip: Clip | None, frame: int | None, annotations: dict, pending: list | None, slot: int,
              mode: str, xy: tuple[float, float]) -> tuple[dict, list | None, str]:
        if clip is None or frame is None:
            return annotations, pending, "load a clip first"
        scale = display_scale(*clip.images.shape[1:3])  # the page shows the keyframe zoomed
        # the source pixel under the pointer (a zoomed pixel is a block of scale x scale screen pixels)
        return click(annotations, pending, slot=slot, frame=int(frame), x=float(xy[0] // scale),
                     y=float(xy[1] // scale), mode=mode)

    def _backbone(self, backbone: str, model: str) -> Any:
        """The backbone component, checked as the CLI checks it (its weights are found; none load)."""
        options = {"model": model_location(model.strip())} if backbone == "sd15" and model.strip() else {}
        component = self.registry.create("backbone", backbone, options)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # check() makes sure the weights are there (tiny writes its own) before the tokenizer is read
        # (the placeholder prompt is a word every backbone knows: shapes refuses words outside its world)
        component.check(EditSpec(video=VideoSource(path=self.workdir), prompt="a", base_dir=self.workdir))
        return component

    def _tokenizer(self, backbone: str, model: str) -> Any:
        key = (backbone, model.strip() if backbone == "sd15" else "")
        if key not in self._tokenizers:  # once per backbone: later prompt checks wait for nothing
            with self._models:
                if key not in self._tokenizers:
                    self._tokenizers[key] = self._backbone(backbone, model).load_tokenizer(self.workdir)
        return self._tokenizers[key]

    def backbone_note(self, backbone: str, model: str) -> str:
        """The sentence on what ``backbone`` can edit, and for ``sd15`` whether its weights are found."""
        note = BACKBONES.get(backbone, "")
        if backbone != "sd15":
            return note
        try:
            with self._models:
                self._backbone(backbone, model)
        except StmodError as exc:
            return f"{note}\n\n{error_line(exc)}"
        return f"{note}\n\n✓ weights found: `{model_location(model.strip()) if model.strip() else 'the default model'}`"

    def flags(self, backbone: str, model: str, prompt: str, locals_: list[str]) -> list[str]:
        """Per local prompt, the CLI's verdict on it as a token span of the global prompt."""
        try:
            tokenizer = self._tokenizer(backbone, model)
        except StmodError as exc:
            return [error_line(exc)] + [""] * (len(locals_) - 1)
        if tokenizer is None:
            return [""] * len(locals_)
        return prompt_flags(tokenizer, prompt, locals_)

    def _job_text(self, job: dict[str, Any], path: Path, why: str) -> str:
        return f"# Written by stmod-run ui ({why}); rerun with: stmod-run edit {path}\n" + \
            yaml.safe_dump(job, sort_keys=False, allow_unicode=True)

    def preview(self, clip: Clip | None, names: list[str], locals_: list[str], annotations: dict,
                settings: Settings) -> tuple[str, np.ndarray]:
        """``stmod-run layout`` of the regions (prompts are not needed yet): ``masks.mp4`` and a contact sheet.

        Written to ``<out>/preview/``, which each preview replaces (its job says ``overwrite: true``: the
        folder is the page's scratch, not a saved run)."""
        if clip is None:
            raise UsageError("no clip loaded: upload a clip, pick an example or type its path, then press Load clip")
        # prompts are not needed yet: a placeholder word every backbone knows (shapes refuses words outside its world)
        settings = Settings(prompt="a", backbone=settings.backbone, model=settings.model)
        job = job_mapping(clip, names, [""] * MAX_REGIONS, annotations, settings) | {"overwrite": True}
        path = self.workdir / "preview" / "job.yaml"
        spec = job_from_mapping(job, base_dir=path.parent, source="the page's regions")  # refused: nothing written
        _write_text(path, self._job_text(job, path, "the last mask preview"))
        spec = load_job(path)
        with self._models:
            result = self.editor.layout(spec)
        write_layout_outputs(spec, result)
        overlay = mask_overlay(result.clip.frames, result.layout.masks.numpy(), result.layout.names, with_legend=False)
        picks = np.linspace(0, len(overlay) - 1, min(len(overlay), 12)).round().astype(int)
        sheet = tile([overlay[i] for i in picks], titles=[f"frame {result.clip.indices[i]}" for i in picks],
                     columns=min(4, len(picks)))
        Image.fromarray(sheet).save(spec.output / "masks.png")
        # written by stmod too: the marker lists it, so that the next preview may replace the folder
        from stmod.core.io.ownership import folder_entries, read_marker, write_marker

        kind = str((read_marker(spec.output) or {}).get("stmod", "layout"))
        write_marker(spec.output, kind, folder_entries(spec.output))
        return str(spec.output / "masks.mp4"), sheet

    # -- 3. the edit -----------------------------------------------------------------------------
    def _write_job(self, clip: Clip | None, names: list[str], locals_: list[str], annotations: dict,
                   settings: Settings) -> Path:
        if clip is None:
            raise UsageError("no clip loaded: upload a clip, pick an example or type its path, then press Load clip")
        job = job_mapping(clip, names, locals_, annotations, settings)
        job_from_mapping(job, base_dir=self.workdir, source="the page's form")  # a refused form writes nothing
        folder = self._next_folder("run")
        path = folder / "job.yaml"
        _write_text(path, self._job_text(job, path, "a run of the page"))
        return path

    def run(self, clip: Clip | None, names: list[str], locals_: list[str], annotations: dict, settings: Settings,
            session: str, progress: Any = None) -> tuple[str, str | None, str, str]:
        """Write the job, run it through the Editor; returns (side_by_side.mp4, attention picture, metrics, note).

        A run the Editor refuses (a :class:`StmodError`) or the page cancels (:class:`EditCancelled`, whose
        message says what was written) leaves no folder behind."""
        job = self._write_job(clip, names, locals_, annotations, settings)
        cancel, where = threading.Event(), ["checking the job", 0, 0]
        self._cancels[session] = cancel

        def report(phase: str, done: int, total: int) -> None:
            where[:] = [phase, done, total]
            if cancel.is_set():
                raise EditCancelled(phase)
            if progress is not None:
                progress((done, total), desc=phase)

        try:
            with self._models:
                self.editor.on_progress = report
                spec = load_job(job)
                prediction = self._prediction(spec)
                result = self.editor.run(spec)
        except (StmodError, CoreEditCancelled) as exc:
            _remove_refused(job.parent)
            if isinstance(exc, CoreEditCancelled):
                raise EditCancelled(self._cancelled_note(session, job.parent, where)) from None
            raise
        finally:
            self.editor.on_progress = None
            self._cancels.pop(session, None)
        self._last_result[session] = result.output
        attention = result.output / "attention_effect.png"
        note = f"wrote {result.output}; rerun from a shell with: `stmod-run edit {job}`"
        return (str(result.output / "side_by_side.mp4"), str(attention) if attention.exists() else None,
                metrics_markdown(result.run) + prediction, note)

    def _cancelled_note(self, session: str, folder: Path, where: list) -> str:
        phase, done, total = where
        at = f"during {phase} ({done} of {total} done)" if total else f"while {phase}"
        last = self._last_result.get(session)
        shown = f"the result shown is still {last}'s" if last else "no earlier result"
        return f"cancelled {at}: nothing was written ({folder.name} removed); {shown}"

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
