"""A tiny random Wan 2.1 model, saved with save_pretrained like a user's folder, shared by the wan tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stmod.backbones.wan.tiny import write_tiny_wan

    return write_tiny_wan(tmp_path_factory.mktemp("models") / "tiny-wan")


@pytest.fixture(scope="session")
def wan_backbone(tiny_wan: Path):
    """The ``wan`` backbone loaded from the tiny folder on the CPU (float32)."""
    from stmod.backbones.wan import WanBackbone, WanOptions

    backbone = WanBackbone(WanOptions(model=str(tiny_wan), device="cpu"))
    backbone.load()
    return backbone
