"""The ST-Layout attention processor of one layer.

Without a ``stmod_step`` argument a processor behaves exactly like ``AttnProcessor2_0`` (per frame),
so a stock pipeline call is unaffected. With it, self-attention is spatio-temporal (all frames of a
video form one sequence, or the ``per-frame`` / ``sparse-causal`` variants) in inversion and
denoising, and modulation is applied in denoising steps inside the window, on the CFG branch and
layers the preset says. Batch layout: ``hidden_states`` is ``(B·F, N, C)`` with the CFG branch
outermost and frames inner — row ``b·F + f`` is frame ``f`` of branch ``branches[b]``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from stmod.core.features import TransformerBlock
from stmod.core.st_layout.kernels import (
    modulated_attention,
    modulated_attention_explicit,
    modulated_attention_few_keys,
    uses_triton,
)
from stmod.core.st_layout.state import EngineState, StepInfo
from stmod.core.st_layout.windows import temporal_windows

__all__ = ["STLayoutProcessor"]


def _frame_index(chosen: list[int]) -> slice | list[int]:
    """A run of consecutive frames as a slice (a view, no gather on the hot path), else the list."""
    return slice(chosen[0], chosen[-1] + 1) if chosen == list(range(chosen[0], chosen[0] + len(chosen))) else chosen


def _stock_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)


class STLayoutProcessor:
    """Attention processor of one layer (diffusers ``AttnProcessor2_0`` call signature).

    :param state: the owning modulator's per-edit state.
    :param engine: ``False`` makes a processor that always behaves like ``AttnProcessor2_0`` but
        accepts ``stmod_step`` (a plain per-frame ControlNet).
    :param features: feed the state's inversion feature recorder, if any (UNet processors only).
    """

    def __init__(self, state: EngineState, *, engine: bool = True, features: bool = True) -> None:
        self._state = state
        self._engine = engine
        self._features = features

    # Adapted from diffusers.models.attention_processor.AttnProcessor2_0.__call__: the same signature and
    # the same norm / projection / residual steps; only the attention itself is replaced (below).
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
        keys_from = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length = keys_from.shape[:2]
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

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: StepInfo | None, *,
               cross: bool, block: TransformerBlock | None = None) -> torch.Tensor:
        """The attention of this layer on projected heads, for a model whose attention module is not
        diffusers' ``Attention`` (Wan's ``WanAttention``: its own processor does the projections, norms
        and rotary embedding, then calls this).

        ``q`` ``(B·F, H, N, d)`` in the batch layout of the module docs (frame rows); ``k``, ``v``
        ``(B·F, H, M, d)``: the same frames (self-attention) or each row's text (``cross``). ``block``: the
        transformer block calling (K-Means features are recorded at one block, :mod:`stmod.core.features`).
        """
        if step is None or not self._engine:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        if cross:
            return self._cross_attention(q, k, v, step, block)
        return self._self_attention(q, k, v, step, block)

    @staticmethod
    def _frames(rows: int, step: StepInfo) -> int:
        if rows % len(step.branches):
            raise ValueError(f"batch of {rows} is not {len(step.branches)} CFG branches {step.branches} of equal size")
        return rows // len(step.branches)

    def _record_features(self, step: StepInfo, q: torch.Tensor, k: torch.Tensor,
                         kind: Literal["self", "cross"], block: TransformerBlock | None = None) -> None:
        """Feed the inversion feature recorder (UNet, inversion, conditional branch, wanted level / block only)."""
        recorder = self._state.features
        if recorder is None or not self._features or step.phase != "invert" or "cond" not in step.branches:
            return
        if recorder.wants(q.shape[2], block):
            frames = self._frames(q.shape[0], step)
            part = slice(step.branches.index("cond") * frames, (step.branches.index("cond") + 1) * frames)
            (recorder.add_self if kind == "self" else recorder.add_cross)(q[part], k[part], block)

    def _self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: StepInfo,
                        block: TransformerBlock | None = None) -> torch.Tensor:
        """``(B·F, H, N, d)`` → same; all frames of a branch attend jointly (or per the temporal mode)."""
        state, temporal = self._state, self._state.temporal
        rows, heads, n, d = q.shape
        nb = len(step.branches)
        frames = self._frames(rows, step)
        self._record_features(step, q, k, "self", block)
        strength = state.strength(step, "self", n)
        target = state.rules.self_branch if strength is not None else None
        if temporal in ("full", "window"):
            return self._space_time(q, k, v, step, strength, target)
        ks, vs = k, v
        previous = (torch.arange(frames, device=q.device) - 1).clamp_min(0)
        if temporal == "sparse-causal":  # keys of frame i: frame 0 ‖ frame max(i − 1, 0)
            def causal(x: torch.Tensor) -> torch.Tensor:
                x = x.view(nb, frames, heads, n, -1)
                return torch.cat([x[:, [0] * frames], x[:, previous]], dim=3).reshape(rows, heads, 2 * n, -1)
            ks, vs = causal(k), causal(v)
        if target not in step.branches:
            return _stock_sdpa(q, ks, vs)
        b = step.branches.index(target)
        layout = state.level(n, frames, q.device)
        codes = layout.self_codes
        k_codes = torch.cat([codes[[0] * frames], codes[previous]], dim=1) if temporal == "sparse-causal" else codes
        part = slice(b * frames, (b + 1) * frames)
        out = torch.empty_like(q)
        out[part] = modulated_attention(
            q[part], ks[part], vs[part], strength=state.token_strengths(step, "self", layout), query_codes=codes,
            key_codes=k_codes,
            relation=layout.self_relation, budget_bytes=state.budget,
        )
        for rest in _outside(rows, part):
            out[rest] = _stock_sdpa(q[rest], ks[rest], vs[rest])
        return out

    def _space_time(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: StepInfo,
                    strength: torch.Tensor | None, target: str | None) -> torch.Tensor:
        """Self-attention over the frames of each window (``full``: one window, the whole clip)."""
        state = self._state
        rows, heads, n, _ = q.shape
        nb = len(step.branches)
        frames = rows // nb
        plan = state.plan  # temporal is "window" only with a plan
        config = plan.config if plan is not None and state.temporal == "window" else None
        windows = ([(list(range(frames)), list(range(frames)))] if config is None else
                   temporal_windows(frames, config.window_frames, config.window_overlap, config.anchor_frames))
        five = [x.view(nb, frames, heads, n, -1) for x in (q, k, v)]

        def sequence(x: torch.Tensor, chosen: list[int]) -> torch.Tensor:  # (B, F, H, N, d) → (B, H, F'·N, d)
            return x[:, _frame_index(chosen)].transpose(1, 2).reshape(nb, heads, len(chosen) * n, -1)

        def attend(q_frames: list[int], k_frames: list[int]) -> torch.Tensor:  # → (B, F', H, N, d)
            qs, ks, vs = sequence(five[0], q_frames), sequence(five[1], k_frames), sequence(five[2], k_frames)
            out = self._joint(qs, ks, vs, step, strength, target, q_frames, k_frames, n, frames)
            return out.view(nb, heads, len(q_frames), n, -1).transpose(1, 2)

        if len(windows) == 1:
            return attend(*windows[0]).reshape(rows, heads, n, -1)
        total = q.new_zeros(nb, frames, heads, n, v.shape[-1])
        count = torch.zeros(frames, dtype=q.dtype, device=q.device)
        for q_frames, k_frames in windows:  # overlapping windows: each frame takes the mean of its windows
            total[:, q_frames] += attend(q_frames, k_frames)
            count[q_frames] += 1
        return (total / count.view(1, frames, 1, 1, 1)).reshape(rows, heads, n, -1)

    def _joint(self, qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor, step: StepInfo, strength: torch.Tensor | None,
               target: str | None, q_frames: list[int], k_frames: list[int], n: int, frames: int) -> torch.Tensor:
        """``(B, H, Lq, d)`` queries of ``q_frames`` against the keys of ``k_frames``, per CFG branch."""
        if target not in step.branches:
            return _stock_sdpa(qs, ks, vs)
        state = self._state
        b = step.branches.index(target)
        layout = state.level(n, frames, qs.device)
        codes = layout.self_codes
        triton = uses_triton(qs)
        out = torch.empty_like(qs)
        out[b:b + 1] = modulated_attention(
            qs[b:b + 1], ks[b:b + 1], vs[b:b + 1],
            strength=state.token_strengths(step, "self", layout)[_frame_index(q_frames)].reshape(1, -1),
            query_codes=codes[_frame_index(q_frames)].reshape(1, -1),
            key_codes=codes[_frame_index(k_frames)].reshape(1, -1),
            relation=layout.self_relation, budget_bytes=state.budget, use_triton=triton,
            order=state.token_order(layout, q_frames, k_frames) if triton else None,
        )
        for rest in _outside(qs.shape[0], slice(b, b + 1)):
            out[rest] = _stock_sdpa(qs[rest], ks[rest], vs[rest])
        return out

    def _cross_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: StepInfo,
                         block: TransformerBlock | None = None) -> torch.Tensor:
        """``(B·F, H, N, d)`` queries against ``(B·F, H, T, d)`` text keys, per frame."""
        state = self._state
        rows, heads, n, _ = q.shape
        frames = self._frames(rows, step)
        self._record_features(step, q, k, "cross", block)
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
        out = torch.empty_like(q)
        for b in range(len(step.branches)):
            if b not in done:
                rest = slice(b * frames, (b + 1) * frames)
                out[rest] = _stock_sdpa(q[rest], k[rest], v[rest])
        layout = state.level(n, frames, q.device)
        if k.shape[2] != layout.text_codes.shape[0]:
            raise ValueError(
                f"cross-attention has {k.shape[2]} text tokens, the plan expects {layout.text_codes.shape[0]}"
            )
        for b, modulate, record in jobs:
            part = slice(b * frames, (b + 1) * frames)
            lam = state.token_strengths(step, "cross", layout) if modulate else 0.0 * layout.cross_size  # (F, N)
            sink = None
            if record:
                plain_map = torch.zeros(frames, n, k.shape[2], device=q.device)
                mod_map = torch.zeros_like(plain_map)

                def sink(a: int, z: int, plain: torch.Tensor, modulated: torch.Tensor) -> None:
                    plain_map[:, a:z] = plain.mean(1)
                    mod_map[:, a:z] = modulated.mean(1)
            key_codes = layout.text_codes[None]
            if record:  # the literal formula hands both probability blocks to the recorder
                out[part] = modulated_attention_explicit(
                    q[part], k[part], v[part], on_probs=sink, strength=lam, query_codes=layout.pixel_codes,
                    key_codes=key_codes, relation=layout.cross_relation, budget_bytes=state.budget)
            else:
                out[part] = modulated_attention_few_keys(
                    q[part], k[part], v[part], strength=lam, query_codes=layout.pixel_codes, key_codes=key_codes,
                    relation=layout.cross_relation, budget_bytes=state.budget)
            if record:
                assert recorder is not None  # record is only set with a recorder
                recorder.add(layout.grid, layout.masks, plain_map, mod_map, applied=modulate)
        return out


def _outside(total: int, part: slice) -> list[slice]:
    """The rows of a batch of ``total`` outside ``part``, as at most two slices: views of q, k and v
    (indexing with a list of rows copied them, on every call)."""
    return [rest for rest in (slice(0, part.start), slice(part.stop, total)) if rest.stop > rest.start]
