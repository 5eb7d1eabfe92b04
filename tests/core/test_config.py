"""Job files: YAML → attrs values, unknown keys, overrides, printing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stmod.core.config import apply_overrides, dump_job, job_from_mapping, load_job, structure
from stmod.core.errors import ConfigError, InputError
from stmod.core.types import ComponentRef, EditSpec, ModulationConfig

BASE = {"video": {"path": "clip.mp4"}, "prompt": "a red cat", "regions": {"cat": "red cat"}}


def _job(**extra) -> EditSpec:
    return job_from_mapping({**BASE, **extra}, base_dir=Path("/jobs"), source="job.yaml")


def test_minimal_job_gets_defaults_and_resolves_paths() -> None:
    """Relative paths are taken relative to the job file's folder; defaults fill the rest."""
    spec = _job()
    assert spec.video.path == Path("/jobs/clip.mp4")
    assert spec.regions[0].name == "cat" and spec.regions[0].prompt == "red cat"
    assert spec.modulation == ModulationConfig()
    assert spec.base_dir == Path("/jobs")


def test_unknown_top_level_key_names_key_and_suggestion() -> None:
    """A typo is an error naming the key, its place and the closest valid key."""
    with pytest.raises(ConfigError) as info:
        _job(negative_promot="blurry")
    err = info.value
    assert err.key == "negative_promot" and err.suggestion == "negative_prompt" and err.place == ""
    assert str(err) == "job.yaml: unknown key 'negative_promot' at the top level; did you mean 'negative_prompt'?"


def test_unknown_nested_key_names_its_place() -> None:
    """Nested typos name the mapping that holds them."""
    with pytest.raises(ConfigError) as info:
        _job(modulation={"self_strenght": 0.2})
    assert info.value.place == "modulation"
    assert "did you mean 'self_strength'" in str(info.value)


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    """With nothing close, the message lists the valid keys instead."""
    with pytest.raises(ConfigError, match="valid keys: path, start, every, frames, size"):
        _job(video={"path": "a.mp4", "zzzz": 1})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"steps": "ten"}, "steps must be an integer, got 'ten' (str)"),
        ({"steps": 0}, "steps"),
        ({"guidance": True}, "guidance must be a number"),
        ({"modulation": {"preset": "videogran"}}, "did you mean 'videograin'"),
        ({"modulation": {"start_step": 10, "end_step": 5}}, "end_step 5 must not be smaller than start_step 10"),
        ({"video": {"path": "a.mp4", "size": [500, 512]}}, "multiple of 16"),
        ({"video": {"path": "a.mp4", "every": 0}}, "every"),
        ({"regions": {"bad name!": "x"}}, "not a valid name"),
        ({"prompt": "  "}, "must not be empty"),
        ({"layout": {"dir": "masks"}}, "component name or a mapping with 'name'"),
        ({"modulation": "paper"}, "modulation must be a mapping"),
    ],
)
def test_bad_values_are_clear_errors(extra: dict, message: str) -> None:
    """Wrong types and out-of-range values raise ConfigError saying which key and why."""
    with pytest.raises(ConfigError, match=None) as info:
        _job(**extra)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_required_key() -> None:
    """A job without a prompt names the missing key."""
    with pytest.raises(ConfigError, match="missing required key 'prompt'"):
        job_from_mapping({"video": {"path": "a.mp4"}}, base_dir=Path("."))


def test_component_shorthand_and_inline_options() -> None:
    """A component is a name, or a mapping with name plus its options inline."""
    spec = _job(blend="latent", layout=[{"name": "masks", "dir": "m"}, "kmeans"])
    assert spec.blend == ComponentRef(name="latent")
    assert spec.layout == (ComponentRef(name="masks", options={"dir": "m"}), ComponentRef(name="kmeans"))


def test_regions_accept_list_form_and_keep_order() -> None:
    """Regions may be a mapping (usual) or a list of {name, prompt}; order is kept."""
    spec = _job(regions=[{"name": "b", "prompt": "x"}, {"name": "a"}])
    assert spec.region_names == ("b", "a") and spec.regions[1].prompt == ""


def test_duplicate_region_rejected() -> None:
    """The same region twice is an error."""
    with pytest.raises(ConfigError, match="listed twice"):
        _job(regions=[{"name": "a"}, {"name": "a"}])


def test_overrides_merge_nested_and_widen_component_names() -> None:
    """CLI overrides merge key by key; a component name widens to a mapping to keep it."""
    merged = apply_overrides({"video": {"path": "a", "frames": 8}, "backbone": "sd15"},
                             {"video": {"frames": 4}, "backbone": {"device": "cpu"}})
    assert merged == {"video": {"path": "a", "frames": 4}, "backbone": {"name": "sd15", "device": "cpu"}}


def test_override_with_another_component_drops_old_options() -> None:
    """Naming a different component replaces the old one with its options; the same name merges."""
    data = {"backbone": {"name": "tiny", "seed": 3}, "blend": {"name": "latent", "soft_edge": 1.0}}
    merged = apply_overrides(data, {"backbone": {"name": "sd15", "device": "cpu"}, "blend": {"name": "latent"}})
    assert merged["backbone"] == {"name": "sd15", "device": "cpu"}
    assert merged["blend"] == {"name": "latent", "soft_edge": 1.0}


def test_dump_round_trips(tmp_path: Path) -> None:
    """The printed job, loaded again, gives the same values."""
    spec = _job(blend={"name": "latent", "soft_edge": 1.5}, modulation={"preset": "paper", "end_step": 10})
    path = tmp_path / "again.yaml"
    path.write_text(dump_job(spec))
    again = load_job(path)
    assert again.blend == spec.blend and again.modulation == spec.modulation
    assert again.regions == spec.regions and again.video == spec.video


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    """Broken YAML gives the line and column."""
    path = tmp_path / "job.yaml"
    path.write_text("prompt: a\nvideo: [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+, column \d+"):
        load_job(path)


def test_unreadable_job_file(tmp_path: Path) -> None:
    """A missing job file is an InputError naming it."""
    with pytest.raises(InputError, match="cannot read the job file"):
        load_job(tmp_path / "nope.yaml")


def test_non_mapping_job(tmp_path: Path) -> None:
    """A YAML list is not a job."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_job(path)


def test_structure_generic_attrs_class() -> None:
    """structure() works for any attrs class (component options use it)."""
    cfg = structure(ModulationConfig, {"preset": "paper", "self_strength": 1}, place="modulation")
    assert cfg.self_strength == 1.0 and isinstance(cfg.self_strength, float)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("self_branch", "both", "modulation.self_branch must be one of 'uncond', 'cond'"),
    ("modulate_finest", "yes", "modulation.modulate_finest must be true or false"),
])
def test_the_presets_layer_choices_are_checked_naming_the_key(tmp_path: Path, key: str, value: str,
                                                              message: str) -> None:
    job = {"video": {"path": "clip.mp4"}, "prompt": "a cat", "modulation": {key: value}}
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        job_from_mapping(job, base_dir=tmp_path)
    assert "\n" not in str(error.value)
    assert job_from_mapping({**job, "modulation": {key: None}}, base_dir=tmp_path).modulation == ModulationConfig()
