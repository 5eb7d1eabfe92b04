"""The ``tiny`` backbone: an SD-1.5-shaped, seeded, random-weight model for the demo and tests.

The model is generated once (well under a second), written with ``save_pretrained`` in the SD 1.5
diffusers layout (plus a tiny ControlNet in ``controlnet/``) and then loaded through exactly the code
path the ``sd15`` backbone uses for a user's folder. Its pictures are not meaningful edits; its
attention maps still show what the modulation does.

At the default initialisation a cross-attention row of the tiny UNet spans only ~0.6 in score
(max − min), while a trained SD 1.5 spans several units; ST-Layout's effect is proportional to that
span, so the query and key projections are scaled by :data:`ATTENTION_GAIN` (scores ×12) to give
the tiny model trained-like attention contrast.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from attrs import field, frozen, validators

from stmod.backbones.sd15 import SD15Options, StableDiffusionBackbone
from stmod.backbones.tiny_tokenizer import write_tiny_clip_tokenizer
from stmod.core.errors import NotOwnedError
from stmod.core.io.ownership import atomic_folder, clean_stale_temporaries, replace_problem
from stmod.core.types import MAX_SEED, EditSpec, number

__all__ = ["TinyOptions", "TinyBackbone", "TINY_UNET", "build_tiny_model", "default_tiny_folder"]

#: Bump when the generated architecture or weights change, so cached folders are rebuilt.
TINY_VERSION = 2

#: Factor on every attention layer's query and key weights (see the module docs).
ATTENTION_GAIN = 3.5


#: The tiny UNet's diffusers config: SD 1.5's block kinds at three levels, with few channels.
TINY_UNET = dict(block_out_channels=(32, 64, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32)


def default_tiny_folder(seed: int = 0) -> Path:
    """Where the generated model lives: ``$STMOD_CACHE_DIR`` or ``~/.cache/stmod``."""
    root = Path(os.environ.get("STMOD_CACHE_DIR") or Path.home() / ".cache" / "stmod")
    return root / f"tiny-sd15-v{TINY_VERSION}-seed{seed}"


def build_tiny_model(folder: Path, *, seed: int = 0) -> Path:
    """Generate the tiny model into ``folder`` (atomically; reused when already complete).

    An incomplete folder is replaced only when stmod created it (it carries stmod's marker, see
    :mod:`stmod.core.io.ownership`); any other folder there is refused, never deleted.
    """
    from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    if (folder / "model_index.json").exists() and (folder / "controlnet" / "config.json").exists():
        return folder
    problem = replace_problem(folder, "tiny model")
    if problem is not None:
        raise NotOwnedError(str(folder), "is not a complete tiny model and stmod may not replace it: "
                            f"{problem.split(';')[0]}; give backbone.folder a new or empty folder")
    clean_stale_temporaries(folder.parent, name=folder.name)  # a build killed midway
    with tempfile.TemporaryDirectory(prefix="stmod-tiny-") as work_dir, \
            atomic_folder(folder, kind="tiny model") as target:
        work = Path(work_dir)
        vocab_size = write_tiny_clip_tokenizer(work / "tokenizer_src")
        tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer_src")
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET)
        with torch.no_grad():
            # mypy sees diffusers' mixin classes without their inherited methods: hence this ignore and the next
            for name, param in unet.named_parameters():  # type: ignore[attr-defined]
                if name.endswith(("to_q.weight", "to_k.weight")):
                    param.mul_(ATTENTION_GAIN)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(block_out_channels=[32] * 4, down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, norm_num_groups=32,
                            sample_size=128)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, projection_dim=32))
        torch.manual_seed(seed + 3)
        controlnet = ControlNetModel.from_unet(unet)
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(target)  # type: ignore[attr-defined]
        controlnet.save_pretrained(target / "controlnet")
        (target / "stmod_tiny.json").write_text(json.dumps({"version": TINY_VERSION, "seed": seed}))
    return folder


@frozen(kw_only=True)
class TinyOptions:
    """Options of the ``tiny`` backbone."""

    #: Folder holding the generated model (default: the stmod cache, see ``default_tiny_folder``).
    folder: str | None = None
    #: Seed of the random weights.
    seed: int = number(0, low=0, high=MAX_SEED)
    #: ``cpu`` by default: the tiny model is faster there than on a GPU (float16 there, float32 on CPU).
    device: str = "cpu"


class TinyBackbone(StableDiffusionBackbone):
    """``sd15`` loading a generated tiny model; every annotator maps to its tiny ControlNet."""

    def __init__(self, options: TinyOptions) -> None:
        self.folder = Path(options.folder).expanduser() if options.folder else default_tiny_folder(options.seed)
        self.seed = options.seed
        super().__init__(SD15Options(model=str(self.folder), device=options.device))

    def controlnet_location(self, annotator: str, model: str | None) -> str:
        return model or str(self.folder / "controlnet")

    def check(self, spec: EditSpec) -> None:
        build_tiny_model(self.folder, seed=self.seed)  # cheap, and the tokenizer is needed for prompt checks
        super().check(spec)
