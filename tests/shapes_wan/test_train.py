"""The training command of the ``shapes-wan`` model, end to end on a few clips and steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stmod.backbones.shapes import verify_model
from stmod.backbones.shapes_wan import data, train
from stmod.testing import fresh_plugin_manager

#: Tiny: 5-frame clips (2 latent frames), 32-pixel autoencoder crops, a checkpoint every step.
ARGV = ["--clips", "3", "--held-out", "1", "--frames", "5", "--vae-steps", "2", "--decoder-steps", "2", "--vae-batch", "1", "--vae-crop", "32",
        "--steps", "3", "--batch", "2", "--checkpoint-every", "1", "--threads", "1"]


def test_latent_groups_follow_the_vae_time_compression() -> None:
    assert data.latent_groups(1) == [[0]]
    assert data.latent_groups(9) == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]


def test_clips_carry_per_latent_frame_targets_in_line_with_their_captions() -> None:
    clips = data.make_clips(4, seed=2, frames=5)
    assert clips.images.shape == (4, 5, 128, 128, 3) and clips.objects.shape == (4, 2, 16, 16)
    assert clips.word_cells.shape[:2] == (4, 2) and clips.word_cells.shape[3:] == (8, 8)
    for caption, cells, pixels in zip(clips.captions, clips.word_cells, clips.pixel_objects(np.arange(4))):
        words = caption.split()
        has_cells = cells.reshape(2, len(cells[0]), -1).any(axis=(0, 2))
        assert has_cells[len(words) - 1] and not has_cells[len(words):].any(), caption  # the background word last
        assert pixels.any()
    again = data.make_clips(4, seed=2, frames=5)
    assert again.captions == clips.captions and np.array_equal(again.images, clips.images)


def test_the_command_trains_exports_resumes_and_reproduces(tmp_path: Path, monkeypatch) -> None:
    """The exported folder loads through the ``shapes-wan`` backbone; run again in its folder every stage resumes
    as finished; a run stopped after its first transformer step and run again gives the same bytes as one that
    was not stopped, and so does a fresh run of the same command."""
    work = tmp_path / "work"
    assert train.main(["--work", str(work), *ARGV]) == 0
    manifest = verify_model(work / "model", what="shapes-wan model")
    files = manifest["files"]
    assert {"transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors", "scheduler/scheduler_config.json"} <= set(files)
    assert not [name for name in files if name.endswith((".bin", ".pt", ".ckpt"))]
    assert manifest["seed"] == 0 and manifest["threads"] == 1 and "--steps 3" in manifest["command"]
    assert set(manifest["stage_minutes"]) == {"render", "vae", "latents", "transformer", "decoder"}
    assert manifest["vae_psnr_db"] > 0 and manifest["flow_loss"] > 0 and "flow_loss_no_caption" in manifest

    backbone = fresh_plugin_manager().registry.create("backbone", "shapes-wan", {"folder": str(work / "model")})
    backbone.load()
    assert type(backbone.transformer).__name__ == "WanTransformer3DModel" and backbone.text_length == 77
    assert backbone.vae.config.z_dim == len(backbone.vae.config.latents_std)

    assert train.main(["--work", str(work), *ARGV]) == 0
    assert verify_model(work / "model")["files"] == files

    stopped = tmp_path / "stopped"
    real_update, calls = train._update, []

    def stop_after_first_transformer_step(loss, params, opt, sched) -> None:
        if len(calls) == 2 + 1:  # the two autoencoder steps and one transformer step (checkpointed) are done
            raise KeyboardInterrupt
        real_update(loss, params, opt, sched)
        calls.append(1)

    monkeypatch.setattr(train, "_update", stop_after_first_transformer_step)
    with pytest.raises(KeyboardInterrupt):
        train.main(["--work", str(stopped), *ARGV])
    monkeypatch.setattr(train, "_update", real_update)
    assert torch.load(stopped / "transformer.ckpt", weights_only=False)["step"] == 1
    assert train.main(["--work", str(stopped), *ARGV]) == 0
    assert verify_model(stopped / "model")["files"] == files, "the resumed run gave other weights"


def test_a_bad_setting_is_one_line_before_anything_is_written(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        train.main(["--work", str(tmp_path / "work"), "--frames", "8"])
    assert exit_.value.code == 2 and not (tmp_path / "work").exists()
    assert "--frames" in capsys.readouterr().err.strip().splitlines()[-1]


def test_two_threads_run_the_decoder_stage_beside_the_transformer(tmp_path: Path) -> None:
    work = tmp_path / "work"
    assert train.main(["--work", str(work), *ARGV[:-1], "2"]) == 0
    assert (work / "decoder.log").is_file()
    assert torch.load(work / "decoder.ckpt", weights_only=False)["step"] == 2
    assert verify_model(work / "model", what="shapes-wan model")["threads"] == 2
