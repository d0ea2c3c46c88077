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
from calibprompt.evaluation.calibrators import parse_calibrators
from calibprompt.training.features import FeatureCache
from calibprompt.runs.executors import Executor, JobGroup, local_executor
from calibprompt.runs.jobs import TrainJob, evaluate_zero_shot, find_done_run
from calibprompt.runs.sides import protocol_split, side_metrics
from calibprompt.training.losses import get_method
from calibprompt.backbones import load_backbone
from calibprompt.runs.store import RunStore

logger = logging.getLogger(__name__)

__all__ = ["ROW_FIELDS", "LEARNER_ROW_FIELDS", "METRIC_FIELDS", "SIDES", "parse_methods", "parse_learners",
           "parse_shots", "run_comparison", "summarize", "side_rows", "harmonic_mean", "calibrated_columns"]

METRIC_FIELDS = ("accuracy", "ece", "mce", "ace", "nll", "brier", "mean_confidence")
ROW_FIELDS = ("method", "seed") + METRIC_FIELDS + ("train_seconds",)
#: the rows of a comparison over learners or protocols (``learners=``, several ``shots``, ``base_to_novel``,
#: ``eval_dataset``): the learner first; ``shots``; ``side``, what the row was evaluated on (:data:`SIDES`);
#: ``aurc``; ``dac_accuracy``/``dac_ece`` (a novel row after DAC, None elsewhere); and ``refused`` (why a
#: learner x method, or a learner on a side, does not exist: its metrics None; "" for a row with results)
LEARNER_ROW_FIELDS = ("learner", "method", "seed", "shots", "side") + METRIC_FIELDS + (
    "aurc", "dac_accuracy", "dac_ece", "train_seconds", "refused")
#: ``side`` of a row: its run's own test split; the base and novel classes of a base-to-novel split and
#: their harmonic mean (of accuracy and of ECE, the other metrics None); the training dataset's test split
#: and the cross-domain dataset
SIDES = ("test", "base", "novel", "hm", "source", "target")
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


def _protocol_row(learner: str, method: str, seed: int, shots: int, side: str, metrics: dict[str, Any] | None,
                  train_seconds: float = 0.0, refused: str = "") -> dict[str, Any]:
    """A row of :data:`LEARNER_ROW_FIELDS`; ``metrics`` None (refused) gives None metrics."""
    values = {k: (None if metrics is None or metrics.get(k) is None else float(metrics[k]))
              for k in METRIC_FIELDS + ("aurc",)}
    dac = (metrics or {}).get("dac") or {}
    return {"learner": learner, "method": method, "seed": seed, "shots": shots, "side": side, **values,
            "dac_accuracy": dac.get("accuracy"), "dac_ece": dac.get("ece"), "train_seconds": float(train_seconds),
            "refused": refused}


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    """``2 a b / (a + b)`` (0 when both are 0; None when either is missing): how base-to-novel tables
    (CoCoOp) summarise base and novel accuracy; used here for ECE as well."""
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def _hm_row(base: dict[str, Any], novel: dict[str, Any]) -> dict[str, Any]:
    row = {**base, "side": "hm", **{k: None for k in METRIC_FIELDS + ("aurc",)}}
    row["refused"] = novel["refused"] if novel.get("refused") else base.get("refused", "")
    for key in ("accuracy", "ece"):
        row[key] = harmonic_mean(base.get(key), novel.get(key))
    return row


def side_rows(learner: str, method: str, seed: int, shots: int, sides: tuple[str, str], main: dict[str, Any],
              others: dict[str, Any], train_seconds: float = 0.0) -> list[dict[str, Any]]:
    """The rows of one evaluated run (or zero-shot): its own test split as ``sides[0]`` (``test``, ``base`` or
    ``source``) and each other side of ``others`` (:func:`calibprompt.runs.jobs.evaluate_sides`: metrics or
    ``{"refused": why}``), plus the harmonic-mean row of a base-to-novel split."""
    rows = [_protocol_row(learner, method, seed, shots, sides[0], main, train_seconds)]
    if sides[1]:
        other = others.get(sides[1]) or {"refused": "this run was not evaluated on that side"}
        refused = other.get("refused", "")
        rows.append(_protocol_row(learner, method, seed, shots, sides[1], None if refused else other,
                                  train_seconds, refused))
    if sides == ("base", "novel"):
        rows.append(_hm_row(rows[0], rows[1]))
    return rows


def _refused_rows(learner: str, method: str, seed: int, shots: int, sides: tuple[str, str],
                  reason: str) -> list[dict[str, Any]]:
    """The rows of a combination that does not exist: no metrics, ``refused`` says why and what works."""
    names = [sides[0]] + ([sides[1], "hm"] if sides == ("base", "novel") else [sides[1]] if sides[1] else [])
    return [_protocol_row(learner, method, seed, shots, side, None, 0.0, reason) for side in names]


def _sides(base_to_novel: bool, eval_dataset: str | None) -> tuple[str, str]:
    """The two sides a protocol reports: its own test split, and the other one ("" for none)."""
    if base_to_novel:
        return "base", "novel"
    return ("source", "target") if eval_dataset else ("test", "")


def parse_shots(shots: int | str | Sequence[int]) -> list[int]:
    """``8``, ``"1,2,4,8,16"`` or ``[1, 2]`` -> the shot counts, deduplicated in order (``ValueError`` in
    plain words for a count that is not a whole number of at least 1)."""
    from calibprompt.runs.requests import check_number, number_from_text

    items = shots.split(",") if isinstance(shots, str) else ([shots] if not isinstance(shots, Sequence) else shots)
    counts: list[int] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        value = check_number("shots", number_from_text(item.strip()) if isinstance(item, str) else item)
        if int(value) not in counts:
            counts.append(int(value))
    if not counts:
        raise ValueError("Give at least one shot count, e.g. --shots 8 or --shots 1,2,4,8,16.")
    return counts


def run_comparison(model: str, dataset: str, methods: Sequence[str], seeds: Sequence[int], *, task: str | None = None,
                   shots: int | Sequence[int] = defaults.SHOTS, epochs: int = defaults.EPOCHS,
                   n_bins: int = defaults.N_BINS, device: str = "auto",
                   loss_params: dict[str, float] | None = None, store: RunStore | None = None,
                   on_result: Callable[[dict[str, Any]], None] | None = None, n_boot: int = defaults.N_BOOT_TABLE,
                   protocol: str = defaults.PROTOCOL, precision: str | None = None, batched: bool = True,
                   max_batch_prompts: int | None = defaults.MAX_BATCH_PROMPTS, backbone=None, resume: bool = False,
                   lr: float = defaults.LR, executor: Executor | None = None,
                   on_step: Callable | None = None, on_event: Callable | None = None,
                   learners: Sequence[str] | None = None, base_to_novel: bool = False,
                   eval_dataset: str | None = None, calibrators: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Train and evaluate every method on every seed; returns one row per (method, seed), in seed then
    method order, with the fields of :data:`ROW_FIELDS` (fractions, not percent). ``protocol`` and
    ``precision`` are those of :class:`calibprompt.runs.jobs.TrainJob` (recorded with every run).

    The training runs form :class:`~calibprompt.runs.executors.JobGroup` s, one per learner, trained by
    ``executor`` (:mod:`calibprompt.runs.executors`; e.g. ``calibprompt.cluster.runs.RayExecutor``, one Ray
    task per group). Without one they are trained here: with ``batched`` (the default) coop's runs in one
    loop (:class:`~calibprompt.runs.executors.Batched`, at most ``max_batch_prompts`` prompts per text-encoder
    pass), each run's result equal to training it alone, which ``batched=False`` does. ``on_result`` gets
    each row as soon as it is known (zero-shot rows, always evaluated here, first). ``backbone``: ``model``
    already loaded (on its device); ``lr``: the SGD learning rate of every run (the paper's by default);
    ``n_boot``: bootstrap resamples of each evaluation (of the zero-shot rows, and of the runs trained
    here; an executor given brings its own).

    ``resume``: reuse every finished run in ``store`` with the same settings instead of training it
    again (:func:`calibprompt.runs.jobs.find_done_run`), so an interrupted table picks up where it
    stopped. ``on_step(run_id, info)`` and ``on_event`` are passed on to the executor.

    The protocols give rows of :data:`LEARNER_ROW_FIELDS`, in shots, seed, learner, method and side order
    (the zero-shot rows once per seed and shots, learner ``"zeroshot"``):

    - ``learners`` (:func:`parse_learners`): these few-shot learners under every method; a combination a
      learner cannot train with gives rows with its reason and no metrics, never a failure;
    - ``shots`` a sequence (:func:`parse_shots`): a sweep over shot counts;
    - ``base_to_novel``: train on the base half of the classes, evaluate on the base and on the novel half
      (sides ``base``, ``novel``, ``hm``; :mod:`calibprompt.data.class_splits`);
    - ``eval_dataset``: also evaluate on that dataset, with the same classes (sides ``source``, ``target``).

    ``calibrators`` (:func:`calibprompt.evaluation.calibrators.list_calibrators`, not ``dac``): every row of a
    run's own test split gains ``<name>_accuracy``, ``<name>_ece`` and ``<name>_nll``, its predictions mapped by
    the calibrator cross-fitted on them (:func:`calibrated_columns`; None on the other sides and refused rows).
    """
    calibrators = parse_calibrators(calibrators)
    shot_counts = parse_shots(shots)
    by_learner = learners is not None or len(shot_counts) > 1 or base_to_novel or bool(eval_dataset)
    plan = _Plan(learners=list(learners or [defaults.LEARNER]), sides=_sides(base_to_novel, eval_dataset),
                 by_learner=by_learner, on_result=on_result)
    if base_to_novel or eval_dataset:  # a protocol the data cannot follow is refused before any run exists
        protocol_split(dataset, task, shot_counts[0], seeds[0], classes="base" if base_to_novel else "all",
                       eval_dataset=eval_dataset)
    store = store or RunStore()
    backbone = backbone if backbone is not None else load_backbone(model, device=device)
    settings = dict(model=model, dataset=dataset, task=task, epochs=epochs, device=str(backbone.device),
                    n_bins=n_bins, protocol=protocol, precision=precision, lr=lr,
                    **({"classes": "base"} if base_to_novel else {}),
                    **({"eval_dataset": eval_dataset} if eval_dataset else {}))
    jobs = plan.zero_shot_rows_and_jobs(backbone, methods, seeds, shot_counts, settings, loss_params, n_boot)
    if resume:  # finished runs with the same settings count as done
        finished = store.list_runs(status="done", kind="train")
        reused = {id(job): find_done_run(finished, job) for job in jobs}
        for record in (r for r in reused.values() if r is not None):
            plan.done(record)
        jobs = [job for job in jobs if reused[id(job)] is None]
    if jobs:
        executor = executor or local_executor(batched, max_batch_prompts=max_batch_prompts, n_boot=n_boot)
        groups = [JobGroup.create(store, [j for j in jobs if j.learner == learner], backbone)
                  for learner in dict.fromkeys(j.learner for j in jobs)]  # one group per learner (a Ray task each)
        executor(groups, store, on_step=on_step, on_done=plan.done, on_event=on_event)
    rows = plan.ordered(methods, seeds, shot_counts)
    for row in rows if calibrators else ():
        row.update(calibrated_columns(row, calibrators, store, plan.zero_shot_probs, n_bins))
    return rows


def calibrated_columns(row: dict[str, Any], calibrators: Sequence[str], store: RunStore,
                       zero_shot_probs: dict[tuple, tuple], n_bins: int) -> dict[str, float | None]:
    """``<name>_accuracy``, ``<name>_ece``, ``<name>_nll`` of one row's predictions mapped by each calibrator,
    cross-fitted on them (:func:`calibprompt.evaluation.calibrators.calibrator_reports` on the log-probabilities,
    probabilities below 1e-12 clipped: a per-image shift of the logits, which temperature scaling ignores and the
    others are defined on); None
    where the row has no stored predictions (another side, a refused row)."""
    import numpy as np

    from calibprompt.evaluation.calibrators import calibrator_reports

    empty = {f"{n}_{k}": None for n in calibrators for k in ("accuracy", "ece", "nll")}
    if row.get("refused") or row.get("side") not in (None, "test", "base", "source"):
        return empty
    if row.get("run_id"):
        stored = store.predictions(row["run_id"])
        probs, labels = np.array([p["probs"] for p in stored]), np.array([p["label"] for p in stored])
    else:
        probs, labels = zero_shot_probs[(row.get("shots"), row["seed"])]
    reports = calibrator_reports(np.log(np.clip(probs, 1e-12, 1.0)), labels, list(calibrators), n_bins=n_bins)
    return {f"{r['calibrator']}_{k}": float(r[k]) for r in reports[1:] for k in ("accuracy", "ece", "nll")}


class _Plan:
    """The rows of one comparison as they come in (zero-shot, refused, trained), keyed by their place."""

    def __init__(self, *, learners: list[str], sides: tuple[str, str], by_learner: bool,
                 on_result: Callable[[dict[str, Any]], None] | None):
        self.learners, self.sides, self.by_learner, self.on_result = learners, sides, by_learner, on_result
        self.rows: dict[tuple, dict[str, Any]] = {}
        self.zero_shot_probs: dict[tuple, tuple] = {}  # (shots, seed) -> (probs, labels) of the own test split

    def add(self, row: dict[str, Any]) -> None:
        key = ((row["shots"], row["seed"], row["learner"], row["method"], row["side"]) if self.by_learner
               else (row["seed"], row["method"]))
        self.rows[key] = row
        if self.on_result is not None:
            self.on_result(row)

    def add_all(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.add(row)

    def done(self, record) -> None:
        """A finished training run's rows (raises for a run that did not finish)."""
        if record.status != "done":
            raise RuntimeError(f"Run {record.id} ended {record.status}: {record.error}")
        params, metrics = record.params, record.metrics
        seconds = metrics.get("train_seconds", 0.0)
        if not self.by_learner:
            self.add({**_row(params["method"], int(params["seed"]), metrics, seconds), "run_id": record.id})
            return
        rows = side_rows(params.get("learner", defaults.LEARNER), params["method"], int(params["seed"]),
                         int(params["shots"]), self.sides, metrics, metrics.get("sides") or {}, seconds)
        self.add_all([{**row, "run_id": record.id} for row in rows])

    def zero_shot_rows_and_jobs(self, backbone, methods: Sequence[str], seeds: Sequence[int], shot_counts: list[int],
                                settings: dict[str, Any], loss_params: dict[str, float] | None,
                                n_boot: int) -> list[TrainJob]:
        """Evaluate the zero-shot rows now and return the training jobs of the other methods, in shots,
        seed, method then learner order. A learner x method a learner refuses (:class:`TrainJob` raises)
        gives refused rows (only over learners or protocols: otherwise the error is raised)."""
        cache, jobs = FeatureCache(backbone), []
        for shots in shot_counts:
            for seed in seeds:
                if ZERO_SHOT in methods:
                    self._zero_shot(backbone, cache, settings, shots, seed, n_boot)
                for method in (m for m in methods if m != ZERO_SHOT):
                    params = {k: v for k, v in (loss_params or {}).items() if k in get_method(method).task_params}
                    for learner in self.learners:
                        try:
                            jobs.append(TrainJob(seed=seed, method=method, loss_params=params, learner=learner,
                                                 shots=shots, **settings))
                        except ValueError as exc:  # e.g. an AS loss on frozen class text features
                            if not self.by_learner:
                                raise
                            self.add_all(_refused_rows(learner, method, seed, shots, self.sides, str(exc)))
        return jobs

    def _zero_shot(self, backbone, cache, settings: dict[str, Any], shots: int, seed: int, n_boot: int) -> None:
        task_obj, _, _, test, sides = protocol_split(settings["dataset"], settings["task"], shots, seed,
                                                     classes=settings.get("classes", "all"),
                                                     eval_dataset=settings.get("eval_dataset"))
        evaluation = evaluate_zero_shot(backbone, task_obj, test, cache, n_bins=settings["n_bins"], n_boot=n_boot)
        self.zero_shot_probs[(shots if self.by_learner else None, seed)] = (evaluation.probs, evaluation.labels)
        if not self.by_learner:
            self.add(_row(ZERO_SHOT, seed, evaluation.report, 0.0))
            return
        others = {side.name: side_metrics(evaluate_zero_shot(backbone, side.task, side.images, cache,
                                                             n_bins=settings["n_bins"], n_boot=n_boot))
                  for side in sides}
        self.add_all(side_rows(ZERO_SHOT, ZERO_SHOT, seed, shots, self.sides, side_metrics(evaluation), others))

    def ordered(self, methods: Sequence[str], seeds: Sequence[int], shot_counts: list[int]) -> list[dict[str, Any]]:
        if not self.by_learner:
            return [self.rows[(seed, method)] for seed in seeds for method in methods]
        names = [self.sides[0]] + ([self.sides[1]] if self.sides[1] else []) + (
            ["hm"] if self.sides == ("base", "novel") else [])
        return [self.rows[(shots, seed, learner if method != ZERO_SHOT else ZERO_SHOT, method, side)]
                for shots in shot_counts for seed in seeds for learner in self.learners for method in methods
                if method != ZERO_SHOT or learner == self.learners[0] for side in names]


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per method (per learner, method, shots and side for the rows
    of :data:`LEARNER_ROW_FIELDS`), in first-seen order: ``{"method", "seeds", "<metric>_mean",
    "<metric>_std", ...}`` (with ``learner``, ``shots`` and ``side`` where the rows have them; std 0 for a
    single seed; None for a metric a row kind lacks, e.g. the NLL of a harmonic-mean row). Refused rows
    (no metrics) are left out."""
    rows = [r for r in rows if not r.get("refused")]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row.get("learner"), row["method"], row.get("shots"), row.get("side")), []).append(row)
    table = []
    for (learner, method, shots, side), group in groups.items():
        entry: dict[str, Any] = {"method": method, "seeds": len(group)}
        if learner is not None:
            entry = {"learner": learner, **entry, "shots": shots, "side": side}
        for key in METRIC_FIELDS + (("aurc",) if learner is not None else ()) + ("train_seconds",):
            values = [float(r[key]) for r in group if r.get(key) is not None]
            entry[f"{key}_mean"] = statistics.fmean(values) if values else None
            entry[f"{key}_std"] = (statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
        table.append(entry)
    return table
