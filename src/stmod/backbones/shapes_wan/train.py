"""Train the ``shapes-wan`` model on shapes-world clips: ``python -m stmod.backbones.shapes_wan.train``.

The recipe of :mod:`stmod.backbones.shapes.train` on Wan 2.1's architecture (:mod:`.models`); each stage
resumes from its checkpoint in ``--work`` and logs to ``loss.jsonl``:

1. ``vae``: an ``AutoencoderKLWan`` (4× time, 8× space) on 5-frame windows of world clips, cropped
   (``--vae-crop``), reconstruction loss (MSE + ½ L1) weighted toward object pixels, a tiny KL term;
2. ``latents``: the distribution means of the first ``--latent-clips`` training clips (:data:`~.data.CLIP_FRAMES`
   frames), their per-channel mean and std stored in the VAE config (``latents_mean``/``latents_std``, as Wan's);
3. ``transformer``: a ``WanTransformer3DModel`` and a ``UMT5EncoderModel`` trained jointly with flow
   matching (``x_σ = (1 − σ)·x0 + σ·noise``, velocity target ``noise − x0``, σ drawn uniformly and shifted
   as the scheduler's :data:`~.models.SHIFT`), 10 % caption dropout (for classifier-free guidance), latent
   cells weighted by what shows an object, the token-grounding losses of the shapes model on every
   ``attn2`` (:mod:`.grounding`), an EMA of the transformer;
4. ``decoder``: the decoder alone, the encoder frozen (the latents do not change); with ``--threads`` ≥ 2 in
   a child process on one thread beside stage 3;
5. ``export``: a diffusers folder the ``wan`` backbone loads (``transformer/``, ``vae/``, ``text_encoder/``,
   ``tokenizer/``, ``scheduler/``; safetensors) and ``manifest.json`` (checksums, command, seed, threads,
   minutes per stage, held-out figures).

Seeded: the same command and thread count give the same bytes (``tests/shapes_wan/test_train.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stmod.backbones.shapes import grounding, world
from stmod.backbones.shapes.train import (
    CAPTION_DROPOUT, _float_from, _log, _psnr, _reconstruction_loss, _save_atomic, _update, colour_fidelity,
    file_checksums,
)
from stmod.backbones.shapes_wan.data import CLIP_FRAMES, WorldClips, make_clips
from stmod.backbones.shapes_wan.grounding import WanCrossAttentionMaps
from stmod.backbones.shapes_wan.models import SHIFT, Diffusers, build_models, text_rows, tokenize

__all__ = ["main", "flow_loss"]

#: Frames of the autoencoder's training windows (2 latent frames).
VAE_FRAMES = 5
#: σ at which the held-out flow loss is measured (each clip at each, one fixed noise).
HELD_OUT_SIGMAS = (0.25, 0.5, 0.75)


def _clip_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(B, F, H, W, 3)`` → float ``(B, 3, F, H, W)`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


# -- stage 1: the autoencoder ---------------------------------------------------------------------

def decode_unclamped(vae: Diffusers, z: torch.Tensor) -> torch.Tensor:
    """``vae.decode(z).sample`` without its final clamp to [-1, 1], for training: a clamped pixel has no
    gradient. (A first run trained through the clamp, at lr 1.5e-3, reached 14.6 dB after 1 200 steps; the
    shipped run, unclamped at lr 5e-4, 15.5 dB after 1 600 + 1 500 decoder steps: which change mattered was
    not measured.)"""
    # Adapted from diffusers models/autoencoders/autoencoder_kl_wan.py AutoencoderKLWan._decode (no tiling)
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  **({"first_chunk": True} if i == 0 else {})))
    vae.clear_cache()
    return torch.cat(frames, dim=2)


def fit_vae(vae: Diffusers, clips: WorldClips, args: argparse.Namespace, work: Path, *, stage: str = "vae") -> float:
    """Train ``vae`` in place for stage ``vae`` (all of it) or ``decoder`` (the decoder alone, the encoder
    frozen, so the transformer's latents do not change); returns the seconds the stage has taken in all its
    runs."""
    from diffusers.optimization import get_scheduler

    decoder_only = stage == "decoder"
    steps, lr = (args.decoder_steps, args.decoder_lr) if decoder_only else (args.vae_steps, args.vae_lr)
    params = [p for n, p in vae.named_parameters() if not decoder_only or n.startswith(("decoder.", "post_quant"))]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(100, steps // 10), num_training_steps=steps)
    rng = np.random.default_rng(args.seed + (11 if decoder_only else 10))
    start, seconds, ckpt = 0, 0.0, work / f"{stage}.ckpt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(state["model"]), opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        start, rng.bit_generator.state, seconds = state["step"], state["rng"], state["seconds"]
    vae.train()
    began, crop, frames = time.time() - seconds, args.vae_crop, clips.images.shape[1]
    size = clips.images.shape[2]
    for step in range(start, steps):
        idx = rng.integers(0, len(clips.images), args.vae_batch)
        first = rng.integers(0, frames - VAE_FRAMES + 1, args.vae_batch)
        ys, xs = rng.integers(0, size - crop + 1, (2, args.vae_batch))
        window = [(i, slice(f, f + VAE_FRAMES), slice(y, y + crop), slice(x, x + crop))
                  for i, f, y, x in zip(idx, first, ys, xs)]
        batch = _clip_tensor(np.stack([clips.images[i, t, y, x] for i, t, y, x in window]))
        on_object = torch.from_numpy(np.stack([clips.pixel_objects(int(i))[t, y, x] for i, t, y, x in window]))
        weight = 1.0 + args.object_weight * on_object.unsqueeze(1).float()
        with torch.set_grad_enabled(not decoder_only):
            dist = vae.encode(batch).latent_dist
        error = decode_unclamped(vae, dist.mode()) - batch
        rec = _reconstruction_loss(error, weight)
        _update(rec if decoder_only else rec + 1e-6 * dist.kl().mean(), params, opt, sched)
        if (step + 1) % 20 == 0:
            _log(work, {"stage": stage, "step": step + 1, "loss": rec.item(), "lr": sched.get_last_lr()[0],
                        "time": time.time()})
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == steps:
            _save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                          "step": step + 1, "rng": rng.bit_generator.state, "seconds": time.time() - began}, ckpt)
    vae.eval()
    return time.time() - began if start < steps else seconds


@torch.no_grad()
def encode_clips(vae: Diffusers, images: np.ndarray) -> torch.Tensor:
    """Distribution means (unnormalised) ``(N, z, f, h, w)`` of clips ``(N, F, H, W, 3)``, one clip a call."""
    return torch.cat([vae.encode(_clip_tensor(images[i:i + 1])).latent_dist.mean for i in range(len(images))])


def _latents(vae: Diffusers, clips: WorldClips, work: Path, key: str) -> tuple[torch.Tensor, float]:
    """The training clips' latents, encoded once per trained VAE and cached in ``work``; and the seconds."""
    path = work / f"latents-{key}.pt"
    if path.exists():
        state = torch.load(path, weights_only=False)
        return state["latents"], state["seconds"]
    began = time.time()
    latents = encode_clips(vae, clips.images)
    seconds = time.time() - began
    _save_atomic({"latents": latents, "seconds": seconds}, path)
    return latents, seconds


# -- stage 3: transformer + text encoder ----------------------------------------------------------

def flow_loss(pred: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor, cell_weight: torch.Tensor) -> torch.Tensor:
    """Velocity MSE (target ``noise − x0``), latent cells weighted by ``cell_weight`` ``(B, 1, f, h, w)``."""
    per_sample = (cell_weight * (pred - (noise - x0)).pow(2)).mean(dim=(1, 2, 3, 4)) / cell_weight.mean(dim=(1, 2, 3, 4))
    return per_sample.mean()


def _sigmas(count: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(count, generator=gen)
    return SHIFT * u / (1 + (SHIFT - 1) * u)


def _noisy(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, 1, 1, 1, 1)
    return (1 - s) * x0 + s * noise


def _check_one_token_per_word(mask: torch.Tensor, captions: list[str]) -> None:
    lengths = mask.sum(dim=1) - 1  # the end token
    words = torch.tensor([len(c.split()) for c in captions])
    if not torch.equal(lengths, words):
        bad = int((lengths != words).nonzero()[0])
        raise RuntimeError(f"caption {captions[bad]!r} is not one token per word; the grounding targets would slip")


def train_transformer(transformer: Diffusers, text_encoder: Any, tokenizer: Any, latents: torch.Tensor,
                      clips: WorldClips, args: argparse.Namespace, work: Path) -> tuple[Any, float]:
    """Train ``transformer`` and ``text_encoder`` in place on normalised ``latents`` ``(N, z, f, h, w)``; returns
    the transformer's EMA and the seconds the stage has taken in all its runs."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    ids, mask = tokenize(tokenizer, clips.captions + [""])
    _check_one_token_per_word(mask[:-1], clips.captions)
    frames = latents.shape[2]
    cell_weight = 1.0 + args.object_weight * torch.from_numpy(clips.objects).float().div(255).unsqueeze(1)
    targets = torch.from_numpy(clips.word_cells)  # (N, f, W, s, s) uint8
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(200, args.steps // 10), num_training_steps=args.steps)
    ema = EMAModel(transformer.parameters(), decay=0.999, use_ema_warmup=True)
    gen = torch.Generator().manual_seed(args.seed + 20)
    start, seconds, ckpt = 0, 0.0, work / "transformer.ckpt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        transformer.load_state_dict(state["transformer"]), text_encoder.load_state_dict(state["text"])
        opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        ema.load_state_dict(state["ema"])
        start, seconds = state["step"], state["seconds"]
        gen.set_state(state["gen"])
    transformer.train(), text_encoder.train()
    began, maps = time.time() - seconds, WanCrossAttentionMaps()
    with maps.install(transformer) if args.grounding_weight > 0 else contextlib.nullcontext():
        for step in range(start, args.steps):
            idx = torch.randint(0, len(latents), (args.batch,), generator=gen)
            dropped = torch.rand(args.batch, generator=gen) < CAPTION_DROPOUT
            rows = torch.where(dropped[:, None], len(ids) - 1, idx[:, None]).squeeze(1)
            x0, noise = latents[idx], torch.randn(latents[idx].shape, generator=gen)
            sigma = _sigmas(args.batch, gen)
            text = text_rows(text_encoder, ids[rows], mask[rows])
            pred = transformer(_noisy(x0, noise, sigma), sigma * 1000, encoder_hidden_states=text,
                               return_dict=False)[0]
            loss = flow = flow_loss(pred, noise, x0, cell_weight[idx])
            token = pixel = cell = torch.zeros(())
            if args.grounding_weight > 0:
                word = targets[idx].float().div(255).flatten(0, 1)                    # (B·f, W, s, s)
                grounded = (word.flatten(2).amax(-1) > 0) & ~dropped.repeat_interleave(frames)[:, None]
                token, pixel, cell = grounding.grounding_losses(maps.take(frames), word, grounded)
                loss = flow + args.grounding_weight * (token + pixel + cell)
            _update(loss, params, opt, sched)
            ema.step(transformer.parameters())
            if (step + 1) % 20 == 0:
                _log(work, {"stage": "transformer", "step": step + 1, "loss": flow.item(), "token": token.item(),
                            "pixel": pixel.item(), "cell": cell.item(), "lr": sched.get_last_lr()[0],
                            "time": time.time()})
            if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
                _save_atomic({"transformer": transformer.state_dict(), "text": text_encoder.state_dict(),
                              "opt": opt.state_dict(), "sched": sched.state_dict(), "ema": ema.state_dict(),
                              "step": step + 1, "gen": gen.get_state(), "seconds": time.time() - began}, ckpt)
    transformer.eval(), text_encoder.eval()
    return ema, (time.time() - began if start < args.steps else seconds)


# -- held-out figures -----------------------------------------------------------------------------

@torch.no_grad()
def vae_figures(vae: Diffusers, clips: WorldClips) -> dict[str, Any]:
    """PSNR (dB) of the held-out clips through the autoencoder (distribution mean) and the share of object
    pixels of each palette colour that keep it."""
    truth = _clip_tensor(clips.images)
    recon = torch.cat([vae.decode(vae.encode(truth[i:i + 1]).latent_dist.mean).sample for i in range(len(truth))])
    as_uint8 = ((recon.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 4, 1).numpy().astype(np.uint8)
    size = clips.images.shape[2:4]
    objects = clips.pixel_objects(np.arange(len(clips.images))).reshape(-1, *size)
    fidelity = colour_fidelity(clips.images.reshape(-1, *size, 3), as_uint8.reshape(-1, *size, 3), objects)
    return {"vae_psnr_db": round(_psnr(recon, truth), 2), "vae_colour_fidelity": fidelity}


@torch.no_grad()
def held_out_flow_loss(transformer: Diffusers, text_encoder: Any, tokenizer: Any, latents: torch.Tensor,
                       clips: WorldClips, seed: int) -> dict[str, float]:
    """Velocity MSE on held-out clips with their captions at each of :data:`HELD_OUT_SIGMAS` (one fixed
    noise per clip): plain, on object cells only, and with the caption dropped (what the words add)."""
    ids, mask = tokenize(tokenizer, clips.captions + [""])
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed + 99))
    objects = torch.from_numpy(clips.objects >= 128).unsqueeze(1).expand_as(latents)
    sums = {"flow_loss": 0.0, "flow_loss_objects": 0.0, "flow_loss_no_caption": 0.0}
    for s in HELD_OUT_SIGMAS:
        sigma = torch.full((len(latents),), s)
        noisy = _noisy(latents, noise, sigma)
        for key, rows in (("flow_loss", torch.arange(len(latents))), ("flow_loss_no_caption", torch.full(
                (len(latents),), len(ids) - 1))):
            pred = transformer(noisy, sigma * 1000, encoder_hidden_states=text_rows(text_encoder, ids[rows],
                               mask[rows]), return_dict=False)[0]
            error = (pred - (noise - latents)).pow(2)
            sums[key] += error.mean().item() / len(HELD_OUT_SIGMAS)
            if key == "flow_loss":
                sums["flow_loss_objects"] += error[objects].mean().item() / len(HELD_OUT_SIGMAS)
    return {k: round(v, 4) for k, v in sums.items()}


# -- stage 4: export ------------------------------------------------------------------------------

def export(out: Path, vae: Diffusers, transformer: Diffusers, text_encoder: Any, tokenizer: Any, info: dict) -> None:
    """Write the diffusers folder and its manifest to ``out`` (replacing a folder this script wrote)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from stmod.core.errors import NotOwnedError
    from stmod.core.io.ownership import atomic_folder, clean_stale_temporaries

    clean_stale_temporaries(out.parent, name=out.name)
    try:
        with atomic_folder(out, kind="shapes-wan model") as tmp:
            transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
            vae.save_pretrained(tmp / "vae", safe_serialization=True)
            text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "tokenizer")
            scheduler: Diffusers = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
            scheduler.save_pretrained(tmp / "scheduler")
            info = dict(info, files=file_checksums(tmp))
            (tmp / "manifest.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    except NotOwnedError as exc:
        raise SystemExit(f"train: --out {out} exists and is not a shapes-wan model folder; choose another ({exc})") from exc


# -- command --------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stmod.backbones.shapes_wan.train", description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("shapes-wan-train"),
                   help="checkpoints, data cache and loss log (resumes from it; default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="where the model folder goes (default: WORK/model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clips", type=int, default=1200, help="training clips (default: %(default)s)")
    p.add_argument("--frames", type=int, default=CLIP_FRAMES, choices=(5, 9, 13, 17),
                   help="frames of a training clip, 1 + 4k (default: %(default)s)")
    p.add_argument("--held-out", type=int, default=32, help="clips kept out for the figures (default: %(default)s)")
    p.add_argument("--vae-steps", type=int, default=1600)
    p.add_argument("--vae-batch", type=int, default=2)
    p.add_argument("--vae-crop", type=int, default=64, help="side of the autoencoder's training crops")
    p.add_argument("--vae-lr", type=_float_from(0, inclusive=False), default=5e-4)
    p.add_argument("--decoder-steps", type=int, default=1500,
                   help="then the decoder alone, the encoder frozen (default: %(default)s)")
    p.add_argument("--decoder-lr", type=_float_from(0, inclusive=False), default=1e-3)
    p.add_argument("--only-decoder", action="store_true",
                   help="run the autoencoder stages alone (what a run with 2+ threads starts beside the transformer)")
    p.add_argument("--latent-clips", type=int, default=500,
                   help="the transformer trains on the first this many training clips (encoding a clip takes "
                        "about as long as 1.5 transformer steps; default: %(default)s)")
    p.add_argument("--steps", type=int, default=1500, help="transformer steps (default: %(default)s)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=_float_from(0, inclusive=False), default=6e-4)
    p.add_argument("--object-weight", type=_float_from(0, inclusive=True), default=4.0,
                   help="extra loss weight on object pixels (autoencoder) and cells (transformer)")
    p.add_argument("--grounding-weight", type=_float_from(0, inclusive=True), default=1.0,
                   help="weight of the token-grounding losses; 0 turns them off")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads and render workers (default: %(default)s)")
    return p


def _load_clips(work: Path, args: argparse.Namespace) -> WorldClips:
    """The captioned clips, rendered once and cached in ``work``."""
    path = work / f"clips-{args.seed}-{args.clips + args.held_out}{'' if args.frames == CLIP_FRAMES else f'-{args.frames}'}.npz"
    if path.exists():
        with np.load(path) as data:
            return WorldClips(images=data["images"], captions=list(data["captions"]), pixels=data["pixels"],
                              objects=data["objects"], word_cells=data["word_cells"])
    clips = make_clips(args.clips + args.held_out, args.seed, frames=args.frames, workers=args.threads)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=clips.images, captions=np.array(clips.captions), pixels=clips.pixels,
             objects=clips.objects, word_cells=clips.word_cells)
    os.replace(tmp, path)
    return clips


def _decoder_beside(args: argparse.Namespace, work: Path) -> subprocess.Popen | None:
    """With two or more threads, the decoder stage in a child process on one thread beside the transformer
    stage (the two are independent: the encoder, and so the latents, stay as they are); else ``None``."""
    state = work / "decoder.ckpt"
    if args.threads < 2 or args.decoder_steps == 0 or \
            (state.exists() and torch.load(state, weights_only=False)["step"] >= args.decoder_steps):
        return None
    argv = [sys.executable, "-m", "stmod.backbones.shapes_wan.train", "--work", str(work), "--only-decoder",
            "--threads", "1"]
    for name in ("seed", "clips", "held_out", "frames", "vae_steps", "vae_batch", "vae_crop", "vae_lr",
                 "decoder_steps", "decoder_lr", "object_weight", "checkpoint_every"):
        argv += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    print(f"train: the decoder stage runs beside the transformer stage; see {work / 'decoder.log'}", file=sys.stderr)
    with open(work / "decoder.log", "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    began = time.time()
    train, held_out = _load_clips(work, args).split(args.held_out)
    seconds = {"render": time.time() - began}
    vae, transformer, text_encoder, tokenizer = build_models(args.seed)
    seconds["vae"] = fit_vae(vae, train, args, work)
    if args.only_decoder:
        fit_vae(vae, train, args, work, stage="decoder")
        return 0
    frames = "" if args.frames == CLIP_FRAMES else f"-{args.frames}"
    # the autoencoder stages train on every clip, the transformer on the first --latent-clips
    clips = train.split(len(train.images) - args.latent_clips)[0] if args.latent_clips < len(train.images) else train
    raw, seconds["latents"] = _latents(vae, clips, work, f"{args.seed}-{len(clips.images)}{frames}-{args.vae_steps}")
    mean, std = raw.mean(dim=(0, 2, 3, 4)), raw.std(dim=(0, 2, 3, 4))
    vae.register_to_config(latents_mean=[round(float(v), 5) for v in mean],
                           latents_std=[round(float(v), 5) for v in std])
    shape = (1, -1, 1, 1, 1)
    mean, std = torch.tensor(vae.config.latents_mean).view(shape), torch.tensor(vae.config.latents_std).view(shape)
    child = _decoder_beside(args, work)
    try:
        torch.set_num_threads(max(1, args.threads - (child is not None)))
        ema, seconds["transformer"] = train_transformer(transformer, text_encoder, tokenizer, (raw - mean) / std,
                                                        clips, args, work)
        if child is not None and child.wait() != 0:
            raise SystemExit(f"train: the decoder stage failed (exit {child.returncode}); see {work / 'decoder.log'}")
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
    seconds["decoder"] = fit_vae(vae, train, args, work, stage="decoder")
    ema.copy_to(transformer.parameters())
    figures = vae_figures(vae, held_out)
    figures.update(held_out_flow_loss(transformer, text_encoder, tokenizer, (encode_clips(vae, held_out.images) - mean)
                                      / std, held_out, args.seed))
    print("train: held-out " + json.dumps(figures), file=sys.stderr)
    info = {
        "model": "shapes-wan",
        "command": "python -m stmod.backbones.shapes_wan.train " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("work", "out")},
        "seed": args.seed,
        "threads": args.threads,
        "shift": SHIFT,
        "stage_minutes": {k: round(v / 60, 2) for k, v in seconds.items()},
        "held_out_clips": args.held_out,
        **figures,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
                     "transformers": __import__("transformers").__version__},
    }
    out = args.out or work / "model"
    export(out, vae, transformer, text_encoder, tokenizer, info)
    print(f"train: wrote {out}; stages took " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
