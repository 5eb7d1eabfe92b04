"""Fixtures for metric tests: a tiny random CLIP saved like a user's checkpoint, and edited output folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stmod.plugins.commands.demo import write_demo_inputs


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight ``CLIPModel`` + ``CLIPImageProcessor`` + tokenizer, written with ``save_pretrained``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from stmod.backbones.tiny_tokenizer import write_tiny_clip_tokenizer

    folder = tmp_path_factory.mktemp("models") / "tiny-clip"
    vocab = write_tiny_clip_tokenizer(folder)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                         num_hidden_layers=2, max_position_embeddings=77, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                           num_hidden_layers=2),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture
def identity_job(tmp_path: Path):
    """``identity_job(name, **changes) -> job path``: the demo clip and masks, edited without a model.

    The identity backbone reproduces the (8×8 block-averaged) source, the layout is the demo's two
    mask folders (so part of each frame is background), and nothing is modulated.
    """

    def make(name: str = "job", **changes) -> Path:
        inputs = tmp_path / "inputs"
        path = inputs / "job.yaml"
        if not path.exists():
            write_demo_inputs(inputs, frames=4, size=(64, 64), steps=2)
        job = yaml.safe_load(path.read_text())
        job.update({"backbone": "identity", "modulator": "null", "control": [], "blend": "none",
                    "save_attention": False, "output": str(tmp_path / name),
                    # absolute: config.yaml does not record the job's folder, which relative options need
                    "layout": {"name": "masks", "dir": str(inputs / "masks")}})
        job.update(changes)
        out = inputs / f"{name}.yaml"
        out.write_text(yaml.safe_dump(job))
        return out

    return make
