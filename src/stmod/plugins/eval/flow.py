"""Optical flow of the source clip for Warp-Err: OpenCV DIS (default, no weights) or RAFT-Large.

Both estimators return forward flows ``t → t+1`` and backward flows ``t+1 → t`` for every consecutive
pair, ``float32 (F-1, H, W, 2)`` pixel displacements ``(dx, dy)`` with ``I_t(x) ≈ I_{t+1}(x + A_t(x))``.

* ``dis`` — ``cv2.DISOpticalFlow`` (preset MEDIUM) on grayscale frames: CPU, tens of milliseconds per
  512² pair, no weights, less accurate than RAFT on large motion.
* ``raft`` — torchvision's ``raft_large`` (the paper's flow model), 20 refinement iterations, frames
  padded (replicating the edge) to a multiple of 8 and at least 128 px. Weights: ``--raft-weights
  PATH`` (a ``state_dict`` file such as torchvision's ``raft_large_C_T_SKHT_V2-ff5fadd5.pth``) or
  torchvision's own download/cache.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from stmod.core.devices import resolve_device
from stmod.core.errors import CheckpointError, MissingDependencyError

__all__ = ["FlowMethod", "FlowEstimator", "DisFlow", "RaftFlow", "make_flow"]

log = logging.getLogger(__name__)

FlowMethod = Literal["dis", "raft"]
_RAFT_ITERATIONS = 20  # RAFT's evaluation setting (and RAVE's Warp-Err script)


class FlowEstimator:
    """Protocol-like base: ``pairs(frames) -> (forward, backward)``; ``name`` is recorded in ``run.json``."""

    name = "flow"

    def pairs(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward and backward flows ``float32 (F-1, H, W, 2)`` of ``uint8 (F, H, W, 3)`` frames."""
        forward, backward = [], []
        for a, b in zip(frames[:-1], frames[1:]):
            both = self.flow(np.stack([a, b]), np.stack([b, a]))  # one batch: a → b and b → a
            forward.append(both[0])
            backward.append(both[1])
        empty = np.zeros((0, *frames.shape[1:3], 2), np.float32)
        return (np.stack(forward) if forward else empty), (np.stack(backward) if backward else empty)

    def flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Flows ``first[i] → second[i]`` of ``uint8 (N, H, W, 3)`` images: ``float32 (N, H, W, 2)``."""
        raise NotImplementedError


class DisFlow(FlowEstimator):
    """OpenCV's Dense Inverse Search flow (Kroeger et al. 2016), preset MEDIUM."""

    name = "dis-medium"

    def __init__(self) -> None:
        import cv2

        self._cv2 = cv2
        # OpenCV's stubs list DISOpticalFlow.create but not the module-level alias that exists at run time
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # type: ignore[attr-defined]

    def flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        out = [self._dis.calc(cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY),
                              cv2.cvtColor(np.ascontiguousarray(b), cv2.COLOR_RGB2GRAY), None)
               for a, b in zip(first, second)]
        return np.stack(out).astype(np.float32)


class RaftFlow(FlowEstimator):
    """torchvision's RAFT-Large (Teed & Deng 2020) with user-supplied or torchvision-cached weights."""

    name = "raft-large"

    def __init__(self, weights: Path | None = None, *, device: str = "auto") -> None:
        try:
            from torchvision.models.optical_flow import Raft_Large_Weights, raft_large
        except ImportError as exc:
            raise MissingDependencyError("--flow raft", ["torchvision"], extra="aux") from exc
        self.device = resolve_device(device)
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise CheckpointError(str(weights), "no such RAFT weights file; pass --raft-weights PATH to "
                                                    "torchvision's raft_large state_dict (.pth)")
            model = raft_large(weights=None, progress=False)
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except (RuntimeError, OSError, ValueError) as exc:
                raise CheckpointError(str(weights), f"is not a raft_large state_dict ({type(exc).__name__}); pass "
                                                    "--raft-weights PATH to torchvision's raft_large weights") from exc
        else:
            try:
                model = raft_large(weights=Raft_Large_Weights.DEFAULT, progress=False)
            except Exception as exc:  # URLError, HTTPError, OSError: offline and not in TORCH_HOME
                raise CheckpointError("raft_large", "torchvision's RAFT-Large weights are not cached and cannot be "
                                                    "downloaded (offline?); pass --raft-weights PATH or use --flow dis"
                                      ) from exc
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        def prepare(x: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            h, w = t.shape[-2:]  # RAFT needs multiples of 8 and at least 128 px (its correlation pyramid)
            pad_w, pad_h = max(128, w + -w % 8) - w, max(128, h + -h % 8) - h
            return F.pad(t, (0, pad_w, 0, pad_h), mode="replicate").to(self.device)

        h, w = first.shape[1:3]
        flows = self.model(prepare(first), prepare(second), num_flow_updates=_RAFT_ITERATIONS)[-1]
        return flows[:, :, :h, :w].permute(0, 2, 3, 1).float().cpu().numpy()


def make_flow(method: FlowMethod = "dis", *, raft_weights: Path | None = None, device: str = "auto") -> FlowEstimator:
    """The flow estimator called ``method`` (``dis`` or ``raft``)."""
    if method == "dis":
        return DisFlow()
    if method == "raft":
        return RaftFlow(raft_weights, device=device)
    raise ValueError(f"flow method must be 'dis' or 'raft', got {method!r}")
