"""The ``flatten`` extension: its hooks on a layer, through the editor on the tiny backbone, its store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from stmod.core.config import load_job
from stmod.core.errors import ConfigError
from stmod.core.pipeline.cache import InversionCache
from stmod.core.pipeline.editor import Editor
from stmod.core.trajectories import level_trajectories, trajectory_attention
from stmod.plugins.extensions import flatten
from stmod.plugins.extensions.flatten import FlattenExtension, FlattenOptions
from stmod.testing import fresh_plugin_manager


def _layer_and_extension(frames: int, grid: tuple[int, int], channels: int = 16, heads: int = 2):
    torch.manual_seed(0)
    attn = Attention(channels, heads=heads, dim_head=channels // heads).eval()
    extension = FlattenExtension(FlattenOptions(levels=(0,), neighbours=(1,)))
    flows = np.random.default_rng(1).standard_normal((frames - 1, grid[0] * 8, grid[1] * 8, 2)).astype(np.float32) * 8
    extension._levels = {0: level_trajectories(flows, grid=grid, radius=1, seed=0, level=0)}
    extension._frames, extension._latent = frames, grid
    return attn, extension


def test_hooks_replace_the_attention_output_before_to_out_and_are_removed() -> None:
    """Non-square grid, two CFG branches: the layer's output is ``to_out`` of the trajectory attention
    over the full attention output, with ``to_q(x)``/``to_k(x)``; an earlier hook replacing ``to_q``'s
    output (as PnP injection does) is what FLATTEN reads; nothing is left on the layer afterwards."""
    frames, grid, heads = 3, (2, 5), 2
    attn, extension = _layer_and_extension(frames, grid, heads=heads)
    x = torch.randn(2 * frames, 10, 16)
    injected = torch.randn(2 * frames, 10, 16)
    earlier = attn.to_q.register_forward_hook(lambda module, args, out: injected)
    with torch.no_grad(), extension.install(torch.nn.Sequential(attn), role="unet"):
        got = attn(x)
    earlier.remove()
    with torch.no_grad():
        q, k, v = injected, attn.to_k(x), attn.to_v(x)
        split = [t.view(2 * frames, 10, heads, 8).transpose(1, 2) for t in (q, k, v)]
        full = F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(2 * frames, 10, 16)
        keys = torch.from_numpy(extension._levels[0].keys).long()
        valid = torch.from_numpy(extension._levels[0].valid)
        clip = [t.reshape(2, frames * 10, 16) for t in (q, k, full)]
        expected = attn.to_out[0](trajectory_attention(*clip, keys, valid, heads=heads).reshape(2 * frames, 10, 16))
    torch.testing.assert_close(got, expected)
    assert not attn.to_q._forward_hooks and not attn.to_k._forward_hooks
    assert not attn.to_out[0]._forward_pre_hooks
    with torch.no_grad():  # removed: the stock layer again
        torch.testing.assert_close(attn(x), attn.to_out[0](F.scaled_dot_product_attention(
            *[t.view(2 * frames, 10, heads, 8).transpose(1, 2) for t in (attn.to_q(x), attn.to_k(x), attn.to_v(x))]
        ).transpose(1, 2).reshape(2 * frames, 10, 16)))


def test_layers_at_other_levels_and_the_controlnet_are_left_alone() -> None:
    frames, grid = 2, (2, 2)
    attn, extension = _layer_and_extension(frames, grid)
    x = torch.randn(frames, 16, 16)  # 16 tokens: level 0 of 4 × 4, not the 2 × 2 grid of the trajectories
    extension._latent = (8, 8)  # 16 tokens are level 1 of 8 × 8; only level 0 is listed
    with torch.no_grad():
        plain = attn(x)
        with extension.install(torch.nn.Sequential(attn), role="unet"):
            torch.testing.assert_close(attn(x), plain)
        with extension.install(torch.nn.Sequential(attn), role="controlnet"):
            assert not attn.to_q._forward_hooks


def _editor(tmp_path, cache: bool) -> Editor:
    return Editor(fresh_plugin_manager().registry, progress=False,
                  cache=InversionCache(tmp_path / "cache") if cache else False)


@pytest.fixture
def counted(monkeypatch):
    """Counts flow estimations and trajectory-attention calls by token count."""
    calls = {"flows": 0, "tokens": []}
    estimate, attend = flatten.estimate_flows, flatten.trajectory_attention

    def count_flows(*args, **kwargs):
        calls["flows"] += 1
        return estimate(*args, **kwargs)

    def count_attention(query, *args, **kwargs):
        calls["tokens"].append(query.shape[1])
        return attend(query, *args, **kwargs)

    monkeypatch.setattr(flatten, "estimate_flows", count_flows)
    monkeypatch.setattr(flatten, "trajectory_attention", count_attention)
    return calls


def test_flatten_changes_the_edit_at_both_levels_and_leaves_no_hooks(demo_job, tmp_path, counted) -> None:
    editor = _editor(tmp_path, cache=False)
    job = demo_job(steps=2)
    plain = editor.run(load_job(job))
    edited = editor.run(load_job(job, {"extensions": [{"name": "flatten", "levels": [0, 1]}], "overwrite": True}))
    assert not np.array_equal(plain.frames, edited.frames)
    # 4 frames of 8 × 8 (level 0) and 4 × 4 (level 1), in the inversion and the denoising
    assert {4 * 64, 4 * 16} == set(counted["tokens"]) and counted["flows"] == 1
    unet = next(iter(editor._backbones.values())).unet
    for module in unet.modules():
        if isinstance(module, Attention):
            assert not module.to_q._forward_hooks and not module.to_k._forward_hooks
            assert not module.to_out[0]._forward_pre_hooks


def test_the_store_is_reused_by_a_cached_inversion(demo_job, tmp_path, counted) -> None:
    editor = _editor(tmp_path, cache=True)
    job = demo_job(steps=2, extensions=[{"name": "flatten", "levels": [1], "seed": 3}])
    first, second = (editor.run(load_job(job, {"overwrite": True})) for _ in range(2))
    assert counted["flows"] == 1  # the second run read the trajectories from the store
    assert (first.run["inversion"]["cached"], second.run["inversion"]["cached"]) == (False, True)
    assert np.array_equal(first.frames, second.frames)
    other = editor.run(load_job(job, {"overwrite": True, "extensions": [{"name": "flatten", "levels": [1], "seed": 4}]}))
    assert other.run["inversion"]["key"] != first.run["inversion"]["key"] and counted["flows"] == 2
    stored = list((tmp_path / "cache").rglob("flatten/trajectories.npz"))
    assert len(stored) == 2


def test_non_square_clips_with_windowed_attention(demo_job, tmp_path, counted) -> None:
    """A 128 × 64 clip (latent 16 × 8) and temporal windows: FLATTEN still runs on whole trajectories."""
    import yaml

    job = demo_job(steps=1, extensions=[{"name": "flatten", "levels": [0, 1]}])
    modulation = {**yaml.safe_load(job.read_text())["modulation"], "temporal": "window", "window_frames": 2,
                  "window_overlap": 0, "anchor_frames": 0}
    spec = load_job(job, {"video": {"path": str(job.parent / "clip.mp4"), "frames": 4, "size": [128, 64]},
                          "modulation": modulation})
    result = _editor(tmp_path, cache=False).run(spec)
    assert result.frames.shape == (4, 64, 128, 3)
    assert {4 * 8 * 16, 4 * 4 * 8} == set(counted["tokens"])


def test_bad_options_are_job_errors(demo_job, tmp_path) -> None:
    editor = _editor(tmp_path, cache=False)
    with pytest.raises(ConfigError, match="raft_weights is read only with flow: raft"):
        editor.check(load_job(demo_job(extensions=[{"name": "flatten", "raft_weights": "x.pth"}])))
    with pytest.raises(ConfigError, match="raft_weights .* is not a file"):
        editor.check(load_job(demo_job(extensions=[{"name": "flatten", "flow": "raft", "raft_weights": "no.pth"}])))
    with pytest.raises(ConfigError, match="levels must list distinct levels"):
        editor.check(load_job(demo_job(extensions=[{"name": "flatten", "levels": [1, 1]}])))
    with pytest.raises(ConfigError, match="must be one of 'dis', 'raft'"):
        editor.check(load_job(demo_job(extensions=[{"name": "flatten", "flow": "farneback"}])))


def test_prepare_reads_its_store_and_recomputes_a_broken_or_different_one(tmp_path, monkeypatch) -> None:
    from stmod.core.types import ExtensionInput

    calls = []
    flows = np.random.default_rng(0).normal(0, 4, (3, 48, 80, 2)).astype(np.float32)
    monkeypatch.setattr(flatten, "estimate_flows", lambda frames, options, device: calls.append(1) or flows)
    request = ExtensionInput(spec=None, frames=np.zeros((4, 48, 80, 3), np.uint8), latent_size=(6, 10), num_frames=4,
                             store=tmp_path, device=torch.device("cpu"), dtype=torch.float32)
    first = FlattenExtension(FlattenOptions(levels=(0, 1)))
    first.prepare(request)
    again = FlattenExtension(FlattenOptions(levels=(0, 1)))
    again.prepare(request)
    assert len(calls) == 1
    for level in (0, 1):
        np.testing.assert_array_equal(first._levels[level].keys, again._levels[level].keys)
        assert again._levels[level].grid == ((6, 10), (3, 5))[level]
    whole = (tmp_path / "trajectories.npz").read_bytes()
    (tmp_path / "trajectories.npz").write_bytes(whole[: len(whole) // 2])  # a truncated zip
    FlattenExtension(FlattenOptions(levels=(0, 1))).prepare(request)
    FlattenExtension(FlattenOptions(levels=(0, 1), seed=9)).prepare(request)  # other settings: not taken
    assert len(calls) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
