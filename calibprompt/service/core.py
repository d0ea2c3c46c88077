"""The service layer: one shared core, many sessions.

:class:`Core` owns what every user shares (the backbone pool, the run store, the job runner, caches
keyed by content) and offers the actions the app and the CLI call. Every action that depends on a
user's choices takes that user's :class:`~calibprompt.service.session.SessionState` and returns a new
one where it changes it; no action reads or writes a choice that another session can change.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from calibprompt import defaults
from calibprompt.backbones import get_backbone_spec
from calibprompt.data.archives import extract_zip
from calibprompt.data.layouts import Dataset, LabeledImages
from calibprompt.data.resolve import dataset_choices, open_dataset, resolve_choice
from calibprompt.devices import resolve_device
from calibprompt.evaluation.metrics import apply_temperature, fit_temperature
from calibprompt.evaluation.report import evaluate_probs
from calibprompt.paths import SAMPLE_IMAGES_DIR, uploads_dir
from calibprompt.prompting.checkpoint import checkpoint_paths, load_prompt
from calibprompt.prompting.engine import Head
from calibprompt.prompting.library import bundled_prompt_for
from calibprompt.prompting.tasks import Task, list_tasks, load_task
from calibprompt.runs.store import RunStore
from calibprompt.service.assess import CalibrationData, assess_predictions, fit_calibration
from calibprompt.service.pool import BackbonePool, ContentCache, LoadedBackbone, file_digest, task_key
from calibprompt.service.session import SessionState, new_session
from calibprompt.service.startup import default_task_for
from calibprompt.training.losses import build_objective, get_method, list_methods

if TYPE_CHECKING:  # the job pipeline imports torchvision: loaded with the first job, not with the page
    from calibprompt.runs.jobs import JobRunner

logger = logging.getLogger(__name__)

__all__ = ["Core", "ComparedImage", "EvaluationSet"]

LEARNED = ("coop", "calibprompt")


@dataclass
class ComparedImage:
    """One image's predictions: ``probs[head] = {class: p}``, ``top[head] = (class, p)``, ``flag``."""

    probs: dict[str, dict[str, float]]
    top: dict[str, tuple[str, float]]
    flag: str = ""


@dataclass
class EvaluationSet:
    """Predictions of several heads on the labelled images that none of them was trained on.

    ``paths`` are absolute (server side), ``images`` the same paths inside the dataset folder;
    ``excluded`` counts the test-pool images left out because a chosen prompt trained on them.
    """

    dataset: str
    root: Path
    task: Task
    paths: list[str]
    images: list[str]
    labels: np.ndarray
    excluded: int = 0
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    run_ids: dict[str, str] = field(default_factory=dict)
    features: Any = None  # (N, D) image features

    def describe(self) -> str:
        text = f"{len(self.paths)} test images of {self.dataset}"
        if self.excluded:
            text += f" ({self.excluded} left out: a chosen prompt was trained on them)"
        return text + "."


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


class Core:
    """Shared resources and per-session actions.

    Args:
        backbone: the model the app starts on (kept loaded): a loaded backbone, or the name of a registered
            one, which then loads on first use, or in the background from :meth:`preload` on (requests wait
            for that load), so the app can serve its page before the model is in memory.
        banner: the start-up banner (which model is active and why).
        store: the run store (default: the data directory's).
        pool: the backbone pool (default: two models in memory).
        models: the backbones users may switch to (default: every registered one but the test twins).
        device: where a backbone given by name runs (default: the best available); ignored for a loaded one.
    """

    def __init__(self, backbone, banner: str = "", *, store: RunStore | None = None,
                 pool: BackbonePool | None = None, models: Sequence[str] | None = None, device: Any = None):
        # an unknown name or device fails here, before the store is opened or anything loads
        spec = get_backbone_spec(backbone) if isinstance(backbone, str) else None
        device = str(resolve_device(device)) if spec is not None else None
        self.store = store or RunStore()
        self.pool = pool or BackbonePool()
        if spec is not None:
            self.default_model, self.default_device = backbone, device
            self.default_family, description = spec.family, spec.description
            self.pool.pin(self.default_model, self.default_device)
        else:
            self.pool.add(backbone, pin=True)
            self.default_model, self.default_device = backbone.name, str(backbone.device)
            self.default_family, description = backbone.family, backbone.description
        self.default_task = default_task_for(self.default_family)
        self.banner = banner or f"Model: {self.default_model}. {description}"
        self.heads = ContentCache(512)
        self.evaluations = ContentCache(64)
        self._models = list(models) if models is not None else None
        self._runner: JobRunner | None = None
        self._runner_lock = threading.Lock()
        self._ready: Future[LoadedBackbone] | None = None
        self._ready_lock = threading.Lock()

    # -- start-up -----------------------------------------------------------------------------
    @property
    def runner(self) -> JobRunner:
        """The background job runner, made on first use (the training pipeline it imports is not needed
        to serve the page or a prediction)."""
        with self._runner_lock:
            if self._runner is None:
                from calibprompt.runs.jobs import JobRunner

                self._runner = JobRunner(self.store,
                                         backbone_loader=lambda model, device: self.pool.get(model, device).backbone)
            return self._runner

    def preload(self, warm: bool = True) -> Future[LoadedBackbone]:
        """Load the default model in a background thread (once; later calls return the same future).

        Requests for the default model wait for this load. With ``warm``, the default session's heads
        (text features of the default task's zero-shot, CoOp and CalibPrompt prompts) are computed and
        the image encoder runs once on a blank image, so the first request pays for neither; the future
        is done once that is over too. A failed load is logged and set on the future (requests then try
        the load again and report its error); a failed warm-up is only logged.
        """
        with self._ready_lock:
            if self._ready is not None:
                return self._ready
            self._ready = ready = Future()
        ready.set_running_or_notify_cancel()

        def start() -> None:
            try:
                loaded = self.pool.get(self.default_model, self.default_device)
            except BaseException as exc:  # noqa: BLE001 - reported on the future and in the log
                logger.exception("Loading the app's model %s failed", self.default_model)
                ready.set_exception(exc)
                return
            if warm:
                try:
                    self._warm_up(loaded)
                except Exception:  # noqa: BLE001 - the first request computes what is missing
                    logger.exception("Warming up the app's model %s failed", self.default_model)
            logger.info("The app's model %s is ready", self.default_model)
            ready.set_result(loaded)

        threading.Thread(target=start, name=f"calibprompt-start-{self.default_model}", daemon=True).start()
        return ready

    def _warm_up(self, loaded: LoadedBackbone) -> None:
        """Compute the default session's heads and run the image encoder once (its first pass sets up
        the kernels), without touching the engine's image cache or counters."""
        from PIL import Image

        state = self.new_session()
        self.resolve_heads(state, [h for h in defaults.DEFAULT_HEADS if h in self.prompt_choices(state)])
        loaded.backbone.encode_image([Image.new("RGB", (224, 224), (128, 128, 128))])

    def model_family(self, name: str) -> str:
        """A model's family (for its defaults), without loading it when it is the default or a registered model."""
        if name == self.default_model:
            return self.default_family
        from calibprompt.backbones import BACKBONES

        spec = BACKBONES.get(name)
        return spec.family if spec is not None else self.pool.get(name).backbone.family

    # -- sessions, models, tasks ------------------------------------------------------------
    def new_session(self, username: str | None = None) -> SessionState:
        return new_session(self.default_model, self.default_task, username=username)

    def loaded(self, state: SessionState) -> LoadedBackbone:
        return self.pool.get(state.model, self.default_device if state.model == self.default_model else None)

    def banner_for(self, state: SessionState) -> str:
        if state.model == self.default_model:
            return self.banner
        backbone = self.loaded(state).backbone
        return f"Model: {backbone.name}. {backbone.description}"

    def switch_model(self, state: SessionState, name: str) -> SessionState:
        """This session's model becomes ``name`` (loaded once for everyone), on its family's default task."""
        if name not in self.model_choices():
            raise ValueError(f"Unknown model {name!r}; choose one of: {', '.join(self.model_choices())}.")
        backbone = self.pool.get(name).backbone
        return state.with_(model=name, task=default_task_for(backbone.family), classes=(), prompts=defaults.DEFAULT_HEADS)

    def set_task(self, state: SessionState, task: str | None = None, typed: str | None = None) -> SessionState:
        """This session's task: a task name, or class names typed comma-separated (zero-shot only)."""
        if typed and typed.strip():
            classes = tuple(dict.fromkeys(c.strip() for c in typed.split(",") if c.strip()))
            if len(classes) < 2:
                raise ValueError("Type at least two class names, separated by commas (e.g. 'pneumonia, normal').")
            return state.with_(classes=classes, prompts=("zero-shot",))
        if not task:
            raise ValueError("Choose a task.")
        load_task(task)  # a clear error for an unknown task
        return state.with_(task=task, classes=(), prompts=defaults.DEFAULT_HEADS)

    def model_choices(self) -> list[str]:
        from calibprompt.backbones import BACKBONES

        if self._models is not None:
            return list(self._models)
        return [n for n, spec in BACKBONES.items() if not spec.is_twin_only]

    @staticmethod
    def task_choices() -> list[str]:
        return list_tasks()

    # -- prompt heads -----------------------------------------------------------------------
    def finished_runs(self, state: SessionState, task: Task | None = None) -> list[dict[str, Any]]:
        """Done training runs of this session's model on its task (newest first)."""
        task = task or state.task_object()
        rows = []
        for run in self.store.list_runs(status="done", kind="train"):
            if run.params.get("model") != state.model or not run.checkpoint:
                continue
            if (run.metrics or {}).get("task") != task.name:
                continue
            rows.append({"id": run.id, "method": run.params.get("method"), "seed": run.params.get("seed"),
                         "checkpoint": run.checkpoint})
        return rows

    def default_prompt(self, state: SessionState, method: str, task: Task | None = None) -> str | None:
        """The checkpoint used as ``method``'s prompt: the model's bundled one for the task, else the
        newest finished run of this model, task and method."""
        task = task or state.task_object()
        if state.classes:
            return None
        bundled = bundled_prompt_for(state.model, task.name, method)
        if bundled is not None:
            return str(bundled)
        return next((r["checkpoint"] for r in self.finished_runs(state, task) if r["method"] == method), None)

    def prompt_choices(self, state: SessionState) -> list[str]:
        """Heads this session can pick: zero-shot, the learned defaults that exist, every finished run."""
        if state.classes:
            return ["zero-shot"]
        task = state.task_object()
        names = ["zero-shot"] + [m for m in LEARNED if self.default_prompt(state, m, task)]
        return names + [f"run:{r['id']}" for r in self.finished_runs(state, task)]

    def _zero_shot_head(self, loaded: LoadedBackbone, task: Task) -> Head:
        key = ("zero-shot", loaded.backbone.fingerprint, task_key(task))

        def compute() -> Head:
            from calibprompt.prompting.engine import Engine

            return Engine(loaded.backbone).add_zero_shot("zero-shot", task)

        return self.heads.get_or_compute(key, compute)

    def _prompt_head(self, loaded: LoadedBackbone, checkpoint: str) -> Head:
        weights, meta = checkpoint_paths(checkpoint)
        key = ("prompt", loaded.backbone.fingerprint, file_digest(weights, meta))

        def compute() -> Head:
            learner, metadata = load_prompt(checkpoint, loaded.backbone)
            with torch.no_grad():
                text = learner.encode_text(normalize=True).float().cpu()
            return Head("prompt", list(learner.classnames), text, kind="prompt", metadata=metadata)

        return self.heads.get_or_compute(key, compute)

    def resolve_heads(self, state: SessionState, names: Sequence[str] = ()) -> dict[str, Head]:
        """The named heads for this session's model and task (default: the session's chosen prompts)."""
        task = state.task_object()
        loaded = self.loaded(state)
        names = list(dict.fromkeys(names or state.prompts)) or ["zero-shot"]
        heads: dict[str, Head] = {}
        for name in names:
            if name == "zero-shot":
                heads[name] = self._zero_shot_head(loaded, task)
                continue
            if name in LEARNED:
                source = self.default_prompt(state, name, task)
                if source is None:
                    raise ValueError(f"There is no {name} prompt for the task {task.name!r} on {state.model} yet; "
                                     "train one first, or compare zero-shot only.")
            elif name.startswith("run:"):
                record = self.store.get_run(name[4:])
                if record.status != "done" or not record.checkpoint:
                    raise ValueError(f"Run {record.id} is {record.status}; only finished runs can be used.")
                if record.params.get("model") != state.model:
                    raise ValueError(f"Run {record.id} was trained on {record.params.get('model')}, not on "
                                     f"{state.model}; switch the model to use it.")
                source = record.checkpoint
            else:
                raise ValueError(f"Unknown prompt {name!r}; choose zero-shot, coop, calibprompt or a finished run.")
            head = self._prompt_head(loaded, source)
            if head.classnames != task.classnames:
                raise ValueError(f"The prompt {name} was trained for the classes {head.classnames}, not for the task "
                                 f"{task.name!r} ({task.classnames}).")
            heads[name] = head
        return heads

    # -- compare ----------------------------------------------------------------------------
    def compare(self, state: SessionState, images: Sequence[Any], heads: Sequence[str] = ()) -> list[ComparedImage]:
        """Each head's class probabilities for each image, with a flag where a method is highly
        confident while the methods disagree on the top class."""
        if not images:
            raise ValueError("Upload an image first (PNG, JPEG, TIFF or DICOM), or pick a sample image.")
        chosen = self.resolve_heads(state, heads)
        loaded = self.loaded(state)
        predictions = loaded.engine.predict_with(loaded.engine.image_features(images), chosen)
        out = []
        for i in range(len(images)):
            probs = {h: predictions[h].as_dicts()[i] for h in chosen}
            top = {h: predictions[h].top(i, 1)[0] for h in chosen}
            confident = [h for h, (_, p) in top.items() if p >= defaults.HIGH_CONFIDENCE]
            flag = ""
            if len({c for c, _ in top.values()}) > 1 and confident:
                flag = (f"The methods disagree, yet {', '.join(confident)} "
                        f"{'is' if len(confident) == 1 else 'are'} at least {defaults.HIGH_CONFIDENCE:.0%} confident: "
                        "treat this confidence with caution.")
            out.append(ComparedImage(probs, top, flag))
        return out

    def compare_api(self, image: Any, task: str | None = None) -> dict[str, dict[str, float]]:
        """Stateless: ``{method: {class: probability}}`` for one image on the app's default model and
        ``task`` (default: the app's default task), for the zero-shot, CoOp and CalibPrompt heads."""
        state, available = self._api_session(image, task)
        return self.compare(state, [image], available)[0].probs

    def _api_session(self, image: Any, task: str | None) -> tuple[SessionState, list[str]]:
        """A throwaway session for a stateless endpoint, and the default methods its task has."""
        if image is None:
            raise ValueError("Send an image (PNG, JPEG, TIFF or DICOM).")
        state = self.new_session()
        if task:
            state = self.set_task(state, task)
        return state, [h for h in defaults.DEFAULT_HEADS if h in self.prompt_choices(state)]

    # -- refer or answer ------------------------------------------------------------------------
    def calibration_source(self, state: SessionState) -> str | None:
        """The labelled dataset that calibrates this session's advice: the one chosen in the Calibration
        tab, else the dataset named like the task, else None."""
        if state.calibration_dataset:
            return state.calibration_dataset
        if not state.classes and state.task in self.dataset_choices():
            return state.task
        return None

    def calibration_data(self, state: SessionState, heads: Sequence[str] = (),
                         alpha: float = defaults.ALPHA) -> CalibrationData | None:
        """Prediction sets, accuracy per confidence and the likeness reference for the chosen heads,
        from the calibration dataset's images none of them trained on; None without labelled data."""
        if not 0.0 < float(alpha) < 1.0:
            raise ValueError(f"The coverage must be between 0 and 100 % (alpha in (0, 1)), got alpha {alpha}.")
        dataset = self.calibration_source(state)
        if dataset is None:
            return None
        try:
            ev = self.evaluate(state, dataset, heads)
        except ValueError as exc:
            logger.info("No calibration data for %s: %s", state.task_label, exc)
            return None
        key = ("calibration", self.loaded(state).backbone.fingerprint, dataset, float(alpha),
               tuple((h, hashlib.blake2b(ev.probs[h].tobytes(), digest_size=16).hexdigest()) for h in ev.probs))
        return self.evaluations.get_or_compute(key, lambda: fit_calibration(
            ev.describe(), ev.features, ev.labels, ev.probs, ev.task.classnames, float(alpha)))

    def assess(self, state: SessionState, images: Sequence[Any], heads: Sequence[str] = (),
               alpha: float = defaults.ALPHA) -> dict[str, Any]:
        """Refer-or-answer advice for each image (see :mod:`calibprompt.service.assess`), with each image
        as the model saw it and what was read from its file.

        Returns ``{"images": [{"name", "preview" (PIL), "metadata", "methods", "ood", "refer", "reasons"}],
        "calibration": str (where the advice comes from, or why there is none), "vocabulary": str}``."""
        from calibprompt.data import load_image
        from calibprompt.data.metadata import image_metadata
        from calibprompt.evaluation.ood import modality_mismatch, unknown_words

        if not images:
            raise ValueError("Upload an image first (PNG, JPEG, TIFF or DICOM), or pick a sample image.")
        chosen = self.resolve_heads(state, heads)
        task = state.task_object()
        loaded = self.loaded(state)
        pictures = [load_image(im) for im in images]
        feats = loaded.engine.image_features(pictures)
        predictions = loaded.engine.predict_with(feats, chosen)
        calibration = self.calibration_data(state, list(chosen), alpha)
        if calibration is None:
            where = (f"No labelled test images for the task {state.task_label!r} on {state.model}: no prediction "
                     "sets, accuracies or likeness check are shown. Choose a labelled dataset for this task in "
                     "the calibration view, or add one to the data directory's datasets folder.")
        else:
            where = (f"Calibrated on {calibration.dataset} {100 * (1 - calibration.alpha):.0f} % prediction sets: "
                     + ", ".join(f"{n} covered {100 * c.coverage:.0f} % of held-out cases with {c.mean_set_size:.1f} "
                                 f"classes on average" for n, c in calibration.methods.items())
                     + (f". {calibration.note}" if calibration.note else "."))
        vocabulary = ""
        if state.classes:
            unknown = {c: w for c, w in unknown_words(list(state.classes), loaded.backbone.tokenizer).items() if w}
            if unknown:
                vocabulary = ("The model's vocabulary does not know " + "; ".join(
                    f"{', '.join(w)} (in '{c}')" for c, w in unknown.items())
                    + ": it splits such words into pieces, so its answers for those classes are less reliable.")
        results = []
        for i, source in enumerate(images):
            try:
                meta = image_metadata(source)
            except Exception:  # noqa: BLE001 - the image itself loaded; metadata is a bonus
                meta = {}
            modality = modality_mismatch(meta, task.modality or "")
            (advice,) = assess_predictions({h: p.probs[i:i + 1] for h, p in predictions.items()}, feats[i:i + 1].numpy(),
                                           calibration, task.classnames, modality_reason=modality)
            if vocabulary:
                advice["reasons"].append(vocabulary)
                advice["refer"] = True
            name = Path(source).name if isinstance(source, (str, Path)) else f"image {i + 1}"
            results.append({"name": name, "preview": pictures[i], "metadata": meta, **advice})
        return {"images": results, "calibration": where, "vocabulary": vocabulary}

    def assess_api(self, image: Any, task: str | None = None) -> dict[str, Any]:
        """Stateless ``/assess``: advice for one image on the default model and ``task``."""
        state, available = self._api_session(image, task)
        result = self.assess(state, [image], available)
        first = result["images"][0]
        return {"task": state.task_label,
                "methods": {name: {"probs": m["probs"], "prediction": m["prediction"], "confidence": m["confidence"],
                                   "set": m["set"], "refer": m["refer"]} for name, m in first["methods"].items()},
                "ood": {"flag": first["ood"]["flag"], "score": first["ood"]["score"], "reason": first["ood"]["reason"]},
                "refer": first["refer"], "reasons": first["reasons"], "calibration": result["calibration"]}

    @staticmethod
    def sample_images() -> list[tuple[str, str]]:
        """``(path, caption)`` of the bundled sample images."""
        import csv

        listing = SAMPLE_IMAGES_DIR / "labels.csv"
        if not listing.is_file():
            return []
        with open(listing, newline="") as handle:
            return [(str(SAMPLE_IMAGES_DIR / r["file"]), f"{r['task']}: {r['true_class']}") for r in csv.DictReader(handle)]

    # -- datasets and training ----------------------------------------------------------------
    @staticmethod
    def dataset_choices() -> list[str]:
        return dataset_choices()

    @staticmethod
    def upload_dataset(zip_path: str | None) -> str:
        """Unpack an uploaded zip into the data directory; returns its dataset choice name."""
        if not zip_path:
            raise ValueError("Choose a .zip file with one folder of images per class (or train/ and test/ folders).")
        root = extract_zip(zip_path, uploads_dir())
        return f"uploads/{root.relative_to(uploads_dir()).as_posix()}"

    def _open(self, state: SessionState, dataset: str) -> tuple[str, Task, Dataset]:
        """A dataset choice opened against this session's task (classes must match)."""
        source = resolve_choice(dataset)
        task = state.task_object()
        task_file = None if state.classes else task
        opened_task, ds = open_dataset(source, task_file)
        if list(ds.class_ids) != list(task.class_ids):
            raise ValueError(f"The dataset {dataset!r} has the classes {', '.join(ds.class_ids)}, not those of the "
                             f"task {task.name!r} ({', '.join(task.class_ids)}); pick the task that matches it.")
        return source, opened_task, ds

    @staticmethod
    def method_defaults(state: SessionState | None, method: str, family: str | None = None) -> dict[str, float]:
        task = state.task_object() if state is not None and not state.classes else None
        return build_objective(method, backbone_family=family, task=task).params

    @staticmethod
    def methods() -> list[str]:
        return list_methods()

    def start_training(self, state: SessionState, dataset: str, *, method: str = "calibprompt",
                       shots: int = defaults.SHOTS, seed: int = defaults.SEED, epochs: int = defaults.EPOCHS,
                       alpha: float | None = None, beta: float | None = None,
                       device: str = "auto") -> tuple[SessionState, str]:
        """Queue a prompt-tuning job on this session's model and task, owned by this session; returns
        the new state (with the job) and the run id. Every bound is checked before anything is queued."""
        from calibprompt.runs.jobs import TrainJob
        from calibprompt.runs.requests import check_train_request, class_counts_for_split

        if state.classes:
            raise ValueError("Training needs a task file (its classes and templates); choose a task instead of "
                             "typed class names.")
        spec = get_method(method)
        params = {k: v for k, v in (("alpha", alpha), ("beta", beta)) if v is not None and k in spec.params}
        source, task, ds = self._open(state, dataset)
        check_train_request(shots=shots, epochs=epochs, seed=seed, alpha=params.get("alpha"), beta=params.get("beta"),
                            method=spec.name, class_counts=class_counts_for_split(ds))
        job = TrainJob(model=state.model, dataset=source, task=task.name, shots=int(shots), seed=int(seed),
                       method=spec.name, epochs=int(epochs), loss_params=params, device=device)
        run_id = self.runner.submit(job, owner=state.owner)
        return state.with_(jobs=state.jobs + (run_id,)), run_id

    def job_status(self, run_id: str) -> dict[str, Any]:
        return self.runner.progress(run_id)

    def cancel(self, state: SessionState, run_id: str) -> bool:
        """Cancel a queued or running job this session owns."""
        return self.runner.cancel(run_id, owner=state.owner)

    def run_history(self, state: SessionState, limit: int = 200) -> list[dict[str, Any]]:
        rows = []
        for run in self.store.list_runs(kind="train", limit=limit):
            m = run.metrics or {}
            owner = run.params.get("owner", "")
            rows.append({
                "run": run.id, "status": run.status, "method": run.params.get("method", ""),
                "model": run.params.get("model", ""), "task": m.get("task", run.params.get("task") or ""),
                "shots": run.params.get("shots", ""), "seed": run.params.get("seed", ""),
                "accuracy": round(m["accuracy"], 4) if isinstance(m.get("accuracy"), float) else None,
                "ece": round(m["ece"], 4) if isinstance(m.get("ece"), float) else None,
                "by": "you" if owner == state.owner else (owner[5:] if owner.startswith("user:") else ""),
                "created": run.created_at, "error": run.error or "",
            })
        return rows

    def interpret_run(self, run_id: str, top_k: int = 3) -> list[dict[str, Any]]:
        """The nearest vocabulary tokens of a finished run's context vectors (CoOp's interpretation)."""
        from calibprompt.prompting.interpret import interpret_prompt

        record = self.store.get_run(run_id)
        if record.status != "done" or not record.checkpoint:
            raise ValueError(f"Run {record.id} is {record.status}; only a finished run has a prompt to read.")
        backbone = self.pool.get(record.params["model"], self.default_device).backbone
        return interpret_prompt(record.checkpoint, top_k=top_k, backbone=backbone)

    # -- evaluation on images no chosen prompt trained on ---------------------------------------------
    def evaluation_images(self, state: SessionState, dataset: str,
                          heads: dict[str, Head]) -> tuple[str, Task, LabeledImages, int]:
        """The labelled images to evaluate ``heads`` on: the dataset's test split (all its images when it
        has none), less every image any of the learned heads was trained on (as its checkpoint records)."""
        source, task, ds = self._open(state, dataset)
        pool = ds.test if ds.test is not None and len(ds.test) else ds.train
        if pool is None or not len(pool):
            raise ValueError(f"The dataset {dataset!r} has no images to evaluate on.")
        trained_rel: set[str] = set()
        trained_abs: set[str] = set()
        for head in heads.values():
            train = ((head.metadata or {}).get("split") or {}).get("train") or {}
            root = Path(str(train.get("root", "")))
            for rel in train.get("paths", []):
                trained_rel.add(Path(rel).as_posix())
                if root.is_absolute():
                    trained_abs.add(str((root / rel).resolve()))
        keep = [i for i, s in enumerate(pool.samples)
                if _relative(Path(s.path), Path(pool.root)) not in trained_rel and str(Path(s.path).resolve()) not in trained_abs]
        if not keep:
            raise ValueError(f"Every test image of {dataset!r} was used to train one of the chosen prompts; "
                             "choose other prompts or a dataset with a test split.")
        return source, task, pool.subset(keep), len(pool) - len(keep)

    def evaluate(self, state: SessionState, dataset: str, heads: Sequence[str] = ()) -> EvaluationSet:
        """Predictions of the chosen heads on the images none of them trained on (features cached)."""
        chosen = self.resolve_heads(state, heads)
        source, task, images, excluded = self.evaluation_images(state, dataset, chosen)
        loaded = self.loaded(state)
        paths = [str(p) for p in images.paths]
        ev = EvaluationSet(dataset, Path(images.root), task, paths, [_relative(Path(p), Path(images.root)) for p in paths],
                           np.asarray(images.labels), excluded)
        stamp = file_digest(*paths)
        feats = self.evaluations.get_or_compute(("features", loaded.backbone.fingerprint, stamp),
                                                lambda: loaded.features.plain(paths))
        ev.features = feats
        for name, head in chosen.items():
            key = ("probs", loaded.backbone.fingerprint, stamp,
                   hashlib.blake2b(head.text_features.numpy().tobytes(), digest_size=16).hexdigest())
            pred = self.evaluations.get_or_compute(key, lambda head=head: loaded.engine.predict_with(feats, {"h": head})["h"])
            ev.probs[name], ev.logits[name] = pred.probs, pred.logits
            run_id = (head.metadata or {}).get("run_id")
            if run_id:
                ev.run_ids[name] = str(run_id)
        return ev

    def calibration(self, state: SessionState, dataset: str, heads: Sequence[str] = (), n_bins: int = defaults.N_BINS,
                    temperature_scaling: bool = True) -> tuple[dict[str, dict[str, Any]], EvaluationSet]:
        """Calibration reports per head (and, with ``temperature_scaling``, per temperature-scaled head:
        T fitted on one half of the evaluation images and applied to the other, both ways)."""
        lo, hi = defaults.LIMITS["n_bins"]
        if not lo <= int(n_bins) <= hi:
            raise ValueError(f"The number of bins must be from {lo} to {hi}, got {n_bins}.")
        from calibprompt.evaluation.card import debiased_ece, kde_ece, per_class_ece, smooth_ece

        ev = self.evaluate(state, dataset, heads)
        reports = {}
        for head in ev.probs:
            reports[head] = evaluate_probs(ev.probs[head], ev.labels, ev.paths, ev.task.classnames,
                                           n_bins=int(n_bins), n_boot=defaults.N_BOOT_INTERACTIVE).report
            p = ev.probs[head]
            reports[head]["card"] = {  # the metric card: the authors' and the debiased estimates beside ours
                "kde_ece": kde_ece(p, ev.labels), "smooth_ece": smooth_ece(p, ev.labels),
                "debiased_ece": debiased_ece(p, ev.labels),
                "per_class_ece_true": float(np.nanmean(per_class_ece(p, ev.labels, by="true", n_bins=int(n_bins)))),
            }
            if temperature_scaling and len(ev.labels) >= 4:
                scaled, temps = self._cross_fitted_temperature(ev.logits[head], ev.labels)
                report = evaluate_probs(scaled, ev.labels, ev.paths, ev.task.classnames, n_bins=int(n_bins),
                                        n_boot=defaults.N_BOOT_INTERACTIVE).report
                report["temperature"] = float(np.mean(temps))
                reports[f"{head} + TS"] = report
        return reports, ev

    @staticmethod
    def significance(ev: EvaluationSet, a: str = "calibprompt", b: str = "coop",
                     n_boot: int = 1000) -> dict[str, dict[str, Any]] | None:
        """Paired bootstrap over the same evaluation images of ``a`` minus ``b`` in ECE and accuracy, or None
        when either head was not evaluated."""
        from calibprompt.evaluation.card import paired_bootstrap

        if a not in ev.probs or b not in ev.probs:
            return None
        return {metric: paired_bootstrap(ev.probs[a], ev.probs[b], ev.labels, metric=metric, n_boot=n_boot)
                for metric in ("ece", "accuracy")}

    @staticmethod
    def selective(ev: EvaluationSet, threshold: float) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """Risk-coverage curves per head, and what refusing to answer below ``threshold`` gives: per head
        the share of cases answered (coverage) and the accuracy among them."""
        from calibprompt.evaluation.selective import risk_coverage, selective_accuracy

        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"The confidence threshold must be from 0 to 1, got {threshold}.")
        curves, rows = {}, []
        for head, probs in ev.probs.items():
            curves[head] = risk_coverage(probs, ev.labels)
            confidence = probs.max(axis=1)
            kept = confidence >= float(threshold)
            accuracy = float((probs.argmax(axis=1) == ev.labels)[kept].mean()) if kept.any() else None
            rows.append({"method": head, "refer below": f"{100 * float(threshold):.0f} %",
                         "answered": f"{100 * kept.mean():.1f} % ({int(kept.sum())} of {len(kept)})",
                         "accuracy when answering": f"{100 * accuracy:.1f} %" if accuracy is not None else "—",
                         "AURC": f"{100 * curves[head]['aurc']:.2f} %",
                         "accuracy at 80 % / 90 % coverage": f"{100 * selective_accuracy(probs, ev.labels, 0.8):.1f} % / "
                                                             f"{100 * selective_accuracy(probs, ev.labels, 0.9):.1f} %"})
        return curves, rows

    @staticmethod
    def _cross_fitted_temperature(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[float]]:
        idx = np.arange(len(labels))
        halves = (idx % 2 == 0, idx % 2 == 1)
        out = np.empty_like(logits, dtype=np.float64)
        temps = []
        for fit, apply in (halves, halves[::-1]):
            t = fit_temperature(logits[fit], labels[fit])
            out[apply] = apply_temperature(logits[apply], t)
            temps.append(t)
        return out, temps

    @staticmethod
    def cross_fitted_sets(ev: EvaluationSet, alpha: float = defaults.ALPHA) -> dict[str, np.ndarray] | None:
        """Each head's prediction sets (N, K) on the evaluation images, cross-fitted (even/odd halves, see
        :func:`calibprompt.evaluation.conformal.cross_fitted_sets`); None when there are too few images."""
        from calibprompt.evaluation.conformal import cross_fitted_sets

        try:
            return {head: cross_fitted_sets(probs, ev.labels, alpha)["sets"] for head, probs in ev.probs.items()}
        except ValueError:
            return None

    # -- review -------------------------------------------------------------------------------
    def review_cases(self, state: SessionState, dataset: str, heads: Sequence[str] = (), *,
                     true_class: str | None = None, method: str | None = None, min_confidence: float = 0.0,
                     referred_only: bool = False, alpha: float = defaults.ALPHA,
                     limit: int = 48) -> tuple[list[dict[str, Any]], EvaluationSet]:
        """Cases ranked by how confidently wrong they are (the largest confidence among the chosen methods
        that got the case wrong, or of ``method`` alone), with every method's prediction, the method the
        verdict defaults to (the most confidently wrong one) and this reader's verdicts so far."""
        if not 0.0 <= float(min_confidence) <= 1.0 or np.isnan(float(min_confidence)):
            raise ValueError(f"The minimum confidence must be from 0 to 1, got {min_confidence}.")
        ev = self.evaluate(state, dataset, heads)
        names = list(ev.probs)
        if method and method not in names:
            raise ValueError(f"Method {method!r} is not among the chosen prompts ({', '.join(names)}).")
        classes = ev.task.class_ids
        sets = self.cross_fitted_sets(ev, alpha)
        mine = {}
        if state.reader:
            for r in self.store.reviews(reader=state.reader, dataset=dataset):
                mine.setdefault(r["image"], {})[r["method"]] = r
        cases = []
        for i, path in enumerate(ev.paths):
            label = int(ev.labels[i])
            if true_class and classes[label] != true_class:
                continue
            per = {h: (int(ev.probs[h][i].argmax()), float(ev.probs[h][i].max())) for h in names}
            wrong = {h: conf for h, (pred, conf) in per.items() if pred != label}
            considered = {method: wrong[method]} if method and method in wrong else ({} if method else wrong)
            if not considered:
                continue
            score = max(considered.values())
            if score < min_confidence:
                continue
            case_sets = {h: [classes[j] for j in np.flatnonzero(sets[h][i])] for h in names} if sets else {}
            referred = len({p for p, _ in per.values()}) > 1 or any(len(v) != 1 for v in case_sets.values())
            if referred_only and not referred:
                continue
            cases.append({
                "path": path, "image": ev.images[i], "true": classes[label], "score": score,
                "predictions": {h: (classes[p], c) for h, (p, c) in per.items()},
                "method": max(considered, key=considered.get), "run_ids": dict(ev.run_ids),
                "sets": case_sets, "referred": referred,
                "verdicts": {m: {"verdict": r["verdict"], "note": r["note"]} for m, r in mine.get(ev.images[i], {}).items()},
            })
        cases.sort(key=lambda c: -c["score"])
        return cases[:limit], ev

    def save_review(self, state: SessionState, dataset: str, case: dict[str, Any], method: str, verdict: str,
                    note: str = "") -> dict[str, Any]:
        """Record this session's reader's verdict on ``method``'s answer for ``case`` (from :meth:`review_cases`)."""
        if not state.reader:
            raise ValueError("Enter your name as the reader first: every verdict records who gave it.")
        if not case:
            raise ValueError("Select a case in the gallery first.")
        if method not in case["predictions"]:
            raise ValueError(f"Method {method!r} has no answer for this case; choose one of "
                             f"{', '.join(case['predictions'])}.")
        prediction, confidence = case["predictions"][method]
        run_id = method[4:] if method.startswith("run:") else case.get("run_ids", {}).get(method)
        if run_id is not None and not self._known_run(run_id):
            run_id = None  # a bundled prompt's training run lives in another store
        return self.store.set_review(
            reader=state.reader, dataset=dataset, image=case["image"], method=method, verdict=verdict, note=note or "",
            true_class=case["true"], prediction=prediction, confidence=float(confidence), model=state.model,
            task=state.task_label, run_id=run_id)

    def _known_run(self, run_id: str) -> bool:
        try:
            self.store.get_run(run_id)
        except ValueError:
            return False
        return True

    def review_summary(self, state: SessionState, dataset: str, cases: Sequence[dict[str, Any]]) -> str:
        """How many of the listed cases this reader has reviewed, and the agreement between readers."""
        listed = {c["image"] for c in cases}
        done = {r["image"] for r in self.store.reviews(reader=state.reader, dataset=dataset)} if state.reader else set()
        text = f"You ({state.reader or 'no reader name yet'}) have reviewed {len(listed & done)} of the {len(listed)} listed cases."
        pairs = [p for p in self.store.reader_agreement(dataset=dataset) if p.get("kappa") is not None]
        if pairs:
            text += " Agreement between readers (Cohen's kappa): " + "; ".join(
                f"{p['reader_a']} vs {p['reader_b']}: {p['kappa']:.2f} over {p['cases']} cases" for p in pairs) + "."
        return text

    def export_reviews(self, folder: Path, dataset: str | None = None) -> Path:
        """Write the verdicts (of ``dataset``, or all) as CSV into a new folder with an unguessable name
        under ``folder``; returns the file."""
        target = Path(folder) / secrets.token_urlsafe(16)
        target.mkdir(parents=True, exist_ok=False)
        return self.store.export_reviews_csv(target / "reviews.csv", dataset=dataset)
