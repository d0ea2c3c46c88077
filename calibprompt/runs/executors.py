"""Executors: how the training runs of a comparison or a reproduction are trained.

:func:`calibprompt.runs.compare.run_comparison` and :func:`calibprompt.runs.reproduce.reproduce` plan
their runs as :class:`JobGroup` s (the jobs of one backbone and dataset, each with its queued run in the
store) and hand them to an *executor*: any callable

    ``executor(groups, store, *, on_step=None, on_done=None, on_event=None) -> None``

that trains every group and records each run in ``store`` (``on_step(run_id, info)`` after training
steps, ``on_done(record)`` with each recorded run, ``on_event(dict)`` for the executor's own events). A
run it could not train ends ``failed`` (or ``cancelled``), never ``queued``; a failure is raised once every
run is accounted for. The entry point chooses the executor:

- :class:`Batched` (the default): the jobs of a group trained in one loop, in this process
  (:func:`calibprompt.runs.batch.run_train_jobs`; each run's result equals training it alone);
- :class:`OneByOne`: one job after the other, in this process
  (:func:`calibprompt.runs.jobs.run_train_job`);
- ``calibprompt.cluster.runs.RayExecutor``: each group as a Ray task (the optional ``cluster`` layer,
  which builds on this one: ``runs`` never imports ``cluster``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from calibprompt import defaults
from calibprompt.backbones import load_backbone
from calibprompt.devices import resolve_device
from calibprompt.runs.batch import run_train_jobs
from calibprompt.runs.jobs import TrainJob, failure_text, run_train_job
from calibprompt.runs.store import RunRecord, RunStore
from calibprompt.training.trainer import StepInfo

logger = logging.getLogger(__name__)

__all__ = ["JobGroup", "Executor", "Batched", "OneByOne", "local_executor"]

OnStep = Callable[[str, StepInfo], None]
OnDone = Callable[[RunRecord], None]
OnEvent = Callable[[dict], None]


@dataclass
class JobGroup:
    """Runs that share a backbone and dataset: their jobs and the ids of their queued runs.

    ``backbone``: the jobs' model already loaded in this process (optional): the in-process executors
    train on it instead of loading the model again; nothing else uses it (it never travels).
    """

    jobs: list[TrainJob]
    run_ids: list[str]
    backbone: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if len(self.jobs) != len(self.run_ids) or not self.jobs:
            raise ValueError(f"A group needs one run id per job; got {len(self.jobs)} jobs, {len(self.run_ids)} ids.")

    @property
    def name(self) -> str:
        learners = sorted({job.learner for job in self.jobs})
        which = f"/{learners[0]}" if learners != [defaults.LEARNER] and len(learners) == 1 else ""
        return f"{self.jobs[0].model}/{self.jobs[0].dataset}{which}"

    @classmethod
    def create(cls, store: RunStore, jobs: Sequence[TrainJob], backbone: Any = None) -> JobGroup:
        """A group of ``jobs`` with a queued ``train`` run created in ``store`` for each."""
        jobs = list(jobs)
        run_ids = [store.create_run("train", job.to_params(), slug=job.slug) for job in jobs]
        return cls(jobs, run_ids, backbone)


class Executor(Protocol):
    """Trains job groups and records their runs (see the module docstring)."""

    def __call__(self, groups: Sequence[JobGroup], store: RunStore, *, on_step: OnStep | None = None,
                 on_done: OnDone | None = None, on_event: OnEvent | None = None) -> None: ...


class _Backbones:
    """The backbone of each group in turn: the group's own, else the model loaded by name on the jobs'
    device, keeping only the last one loaded (one backbone in memory at a time)."""

    def __init__(self):
        self.key: tuple[str, str] | None = None
        self.backbone = None

    def of(self, group: JobGroup):
        if group.backbone is not None:
            return group.backbone
        key = (group.jobs[0].model, str(resolve_device(group.jobs[0].device)))
        if key != self.key:
            self.key, self.backbone = None, None  # free the previous model before loading the next
            self.backbone = load_backbone(key[0], device=key[1])
            self.key = key
        return self.backbone


def _give_up(store: RunStore, run_ids: Sequence[str], exc: BaseException) -> None:
    """Mark the runs still queued failed: they were not trained because an earlier one failed."""
    for run_id in run_ids:
        if store.get_run(run_id).status == "queued":
            store.fail_run(run_id, f"Not trained: an earlier run of the same call failed ({failure_text(exc)}).")


def _bound(on_step: OnStep | None, run_id: str) -> Callable[[StepInfo], None] | None:
    return None if on_step is None else (lambda info: on_step(run_id, info))


@dataclass
class Batched:
    """Each group's jobs trained in one loop in this process (:func:`calibprompt.runs.batch.run_train_jobs`),
    at most ``max_batch_prompts`` prompts per text-encoder pass; ``n_boot`` bootstrap resamples per
    evaluation. Groups run one after the other; a failure leaves the later groups' runs failed and raises."""

    max_batch_prompts: int | None = defaults.MAX_BATCH_PROMPTS
    n_boot: int = defaults.N_BOOT

    def __call__(self, groups: Sequence[JobGroup], store: RunStore, *, on_step: OnStep | None = None,
                 on_done: OnDone | None = None, on_event: OnEvent | None = None) -> None:
        groups, backbones = list(groups), _Backbones()
        for index, group in enumerate(groups):
            try:
                run_train_jobs(group.jobs, store, run_ids=group.run_ids, backbone=backbones.of(group),
                               max_batch_prompts=self.max_batch_prompts, on_step=on_step, on_done=on_done,
                               n_boot=self.n_boot)  # a failure raises; nothing cancels it
            except BaseException as exc:
                _give_up(store, [r for g in groups[index:] for r in g.run_ids], exc)
                raise


@dataclass
class OneByOne:
    """Every job trained alone, one after the other, in this process
    (:func:`calibprompt.runs.jobs.run_train_job`); ``n_boot`` bootstrap resamples per evaluation. A failure
    leaves the runs not yet trained failed and raises."""

    n_boot: int = defaults.N_BOOT

    def __call__(self, groups: Sequence[JobGroup], store: RunStore, *, on_step: OnStep | None = None,
                 on_done: OnDone | None = None, on_event: OnEvent | None = None) -> None:
        groups, backbones = list(groups), _Backbones()
        pending = [run_id for group in groups for run_id in group.run_ids]
        try:
            for group in groups:
                backbone = backbones.of(group)
                for job, run_id in zip(group.jobs, group.run_ids):
                    record = run_train_job(job, store, run_id=run_id, backbone=backbone,
                                           on_step=_bound(on_step, run_id), n_boot=self.n_boot)
                    pending.remove(run_id)
                    if on_done is not None:
                        on_done(record)
        except BaseException as exc:
            _give_up(store, pending, exc)
            raise


def local_executor(batched: bool = True, *, max_batch_prompts: int | None = defaults.MAX_BATCH_PROMPTS,
                   n_boot: int = defaults.N_BOOT) -> Executor:
    """The in-process executor: :class:`Batched` (``batched``) or :class:`OneByOne`."""
    return Batched(max_batch_prompts=max_batch_prompts, n_boot=n_boot) if batched else OneByOne(n_boot=n_boot)
