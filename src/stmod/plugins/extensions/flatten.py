"""The ``flatten`` extension: FLATTEN trajectory attention (Cong et al. 2023) as the official VideoGrain
code applies it (its ``flatten_res``), in the inversion and the denoising.

Once per clip (``prepare``): optical flow of consecutive source frames at pixel size (OpenCV DIS, or
torchvision RAFT-Large with ``raft_weights``), then per listed level the trajectories and each token's
keys (:mod:`stmod.core.trajectories`), kept in the extension's store beside the inversion cache entry
(``trajectories.npz``), so a cached inversion reuses them without computing flow again.

On the UNet (``install``): for every self-attention layer whose token count is a listed level
(:func:`stmod.core.levels.level_of`), forward hooks capture the outputs of ``attn.to_q`` and
``attn.to_k`` (after any earlier extension's hooks, so PnP-injected q/k when ``pnp`` is listed first,
the official ``old_qk: 1``), and a forward pre-hook on ``attn.to_out[0]`` replaces the full-frame
attention output by the trajectory attention over it (value = that output at the key positions,
scale ``1/√d_head``, ``−∞`` on invalid keys), as the official ``fully_frame_forward`` does before
``to_out``. The attention processors (the ST-Layout modulator's) are not touched.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from attrs import field, frozen, validators

from stmod.core.errors import ConfigError
from stmod.core.io.ownership import atomic_path
from stmod.core.levels import level_grid, level_of
from stmod.core.trajectories import TrajectoryKeys, level_trajectories, trajectory_attention
from stmod.core.types import EditSpec, ExtensionInput, as_tuple, number

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention

__all__ = ["FlattenOptions", "FlattenExtension", "estimate_flows"]

log = logging.getLogger(__name__)

#: Bumped when the stored trajectories would differ for the same settings (part of the cache key).
_ALGORITHM = 1
_STORE_FILE = "trajectories.npz"
#: Gathered keys and values per chunk of the trajectory attention.
_BUDGET_BYTES = 64 << 20


def _distinct(instance: object, attribute: object, value: tuple[int, ...]) -> None:
    if not value or len(set(value)) != len(value):
        raise ValueError(f"levels must list distinct levels, at least one, got {list(value)}")


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


@frozen(kw_only=True)
class FlattenOptions:
    """Options of the ``flatten`` extension."""

    #: UNet levels with trajectory attention (0 = the latent grid, 1 = half of it, …; the official
    #: ``flatten_res`` factor f is level log2 f). Default: the official configs' most common ``[1]``.
    levels: tuple[int, ...] = number((0,), low=0, high=8, converter=as_tuple, validator=_distinct)
    #: optical flow: ``dis`` (OpenCV, no weights) or ``raft`` (torchvision RAFT-Large, the official's)
    flow: Literal["dis", "raft"] = field(default="dis", validator=validators.in_(("dis", "raft")))
    #: RAFT-Large ``state_dict`` file (``flow: raft``; else torchvision's cached weights)
    raft_weights: Path | None = field(default=None, converter=_optional_path)
    #: seed of the draws that settle trajectory conflicts (several tokens flowing onto one)
    seed: int = number(0, low=0, high=2**32 - 1)
    #: spatial neighbour radius of the official sequences per level (the last repeats below):
    #: the official 2 at level 0, 1 below
    neighbours: tuple[int, ...] = number((2, 1), low=0, high=8, converter=as_tuple)

    def radius(self, level: int) -> int:
        return self.neighbours[min(level, len(self.neighbours) - 1)] if self.neighbours else 0


def estimate_flows(frames: np.ndarray, options: FlattenOptions, device: torch.device) -> np.ndarray:
    """Forward flows ``float32 (F−1, H, W, 2)`` of consecutive frames (the eval flow module's estimators)."""
    from stmod.plugins.eval.flow import make_flow

    estimator = make_flow(options.flow, raft_weights=options.raft_weights,
                          device="cuda" if device.type == "cuda" else "cpu")
    if len(frames) < 2:
        return np.zeros((0, *frames.shape[1:3], 2), np.float32)
    return estimator.flow(frames[:-1], frames[1:])


class FlattenExtension:
    """FLATTEN trajectory attention on the UNet's self-attention (:class:`~stmod.core.protocols.Extension`)."""

    def __init__(self, options: FlattenOptions | None = None) -> None:
        self.options = options or FlattenOptions()
        self._levels: dict[int, TrajectoryKeys] = {}
        self._frames = 0
        self._latent: tuple[int, int] = (0, 0)
        self._on_device: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def check(self, spec: EditSpec) -> None:
        weights = self.options.raft_weights
        if weights is not None and self.options.flow != "raft":
            raise ConfigError(f"flatten: raft_weights is read only with flow: raft (flow is {self.options.flow!r}); "
                              "set flow: raft or drop raft_weights", key="raft_weights")
        if weights is not None and not weights.expanduser().is_file():
            raise ConfigError(f"flatten: raft_weights {str(weights)!r} is not a file; point it to torchvision's "
                              "raft_large state_dict (.pth) or use flow: dis", key="raft_weights")

    def inversion_settings(self) -> Mapping[str, object]:
        o = self.options
        return {"algorithm": _ALGORITHM, "levels": list(o.levels), "flow": o.flow, "seed": o.seed,
                "raft_weights": None if o.raft_weights is None else str(o.raft_weights),
                "neighbours": [o.radius(level) for level in o.levels]}

    def prepare(self, request: ExtensionInput) -> None:
        self._frames, self._latent = request.num_frames, request.latent_size
        self._on_device.clear()
        meta = json.dumps({**self.inversion_settings(), "frames": request.num_frames,
                           "latent": list(request.latent_size)}, sort_keys=True)
        path = None if request.store is None else request.store / _STORE_FILE
        loaded = _load(path, meta) if path is not None else None
        if loaded is not None:
            log.info("flatten: trajectories from the store (%s)", path)
            self._levels = loaded
            return
        flows = estimate_flows(request.frames, self.options, request.device)
        self._levels = {level: level_trajectories(flows, grid=level_grid(request.latent_size, level),
                                                  radius=self.options.radius(level), seed=self.options.seed,
                                                  level=level)
                        for level in self.options.levels}
        if path is not None:
            _save(path, meta, self._levels)

    def needs_inversion(self) -> bool:
        return False

    @contextlib.contextmanager
    def install(self, model: torch.nn.Module, *, role: str) -> Iterator[None]:
        """The capture and replacement hooks on every self-attention layer of the UNet for the block."""
        if role != "unet":  # the official code runs FLATTEN in the UNet only
            yield
            return
        if not self._levels:
            raise RuntimeError("flatten: install before prepare (no trajectories)")
        from diffusers.models.attention_processor import Attention

        layers = [m for m in model.modules() if isinstance(m, Attention) and not m.is_cross_attention]
        handles: list[torch.utils.hooks.RemovableHandle] = []
        seen: set[int] = set()
        try:
            for attn in layers:
                handles += self._hook(attn, seen)
            yield
        finally:
            for handle in handles:
                handle.remove()
        missing = sorted(set(self._levels) - seen)
        if missing:
            log.warning("flatten: no self-attention layer at level(s) %s ran; they had no effect", missing)

    def _hook(self, attn: Attention, seen: set[int]) -> list[torch.utils.hooks.RemovableHandle]:
        captured: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Callable[[torch.nn.Module, tuple, torch.Tensor], None]:
            def hook(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
                if out.ndim == 3 and level_of(out.shape[1], self._latent) in self._levels:
                    captured[name] = out
                else:
                    captured.pop(name, None)
            return hook

        def replace(module: torch.nn.Module, args: tuple) -> tuple | None:
            query, key = captured.pop("q", None), captured.pop("k", None)
            hidden = args[0]
            if query is None or key is None or query.shape[:2] != hidden.shape[:2]:
                return None
            level = level_of(hidden.shape[1], self._latent)
            assert level is not None  # hidden has the captured q's tokens, kept only at a level of _levels
            seen.add(level)
            return (self._attend(query, key, hidden, level, attn.heads), *args[1:])

        return [attn.to_q.register_forward_hook(keep("q")), attn.to_k.register_forward_hook(keep("k")),
                attn.to_out[0].register_forward_pre_hook(replace)]

    def _attend(self, query: torch.Tensor, key: torch.Tensor, hidden: torch.Tensor, level: int,
                heads: int) -> torch.Tensor:
        rows, tokens, channels = hidden.shape
        if rows % self._frames:
            raise ValueError(f"flatten: a batch of {rows} rows is not CFG branches × {self._frames} frames")
        batch = rows // self._frames
        keys, valid = self._device_keys(level, hidden.device)

        def clip(x: torch.Tensor) -> torch.Tensor:  # (B·F, N, C) → (B, F·N, C): frames inner, as the rows
            return x.reshape(batch, self._frames * tokens, -1)

        out = trajectory_attention(clip(query).to(hidden.dtype), clip(key).to(hidden.dtype), clip(hidden), keys,
                                   valid, heads=heads, budget_bytes=_BUDGET_BYTES)
        return out.reshape(rows, tokens, channels)

    def _device_keys(self, level: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        slot = (level, str(device))
        if slot not in self._on_device:
            tk = self._levels[level]
            self._on_device[slot] = (torch.from_numpy(tk.keys).long().to(device), torch.from_numpy(tk.valid).to(device))
        return self._on_device[slot]

    def step(self, *, phase: str, step_index: int, timestep: int, branches: tuple[str, ...]) -> None:
        return None


def _save(path: Path, meta: str, levels: Mapping[int, TrajectoryKeys]) -> None:
    arrays: dict[str, np.ndarray] = {"meta": np.array(meta)}
    for level, tk in levels.items():
        arrays[f"keys{level}"], arrays[f"valid{level}"] = tk.keys, tk.valid
        arrays[f"shape{level}"] = np.array([*tk.grid, tk.longest])
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        # numpy's stub lets a **dict fill allow_pickle (bool) too; these keys are array names only
        np.savez(handle, **arrays)  # type: ignore[arg-type]


def _load(path: Path, meta: str) -> dict[int, TrajectoryKeys] | None:
    """The stored trajectories when they were made with the same settings, else ``None``."""
    if not path.is_file():
        return None
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
            if str(data["meta"]) != meta:
                return None
            settings = json.loads(meta)
            out = {}
            for level in settings["levels"]:
                h, w, longest = (int(x) for x in data[f"shape{level}"])
                keys, valid = data[f"keys{level}"], data[f"valid{level}"].astype(bool)
                if keys.shape != valid.shape or keys.shape[0] != settings["frames"] * h * w:
                    raise ValueError(f"level {level} holds {keys.shape[0]} tokens")
                out[level] = TrajectoryKeys(keys=keys, valid=valid, grid=(h, w), longest=longest)
            return out
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("flatten: stored trajectories %s are unreadable (%s); computing them again", path, exc)
        return None
