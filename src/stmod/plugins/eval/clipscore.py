"""CLIP image and text embeddings for CLIP-T, CLIP-F and region CLIP-T.

:class:`ClipScorer` loads a ``transformers`` ``CLIPModel`` with its image processor and tokenizer from
a hub id (default ``openai/clip-vit-large-patch14``, the LOVEU-TGVE choice) or a local folder written
with ``save_pretrained``. Frames go through the checkpoint's own processor (for OpenAI CLIP: shortest
side to 224, centre crop 224, CLIP normalisation), as in TGVE's ``run_eval.py``. Weights are never
downloaded behind the user's back when ``HF_HUB_OFFLINE`` is set; a missing checkpoint is a
:class:`~stmod.core.errors.CheckpointError` that says how to provide one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stmod.core.devices import resolve_device
from stmod.core.errors import CheckpointError
from stmod.core.hub import hub_unreachable, in_hf_cache
from stmod.plugins.eval.metrics import square_box
from stmod.plugins.eval.names import DEFAULT_CLIP

if TYPE_CHECKING:
    from transformers import CLIPModel

__all__ = ["DEFAULT_CLIP", "ClipScorer", "region_crops"]

log = logging.getLogger(__name__)

_BATCH = 16  # images per forward pass


def _looks_like_path(location: str) -> bool:
    return location.startswith(("/", ".", "~")) or Path(location).expanduser().exists() or location.count("/") > 1


def _projected(output: object) -> torch.Tensor:
    """The projected embedding from ``get_*_features`` (a tensor before transformers 5, an output object since)."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output  # type: ignore[attr-defined]


class ClipScorer:
    """A loaded CLIP model that embeds frames and prompts.

    :param model: a ``CLIPModel`` in eval mode; :param processor: its image processor;
    :param tokenizer: its tokenizer; :param name: where it came from (recorded in ``run.json``).
    """

    def __init__(self, model: CLIPModel, processor: Callable[..., Any], tokenizer: Callable[..., Any], *, name: str,
                 device: torch.device) -> None:
        self.model, self.processor, self.tokenizer, self.name, self.device = model, processor, tokenizer, name, device

    @classmethod
    def load(cls, location: str = DEFAULT_CLIP, *, device: str = "auto") -> ClipScorer:
        """Load CLIP from a hub id or a folder.

        :raises CheckpointError: when the weights cannot be found (offline and not cached, a missing
            folder, or a folder without a CLIP model), naming ``--clip PATH`` as the fix.
        """
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        is_path = _looks_like_path(location)
        source = str(Path(location).expanduser()) if is_path else location
        if is_path and not Path(source).is_dir():
            raise CheckpointError(location, "no such CLIP folder; pass --clip PATH to a folder saved with "
                                            "CLIPModel.save_pretrained (plus its processor and tokenizer)")
        if not is_path and not in_hf_cache(location) and os.environ.get("HF_HUB_OFFLINE", "").lower() not in {
                "1", "true", "yes"}:
            problem = hub_unreachable()  # else from_pretrained retries for about a minute before failing
            if problem is not None:
                raise CheckpointError(location, f"CLIP weights are not in the Hugging Face cache and the hub cannot be "
                                                f"reached ({problem}); fetch them once with `hf download {location}` or "
                                                "pass --clip PATH to a local CLIP folder (or --metrics warp,background "
                                                "to skip CLIP)")
        try:
            model = CLIPModel.from_pretrained(source)
            processor = AutoImageProcessor.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            if is_path:
                problem = ("this folder holds no CLIP model; pass --clip PATH to a folder with a CLIPModel, its "
                           "image processor and tokenizer (save_pretrained)")
            else:
                problem = (f"CLIP weights are not in the Hugging Face cache and cannot be downloaded (offline?); "
                           f"fetch them once with `hf download {location}` or pass --clip PATH to a local CLIP "
                           "folder (or --metrics warp,background to skip CLIP)")
            raise CheckpointError(location, f"{problem} ({type(exc).__name__})") from exc
        dev = resolve_device(device)
        # transformers types PreTrainedModel.to through a wrapper whose signature mypy reads wrongly
        model = model.to(dev).eval()  # type: ignore[arg-type]
        log.info("loaded CLIP %s on %s", location, dev)
        return cls(model, processor, tokenizer, name=location, device=dev)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Projected embeddings ``float32 (N, D)`` (CPU) of ``uint8 (H, W, 3)`` images of any sizes."""
        out = []
        for start in range(0, len(images), _BATCH):
            batch = [np.ascontiguousarray(im) for im in images[start:start + _BATCH]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            features = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
            out.append(_projected(features).float().cpu())
        if not out:
            dim = self.model.config.projection_dim
            assert dim is not None  # CLIPConfig's projection_dim defaults to 512; a CLIPModel projects to it
            return torch.zeros(0, int(dim))
        return torch.cat(out)

    @torch.inference_mode()
    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Projected embeddings ``float32 (N, D)`` (CPU) of ``prompts`` (truncated to 77 tokens)."""
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return _projected(self.model.get_text_features(**tokens)).float().cpu()


def region_crops(frames: np.ndarray, masks: np.ndarray) -> list[np.ndarray]:
    """Square crops around a region's bounding box, one per frame where the region is present.

    :param frames: ``uint8 (F, H, W, 3)``; :param masks: bool ``(F, H, W)`` of one region.
    :returns: ``uint8 (S, S, 3)`` crops (see :func:`~stmod.plugins.eval.metrics.square_box`); where the square
        overhangs the frame it is padded with black.
    """
    crops = []
    for frame, mask in zip(frames, masks):
        box = square_box(mask)
        if box is None:
            continue
        top, left, h, w = box
        canvas = np.zeros((h, w, 3), np.uint8)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + h, frame.shape[0]), min(left + w, frame.shape[1])
        canvas[y0 - top:y1 - top, x0 - left:x1 - left] = frame[y0:y1, x0:x1]
        crops.append(canvas)
    return crops
