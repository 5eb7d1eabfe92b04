"""``bench/quality.py`` (the ablation, on a model folder given as a user would give it) and
``bench/quality_compare.py`` (two runs of it, paired case by case)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from stmod.backbones.shapes import SHIPPED_MODEL, edits


@pytest.fixture(scope="module")
def quality(bench_script):
    return bench_script("quality")


def test_a_relative_model_folder_is_read_from_where_the_command_runs(quality, tmp_path: Path, monkeypatch) -> None:
    """The cases' job files live in their own folders; ``--model trained/model`` must still mean the
    shell's ``trained/model``, not one inside each case's folder."""
    (tmp_path / "trained").mkdir()
    os.symlink(SHIPPED_MODEL, tmp_path / "trained" / "model")
    monkeypatch.chdir(tmp_path)
    assert quality.main(["--model", "trained/model", "--per-kind", "1", "--rows", "none",
                         "--frames", "2", "--steps", "2", "--out", "bench"]) == 0
    results = json.loads((tmp_path / "bench" / "quality.json").read_text())
    assert results["model"] == str(tmp_path / "trained" / "model")
    assert results["rows"] == ["none"] and len(results["records"]) == 5


def test_a_model_folder_that_is_not_one_is_refused_before_anything_is_written(quality, tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    with pytest.raises(SystemExit, match=r"--model .*weights is not a diffusers model folder"):
        quality.main(["--model", str(tmp_path / "weights"), "--out", str(tmp_path / "bench")])
    assert not (tmp_path / "bench").exists()


@pytest.fixture(scope="module")
def compare(bench_script):
    return bench_script("quality_compare")


def _run(model: str, accuracies: dict[str, list[float]], **settings) -> dict:
    records = [{"row": row, "case": f"case-{i:02d}", "accuracy": a}
               for row, values in accuracies.items() for i, a in enumerate(values)]
    return {"model": model, "frames": 4, "steps": 12, "guidance": None, "per_kind": 6, "seed": 0,
            "rows": list(accuracies), "records": records, **settings}


def test_the_difference_interval_matches_a_plain_bootstrap(compare) -> None:
    rng = np.random.default_rng(7)
    a, b = rng.uniform(0, 1, 30), rng.uniform(0, 1, 30)
    low, high = compare.difference_interval(a, b)
    diffs = (b - a).astype(np.float64)
    means = diffs[np.random.default_rng(8).integers(0, 30, (20_000, 30))].mean(axis=1)
    assert low == pytest.approx(np.percentile(means, 2.5), abs=0.01)
    assert high == pytest.approx(np.percentile(means, 97.5), abs=0.01)


def test_identical_runs_are_not_told_apart_and_a_real_gain_is(compare, tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 0.8, 30)
    first = _run("shipped", {"same": list(base), "better": list(base)})
    second = _run("retrained", {"same": list(base), "better": list(base + rng.uniform(0.1, 0.3, 30))})
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, run in zip(paths, (first, second)):
        path.write_text(json.dumps(run))
    assert compare.main([str(p) for p in paths]) == 0
    out = capsys.readouterr().out
    assert "| same | " in out and "[+0.000, +0.000] | no |" in out
    assert out.splitlines()[-2].endswith("| yes |") and "1 of 2 rows differ" in out


def test_runs_of_different_cases_are_refused_in_one_line(compare, tmp_path: Path, capsys) -> None:
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    paths[0].write_text(json.dumps(_run("a", {"both": [0.5] * 3})))
    paths[1].write_text(json.dumps(_run("b", {"both": [0.5] * 3}, steps=20)))
    assert compare.main([str(p) for p in paths]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "quality_compare: the two runs edited different cases: steps 12 against 20; " \
                  "rerun one with the other's settings"


@pytest.mark.parametrize(("content", "message"), [
    (None, r"quality_compare: \[Errno 2\] No such file or directory: '.*b\.json'"),
    ({"model": "b"}, r"quality_compare: not a bench/quality.py result: it has no 'rows', 'records', 'frames', 'steps', "
                      r"'guidance', 'per_kind', 'seed'"),
])
def test_a_missing_or_foreign_file_is_refused_in_one_line(compare, tmp_path: Path, capsys, content, message) -> None:
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    paths[0].write_text(json.dumps(_run("a", {"both": [0.5] * 3})))
    if content is not None:
        paths[1].write_text(json.dumps(content))
    assert compare.main([str(p) for p in paths]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.fullmatch(message, err.strip()), err


def test_a_row_whose_background_is_exact_in_one_case_is_not_infinite(quality) -> None:
    """The row's background PSNR pools the cases' errors: one exact case must not make it ∞."""
    assert quality.pooled_psnr([float("inf"), 20.0]) == pytest.approx(20.0 + 10 * np.log10(2))
    assert quality.pooled_psnr([float("inf")] * 2) == float("inf")


def test_the_reconstruction_rows_edit_nothing_and_score_against_the_source(quality, tmp_path: Path) -> None:
    case = next(c for c in edits.benchmark_cases(1, seed=0) if c.kind == "instance")
    job = edits.write_case(tmp_path / case.name, case, frames=2, steps=10)
    for row, guidance in (("recon-1", 1.0), ("recon-7.5", 7.5)):
        data = yaml.safe_load(quality._row_job(job, row, 10).read_text())
        assert data["prompt"] == case.source_prompt and data["guidance"] == guidance
        assert "regions" not in data and "layout" not in data
    recon = yaml.safe_load(quality._row_job(job, "recon", 10).read_text())  # the run's guidance (--guidance)
    assert recon["prompt"] == case.source_prompt and recon["guidance"] == 7.5 and "regions" not in recon
    assert quality.ROWS["recon"].guidance is None and quality.ROWS["recon"].reconstruction
    clip, _, _ = case.render(3)
    kept = quality.score(case, clip, clip, 3, reconstruction=True)
    assert kept["accuracy"] == 1.0 and kept["causes"]["right"] == sum(kept["causes"].values()) > 0
    # scored as an edit, the untouched clip is wrong: its objects kept their colours
    assert quality.score(case, clip, clip, 3)["causes"]["right"] == 0


def test_a_longer_modulation_window_is_a_share_of_the_steps(quality, tmp_path: Path) -> None:
    job = edits.write_case(tmp_path / "c", edits.benchmark_cases(1, seed=0)[0], frames=2, steps=20)
    assert yaml.safe_load(quality._row_job(job, "modulate-60", 20).read_text())["modulation"]["end_step"] == 12
    assert yaml.safe_load(quality._row_job(job, "modulate-100", 20).read_text())["modulation"]["end_step"] == 20
    assert yaml.safe_load(job.read_text())["modulation"]["end_step"] == 6


def test_one_runs_rows_against_its_baseline_on_some_kinds(compare, tmp_path: Path, capsys) -> None:
    """``--against none --kinds instance``: each row paired case by case with the run's own ``none`` row,
    on the instance cases only; a gain on those kinds is told apart, an equal row is not."""
    rng = np.random.default_rng(5)
    base = rng.uniform(0, 0.6, 20)
    kinds = ["instance"] * 10 + ["part"] * 10
    run = _run("shipped", {"none": list(base), "both": list(base + np.r_[rng.uniform(0.2, 0.3, 10), [-0.3] * 10]),
                           "same": list(base)})
    for record in run["records"]:
        record["kind"] = kinds[int(record["case"].split("-")[1])]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    assert compare.main([str(path), "--against", "none", "--kinds", "instance"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\| both \| .* \| yes \|", out) and re.search(r"\| same \| .* \| no \|", out)
    assert compare.main([str(path), "--against", "none"]) == 0  # all kinds: the part cases' loss cancels the gain
    assert re.search(r"\| both \| .* \| no \|", capsys.readouterr().out)
    assert compare.main([str(path), "--against", "nothing"]) == 2
    assert "has no row 'nothing'" in capsys.readouterr().err


def test_runs_of_other_rows_are_pooled_against_a_baseline(compare, tmp_path: Path, capsys) -> None:
    """Rows run apart on the same cases are compared with a baseline row of another run; runs of other
    settings, or the same row twice, are refused in one line."""
    rng = np.random.default_rng(9)
    base = rng.uniform(0, 0.6, 20)
    paths = [tmp_path / "base.json", tmp_path / "new.json", tmp_path / "other.json"]
    paths[0].write_text(json.dumps(_run("shipped", {"control": list(base)})))
    paths[1].write_text(json.dumps(_run("shipped", {"area": list(base + rng.uniform(0.2, 0.3, 20))})))
    paths[2].write_text(json.dumps(_run("shipped", {"control": list(base)}, steps=20)))
    assert compare.main([str(paths[0]), str(paths[1]), "--against", "control"]) == 0
    out = capsys.readouterr().out
    assert "| area | " in out and out.splitlines()[-2].endswith("| yes |")
    assert compare.main([str(paths[0]), str(paths[2]), "--against", "control"]) == 2
    assert capsys.readouterr().err.strip() == ("quality_compare: the runs edited different cases: steps 12 against "
                                               "20; pool only runs of the same settings")
    assert compare.main([str(paths[0]), str(paths[0]), "--against", "control"]) == 2
    assert "row control is in more than one run" in capsys.readouterr().err


def test_kinds_picks_the_cases_and_an_unknown_kind_is_refused(quality, tmp_path: Path) -> None:
    assert quality.main(["--kinds", "instance,crossing", "--per-kind", "1", "--rows", "none", "--frames", "2",
                         "--steps", "2", "--out", str(tmp_path / "bench")]) == 0
    results = json.loads((tmp_path / "bench" / "quality.json").read_text())
    assert sorted(r["kind"] for r in results["records"]) == ["crossing", "instance"]
    assert results["kinds"] == ["crossing", "instance"]
    with pytest.raises(SystemExit, match="unknown kind.*instances; choose from class, instance"):
        quality.main(["--kinds", "instances", "--out", str(tmp_path / "other")])


def test_the_guided_rows_guide_the_first_steps_only(quality, tmp_path: Path) -> None:
    job = edits.write_case(tmp_path / "c", edits.benchmark_cases(1, seed=0)[0], frames=2, steps=20)
    for row, end in (("guided-30", 0.3), ("guided-50", 0.5), ("none-guided-50", 0.5)):
        data = yaml.safe_load(quality._row_job(job, row, 20).read_text())
        assert data["guidance_interval"] == [0, end] and data["control"] == quality.CONTROL["control"]


def test_rescore_scores_a_finished_run_again_from_its_saved_frames(quality, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    assert quality.main(["--kinds", "instance", "--per-kind", "1", "--rows", "none", "--frames", "2", "--steps", "2",
                         "--out", str(out)]) == 0
    path = out / "quality.json"
    first = json.loads(path.read_text())
    spoiled = {**first, "records": [{**r, "accuracy": -1.0, "causes": {}} for r in first["records"]]}
    path.write_text(json.dumps(spoiled))
    assert quality.main(["--out", str(out), "--rescore"]) == 0
    again = json.loads(path.read_text())
    assert again["records"] == first["records"] and again["summary"] == first["summary"]
    with pytest.raises(SystemExit, match="--rescore: no .*quality.json"):
        quality.main(["--out", str(tmp_path / "none"), "--rescore"])


def test_metric_picks_the_figure_compared(compare, tmp_path: Path, capsys) -> None:
    """``--metric right`` pairs the share of right region-frames (from the causes), ``--metric clean`` the clean
    share: a row equal in accuracy but cleaner is told apart on those and not on accuracy."""
    rng = np.random.default_rng(11)
    base = rng.uniform(0.3, 0.7, 20)
    run = _run("shipped", {"base": list(base), "cleaner": list(base)})
    for record in run["records"]:
        better = record["row"] == "cleaner"
        right = int(rng.integers(0, 4)) + (4 if better else 0)
        record["clean"] = right / 8
        record["causes"] = {"right": right, "leak": 0, "colour": 8 - right, "shape": 0, "patchy": 0}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    for metric, apart in (("accuracy", "no"), ("right", "yes"), ("clean", "yes")):
        assert compare.main([str(path), "--against", "base", "--metric", metric]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"\| cleaner \| .* \| {apart} \|", out), (metric, out)
    assert "| row | clean base | clean row |" in out  # the last one compared
