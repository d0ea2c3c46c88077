"""Prompt-tuning jobs: one function that runs a job from dataset to stored result, and a runner that
queues jobs in the background, one at a time per device.

:func:`run_train_job` is the whole pipeline, readable top to bottom: open the dataset, draw the seeded
k-shot split, get image features from the cache, train (:func:`calibprompt.training.trainer.train_prompts`),
evaluate on the test split, write the prompt checkpoint, and record everything in the run store in
one transaction. The CLI calls it directly; :class:`JobRunner` calls it from a worker thread.
"""
from __future__ import annotations

import logging
import dataclasses
import math
import numbers
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from calibprompt import defaults
from calibprompt.prompting.checkpoint import CheckpointWriteError, save_context
from calibprompt.data.class_splits import SIDES
from calibprompt.data.layouts import LabeledImages
from calibprompt.data.resolve import open_dataset
from calibprompt.devices import resolve_device
from calibprompt.prompting.engine import Engine
from calibprompt.prompting.learner import PromptLearner
from calibprompt.training.learners import save_learner
from calibprompt.evaluation.selective import risk_coverage
from calibprompt.evaluation.report import Evaluation
from calibprompt.runs.evaluation import evaluate_prompt
from calibprompt.runs.sides import Side, evaluate_sides, protocol_split
from calibprompt.training.features import FeatureCache, FreshViews
from calibprompt.training.losses import build_objective
from calibprompt.training.protocols import check_choice, resolve_protocol
from calibprompt.backbones import load_backbone
from calibprompt.paths import runs_dir
from calibprompt.runs.requests import check_train_request
from calibprompt.runs.store import RunRecord, RunStore
from calibprompt.prompting.tasks import Task
from calibprompt.training.trainer import (StepInfo, TrainConfig, TrainingCancelled, train_prompts,
                                          without_default_learner)

logger = logging.getLogger(__name__)

__all__ = ["TrainJob", "open_dataset", "run_train_job", "evaluate_zero_shot", "JobRunner", "DEFAULT_VIEWS",
           "PreparedJob", "JobOutcome", "prepare_job", "prepare_jobs", "recording_progress", "evaluate_trained", "record_outcome", "same_training",
           "find_done_run", "check_run_name", "RUN_NAME_LIMIT", "failure_text"]

DEFAULT_VIEWS = defaults.N_VIEWS  # cached augmented views per training image
RUN_NAME_LIMIT = defaults.RUN_NAME_CHARS  # characters of a run's optional name


def check_run_name(name: Any) -> str:
    """A run's optional name, stripped ("" when none): at most :data:`RUN_NAME_LIMIT` characters of
    printable text on one line (it is shown as text, never as HTML or Markdown)."""
    if name is None:
        return ""
    if not isinstance(name, str):
        raise ValueError(f"A run's name must be text, got {type(name).__name__}.")
    name = name.strip()
    if len(name) > RUN_NAME_LIMIT:
        raise ValueError(f"A run's name can have at most {RUN_NAME_LIMIT} characters; this one has {len(name)}.")
    if any(not ch.isprintable() for ch in name):
        raise ValueError("A run's name must be one line of printable text (no tabs, line breaks or control characters).")
    return name


@dataclass
class TrainJob:
    """What to train: a backbone, a dataset, a split and a method (the paper's protocol by default).

    ``protocol`` is ``"paper"`` or ``"authors-code"`` (:mod:`calibprompt.training.protocols`); ``precision``
    (``"fp32"``, ``"fp16"``, ``"bf16"``) overrides the protocol's compute precision for the backbone
    family (``None``: the protocol's). Both are recorded in the run's params and in the checkpoint. Under a
    protocol with fresh augmentation (``authors-code``) every step encodes its batch anew and ``n_views``
    is unused.
    """

    model: str
    dataset: str
    task: str | None = None
    shots: int = defaults.SHOTS
    seed: int = defaults.SEED
    method: str = "coop"
    epochs: int = defaults.EPOCHS
    loss_params: dict[str, float] = field(default_factory=dict)
    n_views: int = DEFAULT_VIEWS
    device: str = "auto"
    n_bins: int = defaults.N_BINS
    batch_size: int = defaults.BATCH_SIZE
    lr: float = defaults.LR
    n_ctx: int = defaults.N_CTX
    protocol: str = defaults.PROTOCOL
    precision: str | None = None
    #: the few-shot learner (:func:`calibprompt.training.learners.list_learners`) and its own parameters;
    #: recorded in the run's params only when not the default (a coop run's params are unchanged)
    learner: str = defaults.LEARNER
    learner_params: dict[str, Any] = field(default_factory=dict)
    #: the evaluation protocol (:mod:`calibprompt.data.class_splits`), recorded only when not the default:
    #: ``classes="base"`` trains on the base half of the classes and evaluates on both halves
    #: (base-to-novel); ``eval_dataset`` also evaluates on another dataset with the same classes (cross-domain)
    classes: str = "all"
    eval_dataset: str | None = None

    def __post_init__(self):
        """Check and normalise the request once, at creation: the protocol and precision
        (:func:`~calibprompt.training.protocols.check_choice`), the numbers (:func:`check_train_request`),
        the views and the loss parameters (the method must take them)."""
        self.protocol, self.precision = check_choice(self.protocol, self.precision)  # ValueError naming them
        params = {k: v for k, v in dict(self.loss_params).items() if v is not None}
        # plain-words ValueError for out-of-range shots/epochs/seed/alpha/beta or an unknown method
        check_train_request(shots=self.shots, epochs=self.epochs, seed=self.seed, alpha=params.get("alpha"),
                            beta=params.get("beta"), method=self.method, n_bins=self.n_bins)
        self.shots, self.epochs, self.seed = int(self.shots), int(self.epochs), int(self.seed)
        self.n_bins = int(self.n_bins)
        views = self.n_views
        if (isinstance(views, bool) or not isinstance(views, numbers.Real) or not math.isfinite(views)
                or views < 1 or views != int(views)):
            raise ValueError(f"The number of augmented views per image must be a whole number of at least 1; "
                             f"got {views!r}. The default is {defaults.N_VIEWS}.")
        self.n_views = int(views)
        for key, value in params.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"The loss parameter {key} must be a finite number; got {value!r}.")
        self.loss_params = {k: float(v) for k, v in params.items()}
        build_objective(self.method, **self.loss_params)  # ValueError for a parameter the method lacks
        from calibprompt.training.learners import check_learner_method, learner_name

        self.learner = learner_name(self.learner)  # ValueError naming the learners
        self.learner_params = dict(self.learner_params or {})
        check_learner_method(self.learner, self.method)  # a refused combination, before any run row
        if self.classes not in SIDES:
            raise ValueError(f"classes must be one of {', '.join(SIDES)} (all classes, or the base half of a "
                             f"base-to-novel split); got {self.classes!r}.")
        if self.classes != "all" and self.eval_dataset:
            raise ValueError("Base-to-novel and cross-domain are separate protocols: ask for one at a time.")
        self.eval_dataset = str(self.eval_dataset) if self.eval_dataset else None

    def config(self, family: str | None = None) -> TrainConfig:
        """The trainer's :class:`~calibprompt.training.trainer.TrainConfig` of this job. With the backbone's
        ``family``, the protocol's settings for it are resolved here, once
        (:func:`~calibprompt.training.protocols.resolve_protocol`), and carried in ``config.settings``:
        :func:`prepare_jobs` calls this once per job and everything downstream (the feature source, the
        trainer, the run record) reads them from there."""
        settings = None if family is None else resolve_protocol(self.protocol, family, precision=self.precision)
        return TrainConfig(method=self.method, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           n_ctx=self.n_ctx, seed=self.seed, loss_params=dict(self.loss_params),
                           protocol=self.protocol, precision=self.precision, settings=settings,
                           learner=self.learner, learner_params=dict(self.learner_params))

    def to_params(self) -> dict[str, Any]:
        """The job's settings as recorded with its run; ``learner`` and ``learner_params`` only when not
        the default (so a coop run's params are those of before the learners)."""
        params = without_default_learner(asdict(self))
        for key, default in (("classes", "all"), ("eval_dataset", None)):
            if params.get(key) == default:
                params.pop(key)
        return params

    @property
    def slug(self) -> str:
        """A short readable part of the run id: ``<method>-s<seed>``, the learner first when not coop."""
        prefix = "" if self.learner == defaults.LEARNER else f"{self.learner.replace('++', 'pp')}-"
        suffix = "-base" if self.classes == "base" else ""
        return f"{prefix}{self.method}-s{self.seed}{suffix}"


def _field_default(name: str) -> Any:
    f = TrainJob.__dataclass_fields__.get(name)
    if f is None:
        return None
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


#: settings a job records only when not the default (:meth:`TrainJob.to_params`)
_OMITTED_WHEN_DEFAULT = ("learner", "learner_params", "classes", "eval_dataset")
_IGNORED_PARAMS = ("device", "owner", "name")  # where, for whom and under what name a run ran does not change its result


def same_training(record: RunRecord, wanted: dict[str, Any]) -> bool:
    """Whether a training run used every setting of ``wanted`` (a job's :meth:`TrainJob.to_params`); a
    setting the run did not record (an older version) counts as that setting's default."""
    params = record.params or {}
    keys = set(wanted) | (set(_OMITTED_WHEN_DEFAULT) & set(params))  # a kgcoop run is no coop run
    return all(params.get(key, _field_default(key)) == wanted.get(key, _field_default(key))
               for key in keys if key not in _IGNORED_PARAMS)


def find_done_run(runs: Sequence[RunRecord], job: TrainJob) -> RunRecord | None:
    """The first finished training run of ``runs`` (``store.list_runs(status="done", kind="train")``:
    newest first) with every setting of ``job`` (not the device)."""
    wanted = job.to_params()
    return next((r for r in runs if r.metrics and same_training(r, wanted)), None)


def _zero_shot_engine(backbone, task: Task) -> Engine:
    engine = Engine(backbone)
    engine.add_zero_shot("zero-shot", task)
    return engine


def _split_record(images: LabeledImages) -> dict[str, Any]:
    return {"root": str(images.root), "paths": images.relative_paths(), "labels": list(images.labels)}


def evaluate_zero_shot(backbone, task: Task, test: LabeledImages, cache: FeatureCache | None = None,
                       n_bins: int = defaults.N_BINS, n_boot: int = defaults.N_BOOT) -> Evaluation:
    """Zero-shot evaluation of ``task``'s templates on a test split; see
    :func:`calibprompt.runs.evaluation.evaluate_prompt`."""
    return evaluate_prompt(backbone, task, test, None, cache=cache, n_bins=n_bins, n_boot=n_boot)


def recording_progress(store: RunStore, run_id: str, on_step: Callable[[StepInfo], None] | None,
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


@dataclass
class PreparedJob:
    """A job's data, ready to train on: its task, seeded split and image features."""

    job: TrainJob
    task: Task
    dataset_root: str
    train: LabeledImages
    test: LabeledImages
    train_features: Any  # (N, V, D) cached views, or a FreshViews source (fresh augmentation)
    test_features: Any  # (M, D)
    zero_shot: Engine  # the task's zero-shot head ("zero-shot"), for the methods that need its logits
    timings: dict[str, float] = field(default_factory=dict)
    #: the job's trainer config with its protocol resolved for the backbone's family (``job.config(family)``)
    config: TrainConfig | None = None
    #: the other evaluations of the job's protocol (novel classes, a cross-domain dataset)
    sides: list[Side] = field(default_factory=list)

    @property
    def zero_shot_text(self):
        return self.zero_shot.heads["zero-shot"].text_features


@dataclass
class JobOutcome:
    """A trained and evaluated run before anything is written: the context vectors (CPU tensor), the
    prompt layout, the checkpoint's metadata, the metrics and the per-image predictions.
    :func:`record_outcome` writes it."""

    run_id: str
    backbone: str
    ctx: Any  # torch.Tensor, float32 on the CPU
    prompt_config: dict[str, Any]
    checkpoint_metadata: dict[str, Any]
    metrics: dict[str, Any]
    predictions: list[dict[str, Any]]
    #: a registry learner other than plain coop (cocoop, an adapter...): written with ``save_learner``
    learner: Any = None


def prepare_job(job: TrainJob, backbone, cache: FeatureCache | None = None) -> PreparedJob:
    """Open the job's dataset, draw its seeded k-shot split and get the image features (cached views
    of the training images, or a fresh-augmentation source under such a protocol; plain test views)."""
    return prepare_jobs([job], backbone, cache)[0]


def prepare_jobs(jobs: Sequence[TrainJob], backbone, cache: FeatureCache | None = None) -> list[PreparedJob]:
    """:func:`prepare_job` for many jobs on one backbone, each piece of work done once: a dataset is
    opened and a (shots, seed) split drawn once however many methods use it, the features of every
    training image any job needs come from one pass (at the largest view count; each job takes its
    first ``n_views``), those of every test image from another, and each task's zero-shot head is
    encoded once. A job's ``load_seconds`` and ``feature_seconds`` are its share of the shared work."""
    jobs = list(jobs)
    cache = cache or FeatureCache(backbone)
    t0 = time.perf_counter()
    splits: dict[tuple, tuple[Task, Any, LabeledImages, LabeledImages, list[Side]]] = {}
    for job in jobs:
        if _split_key(job) not in splits:
            splits[_split_key(job)] = protocol_split(job.dataset, job.task, job.shots, job.seed,
                                                     classes=job.classes, eval_dataset=job.eval_dataset)
    load_seconds = (time.perf_counter() - t0) / len(jobs)

    t0 = time.perf_counter()
    configs = {id(job): job.config(backbone.family) for job in jobs}  # each job's protocol, resolved once
    fresh = {id(job): configs[id(job)].settings["fresh_augmentation"] for job in jobs}
    cached = [job for job in jobs if not fresh[id(job)]]
    train_paths = list(dict.fromkeys(str(p) for job in cached for p in splits[_split_key(job)][2].paths))
    test_paths = list(dict.fromkeys(str(p) for _, _, _, test, sides in splits.values()
                                    for images in [test, *(side.images for side in sides)] for p in images.paths))
    views = cache.augmented(train_paths, max(job.n_views for job in cached)) if train_paths else None
    plain = cache.plain(test_paths)
    train_row = {p: i for i, p in enumerate(train_paths)}
    test_row = {p: i for i, p in enumerate(test_paths)}
    feature_seconds = (time.perf_counter() - t0) / len(jobs)

    engines: dict[str, Engine] = {}
    prepared = []
    for side in (side for *_, sides in splits.values() for side in sides):  # once per side, whatever its runs
        side.features = plain[[test_row[str(p)] for p in side.images.paths]]
        if side.name == "novel":
            side.zero_shot_text = _zero_shot_engine(backbone, side.task).heads["zero-shot"].text_features
    for job in jobs:
        task, dataset, train, test, sides = splits[_split_key(job)]
        if fresh[id(job)]:
            train_feats = FreshViews(backbone, train.paths, seed=job.seed)  # augmented and encoded every step
        else:
            train_feats = views[[train_row[str(p)] for p in train.paths], :job.n_views]  # cached views
        test_feats = plain[[test_row[str(p)] for p in test.paths]]
        if task.name not in engines:
            engines[task.name] = _zero_shot_engine(backbone, task)
        prepared.append(PreparedJob(job, task, str(dataset.root), train, test, train_feats, test_feats,
                                    engines[task.name],
                                    {"load_seconds": load_seconds, "feature_seconds": feature_seconds},
                                    configs[id(job)], list(sides)))
    return prepared


def _split_key(job: TrainJob) -> tuple:
    return job.dataset, job.task, job.shots, job.seed, job.classes, job.eval_dataset


def evaluate_trained(prepared: PreparedJob, result, backbone, run_id: str, *, n_boot: int = defaults.N_BOOT,
                     extra_timings: dict[str, float] | None = None) -> JobOutcome:
    """Evaluate a trained prompt (a :class:`~calibprompt.training.trainer.TrainResult`) on the job's test
    split and assemble what :func:`record_outcome` writes; nothing is written here."""
    job, task = prepared.job, prepared.task
    timings = {**prepared.timings, "train_seconds": result.seconds, **dict(extra_timings or {})}
    plain = isinstance(result.learner, PromptLearner)  # coop: today's prompt, evaluated and written as before
    head = result.learner if plain else learner_head_of(backbone, result.learner)
    evaluation = evaluate_prompt(backbone, task, prepared.test, head, features=prepared.test_features,
                                 n_bins=job.n_bins, n_boot=n_boot)
    metrics = {**evaluation.report, **timings, "history": result.history, "loss_params": result.objective_params,
               "train_images": len(prepared.train), "test_images": len(prepared.test), "task": task.name,
               "protocol": job.protocol, "protocol_settings": result.settings,
               "aurc": risk_coverage(evaluation.probs, evaluation.labels)["aurc"]}
    if prepared.sides:
        metrics["sides"] = evaluate_sides(prepared, result.learner, backbone, n_boot=n_boot, base=evaluation)
    metadata = {
        "run_id": run_id, "task": task.to_dict(), "method": job.method, "loss_params": result.objective_params,
        "seed": job.seed, "shots": job.shots, "config": result.config.to_dict(), "dataset": prepared.dataset_root,
        "protocol": job.protocol, "precision": result.settings["precision"], "protocol_settings": result.settings,
        "split": {"train": _split_record(prepared.train), "test_images": len(prepared.test)},
        "metrics": evaluation.summary, "timings": timings, "device": result.device,
    }
    if plain:
        return JobOutcome(run_id, backbone.name, result.learner.ctx.detach().to("cpu", torch.float32).clone(),
                          result.learner.config(), metadata, metrics, list(evaluation.rows))
    metrics["learner"] = metadata["learner"] = job.learner
    if result.recipe:  # a feature learner's own training recipe
        metrics["learner_recipe"] = metadata["learner_recipe"] = dict(result.recipe)
    prompt = getattr(result.learner, "prompt", None)  # a prompt learner's context; None for a feature learner
    ctx = prompt.ctx.detach().to("cpu", torch.float32).clone() if prompt is not None else None
    return JobOutcome(run_id, backbone.name, ctx, result.learner.config(), metadata, metrics, list(evaluation.rows),
                      learner=result.learner)


def learner_head_of(backbone, learner):
    """A trained registry learner as an evaluation head (:meth:`Engine.add_learner`: a prompt head for the
    learners with fixed class text features, else a head whose prediction calls the learner on the image
    features), so it goes through the one evaluation pipeline (:func:`evaluate_prompt`)."""
    return Engine(backbone).add_learner("prompt", learner)


def record_outcome(store: RunStore, outcome: JobOutcome) -> RunRecord:
    """Write a finished run: the prompt checkpoint (atomically, under the runs folder), then its metrics
    and predictions in one store transaction. A run whose checkpoint is written but not recorded stays
    ``running`` and is later marked interrupted; nothing half-written is ever ``done``."""
    if outcome.learner is not None:  # a registry learner: its checkpoint records it (save_learner)
        checkpoint = save_learner(runs_dir() / outcome.run_id / "prompt", outcome.learner,
                                  backbone=outcome.backbone, metadata=outcome.checkpoint_metadata)
    else:
        checkpoint = save_context(runs_dir() / outcome.run_id / "prompt", outcome.ctx, outcome.prompt_config,
                                  backbone=outcome.backbone, metadata=outcome.checkpoint_metadata)
    store.finish_run(outcome.run_id, outcome.metrics, str(checkpoint), outcome.predictions)
    return store.get_run(outcome.run_id)


def failure_text(exc: BaseException) -> str:
    """What a failed run records: a plain message for a checkpoint that could not be written (a full or
    read-only disk), the exception's type and message for anything else."""
    if isinstance(exc, CheckpointWriteError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_train_job(job: TrainJob, store: RunStore, *, run_id: str | None = None, backbone=None,
                  on_step: Callable[[StepInfo], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, n_boot: int = defaults.N_BOOT) -> RunRecord:
    """Run one prompt-tuning job and record it in ``store``; returns the finished run.

    The run ends ``done`` (checkpoint and metrics written), ``cancelled`` (``should_stop`` turned true;
    no checkpoint) or ``failed`` (the exception is recorded, then re-raised). Several jobs on one
    backbone train faster together: :func:`calibprompt.runs.batch.run_train_jobs`.
    """
    device = resolve_device(job.device)  # an unusable device is refused before any run is recorded
    run_id = run_id or store.create_run("train", job.to_params(), slug=job.slug)
    if store.get_run(run_id).status == "queued":  # a JobRunner marks its job running before loading the model
        store.start_run(run_id, str(device))
    try:
        t0 = time.perf_counter()
        if backbone is None or backbone.device != device:
            backbone = load_backbone(job.model, device=device)
        load_seconds = time.perf_counter() - t0
        prepared = prepare_job(job, backbone)
        prepared.timings["load_seconds"] += load_seconds
        result = train_prompts(backbone, prepared.task.classnames, prepared.train_features, prepared.train.labels,
                               prepared.config or job.config(backbone.family), task=prepared.task,
                               zero_shot_text=prepared.zero_shot_text,
                               on_step=recording_progress(store, run_id, on_step), should_stop=should_stop)
        record_outcome(store, evaluate_trained(prepared, result, backbone, run_id, n_boot=n_boot))
    except TrainingCancelled:
        store.cancel_run(run_id)
    except BaseException as exc:
        if store.get_run(run_id).status in ("queued", "running"):
            store.fail_run(run_id, failure_text(exc))
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
    owner: str = ""
    started: bool = False


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

    def submit(self, job: TrainJob, owner: str = "", name: str = "") -> str:
        """Queue a job; returns its run id (status ``queued`` in the store). ``owner`` (recorded with the
        run) is who may cancel it; ``name`` (:func:`check_run_name`) is recorded as the run's ``name``."""
        device = str(resolve_device(job.device))
        params = {**job.to_params(), "owner": str(owner)}
        name = check_run_name(name)
        if name:
            params["name"] = name
        run_id = self.store.create_run("train", params, slug=job.slug)
        entry = _Entry(run_id, job, device, owner=str(owner))
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

    def active_job(self, owner: str) -> str | None:
        """The newest job of ``owner`` that is queued or running here, or None."""
        with self._lock:
            mine = [e.run_id for e in self._entries.values() if e.owner == owner and owner and not e.done.is_set()]
        return mine[-1] if mine else None  # entries keep submission order

    def progress(self, run_id: str) -> dict[str, Any]:
        """Latest step (epoch, step, loss parts, lr, ETA), the loss curve, the queue position and status."""
        entry = self._entries.get(run_id)
        record = self.store.get_run(run_id)
        if entry is None:
            return {"status": record.status, "position": None, "step": record.progress, "losses": []}
        return {"status": record.status, "position": self.position(run_id), "step": entry.progress,
                "losses": list(entry.losses), "error": entry.error or record.error}

    def cancel(self, run_id: str, owner: str | None = None) -> bool:
        """Ask a queued or running job to stop; returns False if it is unknown or already over.

        With ``owner`` given, only the job's owner may cancel it (PermissionError otherwise). A queued
        job is marked cancelled at once; a running one stops at its next step."""
        entry = self._entries.get(run_id)
        if entry is None or entry.done.is_set():
            return False
        if owner is not None and entry.owner != owner:
            raise PermissionError("Only the user who started this job can cancel it.")
        with self._lock:
            entry.cancel.set()
            started = entry.started
        if not started:
            try:
                self.store.cancel_run(run_id)
            except ValueError:  # it started meanwhile: it stops at its next step
                pass
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
        with self._lock:
            entry.started = not entry.cancel.is_set()
        if not entry.started:
            if self.store.get_run(entry.run_id).status == "queued":
                self.store.cancel_run(entry.run_id)
            return

        def on_step(info: StepInfo) -> None:
            entry.progress = info.to_dict()
            entry.losses.append((info.global_step, info.loss))

        try:
            self.store.start_run(entry.run_id, entry.device)  # running from here on, the model's load included
            backbone = self._backbone(entry.job.model, entry.device)
            run_train_job(entry.job, self.store, run_id=entry.run_id, backbone=backbone, on_step=on_step,
                          should_stop=entry.cancel.is_set)
        except Exception as exc:  # recorded in the store by run_train_job; keep the worker alive
            entry.error = failure_text(exc)
            logger.warning("Run %s failed: %s", entry.run_id, entry.error)
            record = self.store.get_run(entry.run_id)
            if record.status in ("queued", "running"):
                self.store.fail_run(entry.run_id, entry.error)
