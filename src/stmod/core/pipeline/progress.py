"""One run's progress: the terminal's bars, the editor's ``on_progress`` listener and the step callback.

A :class:`RunReporter` is made by each :meth:`~stmod.core.pipeline.editor.Editor.run` (and ``layout``)
and travels on the run's :class:`~stmod.core.pipeline.session.EditSession`, so the phases that step
(inversion, denoising, decoding) report through one object instead of an argument per function.

The step callback follows diffusers' contract (``diffusers/pipelines/stable_diffusion/
pipeline_stable_diffusion.py``, ``__call__``): ``callback_on_step_end(editor, step, timestep,
callback_kwargs) -> dict``, where ``callback_kwargs`` holds the tensors named in
``callback_on_step_end_tensor_inputs`` (and here the ``phase``); a ``"latents"`` entry in the returned
dict replaces the step's latents; setting ``editor._interrupt = True`` stops the edit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from stmod.core.errors import EditCancelled, InputError, show

__all__ = ["CALLBACK_TENSOR_INPUTS", "PhaseProgress", "ProgressCallback", "RunReporter", "StepCallback",
           "callback_tensor_inputs"]

#: ``on_progress(phase, done, total)``: called after every step of the inversion, the denoising and the
#: decoding. It may raise to stop the edit (the UI's cancel button does); nothing is written then.
ProgressCallback = Callable[[str, int, int], None]

#: ``callback_on_step_end(editor, step, timestep, callback_kwargs) -> dict``: diffusers' step callback.
StepCallback = Callable[[Any, int, int, dict[str, Any]], "dict[str, Any] | None"]

#: What a step callback may read and replace (diffusers' ``_callback_tensor_inputs``).
CALLBACK_TENSOR_INPUTS = ("latents",)


def callback_tensor_inputs(callback: object, names: Sequence[str] | None) -> tuple[str, ...]:
    """The tensor names ``callback`` receives: ``names``, else a diffusers ``PipelineCallback``'s own
    ``tensor_inputs``, else ``("latents",)``; a name stmod does not provide is an error naming it."""
    if names is None:
        names = getattr(callback, "tensor_inputs", None) or CALLBACK_TENSOR_INPUTS
    unknown = [name for name in names if name not in CALLBACK_TENSOR_INPUTS]
    if unknown:
        raise InputError("callback_on_step_end_tensor_inputs", list(names),
                         f"{show(unknown)} are not step tensors of stmod; choose from {list(CALLBACK_TENSOR_INPUTS)}")
    return tuple(names)


class PhaseProgress:
    """One phase's bar (``with reporter.phase(...) as progress``); ``update`` tells the listener too."""

    def __init__(self, reporter: RunReporter, desc: str, total: int, unit: str) -> None:
        self.reporter, self.desc, self.total, self.done = reporter, desc, total, 0
        # One bar per phase, kept when done (the run's record on the terminal); names padded to align.
        self.bar = tqdm(total=total, desc=f"{desc:<9}", unit=unit, disable=not reporter.show_bars, leave=True,
                        dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.done += n
        if self.reporter.on_progress is not None:
            self.reporter.on_progress(self.desc, self.done, self.total)

    def step_end(self, step: int, timestep: int, latents: torch.Tensor) -> torch.Tensor:
        """Count the step, run the step callback; the latents it returns (or ``latents``)."""
        self.update()
        return self.reporter.step_end(self.desc, step, timestep, latents)

    def __enter__(self) -> PhaseProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


class RunReporter:
    """The progress of one run.

    :param editor: what the step callback receives first (and whose ``_interrupt`` stops the run).
    :param show_bars: draw progress bars on stderr.
    :param on_progress: see :data:`ProgressCallback`.
    :param callback: see :data:`StepCallback`; ``tensor_inputs`` are the tensors it is given.
    """

    def __init__(self, editor: Any, *, show_bars: bool, on_progress: ProgressCallback | None = None,
                 callback: StepCallback | None = None, tensor_inputs: Sequence[str] | None = None) -> None:
        self.editor, self.show_bars, self.on_progress, self.callback = editor, show_bars, on_progress, callback
        self.tensor_inputs = callback_tensor_inputs(callback, tensor_inputs) if callback is not None else ()

    def phase(self, total: int, desc: str, unit: str = "step") -> PhaseProgress:
        return PhaseProgress(self, desc, total, unit)

    def step_end(self, phase: str, step: int, timestep: int, latents: torch.Tensor) -> torch.Tensor:
        """Run the step callback after step ``step`` of ``phase``; raises :class:`EditCancelled` when the
        editor's interrupt flag is set (by the callback or from another thread)."""
        if self.callback is not None:
            given = {"latents": latents}
            kwargs: dict[str, Any] = {name: given[name] for name in self.tensor_inputs}
            kwargs["phase"] = phase
            outputs = self.callback(self.editor, step, timestep, kwargs) or {}
            latents = outputs.get("latents", latents)
        if getattr(self.editor, "_interrupt", False):
            raise EditCancelled(f"interrupted at {phase} step {step} (timestep {timestep}); nothing was written")
        return latents
