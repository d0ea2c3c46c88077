"""Paper-style comparisons: several methods over several seeds on one backbone and dataset.

Each (seed, method) is a stored training run (zero-shot is evaluated on the same seed's test split),
so every prompt a comparison learns is available in the app afterwards. :func:`summarize` reduces
the rows to mean and standard deviation per method, as in the paper's tables.
"""
from __future__ import annotations

import logging
import statistics
from typing import Any, Callable, Sequence

from calibprompt import defaults
from calibprompt.data.layouts import few_shot_split
from calibprompt.training.features import FeatureCache
from calibprompt.runs.executors import Executor, JobGroup, local_executor
from calibprompt.runs.jobs import TrainJob, evaluate_zero_shot, find_done_run, open_dataset
from calibprompt.training.losses import get_method
from calibprompt.backbones import load_backbone
from calibprompt.runs.store import RunStore

logger = logging.getLogger(__name__)

__all__ = ["ROW_FIELDS", "LEARNER_ROW_FIELDS", "METRIC_FIELDS", "parse_methods", "parse_learners", "run_comparison",
           "summarize"]

METRIC_FIELDS = ("accuracy", "ece", "mce", "ace", "nll", "brier", "mean_confidence")
ROW_FIELDS = ("method", "seed") + METRIC_FIELDS + ("train_seconds",)
#: the rows of a comparison over learners (``learners=...``): the learner first, and ``refused`` (why a
#: learner x method combination does not exist, its metrics None; "" for a trained row)
LEARNER_ROW_FIELDS = ("learner",) + ROW_FIELDS + ("refused",)
ZERO_SHOT = "zeroshot"


def parse_learners(text: str | Sequence[str]) -> list[str]:
    """``"coop,cocoop,lp++"`` -> the registry's learner names, deduplicated in order (``ValueError``
    naming the learners for an unknown one, or for none)."""
    from calibprompt.training.learners import learner_name, list_learners

    items = text.split(",") if isinstance(text, str) else list(text)
    learners: list[str] = []
    for item in (str(i).strip() for i in items):
        if item and learner_name(item) not in learners:
            learners.append(learner_name(item))
    if not learners:
        raise ValueError(f"Name at least one learner, e.g. --learners coop,cocoop; the learners are: "
                         f"{', '.join(list_learners())}.")
    return learners


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"zeroshot,coop,calibprompt"`` -> validated method names (``zero-shot`` is accepted too)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    methods = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        if item in ("zeroshot", "zero-shot", "zero_shot", "zs"):
            item = ZERO_SHOT
        else:
            item = get_method(item).name  # ValueError names the methods
        if item not in methods:
            methods.append(item)
    if not methods:
        raise ValueError("Name at least one method, e.g. --methods zeroshot,coop,calibprompt.")
    return methods


def _row(method: str, seed: int, metrics: dict[str, Any], train_seconds: float) -> dict[str, Any]:
    return {"method": method, "seed": seed, **{k: float(metrics[k]) for k in METRIC_FIELDS},
            "train_seconds": float(train_seconds)}


def _refused_row(learner: str, method: str, seed: int, reason: str) -> dict[str, Any]:
    """The row of a combination that does not exist: no metrics, ``refused`` says why and what works."""
    return {"learner": learner, "method": method, "seed": seed, **{k: None for k in METRIC_FIELDS},
            "train_seconds": 0.0, "refused": reason}


def run_comparison(model: str, dataset: str, methods: Sequence[str], seeds: Sequence[int], *, task: str | None = None,
                   shots: int = defaults.SHOTS, epochs: int = defaults.EPOCHS, n_bins: int = defaults.N_BINS,
                   device: str = "auto",
                   loss_params: dict[str, float] | None = None, store: RunStore | None = None,
                   on_result: Callable[[dict[str, Any]], None] | None = None, n_boot: int = defaults.N_BOOT_TABLE,
                   protocol: str = defaults.PROTOCOL, precision: str | None = None, batched: bool = True,
                   max_batch_prompts: int | None = defaults.MAX_BATCH_PROMPTS, backbone=None, resume: bool = False,
                   lr: float = defaults.LR, executor: Executor | None = None,
                   on_step: Callable | None = None, on_event: Callable | None = None,
                   learners: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Train and evaluate every method on every seed; returns one row per (method, seed), in seed then
    method order, with the fields of :data:`ROW_FIELDS` (fractions, not percent). ``protocol`` and
    ``precision`` are those of :class:`calibprompt.runs.jobs.TrainJob` (recorded with every run).

    The training runs form one :class:`~calibprompt.runs.executors.JobGroup`, trained by ``executor``
    (:mod:`calibprompt.runs.executors`; e.g. ``calibprompt.cluster.runs.RayExecutor`` for a Ray cluster).
    Without one they are trained here: with ``batched`` (the default) in one loop
    (:class:`~calibprompt.runs.executors.Batched`, at most ``max_batch_prompts`` prompts per text-encoder
    pass), each run's result equal to training it alone, which ``batched=False`` does. ``on_result`` gets
    each row as soon as it is known (zero-shot rows, always evaluated here, first). ``backbone``: ``model``
    already loaded (on its device); ``lr``: the SGD learning rate of every run (the paper's by default);
    ``n_boot``: bootstrap resamples of each evaluation (of the zero-shot rows, and of the runs trained
    here; an executor given brings its own).

    ``resume``: reuse every finished run in ``store`` with the same settings instead of training it
    again (:func:`calibprompt.runs.jobs.find_done_run`), so an interrupted table picks up where it
    stopped. ``on_step(run_id, info)`` and ``on_event`` are passed on to the executor.

    ``learners`` (:func:`parse_learners`): compare these few-shot learners too; each row then has a
    ``learner`` field and a ``refused`` one (:data:`LEARNER_ROW_FIELDS`), one row per seed, learner and method
    (the zero-shot rows once per seed, learner ``"zeroshot"``), in that order; a combination a learner
    cannot train with gives a row with its reason and no metrics, never a failure. coop's runs train
    together as above; the other learners' one by one in the same executor."""
    store = store or RunStore()
    backbone = backbone if backbone is not None else load_backbone(model, device=device)
    rows: dict[tuple, dict[str, Any]] = {}
    by_learner = learners is not None
    learners = list(learners) if by_learner else [defaults.LEARNER]

    def add(row: dict[str, Any]) -> None:
        if by_learner:
            row.setdefault("learner", ZERO_SHOT if row["method"] == ZERO_SHOT else defaults.LEARNER)
            row.setdefault("refused", "")
        rows[_key(row, by_learner)] = row
        if on_result is not None:
            on_result(row)

    def done(record) -> None:
        if record.status != "done":
            raise RuntimeError(f"Run {record.id} ended {record.status}: {record.error}")
        params = record.params
        row = _row(params["method"], int(params["seed"]), record.metrics, record.metrics.get("train_seconds", 0.0))
        if by_learner:
            row["learner"] = params.get("learner", defaults.LEARNER)
        row["run_id"] = record.id
        add(row)

    settings = dict(model=model, dataset=dataset, task=task, shots=shots, epochs=epochs, device=str(backbone.device),
                    n_bins=n_bins, protocol=protocol, precision=precision, lr=lr)
    jobs = _zero_shot_rows_and_jobs(backbone, methods, seeds, settings, loss_params, n_boot, add, learners)
    if resume:  # finished runs with the same settings count as done
        finished = store.list_runs(status="done", kind="train")
        reused = {id(job): find_done_run(finished, job) for job in jobs}
        for record in (r for r in reused.values() if r is not None):
            done(record)
        jobs = [job for job in jobs if reused[id(job)] is None]
    if jobs:
        executor = executor or local_executor(batched, max_batch_prompts=max_batch_prompts, n_boot=n_boot)
        executor([JobGroup.create(store, jobs, backbone)], store, on_step=on_step, on_done=done, on_event=on_event)
    if not by_learner:
        return [rows[(seed, method)] for seed in seeds for method in methods]
    return [rows[(seed, learner if method != ZERO_SHOT else ZERO_SHOT, method)] for seed in seeds
            for learner in learners for method in methods
            if method != ZERO_SHOT or learner == learners[0]]


def _key(row: dict[str, Any], by_learner: bool) -> tuple:
    """A row's place in the table: (seed, method), or (seed, learner, method) over learners."""
    return (row["seed"], row["learner"], row["method"]) if by_learner else (row["seed"], row["method"])


def _zero_shot_rows_and_jobs(backbone, methods: Sequence[str], seeds: Sequence[int], settings: dict[str, Any],
                             loss_params: dict[str, float] | None, n_boot: int,
                             add: Callable[[dict[str, Any]], None],
                             learners: Sequence[str] = (defaults.LEARNER,)) -> list[TrainJob]:
    """Evaluate the zero-shot rows now (each on its seed's test split, passed to ``add``) and return the
    training jobs of the other methods, in seed, method then learner order. ``settings``: the jobs' common
    fields. A learner x method a learner refuses (:class:`TrainJob` raises) is passed to ``add`` as a
    refused row (only when comparing learners: otherwise the error is raised)."""
    task_obj, ds = open_dataset(settings["dataset"], settings["task"])
    cache = FeatureCache(backbone)
    jobs: list[TrainJob] = []
    for seed in seeds:
        for method in methods:
            if method == ZERO_SHOT:
                _, test = few_shot_split(ds, settings["shots"], seed)
                evaluation = evaluate_zero_shot(backbone, task_obj, test, cache, n_bins=settings["n_bins"],
                                                n_boot=n_boot)
                add(_row(method, seed, evaluation.report, 0.0))
                continue
            params = {k: v for k, v in (loss_params or {}).items() if k in get_method(method).task_params}
            for learner in learners:
                if learner == defaults.LEARNER:
                    jobs.append(TrainJob(seed=seed, method=method, loss_params=params, **settings))
                    continue
                try:
                    jobs.append(TrainJob(seed=seed, method=method, loss_params=params, learner=learner, **settings))
                except ValueError as exc:  # e.g. an AS loss on frozen class text features
                    add(_refused_row(learner, method, seed, str(exc)))
    return jobs


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per method (per learner and method for rows with a
    ``learner``), in first-seen order: ``{"method", "seeds", "<metric>_mean", "<metric>_std", ...}``
    (with ``learner`` where the rows have one; std 0 for a single seed). Refused rows (no metrics) are left out."""
    rows = [r for r in rows if not r.get("refused")]
    order: list[tuple] = []
    for row in rows:
        key = (row.get("learner"), row["method"])
        if key not in order:
            order.append(key)
    table = []
    for learner, method in order:
        group = [r for r in rows if r["method"] == method and r.get("learner") == learner]
        entry: dict[str, Any] = {"method": method, "seeds": len(group)}
        if learner is not None:
            entry = {"learner": learner, **entry}
        for key in METRIC_FIELDS + ("train_seconds",):
            values = [float(r[key]) for r in group]
            entry[f"{key}_mean"] = statistics.fmean(values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(entry)
    return table
