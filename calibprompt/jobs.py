"""Prompt-tuning jobs: one function that runs a job from dataset to stored result, and a runner that
queues jobs in the background, one at a time per device.

:func:`run_train_job` is the whole pipeline, readable top to bottom: open the dataset, draw the seeded
k-shot split, get image features from the cache, train (:func:`calibprompt.trainer.train_prompts`),
evaluate on the test split, write the prompt checkpoint, and record everything in the run store in
one transaction. The CLI calls it directly; :class:`JobRunner` calls it from a worker thread.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .checkpoint import save_prompt
from .data.datasets import Dataset, LabeledImages, few_shot_split, load_dataset
from .demo.datasets import is_demo_task, standard_split
from .devices import resolve_device
from .engine import Engine
from .evaluation import Evaluation, evaluate_head
from .features import FeatureCache
from .losses import build_objective, get_method
from .models import load_backbone
from .paths import datasets_dir, inside, runs_dir, uploads_dir
from .store import RunRecord, RunStore
from .tasks import Task, TaskClass, list_tasks, load_task
from .trainer import StepInfo, TrainConfig, TrainingCancelled, train_prompts

logger = logging.getLogger(__name__)

__all__ = ["TrainJob", "open_dataset", "run_train_job", "evaluate_zero_shot", "JobRunner", "DEFAULT_VIEWS"]

DEFAULT_VIEWS = 10  # cached augmented views per training image


@dataclass
class TrainJob:
    """What to train: a backbone, a dataset, a split and a method (the paper's protocol by default)."""

    model: str
    dataset: str
    task: str | None = None
    shots: int = 8
    seed: int = 1
    method: str = "coop"
    epochs: int = 50
    loss_params: dict[str, float] = field(default_factory=dict)
    n_views: int = DEFAULT_VIEWS
    device: str = "auto"
    n_bins: int = 10
    batch_size: int = 16
    lr: float = 0.002
    n_ctx: int = 16

    def __post_init__(self):
        get_method(self.method)  # ValueError naming the methods
        if self.shots < 1:
            raise ValueError(f"shots must be at least 1, got {self.shots}.")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}.")
        self.loss_params = {k: float(v) for k, v in self.loss_params.items() if v is not None}
        build_objective(self.method, **self.loss_params)  # ValueError for a parameter the method lacks

    def config(self) -> TrainConfig:
        return TrainConfig(method=self.method, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           n_ctx=self.n_ctx, seed=self.seed, loss_params=dict(self.loss_params))

    def to_params(self) -> dict[str, Any]:
        return asdict(self)


def _task_from_dataset(dataset: Dataset) -> Task:
    classes = tuple(TaskClass(i, n, n) for i, n in zip(dataset.class_ids, dataset.classnames))
    return Task(name=dataset.name, classes=classes)


def open_dataset(dataset: str | os.PathLike, task: str | Task | None = None) -> tuple[Task, Dataset]:
    """The task and dataset a job names.

    ``dataset`` is a folder or CSV file in any layout :func:`calibprompt.data.datasets.load_dataset`
    reads, or a task name whose data lives in ``$CALIBPROMPT_HOME/datasets/<name>`` (for the demo
    tasks, their standard split, generated on first use). ``task`` (a name
    or file) supplies class names and templates; without it, a folder named like a task uses that
    task, and any other folder gets its class names from its folders.
    """
    task_obj = load_task(task) if task is not None else None
    path = Path(dataset).expanduser()
    if not path.exists() and str(dataset) in list_tasks():
        task_obj = task_obj or load_task(str(dataset))
        path = standard_split(str(dataset)) if is_demo_task(str(dataset)) else datasets_dir() / str(dataset)
        if not path.exists():
            raise ValueError(
                f"No data for the task {dataset!r} in {path}. Put the dataset there (any supported layout, e.g. the "
                f"paper's images/train|test/<class>/ + classnames.txt), or pass --dataset FOLDER."
            )
    if not path.exists():
        raise ValueError(f"The dataset {str(dataset)!r} is neither a folder/CSV file nor a task name ({', '.join(list_tasks())}).")
    if task_obj is None and path.name in list_tasks():
        task_obj = load_task(path.name)
    # an uploaded archive may carry a manifest pointing anywhere: keep it to its own folder
    ds = load_dataset(path, task=task_obj, confine_to_root=inside(path, uploads_dir()))
    return (task_obj or _task_from_dataset(ds)), ds


def _zero_shot_engine(backbone, task: Task) -> Engine:
    engine = Engine(backbone)
    engine.add_zero_shot("zero-shot", task)
    return engine


def _split_record(images: LabeledImages) -> dict[str, Any]:
    return {"root": str(images.root), "paths": images.relative_paths(), "labels": list(images.labels)}


def evaluate_zero_shot(backbone, task: Task, test: LabeledImages, cache: FeatureCache | None = None,
                       n_bins: int = 10, n_boot: int = 1000) -> Evaluation:
    """Zero-shot evaluation of ``task``'s templates on a test split."""
    cache = cache or FeatureCache(backbone)
    engine = _zero_shot_engine(backbone, task)
    feats = cache.plain(test.paths)
    return evaluate_head(engine, "zero-shot", feats, test.labels, [str(p) for p in test.paths], task.classnames,
                         n_bins=n_bins, n_boot=n_boot)


def _recording_progress(store: RunStore, run_id: str, on_step: Callable[[StepInfo], None] | None,
                        every: float = 1.0) -> Callable[[StepInfo], None]:
    """``on_step`` that also writes the latest step to the store (at most once a second, and the last
    step), so other processes (the app, ``calibprompt runs``) see a job's progress."""
    last = [float("-inf")]

    def step(info: StepInfo) -> None:
        if on_step is not None:
            on_step(info)
        now = time.monotonic()
        if now - last[0] >= every or info.global_step == info.total_steps:
            last[0] = now
            store.update_progress(run_id, info.to_dict())

    return step


def run_train_job(job: TrainJob, store: RunStore, *, run_id: str | None = None, backbone=None,
                  on_step: Callable[[StepInfo], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, n_boot: int = 1000) -> RunRecord:
    """Run one prompt-tuning job and record it in ``store``; returns the finished run.

    The run ends ``done`` (checkpoint and metrics written), ``cancelled`` (``should_stop`` turned true;
    no checkpoint) or ``failed`` (the exception is recorded, then re-raised).
    """
    run_id = run_id or store.create_run("train", job.to_params(), slug=f"{job.method}-s{job.seed}")
    device = resolve_device(job.device)
    store.start_run(run_id, str(device))
    try:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if backbone is None or backbone.device != device:
            backbone = load_backbone(job.model, device=device)
        task, dataset = open_dataset(job.dataset, job.task)
        train, test = few_shot_split(dataset, job.shots, job.seed)
        timings["load_seconds"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        cache = FeatureCache(backbone)
        train_feats = cache.augmented(train.paths, job.n_views)
        test_feats = cache.plain(test.paths)
        timings["feature_seconds"] = time.perf_counter() - t0

        engine = _zero_shot_engine(backbone, task)
        result = train_prompts(backbone, task.classnames, train_feats, train.labels, job.config(), task=task,
                               zero_shot_text=engine.heads["zero-shot"].text_features,
                               on_step=_recording_progress(store, run_id, on_step), should_stop=should_stop)
        timings["train_seconds"] = result.seconds

        engine.add_prompt(job.method, result.learner)
        evaluation = evaluate_head(engine, job.method, test_feats, test.labels, [str(p) for p in test.paths],
                                   task.classnames, n_bins=job.n_bins, n_boot=n_boot)
        metrics = {**evaluation.report, **timings, "history": result.history, "loss_params": result.objective_params,
                   "train_images": len(train), "test_images": len(test), "task": task.name}
        checkpoint = save_prompt(runs_dir() / run_id / "prompt", result.learner, backbone=backbone.name, metadata={
            "run_id": run_id, "task": task.to_dict(), "method": job.method, "loss_params": result.objective_params,
            "seed": job.seed, "shots": job.shots, "config": result.config.to_dict(), "dataset": str(dataset.root),
            "split": {"train": _split_record(train), "test_images": len(test)},
            "metrics": evaluation.summary, "timings": timings, "device": result.device,
        })
        store.finish_run(run_id, metrics, str(checkpoint), evaluation.rows)
    except TrainingCancelled:
        store.cancel_run(run_id)
    except BaseException as exc:
        if store.get_run(run_id).status in ("queued", "running"):
            store.fail_run(run_id, f"{type(exc).__name__}: {exc}")
        raise
    return store.get_run(run_id)


# --------------------------------------------------------------------------------------------
# Background runner
# --------------------------------------------------------------------------------------------
@dataclass
class _Entry:
    run_id: str
    job: TrainJob
    device: str
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    progress: dict[str, Any] | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None


class JobRunner:
    """Runs :class:`TrainJob` s in background threads: one worker and one FIFO queue per device, so a
    device trains one job at a time while others wait with a known queue position.

    Args:
        store: the :class:`RunStore` runs are recorded in.
        backbone_loader: ``(model, device) -> Backbone``; the last backbone per device is kept and
            reused by the next job on that device.
    """

    def __init__(self, store: RunStore, backbone_loader: Callable[..., Any] | None = None):
        self.store = store
        self._load = backbone_loader or (lambda model, device: load_backbone(model, device=device))
        self._lock = threading.Lock()
        self._queues: dict[str, queue.Queue] = {}
        self._waiting: dict[str, list[str]] = {}  # device -> run ids in queue order (running one first)
        self._entries: dict[str, _Entry] = {}
        self._backbones: dict[str, Any] = {}

    def submit(self, job: TrainJob) -> str:
        """Queue a job; returns its run id (status ``queued`` in the store)."""
        device = str(resolve_device(job.device))
        run_id = self.store.create_run("train", job.to_params(), slug=f"{job.method}-s{job.seed}")
        entry = _Entry(run_id, job, device)
        with self._lock:
            self._entries[run_id] = entry
            self._waiting.setdefault(device, []).append(run_id)
            if device not in self._queues:
                self._queues[device] = queue.Queue()
                threading.Thread(target=self._work, args=(device,), name=f"calibprompt-jobs-{device}",
                                 daemon=True).start()
            self._queues[device].put(entry)
        return run_id

    def position(self, run_id: str) -> int | None:
        """0 while the job runs, N when N jobs are ahead of it on its device, None when it is over."""
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is None or entry.done.is_set():
                return None
            return self._waiting[entry.device].index(run_id)

    def progress(self, run_id: str) -> dict[str, Any]:
        """Latest step (epoch, step, loss parts, lr, ETA), the loss curve, the queue position and status."""
        entry = self._entries.get(run_id)
        record = self.store.get_run(run_id)
        if entry is None:
            return {"status": record.status, "position": None, "step": record.progress, "losses": []}
        return {"status": record.status, "position": self.position(run_id), "step": entry.progress,
                "losses": list(entry.losses), "error": entry.error or record.error}

    def cancel(self, run_id: str) -> bool:
        """Ask a queued or running job to stop; returns False if it is unknown or already over."""
        entry = self._entries.get(run_id)
        if entry is None or entry.done.is_set():
            return False
        entry.cancel.set()
        return True

    def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        entry = self._entries.get(run_id)
        if entry is not None and not entry.done.wait(timeout):
            raise TimeoutError(f"Run {run_id} did not finish within {timeout} s.")
        return self.store.get_run(run_id)

    def _backbone(self, model: str, device: str):
        key = f"{model}@{device}"
        if key not in self._backbones:
            for old in [k for k in self._backbones if k.endswith(f"@{device}")]:
                del self._backbones[old]  # keep one model per device in memory
            self._backbones[key] = self._load(model, device)
        return self._backbones[key]

    def _work(self, device: str) -> None:
        jobs = self._queues[device]
        while True:
            entry: _Entry = jobs.get()
            try:
                self._run(entry)
            finally:
                with self._lock:
                    self._waiting[device].remove(entry.run_id)
                entry.done.set()

    def _run(self, entry: _Entry) -> None:
        if entry.cancel.is_set():
            self.store.cancel_run(entry.run_id)
            return

        def on_step(info: StepInfo) -> None:
            entry.progress = info.to_dict()
            entry.losses.append((info.global_step, info.loss))

        try:
            backbone = self._backbone(entry.job.model, entry.device)
            run_train_job(entry.job, self.store, run_id=entry.run_id, backbone=backbone, on_step=on_step,
                          should_stop=entry.cancel.is_set)
        except Exception as exc:  # recorded in the store by run_train_job; keep the worker alive
            entry.error = f"{type(exc).__name__}: {exc}"
            logger.warning("Run %s failed: %s", entry.run_id, entry.error)
            record = self.store.get_run(entry.run_id)
            if record.status in ("queued", "running"):
                self.store.fail_run(entry.run_id, entry.error)
