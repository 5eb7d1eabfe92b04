"""CLIP-T, CLIP-F and region CLIP-T with a tiny random CLIP loaded from a folder, as users load theirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stmod.plugins.eval.clipscore import ClipScorer, region_crops
from stmod.core.errors import CheckpointError
from stmod.plugins.eval.metrics import clip_frame_consistency, clip_text_score, square_box


@pytest.fixture(scope="module")
def scorer(tiny_clip: Path) -> ClipScorer:
    return ClipScorer.load(str(tiny_clip), device="cpu")


def _frames(seed: int, n: int = 5, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def test_identical_frames_give_clip_f_100(scorer: ClipScorer) -> None:
    """Both CLIP-F variants are exactly 100 when every frame is the same picture."""
    frames = np.repeat(_frames(1, n=1), 4, axis=0)
    embeds = scorer.embed_images(list(frames))
    assert clip_frame_consistency(embeds, "consecutive") == pytest.approx(100.0, abs=1e-9)
    assert clip_frame_consistency(embeds, "pairwise") == pytest.approx(100.0, abs=1e-9)
    assert clip_frame_consistency(embeds[:1]) is None


def test_clip_t_and_clip_f_match_a_plain_reference(scorer: ClipScorer, tiny_clip: Path) -> None:
    """On fresh random frames, the scores equal a direct transformers computation (100·cos, means)."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    frames, prompt = _frames(2), "a red cat on the grass"
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor, tokenizer = AutoImageProcessor.from_pretrained(tiny_clip), AutoTokenizer.from_pretrained(tiny_clip)
    with torch.no_grad():
        pixels = processor(images=list(frames), return_tensors="pt")["pixel_values"]
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(**tokenizer([prompt], return_tensors="pt"))
    image, text = image.pooler_output.double(), text.pooler_output.double()[0]
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm()
    cos_t = [float(image[i] @ text) for i in range(len(frames))]
    cos_f = [float(image[i] @ image[i + 1]) for i in range(len(frames) - 1)]
    pairs = [float(image[i] @ image[j]) for i in range(len(frames)) for j in range(len(frames)) if i != j]

    embeds = scorer.embed_images(list(frames))
    assert clip_text_score(embeds, scorer.embed_texts([prompt])[0]) == pytest.approx(100 * np.mean(cos_t), abs=1e-4)
    assert clip_frame_consistency(embeds) == pytest.approx(100 * np.mean(cos_f), abs=1e-4)
    assert clip_frame_consistency(embeds, "pairwise") == pytest.approx(100 * np.mean(pairs), abs=1e-4)


def test_square_box_and_region_crops() -> None:
    """A region's crop is the square around its bounding box, kept inside the frame, padded if needed."""
    mask = np.zeros((20, 30), bool)
    mask[4:8, 10:20] = True  # 4 tall, 10 wide
    assert square_box(mask) == (1, 10, 10, 10)
    mask[:] = False
    mask[0:2, 0:20] = True  # near the top edge: shifted down to stay inside
    assert square_box(mask) == (0, 0, 20, 20)
    assert square_box(np.zeros((5, 5), bool)) is None
    tall = np.zeros((10, 40), bool)
    tall[:, 5] = True  # wider square than the frame is tall: padded with black
    frames = np.full((2, 10, 40, 3), 200, np.uint8)
    crops = region_crops(frames, np.stack([tall, np.zeros_like(tall)]))
    assert len(crops) == 1 and crops[0].shape == (10, 10, 3) and crops[0].min() == 200
    wide = np.zeros((10, 40), bool)
    wide[5, 2:30] = True
    (crop,) = region_crops(frames[:1], wide[None])
    assert crop.shape == (28, 28, 3) and (crop == 0).any() and (crop == 200).any()


def test_missing_clip_is_a_checkpoint_error_naming_the_fix(tmp_path: Path) -> None:
    """Offline without the default weights, or a folder without a model: one error that names --clip."""
    with pytest.raises(CheckpointError, match="hf download stmod-tests/no-such-clip.* --clip PATH"):
        ClipScorer.load("stmod-tests/no-such-clip")  # HF_HUB_OFFLINE=1 (tests/conftest.py): not cached
    with pytest.raises(CheckpointError, match="no such CLIP folder"):
        ClipScorer.load(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="holds no CLIP model"):
        ClipScorer.load(str(tmp_path))
