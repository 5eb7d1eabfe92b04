"""Train the ``shapes`` model on the shapes world: ``python -m stmod.backbones.shapes.train``.

Five stages, each resumable from its checkpoint in ``--work`` and logged to ``loss.jsonl``:

1. ``vae``: an SD-layout ``AutoencoderKL`` (×8, or ×4 with ``--latent-factor 4``; 4 latent channels) on world frames;
   ``decoder``: then its decoder alone, the encoder frozen (so the UNet's latents do not change); with
   two or more threads it runs in a child process on one thread, beside the UNet stage.
2. ``unet``: a ``UNet2DConditionModel`` with SD 1.5's block structure and a CLIP text encoder trained
   jointly with it (the tokenizer has one token per world word), on latents of captioned world frames
   with SD's noise schedule, ε-prediction, min-SNR weighting, 10 % caption dropout (for classifier-free
   guidance), an EMA of the UNet, and the token-grounding losses of :mod:`~stmod.backbones.shapes.grounding`
   (each caption word's cross-attention pulled onto the pixels it describes).
3. ``controlnet``: a ``ControlNetModel`` made from the (EMA) UNet (``ControlNetModel.from_unet``) and
   trained, the UNet and text encoder frozen, to follow the Canny edge maps that the ``canny`` annotator
   computes from the frames (:func:`stmod.backbones.annotators.canny_maps`): the structure guidance every
   official VideoGrain config edits with, for this world. ``--base-model FOLDER`` trains this stage alone on
   top of an exported model (its VAE, UNet and text encoder are kept as they are).
4. ``export``: the EMA weights as a diffusers folder (``StableDiffusionPipeline.save_pretrained``,
   safetensors), the ControlNet in its subfolder ``controlnet-canny`` (diffusers' ``ControlNetModel``
   layout, so a job's ``control: [{annotator: canny}]`` finds it as it finds a real SD 1.5 ControlNet),
   plus ``manifest.json`` (checksums, the command, the figures measured on held-out frames).

Both the reconstruction and the diffusion loss weigh what shows an object more (``--object-weight``).

Everything is seeded: the same command and thread count reproduce the model (byte for byte on this
machine; ``tests/shapes/test_train.py`` checks it). Optimiser, schedules, EMA and SNR weights are
torch's and diffusers' own.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from attrs import field, frozen
from tqdm.auto import tqdm

from stmod.backbones.shapes import grounding, world
from stmod.backbones.tiny_tokenizer import write_tiny_clip_tokenizer

if TYPE_CHECKING:
    from diffusers.training_utils import EMAModel
    from transformers import CLIPTextModel, CLIPTokenizer

__all__ = ["TrainConfig", "main", "make_dataset", "build_models", "file_checksums"]

#: Frame size of the world (pixels).
IMAGE_SIZE = 128
#: The autoencoder's down-sampling factors the command builds (``--latent-factor``): ×8, SD's, gives 16×16
#: latents, where a ring's band or an object's part is one cell wide; ×4 gives 32×32.
LATENT_FACTORS: tuple[int, ...] = (4, 8)
#: SD's factor, which the Wan-layout model's data (:mod:`stmod.backbones.shapes_wan.data`) keeps.
LATENT_FACTOR = 8
CAPTION_DROPOUT = 0.1
#: The ControlNet drops more captions, so that it learns to draw the edges' structure from the edges
#: alone and leaves what the words say to the UNet (ControlNet's authors drop half).
CONTROL_CAPTION_DROPOUT = 0.3
#: Where the ControlNet goes inside the model folder (``ShapesBackbone.controlnet_location``).
CONTROLNET_FOLDER = "controlnet-canny"
#: Share of captions trained without their articles ("red square and blue disc on grass"): local
#: prompts are written so ("red square"), and the ``videograin`` preset encodes each one alone and
#: pastes it into the global prompt, so a colour word right after the start token must be familiar.
ARTICLE_DROPOUT = 0.5

#: diffusers' models, pipeline and schedulers: mypy cannot resolve their mixin bases and then reports
#: their methods missing, so they are typed ``Any`` here, by this name.
Diffusers = Any


class TrainConfig:
    """Hyper-parameters; the defaults are the shipped model's (see ``docs/shapes.md``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.seed: int = args.seed
        #: Pixels per latent cell along each side (the autoencoder's down-sampling factor).
        self.latent_factor: int = args.latent_factor
        self.images: int = args.images
        self.vae_steps: int = args.vae_steps
        self.vae_batch: int = 4
        self.vae_crop: int = IMAGE_SIZE
        self.vae_lr: float = 1.5e-3
        self.decoder_steps: int = args.decoder_steps
        self.decoder_lr: float = 1e-3
        self.unet_steps: int = args.unet_steps
        self.unet_batch: int = 32
        self.unet_lr: float = args.unet_lr
        #: Extra loss weight on the pixels (autoencoder) and latent cells (UNet, by share) that show an
        #: object: ``1 + object_weight``. Objects are a tenth of a frame, so the plain losses are
        #: ruled by the textures, and without the weight the autoencoder blurs object colours into
        #: their neighbours' (a green disc came back grass-coloured) and the UNet learns colour
        #: words, which matter only on the objects, slowly.
        self.object_weight: float = args.object_weight
        #: Weight of the token-grounding losses (:mod:`~stmod.backbones.shapes.grounding`) beside the
        #: diffusion loss; 0 trains without them.
        self.grounding_weight: float = args.grounding_weight
        self.controlnet_steps: int = args.controlnet_steps
        self.controlnet_batch: int = 8
        self.controlnet_lr: float = 5e-4
        self.ema_decay: float = 0.999
        self.snr_gamma: float = 5.0
        self.checkpoint_every: int = 200

    def as_dict(self) -> dict:
        return dict(vars(self))


# -- data -------------------------------------------------------------------------------------------

@frozen(kw_only=True)
class WorldFrames:
    """Captioned world frames with what the losses weigh: ``images`` uint8 ``(N, H, W, 3)``, ``objects``
    bool ``(N, H, W)`` (the pixels that show an object) and per caption word its latent cells
    (``word_cells`` uint8 ``(N, MAX_WORDS, h, w)``: how many of a cell's f×f pixels it describes, 0…f²)."""

    images: np.ndarray = field(eq=False)
    captions: list[str] = field(eq=False)
    objects: np.ndarray = field(eq=False)
    word_cells: np.ndarray = field(eq=False)

    def split(self, held_out: int) -> tuple[WorldFrames, WorldFrames]:
        """``(all but the last held_out frames, the last held_out)``."""
        def part(sl: slice) -> WorldFrames:
            return WorldFrames(images=self.images[sl], captions=self.captions[sl], objects=self.objects[sl],
                               word_cells=self.word_cells[sl])
        return part(slice(None, -held_out)), part(slice(-held_out, None))

    def word_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float16 ``(N, MAX_WORDS, h, w)`` shares of each cell each word describes, and bool ``(N, MAX_WORDS)``
        whether a word is grounded (describes a visible pixel)."""
        cells = torch.from_numpy(self.word_cells)
        factor = self.images.shape[1] // cells.shape[-1]
        return cells.half() / factor**2, cells.flatten(2).amax(-1) > 0


def _render_one(args: tuple[int, int, int]) -> tuple[np.ndarray, str, np.ndarray, np.ndarray]:
    seed, index, factor = args
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    scene = world.random_scene(rng)
    frame = world.render(scene, float(rng.uniform(0, 8)), (IMAGE_SIZE, IMAGE_SIZE))
    words = world.caption_words(scene, rng)
    if rng.random() < ARTICLE_DROPOUT:
        words = [(word, owner) for word, owner in words if word not in ("a", "an")]
    targets = grounding.word_targets(words, frame.bodies, frame.parts, IMAGE_SIZE // factor)
    cells = np.round(targets * factor**2).astype(np.uint8)
    return frame.image, " ".join(w for w, _ in words), np.asarray(frame.objects.any(axis=0)), cells


def make_dataset(count: int, seed: int, *, workers: int = 2, latent_factor: int = LATENT_FACTOR) -> WorldFrames:
    """``count`` captioned world frames, their word cells on the grid of ``latent_factor``. Frame ``i``
    depends only on ``(seed, i)``, so the set is the same for any number of workers."""
    jobs = [(seed, i, latent_factor) for i in range(count)]
    with Pool(workers) as pool:
        items = list(tqdm(pool.imap(_render_one, jobs, chunksize=64), total=count, desc="world frames",
                          unit="frame"))
    return WorldFrames(images=np.stack([it[0] for it in items]), captions=[it[1] for it in items],
                       objects=np.stack([it[2] for it in items]), word_cells=np.stack([it[3] for it in items]))


def latent_shares(objects: np.ndarray, factor: int = LATENT_FACTOR) -> np.ndarray:
    """float32 ``(N, h, w)``: the share of each latent cell's pixels (``factor``² of them) that show an object."""
    n, height, width = objects.shape
    cells = objects.reshape(n, height // factor, factor, width // factor, factor)
    return cells.mean(axis=(2, 4), dtype=np.float32)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# -- models -----------------------------------------------------------------------------------------

def _levels(latent_factor: int) -> int:
    """Levels of a network that brings a frame down by ``latent_factor``: each level but the last halves it."""
    return int(math.log2(latent_factor)) + 1


def build_models(tokenizer_dir: Path, seed: int, latent_factor: int = LATENT_FACTOR
                 ) -> tuple[Diffusers, Diffusers, CLIPTextModel, CLIPTokenizer]:
    """Fresh ``(vae, unet, text_encoder, tokenizer)`` of the shapes architecture at ``latent_factor``.

    ×8: SD 1.5's block structure (self- and cross-attention at 16², 8² and 4², a plain block at 2²).
    ×4: the same attention layers at the same sizes and widths (16², 8², 4²), under a plain convolutional
    level at the 32×32 latents (16 channels): attention at 32² would cost about nine times as much per
    training step on the CPU, while convolutions there cost a sixth more, and they are what draws a ring's
    band or a part two cells wide instead of one.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = write_tiny_clip_tokenizer(tokenizer_dir, words=world.WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    # Few channels per norm group would normalise each channel's mean away, and with it the flat
    # colours this world is made of: 4+ channels share a group everywhere (SD 1.5 has 4-40).
    torch.manual_seed(seed)
    if latent_factor not in LATENT_FACTORS:
        raise ValueError(f"latent_factor {latent_factor} is not one of {LATENT_FACTORS}")
    levels = _levels(latent_factor)
    # The middle blocks' self-attention runs on the latent grid: at 32×32 it would make each autoencoder step
    # a third dearer (1 024 tokens instead of 256); the manifest's held-out PSNR and colour fidelity say how
    # well the ×4 autoencoder does without it.
    vae = AutoencoderKL(block_out_channels=[16, 32, 64, 64][:levels], down_block_types=["DownEncoderBlock2D"] * levels,
                        up_block_types=["UpDecoderBlock2D"] * levels, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, sample_size=IMAGE_SIZE, mid_block_add_attention=latent_factor == 8)
    torch.manual_seed(seed + 1)
    attn_down, plain_down = "CrossAttnDownBlock2D", "DownBlock2D"
    attn_up, plain_up = "CrossAttnUpBlock2D", "UpBlock2D"
    if latent_factor == 8:
        channels = (32, 64, 96, 96)
        down, up = (attn_down,) * 3 + (plain_down,), (plain_up,) + (attn_up,) * 3
    else:
        channels = (16, 32, 64, 96)
        down, up = (plain_down,) + (attn_down,) * 3, (attn_up,) * 3 + (plain_up,)
    unet = UNet2DConditionModel(
        block_out_channels=channels, layers_per_block=1, sample_size=IMAGE_SIZE // latent_factor,
        in_channels=4, out_channels=4, down_block_types=down, up_block_types=up,
        cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, projection_dim=64))
    return vae, unet, text_encoder, tokenizer


def noise_scheduler() -> Diffusers:
    """SD 1.5's training noise schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear")


# -- checkpoints and logs -------------------------------------------------------------------------

def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _log(work: Path, record: dict) -> None:
    with open(work / "loss.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _update(loss: torch.Tensor, params: list, opt: torch.optim.Optimizer, sched: Any) -> None:
    """One optimiser step of every stage: backward, gradients clipped to norm 1, the step, the lr schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


def _reconstruction_loss(error: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The autoencoders' loss: squared plus half the absolute error, weighted (objects more), as a weighted mean."""
    return (weight * (error.pow(2) + 0.5 * error.abs())).mean() / weight.mean()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (over the 0…255 range)."""
    mse = ((a.clamp(-1, 1) - b) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


# -- stage 1: the autoencoder ---------------------------------------------------------------------

def _fit_autoencoder(vae: Diffusers, images: np.ndarray, objects: np.ndarray, cfg: TrainConfig, work: Path, *,
                     stage: str, steps: int, lr: float) -> float:
    """Train ``vae`` in place for stage ``vae`` (all of it) or ``decoder`` (the decoder alone, the
    encoder frozen, as SD's fine-tuned ft-MSE VAE: sharper pictures, the same latents); returns the
    seconds this stage has taken in all its runs."""
    from diffusers.optimization import get_scheduler

    decoder_only = stage == "decoder"
    params = [p for n, p in vae.named_parameters() if not decoder_only or n.startswith(("decoder.", "post_quant"))]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=100, num_training_steps=steps)
    start, seconds, ckpt = 0, 0.0, work / f"{stage}.ckpt"
    rng = np.random.default_rng(cfg.seed + (11 if decoder_only else 10))
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(state["model"]), opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        start, rng.bit_generator.state, seconds = state["step"], state["rng"], state.get("seconds", 0.0)
    vae.train()
    began = time.time() - seconds
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=stage, unit="step")
    crop = cfg.vae_crop
    for step in bar:
        idx = rng.integers(0, len(images), cfg.vae_batch)
        ys, xs = rng.integers(0, IMAGE_SIZE - crop + 1, (2, cfg.vae_batch))
        batch = _to_tensor(np.stack([images[i, y:y + crop, x:x + crop] for i, y, x in zip(idx, ys, xs)]))
        on_object = torch.from_numpy(np.stack([objects[i, y:y + crop, x:x + crop] for i, y, x in zip(idx, ys, xs)]))
        weight = 1.0 + cfg.object_weight * on_object.unsqueeze(1).float()
        with torch.set_grad_enabled(not decoder_only):
            dist = vae.encode(batch).latent_dist
        # Decode the mean, as stmod encodes clips (``latent_dist.mean``); the small KL term only keeps
        # the latents' scale in check.
        recon = vae.decode(dist.mode()).sample
        error = recon - batch
        rec = _reconstruction_loss(error, weight)
        loss = rec if decoder_only else rec + 1e-6 * dist.kl().mean()
        _update(loss, params, opt, sched)
        bar.set_postfix(loss=f"{rec.item():.4f}")
        if (step + 1) % 20 == 0:
            _log(work, {"stage": stage, "step": step + 1, "loss": rec.item(), "lr": sched.get_last_lr()[0],
                        "time": time.time()})
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            _save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                          "step": step + 1, "rng": rng.bit_generator.state, "seconds": time.time() - began}, ckpt)
    vae.eval()
    return time.time() - began if start < steps else seconds


@torch.no_grad()
def reconstruct(vae: Diffusers, images: np.ndarray) -> torch.Tensor:
    """``images`` through the autoencoder via the distribution mean, as stmod encodes: float
    ``(N, 3, H, W)`` in the decoder's range (about [-1, 1])."""
    return torch.cat([vae.decode(vae.encode(c).latent_dist.mean).sample for c in _to_tensor(images).split(16)])


def colour_fidelity(images: np.ndarray, reconstructed: np.ndarray, objects: np.ndarray) -> dict[str, float]:
    """Per palette colour, the share of object pixels of that colour in ``images`` that are the same
    palette colour in ``reconstructed`` (both uint8 ``(N, H, W, 3)``; ``world.colour_classes``): what
    the UNet can paint at best."""
    truth, seen = world.colour_classes(images), world.colour_classes(reconstructed)
    out = {}
    for index, name in enumerate(world.COLOURS):
        pixels = objects & (truth == index)
        if pixels.any():
            out[name] = round(float((seen[pixels] == index).mean()), 3)
    return out


@torch.no_grad()
def encode_latents(vae: Diffusers, images: np.ndarray) -> torch.Tensor:
    """Distribution means of ``images`` (unscaled), float32 ``(N, 4, h, w)``."""
    out = [vae.encode(_to_tensor(images[i:i + 64])).latent_dist.mean
           for i in tqdm(range(0, len(images), 64), desc="latents", unit="batch")]
    return torch.cat(out)


# -- stage 2: UNet + text encoder -----------------------------------------------------------------

def _check_one_token_per_word(ids: torch.Tensor, captions: list[str], end_token: int) -> None:
    """Word ``i`` of a caption must be token ``i + 1`` for the grounding targets to line up."""
    lengths = (ids != end_token).sum(dim=1) - 1
    words = torch.tensor([len(c.split()) for c in captions])
    if not torch.equal(lengths, words):
        bad = int((lengths != words).nonzero()[0])
        raise RuntimeError(f"caption {captions[bad]!r} is not one token per word; the grounding targets would slip")


def _captions_and_cell_weights(tokenizer: CLIPTokenizer, data: WorldFrames, cfg: TrainConfig
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The captions' token ids ``(N, 77)``, the empty caption's (for caption dropout) and each latent cell's
    loss weight ``(N, 1, h, w)`` (``1 + object_weight · share of the cell showing an object``): what both
    the UNet and the ControlNet stages train with."""
    ids = tokenizer(data.captions + [""], padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    shares = latent_shares(data.objects, cfg.latent_factor)
    cell_weight = 1.0 + cfg.object_weight * torch.from_numpy(shares).unsqueeze(1)
    return ids[:-1], ids[-1], cell_weight


def _diffusion_loss(pred: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cell_weight: torch.Tensor,
                    scheduler: Diffusers, cfg: TrainConfig) -> torch.Tensor:
    """ε-MSE, cells weighted by what they show, samples by min-SNR-γ (Hang et al. 2023) as in
    diffusers' training examples."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t)
    weight = torch.clamp(snr, max=cfg.snr_gamma) / snr
    per_sample = (cell_weight * (pred - noise).pow(2)).mean(dim=(1, 2, 3)) / cell_weight.mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def train_unet(unet: Diffusers, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, latents: torch.Tensor,
               data: WorldFrames, cfg: TrainConfig, work: Path) -> tuple[EMAModel, float]:
    """Train ``unet`` and ``text_encoder`` in place on the scaled latents of ``data``'s frames; returns the
    UNet's EMA and the seconds this stage has taken in all its runs."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    scheduler = noise_scheduler()
    ids, empty, cell_weight = _captions_and_cell_weights(tokenizer, data, cfg)
    _check_one_token_per_word(ids, data.captions, tokenizer.eos_token_id)
    targets, grounded = data.word_targets()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    sched = get_scheduler("cosine", opt, num_warmup_steps=200, num_training_steps=cfg.unet_steps)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True)
    gen = torch.Generator().manual_seed(cfg.seed + 20)
    start, seconds, ckpt = 0, 0.0, work / "unet.ckpt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(state["unet"]), text_encoder.load_state_dict(state["text"])
        opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        ema.load_state_dict(state["ema"])
        start, seconds = state["step"], state.get("seconds", 0.0)
        gen.set_state(state["gen"])
    unet.train(), text_encoder.train()
    began = time.time() - seconds
    maps = grounding.CrossAttentionMaps()
    bar = tqdm(range(start, cfg.unet_steps), initial=start, total=cfg.unet_steps, desc="unet", unit="step")
    with maps.install(unet) if cfg.grounding_weight > 0 else contextlib.nullcontext():
        for step in bar:
            idx = torch.randint(0, len(latents), (cfg.unet_batch,), generator=gen)
            x0 = latents[idx]
            tokens = ids[idx].clone()
            dropped = torch.rand(cfg.unet_batch, generator=gen) < CAPTION_DROPOUT
            tokens[dropped] = empty
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
            pred = unet(scheduler.add_noise(x0, noise, t), t, text_encoder(tokens)[0]).sample
            diffusion = _diffusion_loss(pred, noise, t, cell_weight[idx], scheduler, cfg)
            token_loss, pixel_loss, cell_loss = grounding.grounding_losses(maps.take(), targets[idx].float(),
                                                                           grounded[idx] & ~dropped[:, None])
            loss = diffusion + cfg.grounding_weight * (token_loss + pixel_loss + cell_loss)
            _update(loss, params, opt, sched)
            ema.step(unet.parameters())
            bar.set_postfix(loss=f"{diffusion.item():.4f}", cell=f"{cell_loss.item():.3f}")
            if (step + 1) % 20 == 0:
                _log(work, {"stage": "unet", "step": step + 1, "loss": diffusion.item(), "token": token_loss.item(),
                            "pixel": pixel_loss.item(), "cell": cell_loss.item(), "lr": sched.get_last_lr()[0],
                            "time": time.time()})
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.unet_steps:
                _save_atomic({"unet": unet.state_dict(), "text": text_encoder.state_dict(), "opt": opt.state_dict(),
                              "sched": sched.state_dict(), "ema": ema.state_dict(), "step": step + 1,
                              "gen": gen.get_state(), "seconds": time.time() - began}, ckpt)
    unet.eval(), text_encoder.eval()
    return ema, (time.time() - began if start < cfg.unet_steps else seconds)


# -- stage 3: the ControlNet ------------------------------------------------------------------------

def build_controlnet(unet: Diffusers, seed: int) -> Diffusers:
    """A ``ControlNetModel`` whose encoder starts as a copy of ``unet``'s (zero convolutions at zero); its
    condition embedding brings the edge map down to the size of ``unet``'s latents."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed + 3)  # the condition embedding is the only part drawn at random
    levels = _levels(IMAGE_SIZE // unet.config.sample_size)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64, 64)[:levels])


def edge_maps(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W)``: the Canny edges of ``images`` as the ``canny`` annotator computes them
    (its three channels are equal; one is kept)."""
    from stmod.backbones.annotators import canny_maps

    return np.concatenate([canny_maps(images[i:i + 512])[..., 0] for i in range(0, len(images), 512)])


def train_controlnet(controlnet: Diffusers, unet: Diffusers, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                     latents: torch.Tensor, data: WorldFrames, edges: np.ndarray, cfg: TrainConfig,
                     work: Path) -> float:
    """Train ``controlnet`` in place (``unet`` and ``text_encoder`` frozen) to denoise ``latents`` (scaled)
    of ``data``'s frames given their ``edges``; returns the seconds this stage has taken in all its runs."""
    from diffusers.optimization import get_scheduler

    scheduler = noise_scheduler()
    ids, empty, cell_weight = _captions_and_cell_weights(tokenizer, data, cfg)
    unet.requires_grad_(False), text_encoder.requires_grad_(False)
    unet.eval(), text_encoder.eval()
    params = list(controlnet.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.controlnet_lr, weight_decay=1e-2)
    sched = get_scheduler("cosine", opt, num_warmup_steps=100, num_training_steps=cfg.controlnet_steps)
    gen = torch.Generator().manual_seed(cfg.seed + 30)
    start, seconds, ckpt = 0, 0.0, work / "controlnet.ckpt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        controlnet.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"]), gen.set_state(state["gen"])
        start, seconds = state["step"], state.get("seconds", 0.0)
    controlnet.train()
    began = time.time() - seconds
    bar = tqdm(range(start, cfg.controlnet_steps), initial=start, total=cfg.controlnet_steps, desc="controlnet",
               unit="step")
    for step in bar:
        idx = torch.randint(0, len(latents), (cfg.controlnet_batch,), generator=gen)
        tokens = ids[idx].clone()
        tokens[torch.rand(cfg.controlnet_batch, generator=gen) < CONTROL_CAPTION_DROPOUT] = empty
        noise = torch.randn(latents[idx].shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.controlnet_batch,), generator=gen)
        noisy = scheduler.add_noise(latents[idx], noise, t)
        cond = torch.from_numpy(edges[idx.numpy()]).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
        with torch.no_grad():
            text = text_encoder(tokens)[0]
        down, mid = controlnet(noisy, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
        pred = unet(noisy, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        loss = _diffusion_loss(pred, noise, t, cell_weight[idx], scheduler, cfg)
        _update(loss, params, opt, sched)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % 20 == 0:
            _log(work, {"stage": "controlnet", "step": step + 1, "loss": loss.item(), "lr": sched.get_last_lr()[0],
                        "time": time.time()})
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.controlnet_steps:
            _save_atomic({"model": controlnet.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                          "gen": gen.get_state(), "step": step + 1, "seconds": time.time() - began}, ckpt)
    controlnet.eval()
    return time.time() - began if start < cfg.controlnet_steps else seconds


# -- stage 4: export ------------------------------------------------------------------------------

def file_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except ``manifest.json`` and stmod's marker, keyed by relative POSIX path."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in ("manifest.json", ".stmod-owned"):  # the files of the model only
            out[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def export(out: Path, vae: Diffusers, unet: Diffusers, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
           info: dict, controlnet: Diffusers | None = None, *, base: Path | None = None) -> None:
    """Write the diffusers folder (with ``controlnet`` in :data:`CONTROLNET_FOLDER`, when given) and its
    manifest to ``out`` (replacing a folder this script wrote). With ``base``, that folder's model files are
    copied as they are (byte for byte: loading and saving again would rewrite the configs) and the models
    passed are not saved."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    ddim = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)
    pipe: Diffusers = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                              scheduler=ddim, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
    from stmod.core.errors import NotOwnedError
    from stmod.core.io.ownership import atomic_folder, clean_stale_temporaries, is_owned, write_marker

    if out.is_dir() and not is_owned(out) and (out / "manifest.json").is_file():
        write_marker(out, "shapes model")  # exported before stmod marked its folders: the manifest says it is ours
    clean_stale_temporaries(out.parent, name=out.name)
    try:
        with atomic_folder(out, kind="shapes model") as tmp:
            if base is None:
                pipe.save_pretrained(tmp, safe_serialization=True)
            else:
                for name in file_checksums(base):
                    if not name.startswith(CONTROLNET_FOLDER + "/"):
                        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(base / name, tmp / name)
            if controlnet is not None:
                controlnet.save_pretrained(tmp / CONTROLNET_FOLDER, safe_serialization=True)
            info = dict(info, files=file_checksums(tmp))
            (tmp / "manifest.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    except NotOwnedError as exc:
        raise SystemExit(f"train: --out {out} exists and is not a shapes model folder; choose another ({exc})") from exc


# -- command --------------------------------------------------------------------------------------

def _float_from(low: float, *, inclusive: bool) -> Callable[[str], float]:
    """An argparse type: a float ≥ ``low`` (``> low`` unless ``inclusive``), else a one-line error."""
    def parse(text: str) -> float:
        value = float(text)
        if value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"{text} is not {'≥' if inclusive else '>'} {low:g}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stmod.backbones.shapes.train", description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("shapes-train"),
                   help="checkpoints, data cache and loss log (resumes from it; default: %(default)s)")
    p.add_argument("--out", type=Path, default=None,
                   help="where the model folder goes (default: WORK/model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent-factor", type=int, choices=LATENT_FACTORS, default=LATENT_FACTOR,
                   help="the autoencoder's down-sampling: 8 gives 16x16 latents (SD's factor), 4 gives 32x32, with "
                        "a convolutional UNet level above the same attention layers (default: %(default)s)")
    p.add_argument("--images", type=int, default=16000, help="world frames to train on (default: %(default)s)")
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--decoder-steps", type=int, default=8000)
    p.add_argument("--unet-steps", type=int, default=3200)
    p.add_argument("--unet-lr", type=_float_from(0, inclusive=False), default=1e-3)
    p.add_argument("--controlnet-steps", type=int, default=4000,
                   help="ControlNet steps (default: %(default)s; at 800 it had not yet learned to use its edges: "
                        "the zero convolutions wake up after about 1 000)")
    p.add_argument("--base-model", type=Path, default=None,
                   help="an exported shapes model folder: train only the ControlNet on top of it (its VAE, UNet "
                        "and text encoder are kept) and export it with the ControlNet added")
    p.add_argument("--object-weight", type=_float_from(0, inclusive=True), default=4.0,
                   help="extra loss weight on the pixels (autoencoder) and latent cells (UNet) that show an "
                        "object (default: %(default)s)")
    p.add_argument("--grounding-weight", type=_float_from(0, inclusive=True), default=1.0,
                   help="weight of the token-grounding losses beside the diffusion loss; 0 turns them off "
                        "(default: %(default)s)")
    p.add_argument("--stages", type=lambda v: set(v.split(",")),
                   default={"vae", "decoder", "unet", "controlnet", "export"},
                   help="comma-separated subset of vae,decoder,unet,controlnet,export (default: all); the vae stage, "
                        "which all others need, always runs or loads; a finished stage is loaded from its "
                        "checkpoint")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    return p


def _load_world(work: Path, cfg: TrainConfig, workers: int) -> WorldFrames:
    """The captioned frames, their object masks and word cells, rendered once and cached in ``work``."""
    data_file = work / f"world-{cfg.seed}-{cfg.images}-x{cfg.latent_factor}.npz"
    if data_file.exists():
        with np.load(data_file) as data:
            if "word_cells" in data:  # a cache from before the grounding targets is rendered again
                objects = np.unpackbits(data["objects"], axis=-1, count=IMAGE_SIZE).astype(bool)
                return WorldFrames(images=data["images"], captions=list(data["captions"]), objects=objects,
                                   word_cells=data["word_cells"])
    frames = make_dataset(cfg.images + 64, cfg.seed, workers=workers, latent_factor=cfg.latent_factor)
    np.savez(data_file.with_suffix(".tmp.npz"), images=frames.images, captions=np.array(frames.captions),
             objects=np.packbits(frames.objects, axis=-1), word_cells=frames.word_cells)
    os.replace(data_file.with_suffix(".tmp.npz"), data_file)
    return frames


def _decoder_beside_unet(args: argparse.Namespace, work: Path) -> subprocess.Popen | None:
    """Start the decoder stage in a child process on one thread, to run beside the UNet stage (the
    two are independent: the decoder stage leaves the encoder's latents as they are); ``None`` when
    there is one thread, or nothing left for the decoder to do."""
    state = work / "decoder.ckpt"
    if args.threads < 2 or not {"decoder", "unet"} <= args.stages or \
            (state.exists() and torch.load(state, weights_only=False)["step"] >= args.decoder_steps):
        return None
    argv = [sys.executable, "-m", "stmod.backbones.shapes.train", "--work", str(work), "--stages", "vae,decoder",
            "--threads", "1", "--seed", str(args.seed), "--images", str(args.images),
            "--vae-steps", str(args.vae_steps), "--decoder-steps", str(args.decoder_steps),
            "--latent-factor", str(args.latent_factor),
            "--object-weight", str(args.object_weight)]
    print(f"train: the decoder stage runs beside the UNet stage; its progress goes to {work / 'decoder.log'}",
          file=sys.stderr)
    with open(work / "decoder.log", "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def _wait(child: subprocess.Popen | None, work: Path) -> None:
    if child is not None and child.wait() != 0:
        raise SystemExit(f"train: the decoder stage failed (exit {child.returncode}); see {work / 'decoder.log'}")


def _base_latent_factor(base: Path) -> int:
    """The down-sampling factor of the autoencoder in the exported model folder ``base``."""
    config = base / "vae" / "config.json"
    if not (base / "model_index.json").is_file() or not config.is_file():
        raise SystemExit(f"train: --base-model {base} is not an exported shapes model folder (no model_index.json "
                         "or vae/config.json)")
    return 2 ** (len(json.loads(config.read_text(encoding="utf-8"))["block_out_channels"]) - 1)


def _on_base_model(args: argparse.Namespace, cfg: TrainConfig, work: Path, out: Path, data: WorldFrames,
                   argv: list[str] | None) -> int:
    """``--base-model``: the ControlNet stage alone on top of an exported model, exported beside it."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    base: Path = args.base_model  # checked by _base_latent_factor, before the frames were rendered
    manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    latents = encode_latents(vae, data.images) * vae.config.scaling_factor
    controlnet = build_controlnet(unet, cfg.seed)
    seconds = train_controlnet(controlnet, unet, text_encoder, tokenizer, latents, data, edge_maps(data.images), cfg,
                               work)
    info = dict(manifest)
    info.pop("files", None)
    info["controlnet"] = {
        "command": "python -m stmod.backbones.shapes.train " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "steps": cfg.controlnet_steps, "batch": cfg.controlnet_batch, "lr": cfg.controlnet_lr,
        "caption_dropout": CONTROL_CAPTION_DROPOUT, "threads": args.threads, "seconds": round(seconds, 1),
    }
    export(out, vae, unet, text_encoder, tokenizer, info, controlnet=controlnet, base=base)
    print(f"train: wrote {out} (the ControlNet took {seconds / 60:.1f} min)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(args)
    if args.base_model is not None:  # the word cells are rendered on the base model's latent grid
        cfg.latent_factor = _base_latent_factor(args.base_model)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or work / "model"
    data, held_out = _load_world(work, cfg, max(1, args.threads)).split(64)
    if args.base_model is not None:
        return _on_base_model(args, cfg, work, out, data, argv)

    vae, unet, text_encoder, tokenizer = build_models(work / "tokenizer", cfg.seed, cfg.latent_factor)
    seconds = {"vae": _fit_autoencoder(vae, data.images, data.objects, cfg, work, stage="vae", steps=cfg.vae_steps,
                                       lr=cfg.vae_lr)}
    # The UNet learns on the encoder's latents, which the decoder stage leaves as they are.
    latents = encode_latents(vae, data.images) if {"unet", "controlnet", "export"} & args.stages else None
    child = _decoder_beside_unet(args, work)
    try:
        if latents is not None:
            scaling = float(1.0 / latents.std())
            torch.set_num_threads(max(1, args.threads - (child is not None)))
            ema, seconds["unet"] = train_unet(unet, text_encoder, tokenizer, latents * scaling, data, cfg, work)
        _wait(child, work)
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
    if "decoder" in args.stages or "export" in args.stages:
        seconds["decoder"] = _fit_autoencoder(vae, data.images, data.objects, cfg, work, stage="decoder",
                                              steps=cfg.decoder_steps, lr=cfg.decoder_lr)
    recon = reconstruct(vae, held_out.images)  # one pass for both held-out figures
    as_uint8 = ((recon.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    psnr = _psnr(recon, _to_tensor(held_out.images))
    fidelity = colour_fidelity(held_out.images, as_uint8, held_out.objects)
    print(f"train: vae held-out PSNR {psnr:.2f} dB; object colours kept: "
          + ", ".join(f"{k} {v:.2f}" for k, v in fidelity.items()), file=sys.stderr)
    if latents is None or not {"controlnet", "export"} & args.stages:
        return 0
    vae.register_to_config(scaling_factor=scaling)
    ema.copy_to(unet.parameters())  # the ControlNet learns beside the UNet that ships
    torch.set_num_threads(args.threads)  # the decoder's child process has finished
    controlnet = build_controlnet(unet, cfg.seed)
    seconds["controlnet"] = train_controlnet(controlnet, unet, text_encoder, tokenizer, latents * scaling, data,
                                             edge_maps(data.images), cfg, work)
    if "export" not in args.stages:
        return 0
    info = {
        "model": "shapes",
        "command": "python -m stmod.backbones.shapes.train " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "config": cfg.as_dict(),
        "threads": args.threads,
        "stage_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "vae_psnr_db": round(psnr, 2),
        "vae_colour_fidelity": fidelity,
        "latent_scaling_factor": scaling,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                     "transformers": __import__("transformers").__version__},
    }
    export(out, vae, unet, text_encoder, tokenizer, info, controlnet=controlnet)
    print(f"train: wrote {out}; stages took {', '.join(f'{k} {v / 60:.1f} min' for k, v in seconds.items())}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
