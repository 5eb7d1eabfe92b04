"""Batch edits on Ray: ``stmod-run batch MANIFEST --engine ray``, or :func:`run_batch_on_ray` from Python.

The driver (the process that runs the command) validates every job, holds the batch's lock and keeps a
pool of Ray actors, :class:`BatchWorker`, each of which builds one editor and keeps it, so a worker loads
the weights once and edits many clips with them. Work is pulled, not sharded: a worker that is free takes
the next *group* (the jobs that share a clip's inversion, :func:`~stmod.plugins.batch.manifest.group_jobs`)
and runs its jobs in order, one remote call per job, so the driver's bar counts jobs as they finish.

Faults. A worker process that dies (killed, out of memory, its node lost) is restarted by Ray and the
call it was running is retried (``max_restarts`` / ``max_task_retries``); a restarted worker skips the
jobs of its group that are already finished. A job that raises is recorded as failed by the worker
(``.batch/errors/<job>.json``) and not retried; a job that kills its worker every time is recorded as
failed once the retries are spent, and the worker is replaced.

Files. Workers write the same files as ``--engine local`` (through :func:`~stmod.plugins.batch.run.run_job`):
each output folder atomically, with its ownership marker and lock; worker ``i`` appends its attempts to
``.batch/log-rank<i>.jsonl``; the driver merges ``batch.json`` at the end. So the driver and every
worker must share one filesystem: each worker first reads a token the driver wrote under ``.batch/`` and
the batch is refused, with that reason, when one cannot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from tqdm.auto import tqdm

from stmod.core.errors import MissingDependencyError, StmodError, UsageError
from stmod.core.types import as_tuple
from stmod.core.io.video import atomic_path
from stmod.plugins.batch.manifest import BatchError, BatchJob, BatchState, DistInfo, Manifest, group_jobs
from stmod.plugins.batch.run import BatchReport, evaluate_job, run_job, validate_jobs

__all__ = ["RayOptions", "WorkerSetup", "BatchWorker", "WorkerLost", "import_ray", "run_batch_on_ray"]

log = logging.getLogger(__name__)

#: Environment variables that select plugins: the driver's values are the workers' too.
PLUGIN_ENV = ("STMOD_LOAD_PLUGINS", "STMOD_DISABLE_PLUGINS")
#: The file under ``.batch/`` that proves a worker sees the driver's output folder.
PROBE = "ray-probe"


class WorkerLost(RuntimeError):
    """A job's Ray worker died on every try (the job is recorded as failed; not a problem of its input)."""


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`MissingDependencyError` that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError("stmod-run batch --engine ray", ["ray[data]"], extra="ray") from exc
    return ray


def _positive(name: str, minimum: float, *, strict: bool = False) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if value is not None and (value < minimum or (strict and value == minimum)):
            bound = f"> {minimum}" if strict else f">= {minimum}"
            raise UsageError(f"{name} must be {bound}, got {value}")
    return check


@attrs.frozen(kw_only=True)
class RayOptions:
    """Where the Ray cluster is and what each worker asks of it.

    :ivar address: ``None``: ``RAY_ADDRESS``, else the Ray that ``ray start`` started on this machine, else a
        new one here (Ray's own rule); ``auto``: the same but never a new one; ``local``: always a new one;
        ``ray://host:10001``: a remote cluster through Ray Client.
    :ivar workers: size of the pool; ``None``: as many as the cluster's resources hold now (one per
        group at most). More than it holds wait for the cluster to grow (an autoscaler).
    :ivar gpus_per_job: GPUs each worker reserves (``0.5``: two workers share a GPU).
    :ivar cpus_per_job: CPUs each worker reserves.
    :ivar max_retries: restarts of a worker that dies, and retries of the job it was running.
    """

    address: str | None = None
    workers: int | None = attrs.field(default=None, validator=_positive("--workers", 1))
    gpus_per_job: float = attrs.field(default=0.0, validator=_positive("--gpus-per-job", 0))
    cpus_per_job: float = attrs.field(default=1.0, validator=_positive("cpus_per_job", 0, strict=True))
    max_retries: int = attrs.field(default=3, validator=_positive("max_retries", 0))


def _str_map(value: Mapping[str, str]) -> dict[str, str]:
    """``dict(value)`` as a typed attrs converter."""
    return dict(value)


@attrs.frozen(kw_only=True)
class WorkerSetup:
    """What each worker builds its editor and evaluator from (the driver's plugin selection).

    :ivar plugin_args: ``-p`` values, as for :func:`~stmod.plugins.manager.make_plugin_manager`.
    :ivar plugin_env: ``STMOD_LOAD_PLUGINS`` / ``STMOD_DISABLE_PLUGINS`` as the driver sees them.
    :ivar cache: read and write the inversion cache (``--no-cache``: false).
    :ivar eval_options: an :class:`~stmod.plugins.eval.evaluate.EvalOptions` for ``--eval``, else ``None``.
    :ivar before_job: called in the worker as each job starts (fault injection in tests); what it raises
        fails that job.
    """

    plugin_args: tuple[str, ...] = attrs.field(default=(), converter=as_tuple)
    plugin_env: Mapping[str, str] = attrs.field(factory=dict, converter=_str_map)
    cache: bool = True
    eval_options: Any = None
    before_job: Callable[[BatchJob], None] | None = None

    @classmethod
    def from_env(cls, plugin_args: Sequence[str], env: Mapping[str, str], **kwargs: Any) -> WorkerSetup:
        return cls(plugin_args=tuple(plugin_args), plugin_env={k: env[k] for k in PLUGIN_ENV if k in env}, **kwargs)

    def editor(self) -> Any:
        """A new :class:`~stmod.core.pipeline.editor.Editor` over the selected plugins (no model loaded)."""
        from stmod.core.pipeline.editor import Editor
        from stmod.plugins.manager import make_plugin_manager

        registry = make_plugin_manager(plugin_args=self.plugin_args, env=self.plugin_env).registry
        return Editor(registry, progress=False, cache=None if self.cache else False)

    def evaluator(self) -> Any:
        """A prepared :class:`~stmod.plugins.eval.evaluate.Evaluator` (models loaded), or ``None``."""
        if self.eval_options is None:
            return None
        from stmod.plugins.eval.evaluate import Evaluator

        evaluator = Evaluator(self.eval_options)
        evaluator.prepare()
        return evaluator


class BatchWorker:
    """One worker of the pool (Ray makes it an actor): one editor, kept for every job it is sent.

    :param index: its place in the pool (its attempts go to ``.batch/log-rank<index>.jsonl``).
    """

    def __init__(self, index: int, workers: int, root: str, token: str, setup: WorkerSetup) -> None:
        self.dist = DistInfo(rank=index, world_size=workers, local_rank=0)
        self.state = BatchState(Path(root))
        self.token, self.setup = token, setup
        self.editor: Any = None
        self.evaluator: Any = None

    def _ready(self) -> None:
        """Check the shared filesystem and build the editor and evaluator, once per worker process."""
        if self.editor is not None:
            return
        probe = self.state.dir / PROBE
        try:
            seen = probe.read_text(encoding="utf-8") == self.token
        except OSError:
            seen = False
        if not seen:
            raise BatchError(f"it does not see the batch's output folder {self.state.root} as the driver wrote it "
                             f"(no token in {probe}); with --engine ray the driver and every worker must share one "
                             "filesystem for the manifest's inputs and the outputs (NFS, a cluster filesystem, one "
                             "volume mounted on every KubeRay pod); mount it on every node, or run --engine local")
        self.evaluator = self.setup.evaluator()
        self.editor = self.setup.editor()

    def hello(self) -> dict[str, Any]:
        """``{"host", "problem"}``: ``problem`` says why this worker cannot run jobs (``None``: it can)."""
        try:
            self._ready()
        except StmodError as exc:
            return {"host": socket.gethostname(), "problem": str(exc)}
        return {"host": socket.gethostname(), "problem": None}

    def run(self, job: BatchJob, finished_before: bool = False) -> str:
        """Run ``job``: ``"done"`` or ``"failed"`` (recorded in the files). A job the driver found finished
        (``finished_before``, sent for ``--eval`` only) gets its missing metrics and is ``"skipped"``; one
        found finished otherwise was finished by this worker before Ray restarted it."""
        self._ready()
        if self.state.status(job) == "done":
            if self.evaluator is not None:
                evaluate_job(job, self.evaluator, self.state, self.dist)
            return "skipped" if finished_before else "done"
        editor = self.editor if self.setup.before_job is None else _BeforeRun(self.editor, self.setup.before_job, job)
        return "done" if run_job(job, editor, self.state, self.dist, self.evaluator) else "failed"


@attrs.frozen
class _BeforeRun:
    """An editor that calls ``hook(job)`` as the job starts: what the hook raises fails the job, as the edit's
    own errors do, and a hook that ends the process kills the worker mid-job."""

    editor: Any
    hook: Callable[[BatchJob], None]
    job: BatchJob

    def run(self, spec: Any) -> Any:
        self.hook(self.job)
        return self.editor.run(spec)


@contextlib.contextmanager
def _connected(ray: Any, address: str | None) -> Iterator[None]:
    """Join (or start) Ray unless this process already did; leave it as found."""
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a new local Ray"
        raise BatchError(f"could not start or join Ray ({where}): {' '.join(str(exc).split())}; check --address "
                         "(auto: the cluster this machine belongs to, ray://HOST:10001: a remote one)") from exc
    try:
        yield
    finally:
        ray.shutdown()


def _pool_size(ray: Any, options: RayOptions, groups: int) -> int:
    """Workers to start: ``--workers``, else as many as the cluster holds now; never more than groups."""
    resources = ray.cluster_resources()
    if options.gpus_per_job > 0:
        have, unit = float(resources.get("GPU", 0)), options.gpus_per_job
        if have < unit and options.workers is None:
            raise BatchError(f"--gpus-per-job {unit:g}: the Ray cluster has {have:g} GPU(s); join a cluster with "
                             "GPUs (--address), or pass --workers N to wait for an autoscaler to add them")
    else:
        have, unit = float(resources.get("CPU", 1)), options.cpus_per_job
    fits = int(have // unit)
    if options.workers is not None and options.workers > fits:
        log.warning("%d workers asked for, the cluster holds %d now; the others start when it grows",
                    options.workers, fits)
    return max(1, min(options.workers or fits, groups))


class _Pool:
    """The actors, by index; a worker that Ray could not keep alive is replaced under the same index."""

    def __init__(self, ray: Any, manifest: Manifest, setup: WorkerSetup, options: RayOptions, size: int,
                 token: str) -> None:
        remote = ray.remote(max_restarts=options.max_retries, max_task_retries=options.max_retries)(BatchWorker)
        self._actor_class = remote.options(num_cpus=options.cpus_per_job, num_gpus=options.gpus_per_job)
        self.ray, self.size, self.token, self.setup = ray, size, token, setup
        self.tries = options.max_retries + 1
        self.root = str(manifest.output)
        self.actors: dict[int, Any] = {}
        self.greetings: dict[Any, int] = {}  # hello() calls not answered yet

    def spawn(self, index: int) -> None:
        old = self.actors.get(index)
        if old is not None:
            with contextlib.suppress(Exception):
                self.ray.kill(old, no_restart=True)
        actor = self._actor_class.remote(index, self.size, self.root, self.token, self.setup)
        self.actors[index] = actor
        self.greetings[actor.hello.remote()] = index

    def close(self) -> None:
        for actor in self.actors.values():
            with contextlib.suppress(Exception):
                self.ray.kill(actor, no_restart=True)


@contextlib.contextmanager
def _pool(ray: Any, manifest: Manifest, setup: WorkerSetup, options: RayOptions, size: int) -> Iterator[_Pool]:
    """Write the shared-filesystem token, start ``size`` workers; kill them and remove the token after."""
    state = BatchState(manifest.output)
    state.dir.mkdir(parents=True, exist_ok=True)
    token, probe = secrets.token_hex(16), state.dir / PROBE
    with atomic_path(probe) as tmp:
        tmp.write_text(token, encoding="utf-8")
    pool = _Pool(ray, manifest, setup, options, size, token)
    try:
        for index in range(size):
            pool.spawn(index)
        yield pool
    finally:
        pool.close()
        probe.unlink(missing_ok=True)


@attrs.frozen
class _Task:
    """One job sent to a worker; ``finished_before``: finished when the batch started (sent for ``--eval``)."""

    job: BatchJob
    finished_before: bool = False


@attrs.define
class _Progress:
    """What the driver shows: jobs done / failed / running (and skipped), on a bar."""

    bar: Any
    done: int = 0
    failed: int = 0
    skipped: int = 0

    def finished(self, outcome: str, running: int) -> None:
        self.done += outcome == "done"
        self.skipped += outcome == "skipped"
        self.failed += outcome in ("failed", "lost")  # lost: recorded as failed
        self.bar.update()
        self.show(running)

    def show(self, running: int) -> None:
        self.bar.set_postfix(done=self.done, failed=self.failed, running=running)


def _outcome(ray: Any, ref: Any, job: BatchJob, index: int, pool: _Pool, state: BatchState) -> str:
    """``done``, ``failed``, or ``lost``: its worker died on every try, so the job is recorded as failed
    and the worker is replaced."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayActorError as exc:
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        lost = WorkerLost(f"its Ray worker died on each of {pool.tries} tries ({cause}); the job ran out of "
                          "retries (see the worker's log for why it died: out of memory, a killed process, a lost node)")
        state.record_failure(job, lost, rank=index)
        state.log(job, "failed", dist=DistInfo(rank=index, world_size=pool.size))
        log.error("job %s failed: %s", job.name, lost)
        pool.spawn(index)
        return "lost"
    except ray.exceptions.RayTaskError as exc:  # the worker cannot run jobs at all (its _ready failed)
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
        raise BatchError(f"Ray worker {index}: {cause}") from None


def _greeting(ray: Any, ref: Any) -> dict[str, Any]:
    """A worker's answer to ``hello``; a worker that raised (a bug) or died while starting cannot run jobs."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        return {"host": "?", "problem": f"it raised {' '.join(str(getattr(exc, 'cause', exc)).split())[:300]}"}
    except ray.exceptions.RayError as exc:  # it died while starting, on every try
        return {"host": "?", "problem": f"it died while starting: {' '.join(str(exc).split())[:300]}"}


def _schedule(ray: Any, pool: _Pool, groups: Sequence[Sequence[_Task]], state: BatchState,
              progress: _Progress) -> None:
    """Hand each free worker the next group and each job of a group, in order, to the worker that has it.

    A worker joins the free ones once its ``hello`` says it can run jobs; one that cannot stops the batch.
    """
    queue, free = deque(groups), deque[int]()
    running: dict[Any, tuple[int, BatchJob, Sequence[_Task]]] = {}

    def start(index: int, tasks: Sequence[_Task]) -> None:
        task = tasks[0]
        running[pool.actors[index].run.remote(task.job, task.finished_before)] = (index, task.job, tasks[1:])

    while queue or running:
        while free and queue:
            start(free.popleft(), queue.popleft())
        progress.show(len(running))
        [ref], _ = ray.wait([*running, *pool.greetings], num_returns=1)
        if ref in pool.greetings:
            index = pool.greetings.pop(ref)
            reply = _greeting(ray, ref)
            if reply["problem"]:
                raise BatchError(f"Ray worker {index} on {reply['host']} cannot run jobs: {reply['problem']}")
            free.append(index)
            continue
        index, job, rest = running.pop(ref)
        outcome = _outcome(ray, ref, job, index, pool, state)
        if outcome == "lost":  # its worker is being replaced: the rest of the group goes to the next free one
            if rest:
                queue.appendleft(rest)
        elif rest:
            start(index, rest)
        else:
            free.append(index)
        progress.finished(outcome, len(running))


def _todo(manifest: Manifest, state: BatchState, retry_failed: bool,
          evaluate: bool) -> tuple[list[list[_Task]], int]:
    """Each group's jobs to send (as ``--engine local`` decides: unfinished ones, and with ``evaluate``
    the finished ones too, for their metrics) and how many jobs are skipped without being sent."""
    groups, skipped = [], 0
    for group in group_jobs(manifest.jobs):
        tasks = []
        for job in group:
            status = state.status(job)
            if status == "done" and evaluate:
                tasks.append(_Task(job, finished_before=True))
            elif status == "done" or (status == "failed" and not retry_failed):
                skipped += 1
            else:
                if status == "stale":
                    log.warning("job %s: its output folder holds another job definition; it is re-run", job.name)
                tasks.append(_Task(job))
        if tasks:
            groups.append(tasks)
    return groups, skipped


def job_copy_problem(output: Path, env: Mapping[str, str], cwd: Path) -> str | None:
    """Why ``output`` cannot hold a batch's results when this process is a Ray job's entrypoint run in Ray's
    copy of ``--working-dir`` (``cwd``): that copy is deleted with the Ray session, so results written under
    it are lost. ``None`` when it is fine (not a Ray job, no working dir, or an output elsewhere)."""
    try:
        runtime_env = json.loads(env.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    if not runtime_env.get("working_dir"):
        return None
    output, cwd = output.absolute(), cwd.absolute()
    if output != cwd and cwd not in output.parents:
        return None
    return (f"the output folder {output} is inside Ray's copy of the job's --working-dir ({cwd}), which Ray "
            "deletes with its session: give the manifest an absolute output: on the filesystem every node "
            "shares")


def run_batch_on_ray(
    manifest: Manifest,
    *,
    setup: WorkerSetup = WorkerSetup(),
    options: RayOptions = RayOptions(),
    retry_failed: bool = True,
    progress: bool = True,
    validator: Any = None,
) -> BatchReport:
    """Run every unfinished job of ``manifest`` on a pool of Ray workers; returns what was done.

    Finished jobs are skipped, as with ``--engine local``; failed ones are retried unless
    ``retry_failed`` is false. ``validator`` (an editor; default: ``setup.editor()``) checks every job on
    this process before Ray is started or joined. When this process has already called ``ray.init``, its
    Ray is used and left running; otherwise Ray is started or joined at ``options.address`` and shut down.

    :raises BatchError: before anything runs for an invalid job, a cluster without the GPUs asked for, a
        worker that cannot see the output folder, or an output inside a Ray job's copy of its working dir; :raises MissingDependencyError: without ``ray``.
    """
    ray = import_ray()
    problem = job_copy_problem(manifest.output, os.environ, Path.cwd())
    if problem is not None:
        raise BatchError(problem)
    validate_jobs(manifest, validator if validator is not None else setup.editor())
    state = BatchState(manifest.output)
    with state.claim(manifest, rank=0):
        groups, skipped = _todo(manifest, state, retry_failed, evaluate=setup.eval_options is not None)
        size, counts = 0, _Progress(bar=None, skipped=skipped)
        if groups:
            with _connected(ray, options.address):
                size = _pool_size(ray, options, len(groups))
                total = sum(len(group) for group in groups)
                with tqdm(total=total, desc=f"batch (ray, {size} workers)", unit="job", disable=not progress) as bar, \
                        _pool(ray, manifest, setup, options, size) as pool:
                    counts.bar = bar
                    _schedule(ray, pool, groups, state, counts)
        summary = state.merge(manifest, world_size=max(size, 1))
    return BatchReport(rank=0, world_size=max(size, 1), assigned=len(manifest.jobs), done=counts.done,
                       failed=counts.failed, skipped=counts.skipped, summary=summary)
