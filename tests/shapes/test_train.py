"""The training command of the ``shapes`` model, end to end on a few frames and steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stmod.backbones.shapes import train, verify_model, world
from stmod.testing import fresh_plugin_manager


def _frames(count: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    frames = [world.render(world.random_scene(rng), 0.0) for _ in range(count)]
    return np.stack([f.image for f in frames]), np.stack([f.objects.any(axis=0) for f in frames])


def test_colour_fidelity_counts_object_pixels_that_keep_their_palette_colour() -> None:
    images, objects = _frames()
    assert set(train.colour_fidelity(images, images, objects).values()) == {1.0}
    grey = train.colour_fidelity(images, np.full_like(images, 128), objects)
    assert grey and set(grey.values()) == {0.0}
    # Swapping red and blue channels loses the colours that are not symmetric in them.
    swapped = train.colour_fidelity(images, images[..., ::-1], objects)
    assert swapped.get("white", 1.0) == 1.0 and min(swapped.values()) == 0.0


def test_latent_shares_are_the_object_share_of_each_cell() -> None:
    objects = np.zeros((1, 16, 16), bool)
    objects[0, :8, :4] = True
    shares = train.latent_shares(objects)
    assert shares.shape == (1, 2, 2) and shares[0].tolist() == [[0.5, 0.0], [0.0, 0.0]]
    finer = train.latent_shares(objects, 4)
    assert finer.shape == (1, 4, 4) and finer[0, :2, 0].tolist() == [1.0, 1.0] and finer.sum() == 2.0


def test_word_cells_count_the_same_pixels_on_either_latent_grid() -> None:
    """The word cells of a frame count each word's pixels: on the ×4 grid (32×32, 16 pixels a cell) they add up
    to the ×8 grid's (16×16, 64 pixels a cell), cell by cell."""
    coarse = train.make_dataset(6, seed=2, workers=1)
    fine = train.make_dataset(6, seed=2, workers=1, latent_factor=4)
    assert fine.captions == coarse.captions and fine.word_cells.shape[-2:] == (32, 32)
    n, words = coarse.word_cells.shape[:2]
    pooled = fine.word_cells.astype(int).reshape(n, words, 16, 2, 16, 2).sum(axis=(3, 5))
    assert np.array_equal(pooled, coarse.word_cells.astype(int))
    targets, grounded = fine.word_targets()
    assert float(targets.max()) == 1.0 and torch.equal(grounded, coarse.word_targets()[1])


@pytest.mark.parametrize("factor", train.LATENT_FACTORS)
def test_the_models_of_each_latent_factor_fit_together(tmp_path: Path, factor: int) -> None:
    """×8: 16×16 latents; ×4: 32×32. Either way the UNet's attention layers are at 16², 8² and 4² (what the
    grounding losses and the ``videograin`` preset's layer choice expect), and the ControlNet brings a frame's
    edges to the latents' size and adds residuals the UNet takes."""
    from stmod.backbones.shapes import grounding
    vae, unet, text_encoder, tokenizer = train.build_models(tmp_path / "tok", seed=0, latent_factor=factor)
    side = train.IMAGE_SIZE // factor
    images = torch.zeros(2, 3, train.IMAGE_SIZE, train.IMAGE_SIZE)
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean
        assert latents.shape == (2, 4, side, side)
        maps = grounding.CrossAttentionMaps(sides=(32, 16, 8, 4, 2))
        text = text_encoder(tokenizer(["red disc"] * 2, padding="max_length", max_length=77,
                                      return_tensors="pt").input_ids)[0]
        controlnet = train.build_controlnet(unet, seed=0)
        with maps.install(unet):
            down, mid = controlnet(latents, 500, encoder_hidden_states=text, controlnet_cond=images, return_dict=False)
            out = unet(latents, 500, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)
            sides = {round(m.shape[-2] ** 0.5) for m in maps.take()}
        assert out.sample.shape == latents.shape
    # the middle block adds a 2² layer at ×8; nothing attends at 32²
    assert set(grounding.GROUNDED_SIDES) <= sides <= {16, 8, 4, 2}
    with pytest.raises(ValueError, match="latent_factor 2"):
        train.build_models(tmp_path / "tok2", seed=0, latent_factor=2)


def test_word_cells_line_up_with_the_caption_words() -> None:
    """Word ``i`` of a caption owns ``word_cells[i]``: describing words have cells (unless hidden),
    articles and joining words none; some captions go without articles."""
    frames = train.make_dataset(40, seed=1, workers=1)
    joining = {"a", "an", "and", "on", "with", "two"}
    for caption, cells in zip(frames.captions, frames.word_cells):
        words = caption.split()
        has_cells = cells.reshape(len(cells), -1).any(axis=1)
        assert not has_cells[len(words):].any()
        assert not any(has_cells[i] for i, w in enumerate(words) if w in joining), caption
        assert has_cells[len(words) - 1], caption  # the background
    bare = [c for c in frames.captions if not c.startswith(("a ", "an ", "two "))]
    assert 0 < len(bare) < len(frames.captions)


def test_a_caption_that_is_not_one_token_per_word_is_refused() -> None:
    ids = torch.tensor([[9, 1, 2, 3, 5, 5], [9, 1, 2, 5, 5, 5]])
    train._check_one_token_per_word(ids, ["red disc on", "red disc"], end_token=5)
    with pytest.raises(RuntimeError, match="'red disc on grass' is not one token per word"):
        train._check_one_token_per_word(ids, ["red disc on", "red disc on grass"], end_token=5)


def test_the_command_trains_exports_and_resumes(tmp_path: Path) -> None:
    """Two threads: the decoder stage runs in a child process beside the UNet stage. The exported
    folder loads through the ``shapes`` backbone; run again, every stage resumes as finished and the
    same weights come out; run afresh in another folder, the same weights come out too."""
    work = tmp_path / "work"
    argv = ["--work", str(work), "--images", "40", "--vae-steps", "3", "--decoder-steps", "2",
            "--unet-steps", "3", "--controlnet-steps", "2", "--object-weight", "2", "--threads", "2"]
    assert train.main(argv) == 0
    manifest = verify_model(work / "model")
    assert manifest["config"]["unet_steps"] == 3 and manifest["config"]["object_weight"] == 2.0
    assert manifest["config"]["grounding_weight"] == 1.0
    assert set(manifest["vae_colour_fidelity"]) <= set(world.COLOURS)
    assert set(manifest["stage_seconds"]) == {"vae", "unet", "decoder", "controlnet"}
    assert any(name.startswith("controlnet-canny/") and name.endswith(".safetensors") for name in manifest["files"])
    assert (work / "decoder.log").is_file()
    assert torch.load(work / "decoder.ckpt", weights_only=False)["step"] == 2

    backbone = fresh_plugin_manager().registry.create("backbone", "shapes", {"folder": str(work / "model")})
    backbone.load(controlnets=[backbone.controlnet_location("canny", None)])
    assert type(backbone.unet).__name__ == "UNet2DConditionModel"
    assert [type(net).__name__ for net in backbone.controlnets.values()] == ["ControlNetModel"]

    assert train.main(argv[:-1] + ["1"]) == 0
    assert verify_model(work / "model")["files"] == manifest["files"]

    again = tmp_path / "again"
    assert train.main(["--work", str(again), *argv[2:]]) == 0
    assert verify_model(again / "model")["files"] == manifest["files"], "the same command gave other weights"


@pytest.mark.parametrize(("flag", "value"), [("--object-weight", "-1"), ("--unet-lr", "0"),
                                           ("--grounding-weight", "-0.5")])
def test_a_bad_loss_setting_is_one_line_before_anything_is_written(tmp_path: Path, capsys, flag, value) -> None:
    with pytest.raises(SystemExit) as exit_:
        train.main(["--work", str(tmp_path / "work"), flag, value])
    assert exit_.value.code == 2 and not (tmp_path / "work").exists()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in error and value in error


def test_base_model_trains_the_controlnet_alone_and_keeps_the_rest(tmp_path: Path) -> None:
    """``--base-model``: the exported folder holds the base model's VAE, UNet, text encoder and tokenizer
    byte for byte, and the new ControlNet beside them."""
    from stmod.backbones.shapes import SHIPPED_MODEL

    work = tmp_path / "work"
    assert train.main(["--work", str(work), "--base-model", str(SHIPPED_MODEL), "--images", "8",
                       "--controlnet-steps", "2", "--threads", "1"]) == 0
    base, new = verify_model(SHIPPED_MODEL)["files"], verify_model(work / "model")
    kept = {k: v for k, v in new["files"].items() if not k.startswith("controlnet-canny/")}
    assert kept == {k: v for k, v in base.items() if not k.startswith("controlnet-canny/")}
    assert new["controlnet"]["steps"] == 2 and "--base-model" in new["controlnet"]["command"]


def test_a_x4_model_trains_exports_and_edits_on_32x32_latents(tmp_path: Path) -> None:
    """``--latent-factor 4`` end to end: the folder loads through the ``shapes`` backbone and encodes frames to
    32×32 latents; ``--base-model`` on it renders the word cells on its grid and keeps its files."""
    work = tmp_path / "work"
    assert train.main(["--work", str(work), "--latent-factor", "4", "--images", "16", "--vae-steps", "2",
                       "--decoder-steps", "1", "--unet-steps", "2", "--controlnet-steps", "1", "--threads", "1"]) == 0
    manifest = verify_model(work / "model")
    assert manifest["config"]["latent_factor"] == 4
    backbone = fresh_plugin_manager().registry.create("backbone", "shapes", {"folder": str(work / "model")})
    backbone.load(controlnets=[backbone.controlnet_location("canny", None)])
    frames = torch.zeros(2, 3, train.IMAGE_SIZE, train.IMAGE_SIZE)
    assert backbone.encode(frames).shape[-2:] == (32, 32)

    more = tmp_path / "more"
    assert train.main(["--work", str(more), "--base-model", str(work / "model"), "--images", "8",
                       "--controlnet-steps", "1", "--threads", "1"]) == 0
    assert list(more.glob("world-*-x4.npz"))
    kept = verify_model(more / "model")["files"]
    assert {k: v for k, v in kept.items() if not k.startswith("controlnet-canny/")} == \
        {k: v for k, v in manifest["files"].items() if not k.startswith("controlnet-canny/")}


def test_a_base_model_that_is_not_a_shapes_folder_is_refused_before_any_frame_is_rendered(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    with pytest.raises(SystemExit, match="--base-model .*other is not an exported shapes model folder"):
        train.main(["--work", str(tmp_path / "work"), "--base-model", str(tmp_path / "other"), "--images", "8"])
    assert not list((tmp_path / "work").glob("world-*.npz"))
