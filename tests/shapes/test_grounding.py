"""Token grounding for the shapes model's training: word targets, the losses against a float64
reference, and the recording processors (the same UNet output, restored afterwards)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stmod.backbones.shapes import grounding, world


def _scene() -> world.Scene:
    a = world.Thing(shape="square", colour="red", size=0.3, start=(0.25, 0.5),
                    part=world.Part(kind="dot", colour="white"))
    b = world.Thing(shape="disc", colour="blue", size=0.3, start=(0.75, 0.5))
    return world.Scene(background="grass", things=(a, b))


def test_caption_words_say_what_each_word_describes() -> None:
    scene = _scene()
    words = world.caption_words(scene)
    assert " ".join(w for w, _ in words) == world.caption(scene) == \
        "a red square with a white dot and a blue disc on grass"
    owners = {w: o for w, o in words if o is not None}
    assert owners["red"] == world.WordOwner(things=(0,), covers="body")
    assert owners["square"] == world.WordOwner(things=(0,), covers="object")
    assert owners["white"] == owners["dot"] == world.WordOwner(things=(0,), covers="part")
    assert owners["disc"] == world.WordOwner(things=(1,), covers="object")
    assert owners["grass"].covers == "background"
    pair = world.Scene(background="snow", things=(world.Thing(shape="ring", colour="red", size=0.3, start=(.3, .5)),
                                                   world.Thing(shape="ring", colour="red", size=0.3, start=(.7, .5))))
    assert [o.things if o else None for _, o in world.caption_words(pair)] == [None, (0, 1), (0, 1), None, ()]


def test_word_targets_are_the_described_share_of_each_cell() -> None:
    scene = _scene()
    frame = world.render(scene, 0.0)
    words = world.caption_words(scene)
    targets = grounding.word_targets(words, frame.bodies, frame.parts, 16)
    assert targets.shape == (grounding.MAX_WORDS, 16, 16)
    grounded = targets.reshape(grounding.MAX_WORDS, -1).any(axis=1)
    assert grounded.tolist() == [o is not None for _, o in words] + [False] * (grounding.MAX_WORDS - len(words))
    index = {w: i for i, (w, _) in enumerate(words)}
    body, part = frame.bodies[0].mean() * 256, frame.parts[0].mean() * 256
    assert targets[index["red"]].sum() == pytest.approx(body)
    assert targets[index["square"]].sum() == pytest.approx(body + part)
    assert targets[index["dot"]].sum() == pytest.approx(part)
    assert targets[index["grass"]].sum() == pytest.approx((~frame.objects.any(axis=0)).mean() * 256)
    assert targets.max() <= 1.0


def _reference(maps: list[np.ndarray], targets: np.ndarray, grounded: np.ndarray) -> tuple[float, float, float]:
    """The three losses with plain loops in float64."""
    token_sum = pixel_sum = cell_sum = 0.0
    for probs in maps:
        side = int(math.isqrt(probs.shape[1]))
        factor = targets.shape[-1] // side
        token_layer = pixel_layer = cell_layer = 0.0
        words = cells = 0
        pooled = targets.reshape(*targets.shape[:2], side, factor, side, factor).mean(axis=(3, 5))
        pooled = pooled.reshape(*targets.shape[:2], side * side)
        for b in range(targets.shape[0]):
            for w in range(targets.shape[1]):
                if not grounded[b, w]:
                    continue
                words += 1
                target, attention = pooled[b, w], probs[b, :, w + 1]
                token_layer += (1 - (attention * target).sum() / attention.sum()) ** 2
                a = np.clip(attention, 1e-6, 1 - 1e-6)
                pixel_layer += np.mean(-(target * np.log(a) + (1 - target) * np.log(1 - a)))
            for u in range(side * side):
                mine = [w for w in range(targets.shape[1]) if grounded[b, w] and pooled[b, w, u] >= 0.5]
                if mine:
                    cells += 1
                    cell_layer -= math.log(max(sum(probs[b, u, w + 1] for w in mine), 1e-6))
        token_sum += token_layer / max(words, 1)
        pixel_sum += pixel_layer / max(words, 1)
        cell_sum += cell_layer / max(cells, 1)
    return token_sum / len(maps), pixel_sum / len(maps), cell_sum / len(maps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grounding_losses_match_a_float64_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch, tokens = 3, 40
    maps = [rng.dirichlet(np.ones(tokens), (batch, side * side)) for side in (16, 8, 4)]
    targets = rng.random((batch, grounding.MAX_WORDS, 16, 16)) * (rng.random((batch, grounding.MAX_WORDS, 1, 1)) < .6)
    grounded = rng.random((batch, grounding.MAX_WORDS)) < 0.5
    got = grounding.grounding_losses([torch.from_numpy(m) for m in maps], torch.from_numpy(targets),
                                     torch.from_numpy(grounded))
    want = _reference(maps, targets, grounded)
    assert want[2] > 0  # some cells are covered: the cell loss is checked, not two zeros
    assert [x.item() for x in got] == pytest.approx(want, rel=1e-9)


def test_attention_on_the_described_cells_scores_lower_than_elsewhere() -> None:
    targets = torch.zeros(1, grounding.MAX_WORDS, 4, 4, dtype=torch.float64)
    targets[0, 0, :2, :2] = 1.0
    grounded = torch.zeros(1, grounding.MAX_WORDS, dtype=torch.bool)
    grounded[0, 0] = True

    def losses(cells: list[int]) -> tuple[float, float]:
        probs = torch.full((1, 16, 40), 0.01, dtype=torch.float64)
        probs[0, cells, 1] = 0.9
        return tuple(x.item() for x in grounding.grounding_losses([probs], targets, grounded))

    on, off = losses([0, 1, 4, 5]), losses([10, 11, 14, 15])
    assert on[0] < 0.01 < 0.9 < off[0] and on[1] < off[1]
    assert on[2] == pytest.approx(-math.log(0.9)) and off[2] > 4
    nothing = grounding.grounding_losses([torch.rand(2, 16, 40)], torch.rand(2, grounding.MAX_WORDS, 4, 4),
                                         torch.zeros(2, grounding.MAX_WORDS, dtype=torch.bool))
    assert [x.item() for x in nothing] == [0.0, 0.0, 0.0]


def test_recording_keeps_the_unet_output_and_restores_its_processors() -> None:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4).eval()
    sample, text = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 16)
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    with torch.no_grad():
        stock = unet(sample, 10, text).sample
        maps = grounding.CrossAttentionMaps()
        with maps.install(unet):
            recorded = unet(sample, 10, text).sample
            taken = maps.take()
            assert maps.take() == []
    torch.testing.assert_close(recorded, stock, atol=1e-5, rtol=1e-5)
    # Down 16, 8, 4; up 4, 4, 8, 8, 16, 16 (two attentions per up block); the 2×2 middle is left out.
    assert sorted(m.shape[1] for m in taken) == sorted([256, 64, 16, 16, 16, 64, 64, 256, 256])
    assert all(m.shape[0] == 2 and m.shape[2] == 77 for m in taken)
    torch.testing.assert_close(taken[0].sum(-1), torch.ones(2, taken[0].shape[1]))
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before
