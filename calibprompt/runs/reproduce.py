"""Reproduce the paper's table: every (backbone, dataset, method, seed) cell, resumably, against the
published numbers; with ``learners``, every (backbone, dataset, method, learner, seed) cell.

:func:`plan_cells` lists the cells of a suite and what each needs: ``missing-data`` (no dataset in
``$CALIBPROMPT_HOME/datasets/<task>``), ``done`` (a finished run with the same settings is in the run
store: it is reused) or ``todo``. :func:`reproduce` runs the todo cells (prompt tuning through an executor
of :mod:`calibprompt.runs.executors`, the cells of one backbone and dataset trained together, zero-shot through
:func:`calibprompt.runs.jobs.evaluate_zero_shot`, recorded as an ``evaluate`` run), then reduces them
to a table: per (backbone, dataset, method) our mean and standard deviation over seeds of ECE and
accuracy, the paper's values, the difference and whether it lies within a tolerance. An interrupted
reproduction resumes where it stopped: every finished cell is in the store. A training cell matches
a stored run with every setting of its :class:`~calibprompt.runs.jobs.TrainJob` equal (model, dataset,
method, seed, shots, epochs, protocol, bins, loss parameters, ...; not the device), so runs made with
``calibprompt train`` or the app count too. Zero-shot cells do not depend on the training protocol:
both protocols share them (and ``calibprompt evaluate``'s zero-shot runs of the same split).

The published values are package data (``paper_results.json`` next to this module), each with its
source. All ECE and accuracy values in this module are in percent.

``learners`` (:func:`calibprompt.runs.compare.parse_learners`) adds the few-shot learners of
:mod:`calibprompt.training.learners`: each training method is then run with each learner (a cell's
``learner``; zero-shot cells, which learn nothing, once, with learner ``"zeroshot"``). A learner x method
that does not exist is a ``refused`` cell with the reason in ``error``. The paper reports CoOp prompts
only: its values apply to coop and zero-shot cells, other learners' are None.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from calibprompt import defaults
from calibprompt.data.layouts import few_shot_split
from calibprompt.data.sources import get_registered_dataset
from calibprompt.paths import datasets_dir
from calibprompt.evaluation.calibrators import parse_calibrators
from calibprompt.runs.compare import ZERO_SHOT, parse_learners, parse_methods
from calibprompt.runs.executors import Executor, JobGroup, local_executor
from calibprompt.runs.jobs import TrainJob, evaluate_zero_shot, failure_text, find_done_run, open_dataset
from calibprompt.runs.store import RunRecord, RunStore
from calibprompt.training.protocols import get_protocol, list_protocols

logger = logging.getLogger(__name__)

__all__ = [
    "PAPER_PAIRS", "DEMO_PAIRS", "SUITES", "PROTOCOLS", "DEFAULT_METHODS", "DEFAULT_SEEDS", "DEFAULT_TOLERANCE",
    "CELL_STATUSES", "PAPER_LEARNERS", "PAPER_RESULTS_FILE", "Cell", "Reproduction", "paper_results", "paper_value", "parse_seeds",
    "dataset_available", "plan_cells", "reproduce", "build_table", "add_calibrated", "within_tolerance",
    "table_markdown",
    "table_csv",
]

#: The paper's (backbone, dataset) pairs, as registry backbone names and task names.
PAPER_PAIRS: tuple[tuple[str, str], ...] = (
    ("medclip", "covid"), ("medclip", "rsna18"),
    ("biomedclip", "covid"), ("biomedclip", "rsna18"),
    ("plip", "kather"), ("plip", "pannuke"), ("plip", "digestpath"),
    ("quiltnet-b32", "kather"), ("quiltnet-b32", "pannuke"), ("quiltnet-b32", "digestpath"),
)
#: The offline suite: the bundled demo backbone on the two demo tasks (generated on first use).
DEMO_PAIRS: tuple[tuple[str, str], ...] = (("demo", "demo"), ("demo", "demo-binary"))
SUITES: dict[str, tuple[tuple[str, str], ...]] = {"paper": PAPER_PAIRS, "demo": DEMO_PAIRS}
#: ``paper``: the protocol the paper describes; ``authors-code``: the authors' published code's
#: (:mod:`calibprompt.training.protocols`).
PROTOCOLS: tuple[str, ...] = tuple(list_protocols())
DEFAULT_METHODS = (ZERO_SHOT, "coop", "calibprompt")
DEFAULT_SEEDS = (1, 2, 3)
DEFAULT_TOLERANCE = 1.5  #: ECE points (percent) within which our mean counts as matching the paper
DEFAULT_N_BOOT = defaults.N_BOOT_TABLE  #: bootstrap resamples of each stored evaluation (the table does not use them)
#: ``missing-data``: no dataset; ``done``: a finished run is in the store; ``todo``: to run;
#: ``unavailable``: the backbone's weights could not be loaded (set by :func:`reproduce` only);
#: ``refused``: the learner cannot train with the method (the reason in ``Cell.error``; nothing runs).
CELL_STATUSES = ("missing-data", "done", "todo", "unavailable", "refused")
#: the learners whose cells the paper's values apply to: its CoOp prompts, and zero-shot (no learner)
PAPER_LEARNERS = (defaults.LEARNER, ZERO_SHOT)
PAPER_RESULTS_FILE = Path(__file__).resolve().parent / "paper_results.json"
ZERO_SHOT_HEAD = "zero-shot"  # the ``head`` param of zero-shot evaluate runs (as ``calibprompt evaluate``)


# ------------------------------------------------------------------------------------- paper values

@lru_cache(maxsize=1)
def _paper_file() -> dict[str, Any]:
    return json.loads(PAPER_RESULTS_FILE.read_text(encoding="utf-8"))


def paper_results() -> list[dict[str, Any]]:
    """The published values: ``{"backbone", "dataset", "method", "ece", ["accuracy"], "sources", ...}``
    (percent), one per (backbone, dataset, method) a source reports; ``sources`` name entries of
    :func:`paper_sources`."""
    return [dict(entry) for entry in _paper_file()["results"]]


def paper_sources() -> dict[str, str]:
    """Where each published value comes from: source key -> description."""
    return dict(_paper_file()["sources"])


def paper_value(backbone: str, dataset: str, method: str) -> dict[str, Any] | None:
    """The published entry for one (backbone, dataset, method), or None when no source gives one."""
    for entry in _paper_file()["results"]:
        if (entry["backbone"], entry["dataset"], entry["method"]) == (backbone, dataset, method):
            return dict(entry)
    return None


# ------------------------------------------------------------------------------------------- cells

@dataclass
class Cell:
    """One (backbone, dataset, method, seed) of a suite, trained by ``learner`` (``"zeroshot"`` for
    zero-shot cells made by :func:`plan_cells`). ``epochs`` is None for zero-shot; ``paper_*``, ``ece``
    and ``accuracy`` are percent (``ece``/``accuracy``: ours, once the cell is done); ``error``: why a
    cell is ``unavailable`` or ``refused``."""

    backbone: str
    dataset: str
    method: str
    seed: int
    protocol: str
    shots: int
    epochs: int | None
    n_bins: int
    status: str
    paper_ece: float | None = None
    paper_accuracy: float | None = None
    paper_sources: tuple[str, ...] = ()
    run_id: str | None = None
    ece: float | None = None
    accuracy: float | None = None
    error: str | None = None
    learner: str = defaults.LEARNER

    @property
    def zero_shot(self) -> bool:
        return self.method == ZERO_SHOT

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["paper_sources"] = list(self.paper_sources)
        return out


def parse_seeds(text: str | Iterable[int]) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (duplicates dropped); ValueError in plain words otherwise."""
    items = text.split(",") if isinstance(text, str) else list(text)
    seeds: list[int] = []
    for item in items:
        if isinstance(item, str):
            if not item.strip():
                continue
            try:
                item = int(item.strip())
            except ValueError:
                raise ValueError(f"Seeds are comma-separated whole numbers, e.g. 1,2,3; got {text!r}.") from None
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"Seeds are whole numbers, e.g. 1,2,3; got {item!r}.")
        if item not in seeds:
            seeds.append(item)
    if not seeds:
        raise ValueError("Give at least one seed, e.g. --seeds 1,2,3.")
    return seeds


def dataset_available(name: str) -> bool:
    """Whether a suite's dataset can be opened: a registered dataset (the demo's, generated on use) or
    a folder ``$CALIBPROMPT_HOME/datasets/<name>``."""
    return get_registered_dataset(name) is not None or (datasets_dir() / name).exists()


def _suite_pairs(suite: str, model: str | None) -> list[tuple[str, str]]:
    if suite not in SUITES:
        raise ValueError(f"Unknown suite {suite!r}; choose one of: {', '.join(SUITES)}.")
    pairs = list(SUITES[suite])
    if model is not None:
        backbones = list(dict.fromkeys(b for b, _ in pairs))
        if model not in backbones:
            raise ValueError(f"The {suite} suite has no backbone {model!r}; its backbones: {', '.join(backbones)}.")
        pairs = [p for p in pairs if p[0] == model]
    return pairs


def _train_job(cell: Cell, device: str = "auto") -> TrainJob:
    return TrainJob(model=cell.backbone, dataset=cell.dataset, shots=cell.shots, seed=cell.seed, method=cell.method,
                    epochs=cell.epochs, device=device, n_bins=cell.n_bins, protocol=cell.protocol,
                    learner=cell.learner)


def _refusal(learner: str, method: str) -> str | None:
    """Why ``learner`` cannot train with ``method`` (:func:`check_learner_method`), or None when it can."""
    from calibprompt.training.learners import check_learner_method

    try:
        check_learner_method(learner, method)
    except ValueError as exc:
        return str(exc)
    return None


def _same_zero_shot(record: RunRecord, cell: Cell) -> bool:
    params, metrics = record.params or {}, record.metrics or {}
    return (params.get("head") == ZERO_SHOT_HEAD and params.get("model") == cell.backbone
            and params.get("dataset") == cell.dataset and params.get("task", cell.dataset) == cell.dataset
            and params.get("shots") == cell.shots and params.get("seed") == cell.seed
            and metrics.get("n_bins") == cell.n_bins)


def _set_done(cell: Cell, record: RunRecord) -> None:
    cell.status, cell.run_id = "done", record.id
    cell.ece = 100.0 * float(record.metrics["ece"])
    cell.accuracy = 100.0 * float(record.metrics["accuracy"])


def _find_run(cell: Cell, train_runs: Sequence[RunRecord], eval_runs: Sequence[RunRecord]) -> RunRecord | None:
    """The newest done run that is this cell (the lists are newest first)."""
    if cell.zero_shot:
        return next((r for r in eval_runs if r.metrics and _same_zero_shot(r, cell)), None)
    return find_done_run(train_runs, _train_job(cell))  # the learner included (same_training)


def plan_cells(suite: str = "paper", methods: str | Sequence[str] = DEFAULT_METHODS,
               seeds: str | Sequence[int] = DEFAULT_SEEDS, protocol: str = "paper", *,
               shots: int = defaults.SHOTS, epochs: int = defaults.EPOCHS, n_bins: int = defaults.N_BINS,
               model: str | None = None, store: RunStore | None = None,
               learners: str | Sequence[str] | None = None) -> list[Cell]:
    """Every cell of ``suite`` (pairs in the suite's order, then methods, then learners, then seeds) with
    the paper's values and its status. ``model`` restricts the suite to one backbone; ``learners``
    (default: coop only) the few-shot learners of the training methods (zero-shot cells come once, learner
    ``"zeroshot"``); a learner x method that does not exist is a ``refused`` cell with its reason in
    ``error``. Nothing is run; the run store is only read. ValueError for an unknown suite, protocol,
    method, learner or backbone, or a bad setting."""
    protocol = get_protocol(protocol).name  # ValueError naming the protocols
    methods = parse_methods(methods)
    seeds = parse_seeds(seeds)
    learners = [defaults.LEARNER] if learners is None else parse_learners(learners)
    pairs = _suite_pairs(suite, model)
    store = store or RunStore()
    done = store.list_runs(status="done")
    train_runs = [r for r in done if r.kind == "train"]
    eval_runs = [r for r in done if r.kind == "evaluate"]
    cells: list[Cell] = []
    for backbone, dataset in pairs:
        available = dataset_available(dataset)
        for method in methods:
            for learner in [ZERO_SHOT] if method == ZERO_SHOT else learners:
                paper = (paper_value(backbone, dataset, method) if learner in PAPER_LEARNERS else None) or {}
                refused = None if method == ZERO_SHOT else _refusal(learner, method)
                for seed in seeds:
                    cell = Cell(backbone=backbone, dataset=dataset, method=method, seed=seed, protocol=protocol,
                                shots=int(shots), epochs=None if method == ZERO_SHOT else int(epochs),
                                n_bins=int(n_bins), status="todo", paper_ece=paper.get("ece"),
                                paper_accuracy=paper.get("accuracy"), paper_sources=tuple(paper.get("sources", ())),
                                learner=learner)
                    _plan_status(cell, refused, available, train_runs, eval_runs)
                    cells.append(cell)
    return cells


def _plan_status(cell: Cell, refused: str | None, available: bool, train_runs: Sequence[RunRecord],
                 eval_runs: Sequence[RunRecord]) -> None:
    """Set a new cell's planned status: ``refused`` (with ``error``), ``missing-data``, ``done`` (a stored
    run) or left ``todo``. ValueError for out-of-range shots, epochs, seed or bins."""
    if refused is not None:
        cell.status, cell.error = "refused", refused
        return
    if not cell.zero_shot:
        _train_job(cell)  # ValueError for out-of-range shots, epochs, seed or bins
    if not available:
        cell.status = "missing-data"
        return
    record = _find_run(cell, train_runs, eval_runs)
    if record is not None:
        _set_done(cell, record)


# ------------------------------------------------------------------------------------------- table

def within_tolerance(ours: float | None, paper: float | None, tolerance: float = DEFAULT_TOLERANCE) -> bool | None:
    """Whether ``|ours - paper| <= tolerance`` (same units; a difference equal to the tolerance is
    within); None when either value is missing."""
    if ours is None or paper is None:
        return None
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"The tolerance must be a finite number of at least 0; got {tolerance!r}.")
    return abs(float(ours) - float(paper)) <= float(tolerance) + 1e-9


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def build_table(cells: Sequence[Cell], tolerance: float = DEFAULT_TOLERANCE) -> list[dict[str, Any]]:
    """One row per (backbone, dataset, learner, method), in the cells' order: ``learner``, ``seeds`` (with a result),
    ``ece_mean``/``ece_std``/``accuracy_mean``/``accuracy_std`` (ours, percent, None without a result),
    ``paper_ece``, ``paper_accuracy``, ``ece_diff``/``accuracy_diff`` (ours - paper), ``within`` (the
    ECE difference within ``tolerance`` points; None when either side is missing), ``status``
    (``done``, ``partial``: some seeds lack a result, or the cells' common status, e.g. ``refused``),
    ``run_ids``. The paper's values apply to coop and zero-shot rows only (:data:`PAPER_LEARNERS`): other
    learners' rows have them None, and ``within`` None."""
    within_tolerance(0.0, 0.0, tolerance)  # validates the tolerance
    groups: dict[tuple[str, str, str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.backbone, cell.dataset, cell.learner, cell.method), []).append(cell)
    table = []
    for (backbone, dataset, learner, method), group in groups.items():
        finished = [c for c in group if c.ece is not None]
        ece_mean, ece_std = _mean_std([c.ece for c in finished])
        acc_mean, acc_std = _mean_std([c.accuracy for c in finished])
        statuses = {c.status for c in group}
        status = ("done" if len(finished) == len(group) else "partial" if finished
                  else statuses.pop() if len(statuses) == 1 else "partial")
        paper = learner in PAPER_LEARNERS
        paper_ece, paper_acc = (group[0].paper_ece, group[0].paper_accuracy) if paper else (None, None)
        table.append({
            "backbone": backbone, "dataset": dataset, "learner": learner, "method": method,
            "protocol": group[0].protocol,
            "seeds": [c.seed for c in finished], "ece_mean": ece_mean, "ece_std": ece_std,
            "accuracy_mean": acc_mean, "accuracy_std": acc_std, "paper_ece": paper_ece, "paper_accuracy": paper_acc,
            "ece_diff": None if ece_mean is None or paper_ece is None else ece_mean - paper_ece,
            "accuracy_diff": None if acc_mean is None or paper_acc is None else acc_mean - paper_acc,
            "within": within_tolerance(ece_mean, paper_ece, tolerance), "tolerance": float(tolerance),
            "status": status, "run_ids": [c.run_id for c in finished],
            "paper_sources": list(group[0].paper_sources) if paper else [],
        })
    return table


def add_calibrated(table: Sequence[dict[str, Any]], store: RunStore, calibrators: Sequence[str],
                   n_bins: int = defaults.N_BINS) -> None:
    """Give each row ``<name>_ece_mean`` / ``<name>_ece_std`` (percent, over its seeds) for each post-hoc
    calibrator, its runs' stored test predictions mapped by the calibrator cross-fitted on them
    (:func:`calibprompt.runs.compare.calibrated_columns`); None for a row without results."""
    from calibprompt.runs.compare import calibrated_columns

    for row in table:
        found = [calibrated_columns({"run_id": run_id, "seed": 0}, calibrators, store, {}, n_bins)
                 for run_id in row["run_ids"]]
        for name in calibrators:
            mean, std = _mean_std([100.0 * f[f"{name}_ece"] for f in found])
            row[f"{name}_ece_mean"], row[f"{name}_ece_std"] = mean, std


def _calibrated_names(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """The calibrators a table's rows carry (:func:`add_calibrated`), in order."""
    return [key[:-len("_ece_mean")] for key in (table[0] if table else {}) if key.endswith("_ece_mean")
            and key != "ece_mean"]


def _shows_learners(table: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a table needs its learner column: some row's learner is neither coop nor zero-shot."""
    return any(row.get("learner", defaults.LEARNER) not in PAPER_LEARNERS for row in table)


def _num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.2f} ± {std:.2f}"


def _within_text(within: bool | None) -> str:
    return "-" if within is None else ("yes" if within else "no")


def table_markdown(table: Sequence[Mapping[str, Any]], tolerance: float | None = None) -> str:
    """The table as GitHub markdown (ECE and accuracy in %, mean ± std over seeds), with a Learner column
    when some row's learner is neither coop nor zero-shot."""
    tol = tolerance if tolerance is not None else (table[0]["tolerance"] if table else DEFAULT_TOLERANCE)
    learners = _shows_learners(table)
    names = ["Backbone", "Dataset"] + (["Learner"] if learners else []) + ["Method"]
    calibrated = _calibrated_names(table)
    head = names + ["Seeds", "Acc (%)", "ECE (%)", *(f"ECE + {n} (%)" for n in calibrated), "Paper ECE", "Δ ECE",
                    "Paper Acc", f"Within ±{tol:g}", "Status"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join([":--"] * len(names) + [":-:"] * (len(head) - len(names))) + "|"]
    for row in table:
        learner = [row.get("learner", defaults.LEARNER)] if learners else []
        cells = [row["backbone"], row["dataset"], *learner, row["method"], ",".join(map(str, row["seeds"])) or "-",
                 _pm(row["accuracy_mean"], row["accuracy_std"]), _pm(row["ece_mean"], row["ece_std"]),
                 *(_pm(row[f"{n}_ece_mean"], row[f"{n}_ece_std"]) for n in calibrated), _num(row["paper_ece"]), _num(row["ece_diff"], signed=True), _num(row["paper_accuracy"]),
                 _within_text(row["within"]), row["status"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("backbone", "dataset", "method", "protocol", "seeds", "accuracy_mean", "accuracy_std", "ece_mean",
               "ece_std", "paper_ece", "paper_accuracy", "ece_diff", "accuracy_diff", "within", "tolerance", "status",
               "run_ids", "paper_sources")


def table_csv(table: Sequence[Mapping[str, Any]]) -> str:
    """The table as CSV text (lists joined with ``;``, missing values empty; a ``learner`` column after
    ``dataset`` when some row's learner is neither coop nor zero-shot)."""
    columns = list(CSV_COLUMNS)
    if _shows_learners(table):
        columns.insert(columns.index("dataset") + 1, "learner")
    for name in reversed(_calibrated_names(table)):
        columns[columns.index("ece_std") + 1:columns.index("ece_std") + 1] = [f"{name}_ece_mean", f"{name}_ece_std"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in table:
        out = {}
        for key in columns:
            value = row.get(key)
            if isinstance(value, (list, tuple)):
                value = ";".join(str(v) for v in value)
            elif isinstance(value, float):
                value = f"{value:.4f}"
            out[key] = "" if value is None else value
        writer.writerow(out)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------- reproduce

@dataclass
class Reproduction:
    """What :func:`reproduce` did: the settings (``learners``: those of the training methods), every cell
    (with its final status) and the table."""

    suite: str
    protocol: str
    methods: list[str]
    seeds: list[int]
    shots: int
    epochs: int
    tolerance: float
    cells: list[Cell]
    table: list[dict[str, Any]] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)  # run ids created by this call
    learners: list[str] = field(default_factory=lambda: [defaults.LEARNER])

    @property
    def missing_data(self) -> list[str]:
        """The datasets (task names) without data, in suite order."""
        return list(dict.fromkeys(c.dataset for c in self.cells if c.status == "missing-data"))

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "protocol": self.protocol, "methods": list(self.methods),
                "learners": list(self.learners), "seeds": list(self.seeds), "shots": self.shots, "epochs": self.epochs, "tolerance": self.tolerance,
                "missing_data": self.missing_data, "missing_data_dirs": [str(datasets_dir() / d) for d in self.missing_data],
                "ran": list(self.ran), "cells": [c.to_dict() for c in self.cells], "table": list(self.table),
                "paper_sources": paper_sources()}

    def markdown(self) -> str:
        return table_markdown(self.table, self.tolerance)

    def csv(self) -> str:
        return table_csv(self.table)


def _emit(progress: Callable[[dict[str, Any]], None] | None, event: str, cell: Cell, index: int, total: int,
          todo: int, **extra: Any) -> None:
    if progress is not None:
        progress({"event": event, "cell": cell, "index": index, "total": total, "todo": todo, **extra})


def _zero_shot_cell(cell: Cell, backbone, task, dataset, cache, store: RunStore, n_boot: int) -> RunRecord:
    _, test = few_shot_split(dataset, cell.shots, cell.seed)
    params = {"model": cell.backbone, "dataset": cell.dataset, "task": task.name, "head": ZERO_SHOT_HEAD,
              "shots": cell.shots, "seed": cell.seed, "n_bins": cell.n_bins, "method": ZERO_SHOT,
              "source": "reproduce"}
    run_id = store.create_run("evaluate", params, slug=f"zeroshot-s{cell.seed}")
    store.start_run(run_id, str(backbone.device))
    try:
        evaluation = evaluate_zero_shot(backbone, task, test, cache, n_bins=cell.n_bins, n_boot=n_boot)
        store.finish_run(run_id, {**evaluation.report, "test_images": len(test), "task": task.name}, None,
                         evaluation.rows)
    except BaseException as exc:
        if store.get_run(run_id).status in ("queued", "running"):
            store.fail_run(run_id, failure_text(exc))
        raise
    return store.get_run(run_id)


#: the training cells of one (backbone, dataset, learner), with their positions in the suite, and their jobs
_Plan = tuple[list[tuple[int, Cell]], list[TrainJob]]


def _walk_cells(cells: Sequence[Cell], store: RunStore, *, device: str, n_boot: int, dry_run: bool,
                emit: Callable[..., None], ran: list[str]) -> list[_Plan]:
    """One pass over the cells: report the reused, missing-data and refused ones, load each backbone once
    (one in memory at a time; a backbone that cannot load makes its cells ``unavailable``), evaluate the
    zero-shot cells now (their run ids appended to ``ran``), and return the training cells grouped by
    (backbone, dataset, learner), in suite order, with their jobs: one group per learner, so that an
    executor may train learners in parallel (a Ray task each) while each learner's runs train together.
    With ``dry_run`` the todo cells are left as they are."""
    from calibprompt.backbones import BackboneUnavailableError, load_backbone
    from calibprompt.training.features import FeatureCache

    current: dict[str, Any] = {}  # backbone name -> Backbone (the one loaded), or why it is unavailable (str)
    opened: dict[str, tuple[Any, Any, Any]] = {}  # dataset -> task, dataset, feature cache (current backbone)
    plans: dict[tuple[str, str, str], _Plan] = {}
    for index, cell in enumerate(cells):
        if cell.status in ("done", "missing-data", "refused"):
            extra = ({"run_id": cell.run_id} if cell.status == "done" else
                     {"error": cell.error} if cell.status == "refused" else {})
            emit("reused" if cell.status == "done" else cell.status, cell, index, **extra)
            continue
        if dry_run:
            continue
        if cell.backbone not in current:
            current = {n: b for n, b in current.items() if isinstance(b, str)}  # free the loaded one first
            opened, backbone = {}, None
            try:
                current[cell.backbone] = load_backbone(cell.backbone, device=device)
            except BackboneUnavailableError as exc:
                current[cell.backbone] = str(exc)
        backbone = current[cell.backbone]
        if isinstance(backbone, str):
            cell.status, cell.error = "unavailable", backbone
            emit("unavailable", cell, index, error=backbone)
        elif not cell.zero_shot:
            members, jobs = plans.setdefault((cell.backbone, cell.dataset, cell.learner), ([], []))
            members.append((index, cell))
            jobs.append(_train_job(cell, str(backbone.device)))
        else:
            emit("start", cell, index)
            if cell.dataset not in opened:
                task_obj, ds = open_dataset(cell.dataset)
                opened[cell.dataset] = (task_obj, ds, FeatureCache(backbone))
            record = _zero_shot_cell(cell, backbone, *opened[cell.dataset], store, n_boot)
            _set_done(cell, record)
            ran.append(record.id)
            emit("done", cell, index, run_id=record.id)
    return list(plans.values())


def reproduce(suite: str = "paper", methods: str | Sequence[str] = DEFAULT_METHODS,
              seeds: str | Sequence[int] = DEFAULT_SEEDS, protocol: str = "paper", *,
              shots: int = defaults.SHOTS, epochs: int = defaults.EPOCHS, n_bins: int = defaults.N_BINS,
              model: str | None = None, tolerance: float = DEFAULT_TOLERANCE, device: str = "auto",
              n_boot: int = DEFAULT_N_BOOT, store: RunStore | None = None, dry_run: bool = False,
              progress: Callable[[dict[str, Any]], None] | None = None, on_step: Callable | None = None,
              max_batch_prompts: int | None = defaults.MAX_BATCH_PROMPTS, executor: Executor | None = None,
              on_event: Callable[[dict], None] | None = None,
              learners: str | Sequence[str] | None = None, calibrators: str | Sequence[str] = ()) -> Reproduction:
    """Run every todo cell of ``suite`` (see :func:`plan_cells`), reuse the done ones, and build the
    table (:func:`build_table`). With ``dry_run`` nothing runs: the cells keep their planned status.

    ``learners`` (default: coop only): the few-shot learners each training method runs with (see
    :func:`plan_cells`; a learner x method that does not exist is a ``refused`` cell, never a failure).

    ``progress`` gets dicts ``{"event", "cell", "index", "total", "todo"}`` (``todo``: the cells to
    run, fixed for the call), one per cell, with event ``reused``
    (done before), ``missing-data``, ``refused`` (also ``"error"``: why), ``start`` then ``done`` (run
    now; also ``"run_id"``), or ``unavailable`` (the backbone could not be loaded; also ``"error"``).
    Zero-shot cells are evaluated first, as the cells are walked. The training cells of each backbone,
    dataset and learner then form one :class:`~calibprompt.runs.executors.JobGroup`, and every group goes
    to ``executor``
    (:mod:`calibprompt.runs.executors`; e.g. ``calibprompt.cluster.runs.RayExecutor``, which submits
    every group as a Ray task at once); without one the groups are trained here one after the other
    (:class:`~calibprompt.runs.executors.Batched`, at most ``max_batch_prompts`` prompts per
    text-encoder pass, ``n_boot`` resamples). They all ``start``, then each is ``done`` when recorded.
    ``on_step(run_id, info)`` gets their steps, ``on_event`` the executor's events (a Ray task's start,
    retry, failure). A failed training run raises (its failure is recorded in the store); running again
    resumes after the last finished cell. ``calibrators`` (post-hoc, :func:`~calibprompt.evaluation.calibrators.
    parse_calibrators`): each table row gains ``<name>_ece_mean`` / ``_std`` (:func:`add_calibrated`)."""
    within_tolerance(0.0, 0.0, tolerance)
    calibrators = parse_calibrators(calibrators)  # ValueError naming them, before anything runs
    store = store or RunStore()
    cells = plan_cells(suite, methods, seeds, protocol, shots=shots, epochs=epochs, n_bins=n_bins, model=model,
                       store=store, learners=learners)
    result = Reproduction(suite=suite, protocol=protocol, methods=parse_methods(methods), seeds=parse_seeds(seeds),
                          shots=int(shots), epochs=int(epochs), tolerance=float(tolerance), cells=cells,
                          learners=[defaults.LEARNER] if learners is None else parse_learners(learners))
    total, todo = len(cells), sum(c.status == "todo" for c in cells)

    def emit(event: str, cell: Cell, index: int, **extra: Any) -> None:
        _emit(progress, event, cell, index, total, todo, **extra)

    plans = _walk_cells(cells, store, device=device, n_boot=n_boot, dry_run=dry_run, emit=emit, ran=result.ran)
    by_run: dict[str, tuple[int, Cell]] = {}
    groups = []
    for members, jobs in plans:
        group = JobGroup.create(store, jobs)
        groups.append(group)
        by_run.update(zip(group.run_ids, members))
        for index, cell in members:
            emit("start", cell, index)

    def done(record: RunRecord) -> None:
        index, cell = by_run[record.id]
        if record.status != "done":
            raise RuntimeError(f"Run {record.id} ({cell.backbone} {cell.dataset} {cell.learner} {cell.method} "
                               f"seed {cell.seed}) "
                               f"ended {record.status}: {record.error}")
        _set_done(cell, record)
        result.ran.append(record.id)
        emit("done", cell, index, run_id=record.id)

    if groups:
        executor = executor or local_executor(max_batch_prompts=max_batch_prompts, n_boot=n_boot)
        executor(groups, store, on_step=on_step, on_done=done, on_event=on_event)
    result.table = build_table(cells, tolerance)
    if calibrators:
        add_calibrated(result.table, store, calibrators, n_bins)
    return result
