"""Cache lookups go through ``huggingface_hub.try_to_load_from_cache``: a repo is cached when its marker
file is in the snapshot the ``main`` ref names, in the cache the environment names now."""

from __future__ import annotations

from pathlib import Path

import pytest

from stmod.core.hub import in_hf_cache


def _cache(root: Path, repo: str, files: tuple[str, ...]) -> None:
    folder = root / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")  # the hub writes the hash without a newline
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    for name in files:
        (folder / "snapshots" / "abc123" / name).write_text("{}")


def test_a_cached_repo_is_found_by_one_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cache(tmp_path, "org/pipeline", ("model_index.json",))
    _cache(tmp_path, "org/controlnet", ("config.json",))
    _cache(tmp_path, "org/empty", ())
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert in_hf_cache("org/pipeline") and in_hf_cache("org/controlnet")
    assert not in_hf_cache("org/empty") and not in_hf_cache("org/missing") and not in_hf_cache("../x")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert not in_hf_cache("org/pipeline")
