"""Groups of training runs as Ray tasks; the driver keeps the run store.

Each group (the runs of one backbone and dataset: a comparison table, or one pair of the paper's
table) becomes one Ray task with the resources it asks for. The task loads the backbone by name on
its worker, computes the image features there (the data must be at the same path on every worker: a
shared filesystem), trains the group together (:func:`calibprompt.runs.batch.train_jobs`) and returns
each run's :class:`~calibprompt.runs.jobs.JobOutcome` (context vectors, metrics, predictions): what
travels is job settings and run ids one way, results the other, never a model. The driver writes
every outcome itself (SQLite stays single-writer; the checkpoint atomically, then the record in one
transaction), so a lost task leaves nothing half-written. A task whose worker dies is retried by Ray
(``max_retries``); the retry is reported, and a task that still fails marks its runs failed.

Progress: the tasks report their steps to a small actor that the driver reads while it waits, so
``on_step`` (the CLI's progress bar) sees them.

:class:`RayExecutor` is this module as an executor of the runs layer
(:mod:`calibprompt.runs.executors`): an entry point builds one (:func:`ray_executor` connects first) and
hands it to :func:`calibprompt.runs.compare.run_comparison` or :func:`calibprompt.runs.reproduce.reproduce`.
:class:`~calibprompt.runs.executors.JobGroup` lives in the runs layer and is re-exported here.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from calibprompt import defaults
from calibprompt.cluster.connect import connect_for_tasks, local_env, require_ray
from calibprompt.runs.executors import JobGroup
from calibprompt.runs.jobs import JobOutcome, TrainJob, record_outcome
from calibprompt.runs.store import RunRecord, RunStore
from calibprompt.training.trainer import StepInfo

logger = logging.getLogger(__name__)

__all__ = ["JobGroup", "RayOptions", "RayExecutor", "ray_executor", "train_groups_on_ray", "describe_event"]


@dataclass
class RayOptions:
    """How each group's task runs.

    Attributes:
        gpus_per_task: GPUs a task asks for (0: it trains on the CPU; fractions share a GPU).
        cpus_per_task: CPUs a task asks for (also its torch threads).
        max_retries: how often Ray reruns a task whose worker died.
        max_batch_prompts: prompts per text-encoder pass inside a task.
        n_boot: bootstrap resamples of each run's evaluation.
        setup: functions each task calls first (e.g. ``calibprompt.demo.register`` so that the demo
            world's models and datasets resolve on the workers); sent by reference.
        env_vars: environment of the tasks' worker processes (Ray's ``runtime_env``), e.g. the driver's
            ``CALIBPROMPT_HOME`` on a local cluster so that the workers resolve dataset names and keep
            their feature cache where the driver does.
    """

    gpus_per_task: float = 0.0
    cpus_per_task: float = 1.0
    max_retries: int = 2
    max_batch_prompts: int | None = defaults.MAX_BATCH_PROMPTS
    n_boot: int = defaults.N_BOOT
    setup: Sequence[Callable[[], Any]] = field(default_factory=tuple)
    env_vars: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.gpus_per_task < 0 or self.cpus_per_task <= 0:
            raise ValueError("A task needs more than 0 CPUs and at least 0 GPUs.")
        if int(self.max_retries) < 0:
            raise ValueError("max_retries must be at least 0.")


class _Board:
    """Ray actor: the latest step of every run and the start of every task attempt."""

    def __init__(self):
        self.steps: dict[str, dict] = {}
        self.starts: list[dict] = []

    def start(self, group: int, pid: int, host: str) -> None:
        self.starts.append({"group": group, "pid": pid, "host": host, "time": time.time()})

    def step(self, run_id: str, info: dict) -> None:
        self.steps[run_id] = info

    def read(self) -> tuple[dict[str, dict], list[dict]]:
        return dict(self.steps), list(self.starts)


def _train_group_task(group: int, jobs: list[dict], run_ids: list[str], options: RayOptions, board) -> list[JobOutcome]:
    """The body of one group's Ray task (runs on a worker)."""
    import ray
    import torch

    from calibprompt.backbones import load_backbone
    from calibprompt.runs.batch import train_jobs

    for fn in options.setup:
        fn()
    torch.set_num_threads(max(1, int(options.cpus_per_task)))
    device = "cuda" if options.gpus_per_task > 0 and torch.cuda.is_available() else "cpu"
    ray.get(board.start.remote(group, os.getpid(), socket.gethostname()))
    trained = [TrainJob(**{**job, "device": device}) for job in jobs]
    backbone = load_backbone(trained[0].model, device=device)
    last: dict[str, float] = {}

    def on_step(run_id: str, info: StepInfo) -> None:
        now = time.monotonic()
        if now - last.get(run_id, float("-inf")) >= 0.5 or info.global_step == info.total_steps:
            last[run_id] = now
            board.step.remote(run_id, info.to_dict())

    return train_jobs(trained, run_ids, backbone, max_batch_prompts=options.max_batch_prompts, on_step=on_step,
                      n_boot=options.n_boot)


class _Watcher:
    """The driver's view of the board: each task attempt's start (``on_event``: ``start``, or ``retry``
    when a task starts again after its worker was lost) and the runs' steps (written to the store at most
    once a second and at the last step; all passed to ``on_step``)."""

    def __init__(self, ray, board, groups: Sequence[JobGroup], store: RunStore,
                 on_step: Callable[[str, StepInfo], None] | None, on_event: Callable[[dict], None] | None):
        self.ray, self.board, self.groups, self.store = ray, board, groups, store
        self.on_step, self.on_event = on_step, on_event
        self.seen_steps: dict[str, int] = {}
        self.seen_starts = 0
        self.attempts: dict[int, int] = {}
        self.last_write: dict[str, float] = {}

    def poll(self) -> None:
        steps, starts = self.ray.get(self.board.read.remote())
        for start in starts[self.seen_starts:]:
            self._started(start)
        self.seen_starts = len(starts)
        now = time.monotonic()
        for run_id, info in steps.items():
            if info["global_step"] == self.seen_steps.get(run_id):
                continue
            self.seen_steps[run_id] = info["global_step"]
            if now - self.last_write.get(run_id, float("-inf")) >= 1.0 or info["global_step"] == info["total_steps"]:
                self.last_write[run_id] = now
                if self.store.get_run(run_id).status == "running":
                    self.store.update_progress(run_id, info)
            if self.on_step is not None:
                self.on_step(run_id, StepInfo(**info))

    def _started(self, start: dict) -> None:
        group = start["group"]
        self.attempts[group] = self.attempts.get(group, 0) + 1
        event = "start" if self.attempts[group] == 1 else "retry"
        if event == "retry":
            logger.warning("The task of group %s (%s) started again on %s (attempt %d): its worker was lost.",
                           group, self.groups[group].name, start["host"], self.attempts[group])
        if self.on_event is not None:
            self.on_event({"event": event, "group": group, "attempt": self.attempts[group], "pid": start["pid"],
                           "host": start["host"]})


def _submit(ray, groups: Sequence[JobGroup], store: RunStore, options: RayOptions, board) -> dict[Any, int]:
    """Start every group's runs and submit its task; returns task reference -> group index."""
    task = ray.remote(_train_group_task)
    pending = {}
    for index, group in enumerate(groups):
        for run_id in group.run_ids:
            store.start_run(run_id, "ray")
        ref = task.options(num_cpus=options.cpus_per_task, num_gpus=options.gpus_per_task,
                           max_retries=int(options.max_retries), retry_exceptions=False,
                           runtime_env={"env_vars": dict(options.env_vars)} if options.env_vars else None,
                           name=f"calibprompt-group-{index}").remote(
            index, [job.to_params() for job in group.jobs], list(group.run_ids), options, board)
        pending[ref] = index
    return pending


def _record(ray, ref, index: int, group: JobGroup, store: RunStore, on_done: Callable[[RunRecord], None] | None,
            on_event: Callable[[dict], None] | None) -> str | None:
    """Record the runs of a finished task; for a failed one mark its runs failed and return why."""
    try:
        outcomes = ray.get(ref)
    except Exception as exc:  # the task failed, or its worker was lost more often than max_retries
        message = f"Ray task of {group.name} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:500]}"
        for run_id in group.run_ids:
            if store.get_run(run_id).status in ("queued", "running"):
                store.fail_run(run_id, message)
        if on_event is not None:
            on_event({"event": "failed", "group": index, "error": message})
        return message
    for outcome in outcomes:
        record = record_outcome(store, outcome)
        if on_done is not None:
            on_done(record)
    return None


def train_groups_on_ray(groups: Sequence[JobGroup], store: RunStore, options: RayOptions | None = None, *,
                        on_step: Callable[[str, StepInfo], None] | None = None,
                        on_done: Callable[[RunRecord], None] | None = None,
                        on_event: Callable[[dict], None] | None = None, poll_seconds: float = 0.5) -> list[RunRecord]:
    """Run every group as a Ray task on the connected cluster (:func:`~calibprompt.cluster.connect.connect`
    first) and record the results; returns the runs of all groups, in order.

    ``on_step(run_id, info)`` gets the tasks' steps, ``on_done(record)`` each recorded run,
    ``on_event`` dicts ``{"event": "start" | "retry" | "failed", "group", ...}`` (a ``retry`` when a
    task starts again after its worker was lost). Groups that still fail after their retries leave
    their runs ``failed``; then ``RuntimeError`` names them, after every other group is recorded.
    """
    ray = require_ray()
    if not ray.is_initialized():
        raise RuntimeError("Not connected to Ray: call calibprompt.cluster.connect.connect(address) first.")
    options = options or RayOptions()
    groups = list(groups)
    board = ray.remote(num_cpus=0)(_Board).remote()
    pending = _submit(ray, groups, store, options, board)
    watcher = _Watcher(ray, board, groups, store, on_step, on_event)
    failures: list[str] = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=poll_seconds)
        watcher.poll()
        for ref in done:
            index = pending.pop(ref)
            failure = _record(ray, ref, index, groups[index], store, on_done, on_event)
            if failure is not None:
                failures.append(failure)
    watcher.poll()
    if failures:
        raise RuntimeError("; ".join(failures))
    return [store.get_run(run_id) for group in groups for run_id in group.run_ids]


@dataclass
class RayExecutor:
    """The runs layer's executor (:class:`calibprompt.runs.executors.Executor`) on the connected Ray
    cluster: every group one Ray task, all submitted at once (:func:`train_groups_on_ray`); the groups'
    ``backbone`` is not used (each task loads its model by name)."""

    options: RayOptions = field(default_factory=RayOptions)

    def __call__(self, groups: Sequence[JobGroup], store: RunStore, *,
                 on_step: Callable[[str, StepInfo], None] | None = None,
                 on_done: Callable[[RunRecord], None] | None = None,
                 on_event: Callable[[dict], None] | None = None) -> None:
        train_groups_on_ray(groups, store, self.options, on_step=on_step, on_done=on_done, on_event=on_event)


def ray_executor(address: str, *, gpus_per_task: float = 0.0, cpus_per_task: float = 1.0,
                 **options: Any) -> RayExecutor:
    """Start or join the Ray cluster at ``address`` (:func:`~calibprompt.cluster.connect.connect_for_tasks`)
    and an executor whose tasks ask for ``gpus_per_task`` and ``cpus_per_task``; ``options``: the other
    fields of :class:`RayOptions` (``env_vars`` defaults to :func:`~calibprompt.cluster.connect.local_env`:
    on a local cluster the workers share this process's data directory)."""
    connect_for_tasks(address, gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task)
    options.setdefault("env_vars", local_env(address))
    return RayExecutor(RayOptions(gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task, **options))


def describe_event(event: dict) -> str | None:
    """A line for a user about an ``on_event`` dict of :func:`train_groups_on_ray` (None for a task's first
    start, which is not news)."""
    if event["event"] == "retry":
        return (f"Ray task {event['group']} restarted on {event['host']} (attempt {event['attempt']}): its worker "
                "was lost")
    if event["event"] == "failed":
        return event["error"]
    return None
