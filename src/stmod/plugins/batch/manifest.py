"""Batch manifests: many edits (clips × prompts × presets × seeds), grouped by clip, sharded over processes.

A manifest (``docs/evaluation.md`` has the full format)::

    output: runs                       # every job writes runs/<job name>/
    base: {backbone: sd15, steps: 50}  # a job mapping shared by all jobs (paths relative to the manifest)
    clips:                             # name -> partial job; optional per-clip ``prompts``
      two_men:
        video: {path: clips/two_men.mp4, frames: 16}
        layout: {name: masks, dir: masks/two_men}
        prompts: {ironman: {prompt: "...", regions: {left: "Iron Man"}}}
    prompts: {...}                     # prompts for clips without their own
    presets: {baseline: {modulation: {modulate_cross: false, modulate_self: false}}, full: {}}
    seeds: [0, 1]
    jobs: [{name: extra, ...}]         # explicit jobs besides the grid

Jobs are named ``<clip>-<prompt>-<preset>-s<seed>`` (axes that are absent are left out). Jobs that invert
the same clip the same way form a *group*; a group runs in one process, in manifest order, so its
first job inverts the clip and the others load the inversion from the cache. With ``N`` processes
(``torchrun``/``accelerate launch``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) each rank takes whole
groups, assigned deterministically from the manifest alone (largest group first to the least-loaded
rank), so every job runs in exactly one process whatever the state of the output folder.

State lives in the output root: finished jobs are output folders with ``run.json`` whose
``config.yaml`` matches the job (written atomically, so a crash never leaves half a result);
``.batch/errors/<job>.json`` records a failed job; ``.batch/log-rank<r>.jsonl`` records each attempt;
``batch.json`` merges it all (status, error, run record per job). Any rank, or ``--summary``, can
rebuild ``batch.json`` from the files alone, so a crashed rank loses nothing but its running job.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import hashlib
import json
import logging
import os
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from stmod.core.config import apply_overrides, dump_job, job_from_mapping, load_mapping, unstructure
from stmod.core.errors import ConfigError, StmodError
from stmod.core.types import EditSpec, name_problem
from stmod.core.io.locks import exclusive_lock
from stmod.core.io.ownership import clean_stale_temporaries
from stmod.core.io.video import atomic_path

__all__ = ["BatchError", "BatchJob", "Manifest", "DistInfo", "BatchState", "load_manifest", "group_jobs",
           "shard_groups", "job_status"]

log = logging.getLogger(__name__)

_KEYS = ("output", "base", "clips", "prompts", "presets", "seeds", "jobs")
STATE_DIR = ".batch"
SUMMARY = "batch.json"


class BatchError(StmodError):
    """A batch that could not run every job (failed jobs are recorded; rerun to retry them)."""


@attrs.frozen(kw_only=True)
class BatchJob:
    """One job of a manifest: its name (= output folder name), validated spec, clip group and grid axes."""

    name: str
    spec: EditSpec
    group: str
    axes: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Manifest:
    """A loaded manifest: where it is, the output root and every job in manifest order."""

    path: Path
    output: Path
    jobs: tuple[BatchJob, ...]


@attrs.frozen(kw_only=True)
class DistInfo:
    """This process's place among ``world_size`` processes (torchrun / accelerate environment variables)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DistInfo:
        """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (absent: a single process).

        :raises ConfigError: for values that are not integers or a rank outside ``[0, WORLD_SIZE)``.
        """
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers, got RANK={env.get('RANK')!r} "
                              f"WORLD_SIZE={env.get('WORLD_SIZE')!r} LOCAL_RANK={env.get('LOCAL_RANK')!r}") from None
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"RANK={rank} must be in [0, WORLD_SIZE={world}); launch with torchrun or "
                              "accelerate launch, or unset both")
        return cls(rank=rank, world_size=world, local_rank=local)


# ---------------------------------------------------------------------------------------------- manifest


def _mapping(value: Any, place: str, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{place} must be a mapping, got {value!r} ({type(value).__name__})", source=source)
    return dict(value)


def _named(value: Any, place: str, source: str) -> dict[str, dict[str, Any]]:
    """``{name: partial job}`` with names checked (``None`` entries are empty variations)."""
    entries = _mapping(value, place, source)
    for name, entry in entries.items():
        problem = name_problem(name)
        if problem is not None:
            raise ConfigError(f"{place}: name {problem}", source=source)
        entries[name] = _mapping(entry, f"{place}.{name}", source)
        if "output" in entries[name]:
            raise ConfigError(f"{place}.{name}.output: outputs are set by the batch (output root + job name); "
                              "remove it", key="output", source=source)
    return entries


def _merge(base: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    """``apply_overrides`` except that ``regions`` is replaced whole (regions differ per prompt)."""
    merged = apply_overrides(base, {k: v for k, v in change.items() if k != "regions"})
    if "regions" in change:
        merged["regions"] = change["regions"]
    return merged


def group_key(spec: EditSpec) -> str:
    """Jobs with equal keys invert the same clip the same way (the inversion cache's inputs, minus the model)."""
    data = {"video": unstructure(spec.video), "backbone": unstructure(spec.backbone), "steps": spec.steps,
            "source_prompt": spec.source_prompt, "control": unstructure(spec.control),
            "temporal": spec.modulation.temporal}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{spec.video.path.name}#{digest}"


def _grid(base: dict[str, Any], clips: dict[str, Any], shared_prompts: dict[str, Any], presets: dict[str, Any],
          seeds: list[int] | None, source: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(name, job mapping, axes)`` for every clip × prompt × preset × seed (absent axes count once)."""
    variations = []
    seed_axis: Sequence[int | None] = seeds or [None]
    for clip_name, clip in (clips.items() if clips else [(None, {})]):
        own = _named(clip.pop("prompts", None), f"clips.{clip_name}.prompts", source) if clip_name else {}
        prompts = own or shared_prompts
        for prompt_name, prompt in (prompts.items() if prompts else [(None, {})]):
            for preset_name, preset in (presets.items() if presets else [(None, {})]):
                for seed in seed_axis:
                    job = _merge(_merge(_merge(base, clip), prompt), preset)
                    if seed is not None:
                        job["seed"] = seed
                    axes = {"clip": clip_name, "prompt": prompt_name, "preset": preset_name, "seed": seed}
                    parts = [clip_name, prompt_name, preset_name, None if seed is None else f"s{seed}"]
                    variations.append(("-".join(p for p in parts if p) or "job", job, axes))
    return variations


def load_manifest(path: Path) -> Manifest:
    """Read a manifest and build every job (validated as job files are, nothing checked on disk yet).

    :raises ConfigError: for an unknown key (with the closest valid one), a bad name, a duplicate job
        name or an invalid job (named in the message).
    """
    path = Path(path).absolute()
    source = str(path)
    data = load_mapping(path)
    for key in data:
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(_KEYS)}"
            raise ConfigError(f"unknown manifest key {key!r}{hint}", key=str(key), source=source)
    base_dir = path.parent
    output = Path(os.path.expanduser(str(data.get("output") or f"{path.stem}-runs")))
    output = output if output.is_absolute() else base_dir / output
    base = _mapping(data.get("base"), "base", source)
    if "output" in base:
        raise ConfigError("base.output: outputs are set by the batch (output root + job name); use the "
                          "manifest's top-level 'output'", key="output", source=source)
    clips = _named(data.get("clips"), "clips", source)
    shared_prompts = _named(data.get("prompts"), "prompts", source)
    presets = _named(data.get("presets"), "presets", source)
    seeds = data.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"seeds must be a non-empty list of integers, got {seeds!r}", key="seeds", source=source)

    variations = _grid(base, clips, shared_prompts, presets, seeds, source) if (
        clips or shared_prompts or presets or seeds or not data.get("jobs")) else []
    extra = data.get("jobs") or []
    if not isinstance(extra, list):
        raise ConfigError(f"jobs must be a list of mappings with a 'name', got {extra!r}", key="jobs", source=source)
    for i, entry in enumerate(extra):
        entry = _mapping(entry, f"jobs[{i}]", source)
        name = entry.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"jobs[{i}] needs a 'name' (its output folder name)", key="name", source=source)
        _named({name: entry}, "jobs", source)  # checks the name and that no 'output' is given
        variations.append((name, _merge(base, entry), {"clip": None, "prompt": None, "preset": None,
                                                       "seed": entry.get("seed")}))
    jobs: list[BatchJob] = []
    seen: set[str] = set()
    for name, job, axes in variations:
        problem = name_problem(name, reserved=(SUMMARY, STATE_DIR))  # the job's output folder name
        if problem is not None:
            raise ConfigError(f"job name {problem}", key="name", source=source)
        if name in seen:
            raise ConfigError(f"two jobs are named {name!r}; job names (output folders) must be unique", source=source)
        seen.add(name)
        job["output"], job["overwrite"] = str(output / name), True
        spec = job_from_mapping(job, base_dir=base_dir, source=f"{source} (job {name})")
        jobs.append(BatchJob(name=name, spec=spec, group=group_key(spec), axes=axes))
    return Manifest(path=path, output=output, jobs=tuple(jobs))


def group_jobs(jobs: Sequence[BatchJob]) -> list[list[BatchJob]]:
    """Jobs grouped by clip (:func:`group_key`), groups and jobs in manifest order."""
    groups: dict[str, list[BatchJob]] = {}
    for job in jobs:
        groups.setdefault(job.group, []).append(job)
    return list(groups.values())


def shard_groups(groups: Sequence[Sequence[BatchJob]], world_size: int) -> list[list[BatchJob]]:
    """Whole groups per rank: largest first to the least-loaded rank (ties: lower rank), then manifest order.

    Depends on ``groups`` alone, so every rank computes the same split.
    """
    order = sorted(range(len(groups)), key=lambda i: (-len(groups[i]), i))
    load = [0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        rank = min(range(world_size), key=lambda r: (load[r], r))
        load[rank] += len(groups[i])
        owned[rank].append(i)
    return [[job for i in sorted(mine) for job in groups[i]] for mine in owned]


# ----------------------------------------------------------------------------------------------- state


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def job_status(job: BatchJob) -> str:
    """``done`` (output with run.json for this very job), ``stale`` (an output of another job
    definition), or ``missing``."""
    out = job.spec.output
    if not (out / "run.json").is_file():
        return "missing"
    try:
        written = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
        same = written == yaml.safe_load(dump_job(job.spec, rerunnable=True))  # as write_outputs wrote it
    except (OSError, yaml.YAMLError):
        same = False
    return "done" if same else "stale"


def _is_summary(path: Path) -> bool:
    """Whether ``path`` is a ``batch.json`` stmod wrote (a regular file holding a batch summary)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"manifest", "jobs", "counts", "total"} <= data.keys()


def batch_root_problem(root: Path) -> str | None:
    """Why ``root`` cannot be a batch's output root, or ``None``. The rules of edit outputs: stmod writes
    only its own files there (the job folders, ``.batch/``, ``batch.json``) and never replaces a
    user's file that has one of those names."""
    root = Path(root)
    if root.is_symlink() and not root.is_dir():
        return "is a symbolic link to no folder; remove it or choose another output"
    if root.exists() and not root.is_dir():
        return "is a file, not a folder; choose another batch output"
    state, summary = root / STATE_DIR, root / SUMMARY
    if os.path.lexists(state) and (state.is_symlink() or not state.is_dir()):
        return f"holds {STATE_DIR}, which is not the batch state folder stmod keeps there; move it away"
    if os.path.lexists(summary) and not _is_summary(summary):
        return (f"holds a {SUMMARY} stmod did not write (not a batch summary), where stmod writes its summary; "
                "move it away or choose another batch output")
    return None


def require_batch_root(root: Path) -> None:
    """Raise :class:`BatchError` naming ``root`` when :func:`batch_root_problem` finds one."""
    problem = batch_root_problem(root)
    if problem is not None:
        raise BatchError(f"batch output {root}: {problem}")


class BatchState:
    """The files under a batch's output root: failures, attempt logs and the merged summary."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = self.root / STATE_DIR

    @contextlib.contextmanager
    def claim(self, manifest: Manifest, *, rank: int = 0) -> Iterator[None]:
        """Hold this rank's lock on the batch for the ``with`` block (a second run of the same batch and
        rank is refused), and remove the temporaries an interrupted run left in the state files."""
        with exclusive_lock(self.dir / f"rank{rank}.lock", what=f"batch {manifest.path} (output {self.root}, rank {rank})",
                            fix="wait for it to finish; the finished jobs are then skipped"):
            for folder in (self.root, self.dir, self.dir / "errors"):
                clean_stale_temporaries(folder)
            yield

    def error_path(self, name: str) -> Path:
        return self.dir / "errors" / f"{name}.json"

    def status(self, job: BatchJob) -> str:
        """``done``, ``stale``, ``failed`` (recorded error, no result) or ``pending``."""
        found = job_status(job)
        if found != "missing":
            return found
        return "failed" if self.error_path(job.name).is_file() else "pending"

    def record_failure(self, job: BatchJob, exc: BaseException, *, rank: int) -> Path:
        """Write ``.batch/errors/<job>.json`` (type, one-line message, traceback) atomically."""
        record = {"name": job.name, "rank": rank, "time": _now(), "type": type(exc).__name__,
                  "message": " ".join(str(exc).split()) or type(exc).__name__,
                  "user_error": isinstance(exc, StmodError),
                  "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}
        path = self.error_path(job.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
        return path

    def clear_failure(self, job: BatchJob) -> None:
        self.error_path(job.name).unlink(missing_ok=True)

    def log(self, job: BatchJob, status: str, *, dist: DistInfo, seconds: float | None = None) -> None:
        """Append one attempt to ``.batch/log-rank<r>.jsonl`` (one writer per file: the rank itself)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        line = {"name": job.name, "status": status, "rank": dist.rank, "world_size": dist.world_size,
                "seconds": None if seconds is None else round(seconds, 3), "time": _now()}
        with open(self.dir / f"log-rank{dist.rank}.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    def attempts(self) -> list[dict[str, Any]]:
        """Every logged attempt of every rank (lines cut short by a crash are skipped)."""
        lines: list[dict[str, Any]] = []
        for path in sorted(self.dir.glob("log-rank*.jsonl")):
            for text in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(text))
        return lines

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise summary merges between processes (``flock``; best effort where unavailable)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "a") as handle:
            try:
                import fcntl
            except ImportError:  # Windows: merges are still atomic, only not serialised
                yield
                return
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def merge(self, manifest: Manifest, *, world_size: int = 1) -> dict[str, Any]:
        """Rebuild ``batch.json`` from the files alone and write it atomically; returns it.

        Under a lock, so the last merge to run sees every job finished before it (finished results
        only ever appear), and the file left behind is the most complete one.
        """
        with self._locked():
            last: dict[str, dict[str, Any]] = {}
            for attempt in self.attempts():
                last[attempt["name"]] = attempt
            jobs, counts = [], {"done": 0, "failed": 0, "pending": 0, "stale": 0}
            for job in manifest.jobs:
                status = self.status(job)
                counts[status] += 1
                entry: dict[str, Any] = {"name": job.name, "group": job.group, "axes": dict(job.axes),
                                         "output": str(job.spec.output), "status": status,
                                         "rank": last.get(job.name, {}).get("rank")}
                if status == "done":
                    with contextlib.suppress(OSError, ValueError):
                        entry["run"] = json.loads((job.spec.output / "run.json").read_text(encoding="utf-8"))
                elif status == "failed":
                    with contextlib.suppress(OSError, ValueError):
                        error = json.loads(self.error_path(job.name).read_text(encoding="utf-8"))
                        entry["error"] = {k: error.get(k) for k in ("type", "message", "rank", "time")}
                jobs.append(entry)
            summary = {"manifest": str(manifest.path), "output": str(manifest.output), "updated": _now(),
                       "world_size": world_size, "total": len(manifest.jobs), "counts": counts,
                       "complete": counts["done"] == len(manifest.jobs), "jobs": jobs}
            require_batch_root(self.root)  # checked again: a user's file may have arrived during the run
            with atomic_path(self.root / SUMMARY) as tmp:
                tmp.write_text(json.dumps(summary, indent=2, allow_nan=False), encoding="utf-8")
        return summary
