"""The ST-Layout engine: diffusers attention processors and the ``st-layout`` modulator.

How an edit drives it::

    modulator = STLayoutModulator(EngineOptions())
    modulator.prepare(ModulationPlan.from_prompts(masks=..., regions=..., prompt=..., tokenizer=...,
                                                  latent_size=(h, w), config=ModulationConfig()))
    with modulator.install(unet, role="unet"), modulator.install(controlnet, role="controlnet"):
        for i, t in enumerate(timesteps):
            kwargs = modulator.call_kwargs(phase="denoise", step_index=i, timestep=int(t),
                                           branches=("uncond", "cond"))
            unet(latents_in, t, text, cross_attention_kwargs=kwargs)   # controlnet(..., same kwargs)

Batch layout the processors assume: ``hidden_states`` is ``(B·F, N, C)`` with the CFG branch
outermost and frames inner — row ``b·F + f`` is frame ``f`` of branch ``branches[b]``.

The per-call :class:`~stmod.core.st_layout.state.StepInfo` arrives as the named processor argument
``stmod_step`` (diffusers drops ``cross_attention_kwargs`` that are not named parameters); see
:mod:`stmod.core.st_layout.processor` for what the processors do with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, cast

import attrs
import torch
from attrs import field, frozen, validators

from stmod.core.errors import LayoutError
from stmod.core.features import InversionFeatureRecorder
from stmod.core.protocols import Phase
from stmod.core.st_layout.labels import PresetRules, rules_of
from stmod.core.st_layout.processor import STLayoutProcessor
from stmod.core.st_layout.recorders import AttentionRecorder
from stmod.core.st_layout.state import EngineState, StepInfo
from stmod.core.tokens import composite_text_embedding, find_token_spans
from stmod.core.types import number
from stmod.core.types import Branch, LayoutMasks, ModulationConfig, ModulationInput, Region, TextConditioning

__all__ = ["Branch", "StepInfo", "EngineOptions", "ModulationPlan", "STLayoutModulator"]


class _ProcessorHost(Protocol):
    """A diffusers model whose attention processors can be swapped (checked with ``hasattr`` before use)."""

    @property
    def attn_processors(self) -> Mapping[str, Any]: ...

    def set_attn_processor(self, processor: dict[str, Any]) -> None: ...


@frozen(kw_only=True)
class EngineOptions:
    """Options of the ``st-layout`` modulator.

    :ivar budget_mb: working memory of one modulated attention call (score chunks, widened q/k/v).
    :ivar modulate_controlnet: give the ControlNet the UNet's spatio-temporal, modulated processors
        (the official code keeps its attention plain and per frame).
    :ivar record_attention: record the local prompts' cross-attention maps (see :attr:`STLayoutModulator.recorder`).
    """

    budget_mb: float = number(256.0, low=0.001, high=2.0**20)
    modulate_controlnet: bool = field(default=False, validator=validators.instance_of(bool))
    record_attention: bool = field(default=False, validator=validators.instance_of(bool))


@frozen(kw_only=True)
class ModulationPlan(ModulationInput):
    """What the ``st-layout`` modulator works from in one pass: its input, checked, plus the text length.

    :meth:`STLayoutModulator.prepare` builds it from the editor's
    :class:`~stmod.core.types.ModulationInput` (see there for the fields); ``masks=None`` is a plan
    without regions (attention is spatio-temporal but never modulated — e.g. inversion before a layout
    exists). Masks without a region (or with an empty prompt) take part only in self-attention.
    ``text_length`` (from the input): text tokens per prompt (77 for CLIP).
    """

    def __attrs_post_init__(self) -> None:
        if len(self.spans) != len(self.regions):
            raise ValueError(f"{len(self.spans)} token spans for {len(self.regions)} regions")
        if self.masks is None:
            if self.regions:
                raise LayoutError("regions were given without masks", region=self.regions[0].name)
            return
        if self.masks.num_frames != self.num_frames:
            raise LayoutError(f"masks have {self.masks.num_frames} frames, the edit has {self.num_frames}")
        for region in self.regions:
            if region.name not in self.masks.names:
                raise LayoutError(
                    f"region {region.name!r} has no mask; masks exist for {list(self.masks.names)}", region=region.name
                )

    @classmethod
    def from_input(cls, request: ModulationInput) -> ModulationPlan:
        """The plan of ``request`` (``request`` itself when it already is one)."""
        if isinstance(request, cls):
            return request
        return cls(**{a.name: getattr(request, a.name) for a in attrs.fields(ModulationInput)})

    @classmethod
    def from_prompts(
        cls,
        *,
        masks: LayoutMasks,
        regions: Sequence[Region],
        prompt: str,
        tokenizer: Any,
        latent_size: tuple[int, int],
        config: ModulationConfig | None = None,
    ) -> ModulationPlan:
        """Plan for ``regions`` whose local prompts are located in ``prompt`` with ``tokenizer``.

        :raises PromptError: for a prompt over 77 tokens or a local prompt not found (named).
        """
        config = config or ModulationConfig()
        spans = find_token_spans(tokenizer, prompt, [r.prompt for r in regions], missing=config.missing_local_prompt)
        return cls(masks=masks, num_frames=masks.num_frames, latent_size=latent_size, regions=regions,
                   spans=spans, config=config, prompt=prompt)

    @property
    def rules(self) -> PresetRules:
        """The preset's concrete rules (e.g. ``rules.composite_text``: use the composite text embedding)."""
        return rules_of(self.config)

    def mask_spans(self) -> list[tuple[int, int] | None]:
        """Per mask (in ``masks.names`` order), the ``(start, stop)`` of its region's span or ``None``."""
        by_name = {r.name: s for r, s in zip(self.regions, self.spans)}
        names = self.masks.names if self.masks is not None else ()
        return [(s.start, s.stop) if (s := by_name.get(n)) is not None else None for n in names]


class STLayoutModulator:
    """The ``st-layout`` modulator (:class:`~stmod.core.protocols.Modulator`): ST-Layout attention.

    ``prepare(request)`` once per pass (again to switch plans, e.g. after inversion found a layout);
    ``install(model, role=...)`` swaps in the processors for the ``with`` block; ``call_kwargs(...)``
    gives the ``cross_attention_kwargs`` of each model call; :attr:`recorder` holds the recorded maps;
    ``with record_features(recorder):`` feeds inversion features to K-Means layouts (:mod:`stmod.core.features`).
    """

    def __init__(self, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        self._state = EngineState(self.options)

    @property
    def plan(self) -> ModulationPlan | None:
        """The prepared plan, if any."""
        return self._state.plan

    @property
    def recorder(self) -> AttentionRecorder | None:
        """Recorded cross-attention maps (``None`` unless recording is on and the plan has masks)."""
        return self._state.recorder

    def prepare(self, request: ModulationInput) -> None:
        """Adopt the plan of ``request``; per-resolution labels are built lazily on first use and cached."""
        if not isinstance(request, ModulationInput):
            raise TypeError(f"st-layout needs a ModulationInput, got {type(request).__name__}")
        self._state.prepare(ModulationPlan.from_input(request), self.options.record_attention)

    def prepare_levels(self, device: torch.device | str = "cpu", levels: int = 4) -> None:
        """Build the prepared plan's per-level labels on ``device`` now, before a ``torch.compile``-d
        model's first call (see :meth:`~stmod.core.st_layout.state.EngineState.prepare_levels`)."""
        self._state.prepare_levels(device, levels)

    def text_conditioning(self, request: ModulationInput,
                          encode_text: Callable[[Sequence[str]], torch.Tensor]) -> TextConditioning:
        """The text of each CFG branch, as the preset's rules say (:class:`~stmod.core.protocols.ConditionsText`).

        ``videograin`` reproduces the official code: the UNet's unconditional branch is the empty
        prompt and its conditional branch the composite embedding of the local prompts; the negative
        prompt reaches only the ControlNet. ``paper``: the negative prompt and the plain global prompt
        for both models.
        """
        rules = rules_of(request.config)
        wanted = [request.negative_prompt, request.prompt, *([""] if rules.uncond_text == "empty" else []),
                  *(r.prompt for r, span in zip(request.regions, request.spans) if rules.composite_text and span is not None)]
        texts = list(dict.fromkeys(wanted))  # one encoder call for every text of the edit, each text once
        rows = encode_text(texts)

        def embedding(text: str) -> torch.Tensor:
            index = texts.index(text)
            return rows[index:index + 1]

        negative, prompt = embedding(request.negative_prompt), embedding(request.prompt)
        uncond = embedding("") if rules.uncond_text == "empty" else negative
        cond = prompt
        if rules.composite_text:
            locals_ = [embedding(r.prompt) if span is not None else None
                       for r, span in zip(request.regions, request.spans)]
            cond = composite_text_embedding(prompt, locals_, request.spans)
        return TextConditioning(unet={"uncond": uncond, "cond": cond}, control={"uncond": negative, "cond": prompt})

    def start_recording(self) -> AttentionRecorder:
        """Record the local prompts' cross-attention maps from now on (needs a prepared plan with masks)."""
        plan = self._state.plan
        if plan is None or plan.masks is None:
            raise RuntimeError("prepare a plan with masks before recording attention")
        self._state.recorder = AttentionRecorder(plan.masks.names, plan.mask_spans())
        return self._state.recorder

    @contextlib.contextmanager
    def record_features(self, recorder: InversionFeatureRecorder) -> Iterator[InversionFeatureRecorder]:
        """Feed ``recorder`` from the UNet's attention during inversion calls inside the ``with`` block."""
        self._state.features = recorder
        try:
            yield recorder
        finally:
            self._state.features = None

    @contextlib.contextmanager
    def install(self, model: torch.nn.Module, *, role: str = "unet") -> Iterator[None]:
        """Swap ``model``'s attention processors for ST-Layout ones; restore the originals on exit.

        :param role: ``"unet"`` (spatio-temporal, modulated) or ``"controlnet"`` (plain per-frame
            attention unless ``modulate_controlnet``).
        """
        if role not in ("unet", "controlnet"):
            raise ValueError(f"role must be 'unet' or 'controlnet', got {role!r}")
        if not hasattr(model, "attn_processors") or not hasattr(model, "set_attn_processor"):
            raise TypeError(f"{type(model).__name__} has no diffusers attention processors to replace")
        host = cast(_ProcessorHost, model)  # both attributes checked just above
        original = dict(host.attn_processors)
        engine = role == "unet" or self.options.modulate_controlnet
        host.set_attn_processor({name: STLayoutProcessor(self._state, engine=engine, features=role == "unet")
                                  for name in original})
        try:
            yield
        finally:
            host.set_attn_processor(dict(original))  # set_attn_processor pops from the dict it gets

    def call_kwargs(
        self, *, phase: Phase, step_index: int, timestep: int, branches: Sequence[Branch] = ("uncond", "cond")
    ) -> dict[str, Any]:
        """``{"stmod_step": StepInfo(...)}`` for ``cross_attention_kwargs`` of one UNet/ControlNet call.

        :param branches: the CFG branches in batch order (outermost), e.g. ``("cond",)`` without CFG.
        """
        step = StepInfo(phase=phase, step_index=step_index, timestep=timestep, branches=branches)
        return {"stmod_step": attrs.evolve(step, in_window=self._state.in_window(step))}
