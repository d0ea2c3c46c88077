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

__all__ = ["ROW_FIELDS", "METRIC_FIELDS", "parse_methods", "run_comparison", "summarize"]

METRIC_FIELDS = ("accuracy", "ece", "mce", "ace", "nll", "brier", "mean_confidence")
ROW_FIELDS = ("method", "seed") + METRIC_FIELDS + ("train_seconds",)
ZERO_SHOT = "zeroshot"


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


def run_comparison(model: str, dataset: str, methods: Sequence[str], seeds: Sequence[int], *, task: str | None = None,
                   shots: int = defaults.SHOTS, epochs: int = defaults.EPOCHS, n_bins: int = defaults.N_BINS,
                   device: str = "auto",
                   loss_params: dict[str, float] | None = None, store: RunStore | None = None,
                   on_result: Callable[[dict[str, Any]], None] | None = None, n_boot: int = defaults.N_BOOT_TABLE,
                   protocol: str = defaults.PROTOCOL, precision: str | None = None, batched: bool = True,
                   max_batch_prompts: int | None = defaults.MAX_BATCH_PROMPTS, backbone=None, resume: bool = False,
                   lr: float = defaults.LR, executor: Executor | None = None,
                   on_step: Callable | None = None, on_event: Callable | None = None) -> list[dict[str, Any]]:
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
    stopped. ``on_step(run_id, info)`` and ``on_event`` are passed on to the executor."""
    store = store or RunStore()
    backbone = backbone if backbone is not None else load_backbone(model, device=device)
    rows: dict[tuple[int, str], dict[str, Any]] = {}

    def add(row: dict[str, Any]) -> None:
        rows[(row["seed"], row["method"])] = row
        if on_result is not None:
            on_result(row)

    def done(record) -> None:
        if record.status != "done":
            raise RuntimeError(f"Run {record.id} ended {record.status}: {record.error}")
        params = record.params
        row = _row(params["method"], int(params["seed"]), record.metrics, record.metrics.get("train_seconds", 0.0))
        row["run_id"] = record.id
        add(row)

    settings = dict(model=model, dataset=dataset, task=task, shots=shots, epochs=epochs, device=str(backbone.device),
                    n_bins=n_bins, protocol=protocol, precision=precision, lr=lr)
    jobs = _zero_shot_rows_and_jobs(backbone, methods, seeds, settings, loss_params, n_boot, add)
    if resume:  # finished runs with the same settings count as done
        finished = store.list_runs(status="done", kind="train")
        reused = {id(job): find_done_run(finished, job) for job in jobs}
        for record in (r for r in reused.values() if r is not None):
            done(record)
        jobs = [job for job in jobs if reused[id(job)] is None]
    if jobs:
        executor = executor or local_executor(batched, max_batch_prompts=max_batch_prompts, n_boot=n_boot)
        executor([JobGroup.create(store, jobs, backbone)], store, on_step=on_step, on_done=done, on_event=on_event)
    return [rows[(seed, method)] for seed in seeds for method in methods]


def _zero_shot_rows_and_jobs(backbone, methods: Sequence[str], seeds: Sequence[int], settings: dict[str, Any],
                             loss_params: dict[str, float] | None, n_boot: int,
                             add: Callable[[dict[str, Any]], None]) -> list[TrainJob]:
    """Evaluate the zero-shot rows now (each on its seed's test split, passed to ``add``) and return the
    training jobs of the other methods, in seed then method order. ``settings``: the jobs' common fields."""
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
            else:
                params = {k: v for k, v in (loss_params or {}).items() if k in get_method(method).task_params}
                jobs.append(TrainJob(seed=seed, method=method, loss_params=params, **settings))
    return jobs


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per method, in first-seen method order:
    ``{"method", "seeds", "<metric>_mean", "<metric>_std", ...}`` (std 0 for a single seed)."""
    order: list[str] = []
    for row in rows:
        if row["method"] not in order:
            order.append(row["method"])
    table = []
    for method in order:
        group = [r for r in rows if r["method"] == method]
        entry: dict[str, Any] = {"method": method, "seeds": len(group)}
        for key in METRIC_FIELDS + ("train_seconds",):
            values = [float(r[key]) for r in group]
            entry[f"{key}_mean"] = statistics.fmean(values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(entry)
    return table
