"""``temporal: window`` on Wan (windows of latent frames) against full attention and a float64 reference, and the
``grabcut`` and ``sam2`` layouts feeding a ``wan`` edit end to end on the tiny random model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from stmod.backbones.shapes import world
from stmod.backbones.wan.attention import CallContext, WanLayoutProcessor, apply_rotary
from stmod.core.config import load_job
from stmod.core.io.video import write_frames
from stmod.core.pipeline.editor import Editor
from stmod.core.st_layout.modulator import EngineOptions, STLayoutModulator
from stmod.core.st_layout.processor import STLayoutProcessor
from stmod.core.st_layout.state import EngineState, StepInfo
from stmod.core.st_layout.windows import temporal_windows
from stmod.core.tokens import find_token_spans
from stmod.core.types import LayoutMasks, ModulationConfig, ModulationInput, Region
from stmod.testing import fresh_plugin_manager, run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}
FRAMES, SIZE, LATENT_FRAMES = 9, 32, 3  # 9 frames → 3 latent frames of 4×4 latents → 2×2 tokens each
PROMPT = "a red cat and a blue dog"


def _prepared(backbone, config: ModulationConfig) -> STLayoutModulator:
    """A modulator prepared for two regions whose masks move between the VAE's frame groups."""
    masks = torch.zeros(FRAMES, 2, SIZE, SIZE, dtype=torch.bool)
    masks[:, 0, :, :16], masks[:, 1, :, 16:] = True, True
    masks[5:, 0, :16, 16:], masks[5:, 1, :16, 16:] = True, False  # latent frame 2: the cat takes a corner
    regions = (Region(name="cat", prompt="red cat"), Region(name="dog", prompt="blue dog"))
    spans = find_token_spans(backbone.load_tokenizer(), PROMPT, [r.prompt for r in regions])
    modulator = STLayoutModulator(EngineOptions())
    modulator.prepare(ModulationInput(
        masks=backbone.latent_masks(LayoutMasks(masks=masks, names=("cat", "dog"))), num_frames=LATENT_FRAMES,
        latent_size=(4, 4), regions=regions, spans=spans, config=config.resolved(4), prompt=PROMPT,
        text_length=backbone.text_length))
    return modulator


def _velocity(backbone, config: ModulationConfig) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2 * LATENT_FRAMES, 16, 4, 4, generator=generator)  # 2 CFG branches × 3 latent frames
    backbone.latent_frames = LATENT_FRAMES
    text = backbone.encode_text(["", PROMPT]).repeat_interleave(LATENT_FRAMES, dim=0)
    modulator = _prepared(backbone, config)
    kwargs = modulator.call_kwargs(phase="denoise", step_index=0, timestep=900)
    with modulator.install(backbone.attention_models()["unet"], role="unet"):
        return backbone.predict_noise(latents, 900, text, cross_attention_kwargs=kwargs)


def test_a_window_over_the_whole_clip_is_full_attention(wan_backbone) -> None:
    """Windows count latent frames: 3 frames per window is the whole 9-frame clip and gives full attention exactly;
    2 per window splits it, and the velocity changes (so the comparison can fail)."""
    full = _velocity(wan_backbone, ModulationConfig(preset="paper", temporal="full"))
    whole = _velocity(wan_backbone, ModulationConfig(preset="paper", temporal="window", window_frames=LATENT_FRAMES,
                                                     window_overlap=0, anchor_frames=0))
    assert torch.equal(whole, full)
    split = _velocity(wan_backbone, ModulationConfig(preset="paper", temporal="window", window_frames=2,
                                                     window_overlap=1, anchor_frames=0))
    assert (split - full).abs().max() > 1e-4


def test_windowed_attn1_equals_float64_reference(wan_backbone) -> None:
    """Modulated ``attn1`` with windows of 2 latent frames (overlap 1, anchor 1) equals, in float64, the method's
    formula applied per window over that window's keys, each frame averaging the windows it is a query of."""
    config = ModulationConfig(preset="paper", self_strength=0.8, temporal="window", window_frames=2, window_overlap=1,
                              anchor_frames=1)
    attn = copy.deepcopy(wan_backbone.transformer.blocks[0].attn1).double()
    state: EngineState = _prepared(wan_backbone, config)._state
    step = StepInfo(phase="denoise", step_index=0, timestep=900, branches=("cond",))
    generator = torch.Generator().manual_seed(5)
    tokens = 4  # 2×2 per latent frame
    hidden = torch.randn(1, LATENT_FRAMES * tokens, attn.to_q.in_features, generator=generator, dtype=torch.float64)
    rope = tuple(r.double() for r in wan_backbone.transformer.rope(torch.zeros(1, 16, LATENT_FRAMES, 4, 4)))
    context = CallContext()
    with context.calling(step, frames=LATENT_FRAMES):
        out = WanLayoutProcessor(STLayoutProcessor(state), context)(attn, hidden, rotary_emb=rope)

    with torch.no_grad():
        q, k, v = attn.norm_q(attn.to_q(hidden)), attn.norm_k(attn.to_k(hidden)), attn.to_v(hidden)
        q, k, v = (x.unflatten(2, (attn.heads, -1)) for x in (q, k, v))
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        q, k, v = (x[0].transpose(0, 1).unflatten(1, (LATENT_FRAMES, tokens)) for x in (q, k, v))  # (H, f, N, d)
        layout = state.level(tokens, LATENT_FRAMES, torch.device("cpu"))
        codes, lam = layout.self_codes, state.token_strengths(step, "self", layout).double()  # (f, N)
        total = torch.zeros_like(q)
        count = torch.zeros(LATENT_FRAMES, dtype=torch.float64)
        windows = temporal_windows(LATENT_FRAMES, 2, 1, 1)
        for q_frames, k_frames in windows:
            qs, ks, vs = (x[:, frames].flatten(1, 2) for x, frames in ((q, q_frames), (k, k_frames), (v, k_frames)))
            relation = layout.self_relation[codes[q_frames].reshape(-1)[:, None],
                                            codes[k_frames].reshape(-1)[None, :]].double()
            strength = lam[q_frames].reshape(-1, 1)
            s = qs @ ks.transpose(-1, -2) / qs.shape[-1] ** 0.5
            mx, mn = s.amax(-1, keepdim=True), s.amin(-1, keepdim=True)
            s = s + relation * strength * (mx - s) - (1 - relation) * strength * (s - mn)
            total[:, q_frames] += (s.softmax(-1) @ vs).unflatten(1, (len(q_frames), tokens))
            count[q_frames] += 1
        dense = (total / count.view(1, -1, 1, 1)).flatten(1, 2).transpose(0, 1).reshape(1, LATENT_FRAMES * tokens, -1)
        reference = attn.to_out[1](attn.to_out[0](dense))
    assert len(windows) == 2 and windows[1] == ([1, 2], [0, 1, 2])  # frame 1 in both windows; frame 0 an anchor
    assert lam.abs().max() > 0.1
    assert torch.allclose(out, reference, atol=1e-6, rtol=1e-6)


def _write_job(tmp_path: Path, tiny_wan: Path, **changes) -> Path:
    job = {
        "video": {"path": "clip", "frames": FRAMES, "size": [64, 64]},
        "prompt": PROMPT,
        "source_prompt": "a cat and a dog",
        "regions": {"cat": "red cat", "dog": "blue dog"},
        "layout": {"name": "boxes", "boxes": {"cat": {0: [0, 0, 32, 64]}, "dog": {0: [32, 0, 64, 64]}}},
        "backbone": {"name": "wan", "model": str(tiny_wan), "device": "cpu"},
        "steps": 2,
        "seed": 0,
        "output": "out",
        **changes,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _scene_clip(tmp_path: Path, size: int) -> np.ndarray:
    """A shapes-world clip of 9 frames written as a frames folder; returns the objects' masks ``(F, 2, H, W)``."""
    scene = world.Scene(background="grass", seed=1, things=(
        world.Thing(shape="square", colour="red", size=0.4, start=(0.28, 0.4), velocity=(0.015, 0.01)),
        world.Thing(shape="disc", colour="blue", size=0.4, start=(0.72, 0.6), velocity=(-0.015, 0.0))))
    clip, bodies, parts = world.render_clip(scene, FRAMES, (size, size))
    write_frames(tmp_path / "clip", clip)
    return bodies | parts


def test_window_edit_end_to_end(tmp_path: Path, tiny_wan: Path) -> None:
    _scene_clip(tmp_path, 64)
    modulation = {"temporal": "window", "window_frames": 2, "window_overlap": 1, "anchor_frames": 1}
    result = run_cli(["edit", str(_write_job(tmp_path, tiny_wan, modulation=modulation)), "--quiet"], env=ENV)
    assert result.exit_code == 0, result.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["frames"] == FRAMES and run["modulated_steps"] and (tmp_path / "out" / "result.mp4").exists()


def _box(mask: np.ndarray, pad: int = 3) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]) - pad, int(rows[0]) - pad, int(cols[-1]) + 1 + pad, int(rows[-1]) + 1 + pad]


def test_grabcut_layout_feeds_a_wan_edit(tmp_path: Path, tiny_wan: Path) -> None:
    """GrabCut from one box per object on the first frame tracks both objects over the 9 frames (IoU with the
    truth > 0.8), and the edit runs on those masks; the modulator gets them through the VAE's time compression."""
    truth = _scene_clip(tmp_path, 128)
    layout = {"name": "grabcut", "prompts": {"cat": {0: {"box": _box(truth[0, 0])}},
                                             "dog": {0: {"box": _box(truth[0, 1])}}}}
    job = _write_job(tmp_path, tiny_wan, layout=layout, video={"path": "clip", "frames": FRAMES, "size": [128, 128]})
    editor = Editor(fresh_plugin_manager().registry, progress=False, cache=False)
    result = editor.run(load_job(job))
    masks = result.layout.masks.numpy()
    assert result.layout.names == ("cat", "dog") and masks.shape == (FRAMES, 2, 128, 128)
    for k in range(2):
        ious = [float((m & t).sum() / max(1, (m | t).sum())) for m, t in zip(masks[:, k], truth[:, k])]
        assert min(ious) > 0.8, (k, np.round(ious, 2))
    assert result.frames.shape == (FRAMES, 128, 128, 3) and result.run["modulated_steps"]


class _TrackedBoxes:
    """SAM 2's video-predictor API without a model: each object's mask is its prompt box, moved in every frame
    by ``shift`` pixels per frame to the right; records the frames it was handed (so the test sees that SAM 2
    got the edit's frames, not the source's)."""

    def __init__(self, shift: int) -> None:
        self.shift, self.size, self.frames = shift, (0, 0), 0

    def init_state(self, video_path: str) -> dict:
        files = sorted(Path(video_path).glob("*.jpg"))
        self.frames = len(files)
        with Image.open(files[0]) as first:
            self.size = first.size[::-1]
        return {"boxes": {}}

    def add_new_points_or_box(self, state, frame_idx, obj_id, points=None, labels=None, box=None):
        state["boxes"][obj_id] = box

    def propagate_in_video(self, state, start_frame_idx=None, max_frame_num_to_track=None, reverse=False):
        height, width = self.size
        rows, cols = np.mgrid[0:height, 0:width] + 0.5
        ids = sorted(state["boxes"])
        for frame in range(self.frames):
            logits = []
            for obj in ids:
                x0, y0, x1, y1 = np.asarray(state["boxes"][obj], dtype=float) + [self.shift * frame, 0] * 2
                logits.append(np.where((cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1), 10.0, -10.0))
            yield frame, ids, torch.tensor(np.stack(logits)[:, None], dtype=torch.bfloat16)


def test_sam2_layout_feeds_a_wan_edit(tmp_path: Path, tiny_wan: Path, monkeypatch) -> None:
    """The ``sam2`` layout (its predictor stood in: no SAM 2 weights here) gives a ``wan`` edit one tracked mask
    per region over all 9 frames (the tracked boxes, moving), and the edit runs modulated on them; how masks go
    down the VAE's time compression is tested in ``test_wan_layout``."""
    import stmod.layouts.sam2 as sam2_layout

    _scene_clip(tmp_path, 64)
    (tmp_path / "sam2.pt").write_bytes(b"not read by the stand-in")
    tracker = _TrackedBoxes(shift=2)
    monkeypatch.setattr(sam2_layout, "build_sam2_predictor", lambda config, ckpt, device, overrides=(): tracker)
    monkeypatch.setattr(sam2_layout.Sam2LayoutProvider, "_check_package", lambda self: None)
    layout = {"name": "sam2", "checkpoint": "sam2.pt",
              "prompts": {"cat": {0: {"box": [0, 16, 16, 48]}}, "dog": {0: {"box": [32, 16, 48, 48]}}}}
    job = _write_job(tmp_path, tiny_wan, layout=layout)
    editor = Editor(fresh_plugin_manager().registry, progress=False, cache=False)
    result = editor.run(load_job(job))
    masks = result.layout.masks.numpy()
    assert tracker.frames == FRAMES and masks.shape == (FRAMES, 2, 64, 64)
    for frame in range(FRAMES):
        cols = np.flatnonzero(masks[frame, 0].any(axis=0))
        assert (cols[0], cols[-1] + 1) == (2 * frame, 16 + 2 * frame)  # the tracked box, moved with the frame
    assert not (masks[:, 0] & masks[:, 1]).any()
    assert result.frames.shape == (FRAMES, 64, 64, 3) and result.run["modulated_steps"]
