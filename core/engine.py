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

The per-call :class:`StepInfo` arrives as the named processor argument ``stmod_step`` (diffusers
drops ``cross_attention_kwargs`` that are not named parameters). Without it a processor behaves
exactly like diffusers' ``AttnProcessor2_0`` (per frame), so a stock pipeline call is unaffected.
With it, self-attention is spatio-temporal (all frames of a video form one sequence, or the
``per-frame`` / ``sparse-causal`` variants) in inversion and denoising, and modulation is applied in
denoising steps inside the window, on the CFG branch and layers the preset says.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from attrs import field, frozen, validators

from stmod.core.attention import modulated_attention, modulated_attention_explicit
from stmod.core.attention_maps import AttentionRecorder
from stmod.core.errors import LayoutError
from stmod.core.features import InversionFeatureRecorder
from stmod.core.modulation import LevelLayout, PresetRules, layer_grid, level_layout, rules_for, time_weight
from stmod.core.protocols import Phase
from stmod.core.tokens import MAX_TOKENS, TokenSpan, find_token_spans
from stmod.core.types import LayoutMasks, ModulationConfig, Region

__all__ = ["Branch", "StepInfo", "EngineOptions", "ModulationPlan", "STLayoutProcessor", "STLayoutModulator"]

#: A classifier-free-guidance branch of the batch.
Branch = Literal["uncond", "cond"]


@frozen(kw_only=True)
class StepInfo:
    """What one model call is: passed to every processor as ``cross_attention_kwargs["stmod_step"]``.

    :ivar phase: ``"invert"`` (DDIM inversion, never modulated) or ``"denoise"``.
    :ivar step_index: 0-based index of the step in its loop (the window counts denoising steps).
    :ivar timestep: the scheduler timestep of this call (981, 961, … for 50 DDIM steps).
    :ivar branches: the CFG branches in batch order, outermost; frames are inner.
    """

    phase: Phase = field(validator=validators.in_(("invert", "denoise")))
    step_index: int = field(validator=validators.ge(0))
    timestep: float
    branches: tuple[Branch, ...] = field(default=("uncond", "cond"), converter=tuple)

    @branches.validator
    def _check_branches(self, attribute: Any, value: tuple[str, ...]) -> None:
        if not value or len(set(value)) != len(value) or not set(value) <= {"uncond", "cond"}:
            raise ValueError(f"branches must be distinct 'uncond'/'cond' entries, got {value!r}")


@frozen(kw_only=True)
class EngineOptions:
    """Options of the ``st-layout`` modulator.

    :ivar budget_mb: working memory of one modulated attention call (score chunks, widened q/k/v).
    :ivar modulate_controlnet: give the ControlNet the UNet's spatio-temporal, modulated processors
        (the official code keeps its attention plain and per frame).
    :ivar record_attention: record the local prompts' cross-attention maps (see :attr:`STLayoutModulator.recorder`).
    """

    budget_mb: float = field(default=256.0, validator=validators.gt(0))
    modulate_controlnet: bool = field(default=False, validator=validators.instance_of(bool))
    record_attention: bool = field(default=False, validator=validators.instance_of(bool))


@frozen(kw_only=True)
class ModulationPlan:
    """What :meth:`STLayoutModulator.prepare` needs for one edit.

    :ivar masks: pixel masks, bool ``(F, K, H, W)``; ``None`` for a plan without regions (attention is
        spatio-temporal but never modulated — e.g. inversion before a layout exists).
    :ivar regions: regions with their local prompts; each name must have a mask. Masks without a
        region (or with an empty prompt) take part only in self-attention.
    :ivar spans: per region, its token span in the global prompt (``None``: no text tokens).
    :ivar num_frames: F. ``latent_size``: ``(h, w)`` of the latents.
    :ivar config: the modulation settings (preset, window, strengths, temporal focus, ...).
    :ivar timesteps: the denoising schedule, for reference (processors get the timestep per call).
    """

    masks: LayoutMasks | None
    num_frames: int = field(validator=validators.ge(1))
    latent_size: tuple[int, int] = field(converter=tuple)
    regions: tuple[Region, ...] = field(default=(), converter=tuple)
    spans: tuple[TokenSpan | None, ...] = field(default=(), converter=tuple)
    config: ModulationConfig = field(factory=ModulationConfig)
    timesteps: tuple[int, ...] = field(default=(), converter=tuple)
    text_length: int = MAX_TOKENS

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
    def from_prompts(
        cls,
        *,
        masks: LayoutMasks,
        regions: Sequence[Region],
        prompt: str,
        tokenizer: Any,
        latent_size: tuple[int, int],
        config: ModulationConfig | None = None,
        timesteps: Sequence[int] = (),
    ) -> ModulationPlan:
        """Plan for ``regions`` whose local prompts are located in ``prompt`` with ``tokenizer``.

        :raises PromptError: for a prompt over 77 tokens or a local prompt not found (named).
        """
        spans = find_token_spans(tokenizer, prompt, [r.prompt for r in regions])
        return cls(masks=masks, num_frames=masks.num_frames, latent_size=latent_size, regions=regions,
                   spans=spans, config=config or ModulationConfig(), timesteps=timesteps)

    @property
    def rules(self) -> PresetRules:
        """The preset's concrete rules (e.g. ``rules.composite_text``: use the composite text embedding)."""
        return rules_for(self.config.preset)

    def mask_spans(self) -> list[tuple[int, int] | None]:
        """Per mask (in ``masks.names`` order), the ``(start, stop)`` of its region's span or ``None``."""
        by_name = {r.name: s for r, s in zip(self.regions, self.spans)}
        names = self.masks.names if self.masks is not None else ()
        return [(s.start, s.stop) if (s := by_name.get(n)) is not None else None for n in names]


class _EngineState:
    """Per-edit state shared by one modulator's processors (no globals): plan, layouts, recorder."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.budget = int(options.budget_mb * 2**20)
        self.plan: ModulationPlan | None = None
        self.rules = rules_for("videograin")
        self.recorder: AttentionRecorder | None = None
        self.features: InversionFeatureRecorder | None = None  # fed during inversion (K-Means layouts)
        self._levels: dict[tuple[tuple[int, int], torch.device], LevelLayout] = {}

    def prepare(self, plan: ModulationPlan, record: bool) -> None:
        self.plan, self._levels = plan, {}
        self.rules = rules_for(plan.config.preset)
        self.recorder = None
        if record and plan.masks is not None:
            self.recorder = AttentionRecorder(plan.masks.names, plan.mask_spans())

    @property
    def temporal(self) -> str:
        return self.plan.config.temporal if self.plan is not None else "full"

    def level(self, tokens: int, frames: int, device: torch.device) -> LevelLayout:
        plan = self.plan
        assert plan is not None and plan.masks is not None
        if frames != plan.num_frames:
            raise ValueError(f"the batch holds {frames} frames per CFG branch but the plan has {plan.num_frames}")
        grid = layer_grid(tokens, plan.latent_size)
        key = (grid, device)
        if key not in self._levels:
            cpu = (grid, torch.device("cpu"))
            if cpu not in self._levels:
                self._levels[cpu] = level_layout(
                    plan.masks.masks, grid, rules=self.rules, spans=plan.mask_spans(),
                    text_length=plan.text_length, downsample=plan.config.mask_downsample,
                )
            self._levels[key] = self._levels[cpu].to(device)
        return self._levels[key]

    def in_window(self, step: StepInfo) -> bool:
        plan = self.plan
        return (plan is not None and plan.masks is not None and step.phase == "denoise"
                and plan.config.active(step.step_index))

    def strength(self, step: StepInfo, kind: Literal["self", "cross"], tokens: int) -> float | None:
        """ξ(t)·c when this call's ``kind`` attention is modulated at all, else ``None``."""
        if not self.in_window(step):
            return None
        config = self.plan.config
        if not (config.modulate_self if kind == "self" else config.modulate_cross):
            return None
        h, w = self.plan.latent_size
        if self.rules.skip_finest and tokens > (h // 2) * (w // 2):
            return None
        c = config.self_strength if kind == "self" else config.cross_strength
        value = time_weight(step.timestep, config.time_exponent) * c
        return value or None


def _stock_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)


class STLayoutProcessor:
    """Attention processor of one layer (diffusers ``AttnProcessor2_0`` call signature).

    :param state: the owning modulator's per-edit state.
    :param engine: ``False`` makes a processor that always behaves like ``AttnProcessor2_0`` but
        accepts ``stmod_step`` (a plain per-frame ControlNet).
    :param features: feed the state's inversion feature recorder, if any (UNet processors only).
    """

    def __init__(self, state: _EngineState, *, engine: bool = True, features: bool = True) -> None:
        self._state = state
        self._engine = engine
        self._features = features

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        stmod_step: StepInfo | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        step = stmod_step if self._engine else None
        is_cross = encoder_hidden_states is not None
        batch_size, sequence_length = (encoder_hidden_states if is_cross else hidden_states).shape[:2]
        if attention_mask is not None:
            if step is not None:
                raise ValueError("ST-Layout attention does not take attention masks; pass none with stmod_step")
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        rows, tokens = hidden_states.shape[:2]
        head_dim = key.shape[-1] // attn.heads
        q, k, v = (x.view(rows, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        if step is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        elif is_cross:
            out = self._cross_attention(q, k, v, step)
        else:
            out = self._self_attention(q, k, v, step)

        hidden_states = out.transpose(1, 2).reshape(rows, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _frames(rows: int, step: StepInfo) -> int:
        if rows % len(step.branches):
            raise ValueError(f"batch of {rows} is not {len(step.branches)} CFG branches {step.branches} of equal size")
        return rows // len(step.branches)

    def _record_features(self, step: StepInfo, q: torch.Tensor, k: torch.Tensor,
                         kind: Literal["self", "cross"]) -> None:
        """Feed the inversion feature recorder (UNet, inversion, conditional branch, wanted level only)."""
        recorder = self._state.features
        if recorder is None or not self._features or step.phase != "invert" or "cond" not in step.branches:
            return
        if recorder.wants(q.shape[2]):
            frames = self._frames(q.shape[0], step)
            part = slice(step.branches.index("cond") * frames, (step.branches.index("cond") + 1) * frames)
            (recorder.add_self if kind == "self" else recorder.add_cross)(q[part], k[part])

    def _self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: StepInfo) -> torch.Tensor:
        """``(B·F, H, N, d)`` → same; all frames of a branch attend jointly (or per the temporal mode)."""
        state, temporal = self._state, self._state.temporal
        rows, heads, n, d = q.shape
        nb = len(step.branches)
        frames = self._frames(rows, step)
        self._record_features(step, q, k, "self")
        strength = state.strength(step, "self", n)
        target = state.rules.self_branch if strength is not None else None
        if temporal == "full":
            def video(x: torch.Tensor) -> torch.Tensor:  # (B·F, H, N, d) → (B, H, F·N, d)
                return x.view(nb, frames, heads, n, -1).transpose(1, 2).reshape(nb, heads, frames * n, -1)
            qs, ks, vs = video(q), video(k), video(v)
        else:
            qs, ks, vs = q, k, v
            if temporal == "sparse-causal":  # keys of frame i: frame 0 ‖ frame max(i − 1, 0)
                previous = (torch.arange(frames, device=q.device) - 1).clamp_min(0)

                def causal(x: torch.Tensor) -> torch.Tensor:
                    x = x.view(nb, frames, heads, n, -1)
                    return torch.cat([x[:, [0] * frames], x[:, previous]], dim=3).reshape(rows, heads, 2 * n, -1)
                ks, vs = causal(k), causal(v)
        if target not in step.branches:
            out = _stock_sdpa(qs, ks, vs)
        else:
            b = step.branches.index(target)
            layout = state.level(n, frames, q.device)
            lam = strength * layout.self_size  # (F, N)
            codes = layout.self_codes
            if temporal == "full":
                lam, q_codes, k_codes = lam.reshape(1, -1), codes.reshape(1, -1), codes.reshape(1, -1)
                part = slice(b, b + 1)
            else:
                q_codes = k_codes = codes
                if temporal == "sparse-causal":
                    k_codes = torch.cat([codes[[0] * frames], codes[previous]], dim=1)
                part = slice(b * frames, (b + 1) * frames)
            out = torch.empty_like(qs)
            modulated = modulated_attention(
                qs[part], ks[part], vs[part], strength=lam, query_codes=q_codes, key_codes=k_codes,
                relation=layout.self_relation, budget_bytes=state.budget,
            )
            out[part] = modulated
            plain = [i for i in range(out.shape[0]) if not part.start <= i < part.stop]
            if plain:
                out[plain] = _stock_sdpa(qs[plain], ks[plain], vs[plain])
        if temporal == "full":
            out = out.view(nb, heads, frames, n, -1).transpose(1, 2).reshape(rows, heads, n, -1)
        return out

    def _cross_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: StepInfo) -> torch.Tensor:
        """``(B·F, H, N, d)`` queries against ``(B·F, H, T, d)`` text keys, per frame."""
        state = self._state
        rows, heads, n, _ = q.shape
        frames = self._frames(rows, step)
        self._record_features(step, q, k, "cross")
        strength = state.strength(step, "cross", n)
        recorder = state.recorder if state.in_window(step) else None
        jobs = []  # (branch index, modulate it, record it)
        for b, branch in enumerate(step.branches):
            modulate = strength is not None and branch == state.rules.cross_branch
            record = recorder is not None and branch == "cond"
            if modulate or record:
                jobs.append((b, modulate, record))
        if not jobs:
            return _stock_sdpa(q, k, v)
        done = {b for b, _, _ in jobs}
        plain_rows = [r for r in range(rows) if r // frames not in done]
        out = torch.empty_like(q)
        if plain_rows:
            out[plain_rows] = _stock_sdpa(q[plain_rows], k[plain_rows], v[plain_rows])
        layout = state.level(n, frames, q.device)
        if k.shape[2] != layout.text_codes.shape[0]:
            raise ValueError(
                f"cross-attention has {k.shape[2]} text tokens, the plan expects {layout.text_codes.shape[0]}"
            )
        for b, modulate, record in jobs:
            part = slice(b * frames, (b + 1) * frames)
            lam = (strength if modulate else 0.0) * layout.cross_size  # (F, N)
            sink = None
            if record:
                plain_map = torch.zeros(frames, n, k.shape[2], device=q.device)
                mod_map = torch.zeros_like(plain_map)

                def sink(a: int, z: int, plain: torch.Tensor, modulated: torch.Tensor) -> None:
                    plain_map[:, a:z] = plain.mean(1)
                    mod_map[:, a:z] = modulated.mean(1)
            out[part] = modulated_attention_explicit(
                q[part], k[part], v[part], strength=lam, query_codes=layout.pixel_codes,
                key_codes=layout.text_codes[None], relation=layout.cross_relation,
                budget_bytes=state.budget, on_probs=sink,
            )
            if record:
                recorder.add(layout.grid, layout.masks, plain_map, mod_map, applied=modulate)
        return out


class STLayoutModulator:
    """The ``st-layout`` modulator (:class:`~stmod.core.protocols.Modulator`): ST-Layout attention.

    ``prepare(plan)`` once per edit (again to switch plans, e.g. after inversion found a layout);
    ``install(model, role=...)`` swaps in the processors for the ``with`` block; ``call_kwargs(...)``
    gives the ``cross_attention_kwargs`` of each model call; :attr:`recorder` holds the recorded maps;
    ``with record_features(recorder):`` feeds inversion features to K-Means layouts (:mod:`stmod.core.features`).
    """

    def __init__(self, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        self._state = _EngineState(self.options)

    @property
    def plan(self) -> ModulationPlan | None:
        """The prepared plan, if any."""
        return self._state.plan

    @property
    def recorder(self) -> AttentionRecorder | None:
        """Recorded cross-attention maps (``None`` unless recording is on and the plan has masks)."""
        return self._state.recorder

    def prepare(self, plan: ModulationPlan) -> None:
        """Adopt ``plan``; per-resolution labels are built lazily on first use and cached."""
        if not isinstance(plan, ModulationPlan):
            raise TypeError(f"st-layout needs a ModulationPlan, got {type(plan).__name__}")
        self._state.prepare(plan, self.options.record_attention)

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
        original = dict(model.attn_processors)
        engine = role == "unet" or self.options.modulate_controlnet
        model.set_attn_processor({name: STLayoutProcessor(self._state, engine=engine, features=role == "unet")
                                  for name in original})
        try:
            yield
        finally:
            model.set_attn_processor(dict(original))  # set_attn_processor pops from the dict it gets

    def call_kwargs(
        self, *, phase: Phase, step_index: int, timestep: int, branches: Sequence[Branch] = ("uncond", "cond")
    ) -> dict[str, Any]:
        """``{"stmod_step": StepInfo(...)}`` for ``cross_attention_kwargs`` of one UNet/ControlNet call.

        :param branches: the CFG branches in batch order (outermost), e.g. ``("cond",)`` without CFG.
        """
        return {"stmod_step": StepInfo(phase=phase, step_index=step_index, timestep=timestep, branches=branches)}
