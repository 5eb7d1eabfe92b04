"""Running means of the local prompts' cross-attention maps, without and with modulation.

The engine feeds :class:`AttentionRecorder` from its cross-attention processors (conditional CFG
branch, denoising steps inside the modulation window, every layer; in a layer left unmodulated — e.g.
the finest one in the ``videograin`` preset — "plain" and "modulated" are equal). Per resolution it
keeps one running sum per recorded text token and a call count: memory is O(F·N·tokens) per
resolution, independent of the number of steps and layers.

Summaries over "all resolutions" (``grid=None``) use the resolutions where cross-attention was
actually modulated, so unmodulated layers do not dilute the comparison; when none was (e.g.
``modulate_cross: false``) they use every recorded resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["AttentionRecorder"]


class _Grid:
    __slots__ = ("masks", "plain", "modulated", "calls", "applied")

    def __init__(self, masks: torch.Tensor, frames: int, tokens: int, recorded: int, device: torch.device) -> None:
        self.masks = masks.cpu()  # bool (F, K, N)
        # The sums stay on the attention's device: no host copy (and sync) in every layer call.
        self.plain = torch.zeros(frames, tokens, recorded, device=device)
        self.modulated = torch.zeros(frames, tokens, recorded, device=device)
        self.calls = 0
        self.applied = 0  # calls in which modulation changed the scores


class AttentionRecorder:
    """Cross-attention maps of each region's local-prompt tokens, averaged over heads, layers and steps.

    :param names: region (mask) names, in mask order.
    :param spans: per mask, ``(start, stop)`` token positions of its local prompt or ``None``; only
        regions with a span are recorded.
    """

    def __init__(self, names: Sequence[str], spans: Sequence[tuple[int, int] | None]) -> None:
        self._names = tuple(names)
        self._spans = tuple(spans)
        positions = sorted({p for span in spans if span for p in range(*span)})
        self.tokens: tuple[int, ...] = tuple(positions)
        self._column = {p: i for i, p in enumerate(positions)}
        self._grids: dict[tuple[int, int], _Grid] = {}

    @property
    def regions(self) -> tuple[str, ...]:
        """Names of the recorded regions (those with a local prompt)."""
        return tuple(n for n, s in zip(self._names, self._spans) if s)

    @property
    def grids(self) -> list[tuple[int, int]]:
        """Recorded ``(h, w)`` resolutions, finest first."""
        return sorted(self._grids, key=lambda g: g[0] * g[1], reverse=True)

    @property
    def modulated_grids(self) -> list[tuple[int, int]]:
        """Recorded resolutions where cross-attention was modulated, finest first."""
        return [g for g in self.grids if self._grids[g].applied]

    def calls(self, grid: tuple[int, int]) -> int:
        """How many layer calls were averaged at ``grid``."""
        return self._grids[grid].calls

    def _summary_grids(self) -> list[tuple[int, int]]:
        if not self._grids:
            raise LookupError("nothing was recorded (enable recording and run denoising steps in the window)")
        return self.modulated_grids or self.grids

    def add(self, grid: tuple[int, int], masks: torch.Tensor, plain: torch.Tensor, modulated: torch.Tensor,
            *, applied: bool = True) -> None:
        """Add one layer call: float ``(F, N, T)`` head-averaged probabilities over all ``T`` text tokens.

        :param masks: bool ``(F, K, N)`` region masks on this grid (kept for :meth:`mass_inside`).
        :param applied: whether this call's cross-attention was modulated.
        """
        if not self.tokens:
            return
        columns = list(self.tokens)
        state = self._grids.get(grid)
        if state is None:
            state = self._grids[grid] = _Grid(masks, plain.shape[0], plain.shape[1], len(columns), plain.device)
        state.plain += plain[..., columns].detach().float()
        state.modulated += modulated[..., columns].detach().float()
        state.calls += 1
        state.applied += int(applied)

    def _region(self, region: str) -> tuple[int, list[int]]:
        if region not in self._names:
            raise KeyError(f"no region {region!r}; recorded regions: {list(self.regions)}")
        k = self._names.index(region)
        span = self._spans[k]
        if not span:
            raise KeyError(f"region {region!r} has no local prompt, so it has no cross-attention map")
        return k, [self._column[p] for p in range(*span)]

    def _grid_map(self, region: str, grid: tuple[int, int], modulated: bool) -> torch.Tensor:
        _, columns = self._region(region)
        state = self._grids[grid]
        sums = state.modulated if modulated else state.plain
        return (sums[..., columns].mean(-1).cpu() / max(1, state.calls)).reshape(-1, *grid)

    def region_map(self, region: str, *, modulated: bool, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Mean attention of ``region``'s local-prompt tokens, float32 ``(F, h, w)``.

        Values are probabilities (each pixel's row over the 77 tokens sums to 1) averaged over the
        region's tokens. ``grid=None``: the call-weighted mean over the summary resolutions (see the
        module docstring), each resized (bilinear) to the finest of them.
        """
        grids = self._summary_grids()
        if grid is not None:
            if grid not in self._grids:
                raise KeyError(f"no maps at {grid}; recorded grids: {self.grids}")
            return self._grid_map(region, grid, modulated)
        finest = grids[0]
        total, weight = torch.zeros(0), 0
        for g in grids:
            m = self._grid_map(region, g, modulated)
            m = F.interpolate(m[:, None], size=finest, mode="bilinear", align_corners=False)[:, 0]
            calls = self._grids[g].calls
            total = m * calls if weight == 0 else total + m * calls
            weight += calls
        return total / weight

    def mass_inside(self, region: str, *, modulated: bool, grid: tuple[int, int] | None = None) -> float:
        """Fraction of ``region``'s token attention mass that falls inside its own mask, in ``[0, 1]``.

        ``grid=None``: the call-weighted mean of the per-resolution fractions over the summary
        resolutions (see the module docstring).
        """
        k, _ = self._region(region)
        grids = [grid] if grid is not None else self._summary_grids()
        total, weight = 0.0, 0
        for g in grids:
            state = self._grids[g]
            p = self._grid_map(region, g, modulated).reshape(state.masks.shape[0], -1)
            inside = (p * state.masks[:, k]).sum() / p.sum().clamp_min(1e-30)
            total += float(inside) * state.calls
            weight += state.calls
        return total / weight

    def summary(self) -> dict[str, dict[str, float]]:
        """``{region: {"plain": fraction inside, "modulated": fraction inside}}`` over all resolutions."""
        return {
            r: {"plain": self.mass_inside(r, modulated=False), "modulated": self.mass_inside(r, modulated=True)}
            for r in self.regions
        }
