"""Manifests: grid expansion, validation, grouping by clip and sharding over ranks."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from stmod.plugins.batch.manifest import DistInfo, group_jobs, load_manifest, shard_groups
from stmod.core.errors import ConfigError


def test_grid_expands_names_axes_and_merges(manifest) -> None:
    """clips × prompts × presets × seeds, named clip-prompt-preset-sSEED; prompts replace regions whole."""
    m = load_manifest(manifest())
    assert len(m.jobs) == 16 and m.output == manifest().parent / "runs"
    job = next(j for j in m.jobs if j.name == "second-blue-baseline-s1")
    assert job.axes == {"clip": "second", "prompt": "blue", "preset": "baseline", "seed": 1}
    assert job.spec.video.start == 1 and job.spec.video.frames == 4 and job.spec.seed == 1
    assert job.spec.prompt == "a blue cat" and [r.prompt for r in job.spec.regions] == ["blue cat"]
    assert not job.spec.modulation.modulate_cross and job.spec.output == m.output / job.name
    assert job.spec.overwrite


def test_per_clip_prompts_and_explicit_jobs(manifest) -> None:
    """A clip's own prompts replace the shared ones for that clip; ``jobs`` adds named jobs."""
    path = manifest(clips={"first": {"prompts": {"own": {"prompt": "a dog"}}}, "second": {}},
                    presets=None, seeds=None, jobs=[{"name": "extra", "seed": 7}])
    names = [j.name for j in load_manifest(path).jobs]
    assert names == ["first-own", "second-red", "second-blue", "extra"]
    assert load_manifest(path).jobs[-1].spec.seed == 7


@pytest.mark.parametrize("changes, message", [
    ({"presetz": {}}, "unknown manifest key 'presetz'; did you mean 'presets'"),
    ({"presets": {"bad name": {}}}, "name 'bad name'"),
    ({"seeds": [0, "1"]}, "seeds must be a non-empty list of integers"),
    ({"presets": {"x": {"output": "elsewhere"}}}, "outputs are set by the batch"),
    ({"clips": None, "prompts": None, "presets": None, "seeds": None, "jobs": [{"name": "a"}, {"name": "a"}]},
     "two jobs are named 'a'"),
    ({"presets": {"x": {"modulation": {"modulate_crosss": False}}}}, "did you mean 'modulate_cross'"),
])
def test_invalid_manifests_name_the_problem(manifest, changes, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_manifest(manifest(**changes))


def test_groups_follow_the_clip_and_shards_are_disjoint_whole_groups(manifest) -> None:
    """Jobs that invert the same clip share a group; every world size splits whole groups, no job lost."""
    m = load_manifest(manifest())
    groups = group_jobs(m.jobs)
    assert [len(g) for g in groups] == [8, 8]
    assert {j.axes["clip"] for j in groups[0]} == {"first"} and {j.axes["clip"] for j in groups[1]} == {"second"}
    fake = [[f"g{i}-{k}" for k in range(size)] for i, size in enumerate([5, 1, 3, 3, 2, 1, 4])]
    for world in (1, 2, 3, 4, 8):
        shards = shard_groups(fake, world)
        flat = list(itertools.chain.from_iterable(shards))
        assert sorted(flat) == sorted(itertools.chain.from_iterable(fake))  # every job exactly once
        for group in fake:
            assert sum(any(j in s for j in group) for s in shards) == 1  # a group never splits
        assert shard_groups(fake, world) == shards  # deterministic
    assert [len(s) for s in shard_groups(fake, 2)] == [10, 9]


def test_dist_info_from_env() -> None:
    assert DistInfo.from_env({}) == DistInfo(rank=0, world_size=1, local_rank=0)
    assert DistInfo.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}).local_rank == 1
    with pytest.raises(ConfigError, match="RANK=4 must be in"):
        DistInfo.from_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_relative_paths_are_relative_to_the_manifest(manifest, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path.parent)
    m = load_manifest(Path(tmp_path.name) / manifest().name)
    assert m.jobs[0].spec.video.path == tmp_path / "clip.mp4"
