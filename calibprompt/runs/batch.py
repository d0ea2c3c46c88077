"""Many prompt-tuning jobs on one backbone, trained together and recorded one by one.

:func:`run_train_jobs` is :func:`calibprompt.runs.jobs.run_train_job` for a list of jobs that share a
model and a device (a comparison table: methods x seeds on one dataset): every run is created in the
store, the image features of every image any job needs are computed in one pass (large batches,
each image once), the jobs whose prompts can stack are trained in one loop
(:func:`calibprompt.training.batched.train_many`; each run's result equals training it alone), and each
run is evaluated and recorded as soon as its group is done. A cancelled or failed group leaves its
runs ``cancelled`` or ``failed``, never half-written.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

from calibprompt import defaults
from calibprompt.backbones import load_backbone
from calibprompt.devices import resolve_device
from calibprompt.runs.jobs import (JobOutcome, TrainJob, evaluate_trained, failure_text, prepare_jobs,
                                  record_outcome, recording_progress)
from calibprompt.runs.store import RunRecord, RunStore
from calibprompt.training.batched import RunInputs, layout_key, train_many
from calibprompt.training.trainer import StepInfo, TrainingCancelled, resolve_settings, train_prompts

logger = logging.getLogger(__name__)

__all__ = ["run_train_jobs", "train_jobs"]


def _group_key(prepared, backbone) -> tuple:
    config = prepared.job.config()
    settings = resolve_settings(config, backbone.family)
    return (tuple(prepared.task.classnames), layout_key(config), settings["precision"], settings["double_embedding"])


def train_jobs(jobs: Sequence[TrainJob], run_ids: Sequence[str], backbone, *,
               max_batch_prompts: int | None = defaults.MAX_BATCH_PROMPTS,
               on_step: Callable[[str, StepInfo], None] | None = None,
               should_stop: Callable[[], bool] | None = None,
               on_outcome: Callable[[JobOutcome], None] | None = None,
               n_boot: int = defaults.N_BOOT, load_seconds: float = 0.0) -> list[JobOutcome]:
    """Train and evaluate ``jobs`` on ``backbone`` together, writing nothing but the feature cache;
    returns each run's :class:`~calibprompt.runs.jobs.JobOutcome` (``run_ids[i]`` names job ``i``'s).
    ``on_outcome`` gets each outcome as soon as its group of stackable runs is done. This is the part
    of :func:`run_train_jobs` that can run anywhere (a Ray worker, say); writing is the caller's.
    ``load_seconds`` (loading the backbone) is shared out among the jobs' timings."""
    jobs, run_ids = list(jobs), list(run_ids)
    if len(run_ids) != len(jobs):
        raise ValueError(f"Got {len(run_ids)} run ids for {len(jobs)} jobs.")
    t0 = time.perf_counter()
    prepared = prepare_jobs(jobs, backbone)  # one split per (dataset, shots, seed), one feature pass per kind
    for p in prepared:
        p.timings["load_seconds"] += load_seconds / len(jobs)
    groups: dict[tuple, list[int]] = {}
    alone: list[int] = []  # the other learners than coop: trained one by one, in the same call
    for i, p in enumerate(prepared):
        if p.job.learner != defaults.LEARNER:
            alone.append(i)
        else:
            groups.setdefault(_group_key(p, backbone), []).append(i)
    outcomes: list[JobOutcome | None] = [None] * len(jobs)
    for members in groups.values():
        ids = [run_ids[i] for i in members]
        task = prepared[members[0]].task
        inputs = [RunInputs(prepared[i].job.config(), prepared[i].train_features, prepared[i].train.labels,
                            zero_shot_text=prepared[i].zero_shot_text) for i in members]
        results = train_many(backbone, task.classnames, inputs, task=task, max_batch_prompts=max_batch_prompts,
                             on_step=None if on_step is None else lambda k, info, ids=ids: on_step(ids[k], info),
                             should_stop=should_stop)
        for i, result in zip(members, results):
            outcomes[i] = evaluate_trained(prepared[i], result, backbone, run_ids[i], n_boot=n_boot,
                                           extra_timings={"trained_together": len(members)})
            if on_outcome is not None:
                on_outcome(outcomes[i])
    for i in alone:
        outcomes[i] = _train_alone(prepared[i], backbone, run_ids[i], on_step=on_step, should_stop=should_stop,
                                   n_boot=n_boot)
        if on_outcome is not None:
            on_outcome(outcomes[i])
    logger.info("Trained %d runs in %d group(s) in %.1f s", len(jobs), len(groups), time.perf_counter() - t0)
    return outcomes


def _train_alone(prepared, backbone, run_id: str, *, on_step=None, should_stop=None,
                 n_boot: int = defaults.N_BOOT) -> JobOutcome:
    """Train one job of another learner than coop on its own (:func:`train_prompts`: a registry prompt
    learner through the prompt loop, a feature learner on the cached features) and evaluate it."""
    job = prepared.job
    result = train_prompts(backbone, prepared.task.classnames, prepared.train_features, prepared.train.labels,
                           prepared.config or job.config(backbone.family), task=prepared.task,
                           zero_shot_text=prepared.zero_shot_text,
                           on_step=None if on_step is None else lambda info: on_step(run_id, info),
                           should_stop=should_stop)
    return evaluate_trained(prepared, result, backbone, run_id, n_boot=n_boot)


def run_train_jobs(jobs: Sequence[TrainJob], store: RunStore, *, run_ids: Sequence[str] | None = None, backbone=None,
                   max_batch_prompts: int | None = defaults.MAX_BATCH_PROMPTS,
                   on_step: Callable[[str, StepInfo], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   on_done: Callable[[RunRecord], None] | None = None,
                   n_boot: int = defaults.N_BOOT) -> list[RunRecord]:
    """Train ``jobs`` together and record each; returns their runs in order (see the module docstring).

    Args:
        jobs: jobs on one model and device (``ValueError`` otherwise).
        store: the run store.
        run_ids: ids of queued runs already created for the jobs (default: create them).
        backbone: the loaded backbone (default: load ``jobs[0].model``).
        max_batch_prompts: at most this many prompts per text-encoder pass (``None``: no bound).
        on_step: ``on_step(run_id, info)`` after every step of every run.
        should_stop: polled before every step; when true, the unfinished runs end ``cancelled``.
        on_done: called with each finished run as soon as it is recorded.
        n_boot: bootstrap resamples of the evaluations' intervals.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    if len({(j.model, str(resolve_device(j.device))) for j in jobs}) > 1:
        raise ValueError("Jobs trained together must share the model and the device.")
    run_ids = list(run_ids) if run_ids is not None else [
        store.create_run("train", j.to_params(), slug=j.slug) for j in jobs]
    if len(run_ids) != len(jobs):
        raise ValueError(f"Got {len(run_ids)} run ids for {len(jobs)} jobs.")
    device = resolve_device(jobs[0].device)
    for run_id in run_ids:
        store.start_run(run_id, str(device))
    finished: set[str] = set()

    def record(outcome: JobOutcome) -> None:
        rec = record_outcome(store, outcome)
        finished.add(outcome.run_id)
        if on_done is not None:
            on_done(rec)

    try:
        t0 = time.perf_counter()
        if backbone is None or backbone.device != device:
            backbone = load_backbone(jobs[0].model, device=device)
        load_seconds = time.perf_counter() - t0

        progress = {run_id: recording_progress(store, run_id, _bound(on_step, run_id)) for run_id in run_ids}
        train_jobs(jobs, run_ids, backbone, max_batch_prompts=max_batch_prompts,
                   on_step=lambda run_id, info: progress[run_id](info), should_stop=should_stop,
                   on_outcome=record, n_boot=n_boot, load_seconds=load_seconds)
    except TrainingCancelled:
        for run_id in run_ids:
            if run_id not in finished and store.get_run(run_id).status in ("queued", "running"):
                store.cancel_run(run_id)
    except BaseException as exc:
        for run_id in run_ids:
            if run_id not in finished and store.get_run(run_id).status in ("queued", "running"):
                store.fail_run(run_id, failure_text(exc))
        raise
    return [store.get_run(run_id) for run_id in run_ids]


def _bound(on_step: Callable[[str, StepInfo], None] | None, run_id: str) -> Callable[[StepInfo], None] | None:
    if on_step is None:
        return None
    return lambda info: on_step(run_id, info)
