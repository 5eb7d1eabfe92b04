"""K-Means on Wan's features: recorded at one transformer block on Wan's token grid, spread back over the clip's
frames through the VAE's time compression; a whole ``kmeans`` edit on the tiny random Wan; ``check``'s refusals."""

from __future__ import annotations

import copy
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
import yaml

from stmod.backbones.wan.attention import apply_rotary
from stmod.core.config import load_job
from stmod.core.features import FeatureRequest, InversionFeatureRecorder, TransformerBlock, reference_positions
from stmod.core.pipeline.cache import InversionCache
from stmod.core.pipeline.editor import Editor
from stmod.core.pipeline.inversion import clip_frame_rows
from stmod.core.st_layout.modulator import EngineOptions, STLayoutModulator
from stmod.core.types import ModulationConfig, ModulationInput
from stmod.testing import IdentityBackbone, fresh_plugin_manager, run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}
LATENT_FRAMES, LATENT = 3, 8  # 9 frames at 64² → 3 latent frames of 8×8 latents → 4×4 tokens each
PROMPT = "a cat and a dog"


def _record(backbone, request: FeatureRequest, block: int) -> tuple:
    """One inversion call of the tiny Wan with the recorder on; the inputs ``block``'s attention got."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(LATENT_FRAMES, 16, LATENT, LATENT, generator=generator)
    backbone.latent_frames = LATENT_FRAMES
    text = backbone.encode_text([PROMPT]).repeat(LATENT_FRAMES, 1, 1)
    modulator = STLayoutModulator(EngineOptions())  # as the inversion prepares it: no regions
    modulator.prepare(ModulationInput(masks=None, num_frames=LATENT_FRAMES, latent_size=(LATENT, LATENT),
                                      config=ModulationConfig().resolved(2), prompt=PROMPT))
    recorder = InversionFeatureRecorder([request], num_frames=LATENT_FRAMES, latent_size=(LATENT, LATENT))
    seen: dict[str, tuple] = {}
    chosen = backbone.transformer.blocks[block]
    hooks = [chosen.attn1.register_forward_pre_hook(lambda m, args: seen.setdefault("self", args)),
             chosen.attn2.register_forward_pre_hook(lambda m, args: seen.setdefault("cross", args))]
    kwargs = modulator.call_kwargs(phase="invert", step_index=0, timestep=500, branches=("cond",))
    try:
        with modulator.install(backbone.attention_models()["unet"]), modulator.record_features(recorder):
            backbone.predict_noise(x, 500, text, cross_attention_kwargs=kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return recorder.result(), seen["self"], seen["cross"]


@pytest.mark.parametrize(("block", "expected"), [(None, 1), (0, 0)])
def test_features_are_one_blocks_attention_on_the_token_grid(wan_backbone, block: int | None, expected: int) -> None:
    """The recorded rows are the chosen block's (default: the middle one, 1 of 2) attention probabilities on Wan's
    4×4 token grid per latent frame, equal to a float64 reference computed from that block's own inputs."""
    request = FeatureRequest(level=1, reference_frames=2, block=block)
    features, (hidden, _, _, rope), (hidden2, text, *_) = _record(wan_backbone, request, expected)
    maps = features.get(request)
    assert features.levels == (1,) and features.blocks == 2
    assert maps.grid == (4, 4) and maps.self_calls == 1 and maps.cross_calls == 1  # one block of two
    assert maps.self_rows.shape == (LATENT_FRAMES, 4, 4, 2 * 16) and maps.cross.shape == (LATENT_FRAMES, 4, 4, 512)

    attn1 = copy.deepcopy(wan_backbone.transformer.blocks[expected].attn1).double()
    attn2 = copy.deepcopy(wan_backbone.transformer.blocks[expected].attn2).double()
    with torch.no_grad():
        h = hidden.double()
        q, k = attn1.norm_q(attn1.to_q(h)), attn1.norm_k(attn1.to_k(h))
        q, k = (x.unflatten(2, (attn1.heads, -1)) for x in (q, k))
        cos, sin = (r.double() for r in rope)
        q, k = (apply_rotary(x, cos, sin)[0].transpose(0, 1) for x in (q, k))  # (H, f·N, d), frame-major tokens
        rows = []
        for ref in reference_positions(LATENT_FRAMES, 2):
            keys = k[:, ref * 16:(ref + 1) * 16]
            rows.append(torch.softmax(q @ keys.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1).mean(0))
        self_reference = torch.cat(rows, dim=-1).view(LATENT_FRAMES, 4, 4, -1)
        h2 = hidden2.double()
        q2 = attn2.norm_q(attn2.to_q(h2)).unflatten(2, (attn2.heads, -1))[0].transpose(0, 1)
        k2 = attn2.norm_k(attn2.to_k(text.double())).unflatten(2, (attn2.heads, -1))[0].transpose(0, 1)
        cross_reference = torch.softmax(q2 @ k2.transpose(-1, -2) / q2.shape[-1] ** 0.5, dim=-1).mean(0)
    assert torch.allclose(maps.self_rows.double(), self_reference, atol=1e-5)
    assert torch.allclose(maps.cross.double(), cross_reference.view(LATENT_FRAMES, 4, 4, -1), atol=1e-5)


def test_clip_frames_take_their_latent_frames_features(wan_backbone) -> None:
    """Clip frame i is described by latent frame ⌈i/4⌉ (the VAE's groups); one latent per frame: the same frames."""
    assert clip_frame_rows(wan_backbone, 9) == (0, 1, 1, 1, 1, 2, 2, 2, 2)
    assert clip_frame_rows(IdentityBackbone(), 4) == ()
    request = FeatureRequest(level=1, reference_frames=1)
    features, *_ = _record(wan_backbone, request, 1)
    labels = np.arange(LATENT_FRAMES)[:, None, None] * np.ones((1, 4, 4), dtype=np.int64)
    spread = attrs.evolve(features, frame_rows=clip_frame_rows(wan_backbone, 9)).per_clip_frame(labels)
    assert spread.shape == (9, 4, 4) and list(spread[:, 0, 0]) == [0, 1, 1, 1, 1, 2, 2, 2, 2]


def _job(tmp_path: Path, make_clip, tiny_wan: Path, **layout) -> Path:
    make_clip(tmp_path / "clip.mp4", frames=9, size=(64, 64))
    job = {
        "video": {"path": "clip.mp4", "frames": 9, "size": [64, 64]},
        "prompt": "a red cat and a blue dog",
        "source_prompt": PROMPT,
        "regions": {"cat": "red cat", "dog": "blue dog"},
        "layout": {"name": "kmeans", "clusters": 2, "assign": {"cat": 0, "dog": 1}, "n_init": 2, **layout},
        "backbone": {"name": "wan", "model": str(tiny_wan), "device": "cpu"},
        "steps": 2,
        "seed": 0,
        "output": "out",
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_kmeans_edit_on_wan(tmp_path: Path, make_clip, tiny_wan: Path) -> None:
    """A whole ``kmeans`` edit on the tiny Wan: features of one block per inversion step at the token grid (4×4 per
    latent frame), masks for all 9 clip frames that follow the 16-pixel token cells and change only between the
    VAE's frame groups (0 | 1-4 | 5-8)."""
    editor = Editor(fresh_plugin_manager().registry, progress=False, cache=InversionCache(tmp_path / "cache"))
    result = editor.run(load_job(_job(tmp_path, make_clip, tiny_wan)))
    masks = result.layout.masks.numpy()
    assert result.layout.names == ("cat", "dog") and masks.shape == (9, 2, 64, 64)
    assert masks[:, 0].any() and masks[:, 1].any() and not (masks[:, 0] & masks[:, 1]).any()
    for group in (range(1, 5), range(5, 9)):
        assert all(np.array_equal(masks[i], masks[group[0]]) for i in group)
    cells = masks.reshape(9, 2, 4, 16, 4, 16)
    assert np.array_equal(cells, np.broadcast_to(cells[:, :, :, :1, :, :1], cells.shape))  # whole token cells
    entry = editor.cache.load(result.run["inversion"]["key"])
    assert entry is not None and entry.features is not None and entry.features["blocks"] == 2
    (state,) = entry.features["maps"]
    assert state["request"] == [1, 3, 16] and state["grid"] == [4, 4] and state["calls"] == [2, 2]
    assert list(state["self"].shape) == [LATENT_FRAMES, 4, 4, 3 * 16]
    assert result.frames.shape == (9, 64, 64, 3)


def test_check_takes_kmeans_and_refuses_a_block_or_level_wan_has_not(tmp_path: Path, make_clip,
                                                                     tiny_wan: Path) -> None:
    assert run_cli(["check", str(_job(tmp_path, make_clip, tiny_wan))], env=ENV).exit_code == 0
    result = run_cli(["check", str(_job(tmp_path, make_clip, tiny_wan, block=2))], env=ENV)
    line = result.stderr.strip()
    assert result.exit_code == 2 and "\n" not in line, line
    assert "block: 2" in line and "blocks are 0-1" in line and "blocks.0 to blocks.1" in line, line
    result = run_cli(["check", str(_job(tmp_path, make_clip, tiny_wan, level=0))], env=ENV)
    assert result.exit_code == 2 and "level: 0" in result.stderr and "levels with attention: 1" in result.stderr


def test_transformer_block_matching() -> None:
    """A request takes its block (default: the middle one) of a transformer and, without a block, every UNet layer."""
    default, second = FeatureRequest(), FeatureRequest(block=2)
    assert [default.takes(TransformerBlock(i, 30)) for i in (14, 15, 16)] == [False, True, False]
    assert second.takes(TransformerBlock(2, 30)) and not second.takes(TransformerBlock(15, 30))
    assert default.takes(None) and not second.takes(None)
    assert FeatureRequest.from_list(second.as_list()) == second and default.as_list() == [1, 3, 16]


def test_boxes_refined_by_clusters_on_wan(tmp_path: Path, make_clip, tiny_wan: Path) -> None:
    """``boxes`` with ``refine`` clusters Wan's features too: one mask per clip frame, inside its box."""
    layout = {"name": "boxes", "boxes": {"cat": {0: [0, 0, 32, 64]}, "dog": {0: [32, 0, 64, 64]}}, "refine": 2}
    job = _job(tmp_path, make_clip, tiny_wan)
    data = yaml.safe_load(job.read_text())
    data["layout"] = layout
    job.write_text(yaml.safe_dump(data))
    editor = Editor(fresh_plugin_manager().registry, progress=False, cache=False)
    masks = editor.layout(load_job(job)).layout.masks.numpy()
    assert masks.shape == (9, 2, 64, 64) and masks[:, 0].any() and masks[:, 1].any()
    assert not masks[:, 0, :, 32:].any() and not masks[:, 1, :, :32].any()


def test_word_positions_are_the_text_rows_the_features_are_over(wan_backbone) -> None:
    """Clusters are named by the source prompt's words through ``cross`` rows over Wan's 512 text positions: a
    word's positions are its token's row of the condition (position 0 the start row umT5 lacks, zero)."""
    from stmod.core.features import word_positions

    words = word_positions(wan_backbone.tokenizer, PROMPT)
    assert words == {"a": (1, 4), "cat": (2,), "and": (3,), "dog": (5,)}
    text = wan_backbone.encode_text([PROMPT])[0]
    assert torch.count_nonzero(text[0]) == 0 and torch.count_nonzero(text[2]) > 0
    assert text.shape[0] == 512 and torch.count_nonzero(text[7:]) == 0  # 5 words and </s>: rows 1-6
