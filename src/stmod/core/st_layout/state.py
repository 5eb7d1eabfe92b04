"""Per-edit state of one ``st-layout`` modulator, shared by its processors (no globals, no counters).

:class:`StepInfo` is what one model call is (it arrives as the processor argument ``stmod_step``);
:class:`EngineState` holds the prepared plan, the per-resolution region labels (built lazily, once
per resolution and device) and the recorders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from attrs import field, frozen, validators

from stmod.core.levels import level_grid
from stmod.core.protocols import Phase
from stmod.core.st_layout.labels import (LevelLayout, layer_grid, level_layout, rules_for, rules_of, time_weight,
                                         time_weight_tensor, token_strength)
from stmod.core.st_layout.recorders import AttentionRecorder
from stmod.core.st_layout.triton_kernel import TokenOrder, token_order
from stmod.core.types import Branch, as_tuple

if TYPE_CHECKING:
    from stmod.core.features import InversionFeatureRecorder
    from stmod.core.st_layout.modulator import EngineOptions, ModulationPlan

__all__ = ["StepInfo", "EngineState"]


@frozen(kw_only=True)
class StepInfo:
    """What one model call is: passed to every processor as ``cross_attention_kwargs["stmod_step"]``.

    :ivar phase: ``"invert"`` (DDIM inversion, never modulated) or ``"denoise"``.
    :ivar step_index: 0-based index of the step in its loop (the window counts denoising steps).
    :ivar timestep: the scheduler timestep of this call (981, 961, … for 50 DDIM steps).
    :ivar branches: the CFG branches in batch order, outermost; frames are inner.
    :ivar in_window: whether this step is modulated, decided once per step by
        :meth:`~stmod.core.st_layout.modulator.STLayoutModulator.call_kwargs` (``None``: from
        ``step_index`` and the plan). The processors then read neither ``step_index`` nor ``timestep``
        when traced, so a ``torch.compile``-d UNet keeps one graph for every step of a window.
    :ivar clock: ``timestep`` as a float64 0-dim tensor (made from it): what the strength is computed
        from, as tensor data.
    """

    phase: Phase = field(validator=validators.in_(("invert", "denoise")))
    step_index: int = field(validator=validators.ge(0))
    timestep: float
    branches: tuple[Branch, ...] = field(default=("uncond", "cond"), converter=as_tuple)
    in_window: bool | None = field(default=None, validator=validators.optional(validators.instance_of(bool)))
    clock: torch.Tensor = field(eq=False)

    @clock.default
    def _clock(self) -> torch.Tensor:
        return torch.tensor(float(self.timestep), dtype=torch.float64)

    @branches.validator
    def _check_branches(self, attribute: Any, value: tuple[str, ...]) -> None:
        if not value or len(set(value)) != len(value) or not set(value) <= {"uncond", "cond"}:
            raise ValueError(f"branches must be distinct 'uncond'/'cond' entries, got {value!r}")


class EngineState:
    """Per-edit state shared by one modulator's processors (no globals): plan, layouts, recorder."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.budget = int(options.budget_mb * 2**20)
        self.plan: ModulationPlan | None = None
        self.rules = rules_for("videograin")
        self.recorder: AttentionRecorder | None = None
        self.features: InversionFeatureRecorder | None = None  # fed during inversion (K-Means layouts)
        self._levels: dict[tuple[tuple[int, int], torch.device], LevelLayout] = {}
        self._orders: dict[tuple[Any, ...], TokenOrder] = {}

    def prepare(self, plan: ModulationPlan, record: bool) -> None:
        self.plan, self._levels, self._orders = plan, {}, {}
        self.rules = rules_of(plan.config)
        self.recorder = None
        if record and plan.masks is not None:
            self.recorder = AttentionRecorder(plan.masks.names, plan.mask_spans())

    @property
    def exact_lambda(self) -> bool:
        """Whether λ is rounded to float16 as the official code (the config's choice, else the preset's)."""
        choice = self.plan.config.exact_lambda if self.plan is not None else None
        return self.rules.float16_lambda if choice is None else choice

    @property
    def temporal(self) -> str:
        return self.plan.config.temporal if self.plan is not None else "full"

    def level(self, tokens: int, frames: int, device: torch.device) -> LevelLayout:
        plan = self.plan
        assert plan is not None and plan.masks is not None
        if frames != plan.num_frames:
            raise ValueError(f"the batch holds {frames} frames per CFG branch but the plan has {plan.num_frames}")
        grid = layer_grid(tokens, plan.latent_size)
        if (grid, device) not in self._levels:
            # A traced call builds a missing layout eagerly (a graph break, once): see prepare_levels.
            build = torch.compiler.disable(self._build_level) if torch.compiler.is_compiling() else self._build_level
            build(grid, device)
        return self._levels[(grid, device)]

    def prepare_levels(self, device: torch.device | str, levels: int = 4) -> None:
        """Build the layouts of the plan's first ``levels`` UNet levels on ``device`` now, so that a
        ``torch.compile``-d model traces its first call without a graph break (they are otherwise built
        on first use)."""
        plan = self.plan
        assert plan is not None and plan.masks is not None
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # keyed as the tensors' device says: cuda:N
            device = torch.device("cuda", torch.cuda.current_device())
        for level in range(levels):
            h, w = level_grid(plan.latent_size, level)
            self.level(h * w, plan.num_frames, device)

    def _build_level(self, grid: tuple[int, int], device: torch.device) -> None:
        plan = self.plan
        assert plan is not None and plan.masks is not None
        key = (grid, device)
        if key not in self._levels:
            cpu = (grid, torch.device("cpu"))
            if cpu not in self._levels:
                self._levels[cpu] = level_layout(
                    plan.masks.masks, grid, rules=self.rules, spans=plan.mask_spans(),
                    text_length=plan.text_length, downsample=plan.config.mask_downsample,
                    float16=self.exact_lambda,
                )
            self._levels[key] = self._levels[cpu].to(device)

    def token_order(self, layout: LevelLayout, q_frames: Sequence[int], k_frames: Sequence[int]) -> TokenOrder:
        """The self-attention tokens of ``q_frames`` (queries) and ``k_frames`` (keys) of one level in
        region-code order, for the Triton kernel: sorted once per level, window and edit, then reused
        by every layer and step."""
        key = (layout.grid, layout.self_codes.device, tuple(q_frames), tuple(k_frames))
        if key not in self._orders:
            codes = layout.self_codes
            self._orders[key] = token_order(codes[list(q_frames)].reshape(1, -1), codes[list(k_frames)].reshape(1, -1))
        return self._orders[key]

    def in_window(self, step: StepInfo) -> bool:
        plan = self.plan
        # a global edit (no regions) has nothing to modulate: stock attention throughout
        if plan is None or plan.masks is None or not plan.masks.names or step.phase != "denoise":
            return False
        return plan.config.active(step.step_index) if step.in_window is None else step.in_window

    def strength(self, step: StepInfo, kind: Literal["self", "cross"], tokens: int) -> torch.Tensor | None:
        """ξ(t)·c, a float64 0-dim tensor, when this call's ``kind`` attention is modulated at all, else
        ``None``. A zero ξ(t) (timestep ≤ 1) is ``None`` in eager mode (stock attention); a traced call
        cannot branch on the timestep's value and modulates with λ = 0 instead (the same attention)."""
        if not self.in_window(step):
            return None
        assert self.plan is not None  # in_window: prepared
        config = self.plan.config
        if not (config.modulate_self if kind == "self" else config.modulate_cross):
            return None
        h, w = self.plan.latent_size
        if self.rules.skip_finest and tokens > (h // 2) * (w // 2):
            return None
        c = config.self_strength if kind == "self" else config.cross_strength
        if c == 0 or (not torch.compiler.is_compiling() and time_weight(step.timestep, config.time_exponent) == 0):
            return None
        return time_weight_tensor(step.clock, config.time_exponent) * c

    def token_strengths(self, step: StepInfo, kind: Literal["self", "cross"], layout: LevelLayout) -> torch.Tensor:
        """λ per token, float32 ``(F, N)``, of a call that :meth:`strength` says is modulated."""
        assert self.plan is not None  # strength said modulated: prepared
        config = self.plan.config
        scale = config.self_strength if kind == "self" else config.cross_strength
        size = layout.self_size if kind == "self" else layout.cross_size
        return token_strength(size, scale, step.clock, config.time_exponent, float16=self.exact_lambda)
