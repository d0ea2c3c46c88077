"""The service layer: one shared core, many sessions.

:class:`Core` owns what every user shares (the backbone pool, the run store, the job runner, caches
keyed by content) and offers the actions the app and the CLI call. Every action that depends on a
user's choices takes that user's :class:`~calibprompt.service.session.SessionState` and returns a new
one where it changes it; no action reads or writes a choice that another session can change.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from calibprompt import defaults
from calibprompt.backbones import get_backbone_spec
from calibprompt.data.layouts import Dataset, LabeledImages
from calibprompt.data.resolve import LOCAL_OWNER, dataset_choices, open_dataset, resolve_choice, set_upload_shared
from calibprompt.devices import resolve_device
from calibprompt.paths import SAMPLE_IMAGES_DIR, owner_uploads_dir
from calibprompt.prompting.checkpoint import checkpoint_paths, load_prompt
from calibprompt.prompting.engine import Head
from calibprompt.prompting.library import bundled_prompt_for
from calibprompt.prompting.tasks import Task, list_tasks, load_task
from calibprompt.runs.store import RunRecord, RunStore
from calibprompt.data.images import load_image
from calibprompt.data.metadata import image_metadata
from calibprompt.evaluation.ood import modality_mismatch, unknown_words
from calibprompt.service.advice import CalibrationData, assess_image, choose_answering_method, fit_calibration
from calibprompt.service import evaluation as evaluation_service
from calibprompt.service import reviews as reviews_service
from calibprompt.service.access import (LOCAL, SHARING_NEEDS_LOGIN, TEAM_PREFIX, can_see, can_share,
                                        is_team_member, record_owner)
from calibprompt.service.evaluation import EvaluationSet
from calibprompt.service.pool import BackbonePool, ContentCache, LoadedBackbone, file_digest, task_key
from calibprompt.service.session import SessionState, is_provisional, new_session
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


def _typed_classes(typed: str) -> tuple[str, ...]:
    """Class names typed comma-separated, each within bounds (a long name costs every compare its CPU)."""
    classes = tuple(dict.fromkeys(c.strip() for c in typed.split(",") if c.strip()))
    fewest, most = defaults.LIMITS["typed_classes"]
    longest = defaults.LIMITS["class_name_chars"][1]
    if len(classes) < fewest:
        raise ValueError("Type at least two class names, separated by commas (e.g. 'pneumonia, normal').")
    if len(classes) > most:
        raise ValueError(f"Type at most {most:,} class names; you typed {len(classes):,}.")
    too_long = next((c for c in classes if len(c) > longest), None)
    if too_long is not None:
        raise ValueError(f"A class name may have at most {longest} characters; one has {len(too_long):,} "
                         f"(it starts '{too_long[:30]}'). Shorten it.")
    return classes


def _check_image_count(images: Sequence[Any]) -> None:
    most = defaults.LIMITS["images_per_request"][1]
    if not images:
        raise ValueError("Upload an image first (PNG, JPEG, TIFF or DICOM), or pick a sample image.")
    if len(images) > most:
        raise ValueError(f"Compare at most {most} images at a time; you sent {len(images)}. Split them into "
                         "smaller batches.")


def _no_such_run(run_id: str) -> str:
    """The one refusal for a run id that does not exist or is another owner's and not shared with the
    requester: the same words for both, so a refusal never tells whether a run exists."""
    shown = run_id if len(run_id) <= 80 else f"{run_id[:80]}…"
    return (f"There is no run {shown!r} of yours or shared with you; pick a run from the run history in the "
            "Train tab (it lists every run you can use).")


def _bounded_preview(picture: Any) -> Any:
    """A copy of ``picture`` (PIL) at most ``defaults.PREVIEW_SIDE`` pixels on its long side (PIL ``thumbnail``:
    the aspect ratio kept, never enlarged), so a result kept in a session never holds the full image."""
    side = defaults.PREVIEW_SIDE
    if max(picture.size) <= side:
        return picture
    preview = picture.copy()
    preview.thumbnail((side, side))
    return preview


def _api_accuracy(acc: dict[str, Any] | None) -> dict[str, Any] | None:
    """How often answers at this confidence were right, for the API: None where no guarantee holds."""
    if not acc or not acc.get("n"):
        return None
    return {"accuracy": acc["accuracy"], "low": acc["low"], "high": acc["high"], "n": acc["n"]}


class Core:
    """Shared resources and per-session actions.

    Args:
        backbone: the model the app starts on (kept loaded): a loaded backbone, or the name of a registered
            one, which then loads on first use, or in the background from :meth:`preload` on (requests wait
            for that load), so the app can serve its page before the model is in memory.
        banner: the start-up banner (which model is active and why); the store's notice of a damaged run
            database it set aside is added to it.
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
        # the app starts even on a damaged run database: it is kept aside and a new one started
        self.store = store or RunStore(set_aside_damaged=True)
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
        notice = getattr(self.store, "notice", None)  # a damaged run database was set aside (logged by the store)
        if notice:
            self.banner = f"{self.banner} Warning: {notice}"  # one paragraph: the page shows it in bold
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
    def new_session(self, username: str | None = None, owner: str | None = None) -> SessionState:
        """A fresh session on the default model and task, owned by ``username`` (logged in), else by
        ``owner`` (a browser identity, :func:`calibprompt.service.session.owner_for`), else by itself."""
        return new_session(self.default_model, self.default_task, username=username, owner=owner)

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
            return state.with_(classes=_typed_classes(typed), prompts=("zero-shot",))
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
        """Done training runs of this session's model on its task that this session's owner may use: its own
        and those shared with it (:mod:`calibprompt.service.access`), newest first; ``by`` as in
        :meth:`run_history`."""
        task = task or state.task_object()
        rows = []
        for run in self.store.list_runs(status="done", kind="train"):
            if run.params.get("model") != state.model or not run.checkpoint or not self._sees(state, run):
                continue
            if (run.metrics or {}).get("task") != task.name:
                continue
            rows.append({"id": run.id, "method": run.params.get("method"), "seed": run.params.get("seed"),
                         "name": run.params.get("name") or "", "checkpoint": run.checkpoint,
                         "by": self._by(state, run.params.get("owner"))})
        return rows

    # -- who sees which run (the rules: calibprompt.service.access) ---------------------------------
    @staticmethod
    def _sees(state: SessionState, run: RunRecord) -> bool:
        """Whether this session's owner may see (list, use, follow) ``run``: its own, or shared with it."""
        params = run.params or {}
        return can_see(state.owner, params.get("owner"), params.get("shared") is True)

    @staticmethod
    def _by(state: SessionState, owner: object) -> str:
        """Who a run is by, as the history shows it: "you", a logged-in user's name, "operator" (the command
        line's runs, and those from before owners were kept), or "" (another browser)."""
        owner = record_owner(owner)
        if owner == state.owner:
            return "you"
        if owner == LOCAL:
            return "operator"
        return owner[len(TEAM_PREFIX):] if is_team_member(owner) else ""

    def _visible_run(self, state: SessionState, run_id: Any) -> RunRecord:
        """The run ``run_id`` (as sent by a client: checked here) if this session's owner may see it. An unknown
        id and another owner's unshared run are refused with the same words (:func:`_no_such_run`)."""
        run_id = run_id.strip() if isinstance(run_id, str) else ""
        if not run_id:
            raise ValueError("Choose a run first: start a job, or paste a run id from the run history.")
        try:
            record = self.store.get_run(run_id)
        except ValueError:  # no such run (the store's own words name its file: not for users)
            record = None
        if record is None or not self._sees(state, record):
            raise ValueError(_no_such_run(run_id))
        return record

    def _own_run(self, state: SessionState, run_id: Any, action: str) -> RunRecord:
        """The run ``run_id`` if this session's owner started it; one shared with it is named as such."""
        record = self._visible_run(state, run_id)
        owner = record_owner(record.params.get("owner"))
        if owner != state.owner:
            raise ValueError(f"Run {record.id} was shared with you by {self._by(state, owner) or 'its owner'}; "
                             f"only the user who started it can {action}.")
        return record

    def default_prompt(self, state: SessionState, method: str, task: Task | None = None) -> str | None:
        """The checkpoint used as ``method``'s prompt: the model's bundled one for the task, else the
        newest finished run of this model, task and method that this session's owner may use (its own or
        one shared with it: never another owner's private run)."""
        task = task or state.task_object()
        if state.classes:
            return None
        bundled = bundled_prompt_for(state.model, task.name, method)
        if bundled is not None:
            return str(bundled)
        return next((r["checkpoint"] for r in self.finished_runs(state, task) if r["method"] == method), None)

    def prompt_choices(self, state: SessionState) -> list[str]:
        """Heads this session can pick: zero-shot, the learned defaults that exist, every finished run."""
        return [option["value"] for option in self.prompt_options(state)]

    def prompt_options(self, state: SessionState) -> list[dict[str, Any]]:
        """What :meth:`prompt_choices` offers, described: ``{"value", "kind"}`` with ``kind`` ``"zero-shot"``,
        ``"bundled"`` (the model's bundled prompt for the task), ``"newest run"`` (a learned default taken from
        the newest finished run) or ``"run"`` (with the run's ``"id"``, ``"name"``, ``"method"``, ``"seed"`` and
        ``"by"``, see :meth:`run_history`); runs of other owners only where shared with this session's owner."""
        if state.classes:
            return [{"value": "zero-shot", "kind": "zero-shot"}]
        task = state.task_object()
        options = [{"value": "zero-shot", "kind": "zero-shot"}]
        for method in LEARNED:
            source = self.default_prompt(state, method, task)
            if source:
                bundled = bundled_prompt_for(state.model, task.name, method)
                options.append({"value": method, "kind": "bundled" if bundled is not None else "newest run"})
        for run in self.finished_runs(state, task):
            options.append({"value": f"run:{run['id']}", "kind": "run", "id": run["id"], "name": run["name"],
                            "method": run["method"], "seed": run["seed"], "by": run["by"]})
        return options

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
                record = self._visible_run(state, name[4:])  # another owner's private run: as if unknown
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
        _check_image_count(images)
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
               alpha: float = defaults.ALPHA, answer_with: str | None = None,
               frames: Mapping[int, int] | None = None) -> dict[str, Any]:
        """Refer / answer / not-checked advice for each image (the rules: :mod:`calibprompt.service.advice`),
        with each image as the model saw it and what was read from its file.

        ``frames`` picks a frame of a multi-frame file by the image's position. An image that cannot be read
        gets its own ``error`` and the others are answered; when none can be read the first error is raised.

        Returns ``{"images": [{"name", "preview" (PIL), "metadata", "verdict", "answering_method", "checks",
        "methods", "ood", "refer", "reasons", "notes"} or {"name", "error"}], "calibration": str (where the
        advice comes from, or why there is none), "vocabulary": str}``; a preview is a copy at most
        ``defaults.PREVIEW_SIDE`` pixels on its long side (the model saw the full image)."""
        _check_image_count(images)
        chosen = self.resolve_heads(state, heads)
        choose_answering_method(list(chosen), None, answer_with)  # a clear error before any work
        loaded = self.loaded(state)
        read = [self._read_image(source, i, (frames or {}).get(i)) for i, source in enumerate(images)]
        good = [r for r in read if "error" not in r]
        if not good:
            raise ValueError(" ".join(r["error"] for r in read))
        feats = loaded.engine.image_features([r["preview"] for r in good])
        for r in good:  # the model saw the full image; what is kept (in a session, too) is a bounded copy
            r["preview"] = _bounded_preview(r["preview"])
        predictions = loaded.engine.predict_with(feats, chosen)
        calibration = self.calibration_data(state, list(chosen), alpha)
        no_data = (f"No labelled test images for the task {state.task_label!r} on {state.model}: no prediction sets, "
                   "accuracies or likeness check could run. Choose a labelled dataset for this task in the "
                   "Calibration tab, or add one to the data directory's datasets folder.")
        unknown = None
        if state.classes:
            unknown = unknown_words(list(state.classes), loaded.backbone.tokenizer)
        task = state.task_object()
        for j, r in enumerate(good):
            r.update(assess_image({h: p.probs[j] for h, p in predictions.items()}, feats[j:j + 1].numpy(),
                                  calibration, task.classnames, metadata=r["metadata"], unknown=unknown,
                                  modality_reason=modality_mismatch(r["metadata"], task.modality or ""),
                                  answer_with=answer_with, no_data_reason=no_data))
        vocabulary = good[0]["checks"]["vocabulary"]["detail"] if unknown else ""
        return {"images": read, "calibration": self._calibration_note(calibration, no_data), "vocabulary": vocabulary}

    @staticmethod
    def _read_image(source: Any, index: int, frame: int | None) -> dict[str, Any]:
        """One image as the model will see it, with its file's metadata, or its plain-words error."""
        name = Path(source).name if isinstance(source, (str, Path)) else f"image {index + 1}"
        try:
            picture = load_image(source, frame=frame)
        except ValueError as exc:
            return {"name": name, "error": str(exc)}
        try:
            meta = image_metadata(source, frame=frame)
        except Exception:  # noqa: BLE001 - the image itself loaded; metadata is a bonus
            meta = {}
        return {"name": name, "preview": picture, "metadata": meta, "frame": frame}

    @staticmethod
    def _calibration_note(calibration: CalibrationData | None, no_data: str) -> str:
        if calibration is None:
            return no_data
        sets = ", ".join(f"{n} covered {100 * c.coverage:.0f} % of held-out cases with {c.mean_set_size:.1f} classes "
                         f"on average (ECE {100 * c.ece:.1f} %)" for n, c in calibration.methods.items())
        return (f"Calibrated on {calibration.dataset.rstrip('.')}. {calibration.coverage_label} prediction sets: "
                + (sets or "none") + (f". {calibration.note}" if calibration.note else "."))

    def assess_api(self, image: Any, task: str | None = None) -> dict[str, Any]:
        """Stateless ``/assess``: advice for one image on the default model and ``task``."""
        state, available = self._api_session(image, task)
        result = self.assess(state, [image], available)
        first = result["images"][0]
        return {"task": state.task_label, "verdict": first["verdict"], "answering_method": first["answering_method"],
                "checks": first["checks"],
                "methods": {name: {"probs": m["probs"], "prediction": m["prediction"], "confidence": m["confidence"],
                                   "set": m["set"], "accuracy_at_confidence": _api_accuracy(m["accuracy"]),
                                   "verdict": m["verdict"], "refer": m["refer"]}
                            for name, m in first["methods"].items()},
                "ood": {"flag": first["ood"]["flag"], "score": first["ood"]["score"], "reason": first["ood"]["reason"]},
                "refer": first["refer"], "reasons": first["reasons"], "notes": first["notes"],
                "calibration": result["calibration"]}

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
    def dataset_choices(owner: str | None = LOCAL_OWNER) -> list[str]:
        """The datasets ``owner`` may pick (a session's ``state.owner``): the shared ones, ``owner``'s own
        uploads and, logged in, the team's shared uploads (``team/<user>/<name>``); see
        :func:`calibprompt.data.resolve.dataset_choices` (no argument: the CLI's own uploads)."""
        return dataset_choices(owner)

    @staticmethod
    def upload_dataset(zip_path: str | None, owner: str | None = LOCAL_OWNER) -> str:
        """Unpack an uploaded zip into ``owner``'s own folder of the data directory
        (``uploads/<owner_key(owner)>/<name>``); returns its dataset choice name, ``uploads/<name>``, which
        only ``owner`` can list or open. A provisional owner (no browser identity yet) cannot upload."""
        if not zip_path:
            raise ValueError("Choose a .zip file with one folder of images per class (or train/ and test/ folders).")
        if not owner or is_provisional(owner):
            raise ValueError("This page does not know who you are yet, so an upload could not be kept yours. "
                             "Reload the page, then upload the zip again.")
        from calibprompt.data.uploads import extract_upload  # within the owner's quota, checked before unpacking

        base = owner_uploads_dir(owner)
        root = extract_upload(zip_path, owner)
        choice = f"uploads/{root.relative_to(base).as_posix()}"
        set_upload_shared(choice, owner, shared=False)  # a new upload starts private, whatever its zip held
        return choice

    @staticmethod
    def share_dataset(state: SessionState, choice: str, shared: bool = True) -> str:
        """Share this session's owner's own upload ``choice`` (``uploads/<name>``) with the team, or stop sharing
        it (``shared=False``); returns what happened, in plain words. Logged-in users only (else
        ``ValueError(SHARING_NEEDS_LOGIN)``); anything but the owner's own upload is refused (another owner's
        like a made-up name). Team mates then list and open it as ``team/<user>/<name>`` and see each other's
        verdicts on it; see :func:`calibprompt.data.resolve.set_upload_shared`."""
        owner = state.owner
        if not can_share(owner):
            raise ValueError(SHARING_NEEDS_LOGIN)
        if not is_team_member(owner):  # the operator publishes by folder, not by marker
            raise ValueError("To share a dataset with everyone as the operator, put its folder in the data "
                             "directory's datasets/ folder; sharing an upload is for logged-in users.")
        team_name = set_upload_shared(choice, owner, shared)
        if shared:
            return (f"Shared {choice.strip()} with the team: other logged-in users now find it as {team_name} in "
                    "their dataset menus (after a reload) and see each other's verdicts on it. Press 'Stop "
                    "sharing' to make it yours alone again.")
        return (f"{choice.strip()} is no longer shared: only you can list and open it, and team mates' verdicts "
                "on it are no longer shown. Your own verdicts are kept.")

    def _open(self, state: SessionState, dataset: str) -> tuple[str, Task, Dataset]:
        """A dataset choice opened against this session's task (classes must match), for this session's owner
        (an upload of another owner is refused as if it did not exist)."""
        source = resolve_choice(dataset, state.owner)
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
                       device: str = "auto", name: str | None = None) -> tuple[SessionState, str]:
        """Queue a prompt-tuning job on this session's model and task, owned by this session's owner, with an
        optional ``name`` (at most 80 characters, see :func:`calibprompt.runs.jobs.check_run_name`); returns the
        new state (with the job) and the run id. Every bound is checked before anything is queued."""
        from calibprompt.runs.jobs import TrainJob, check_run_name
        from calibprompt.runs.requests import check_train_request, class_counts_for_split

        if state.classes:
            raise ValueError("Training needs a task file (its classes and templates); choose a task instead of "
                             "typed class names.")
        name = check_run_name(name)
        spec = get_method(method)
        params = {k: v for k, v in (("alpha", alpha), ("beta", beta)) if v is not None and k in spec.params}
        source, task, ds = self._open(state, dataset)
        check_train_request(shots=shots, epochs=epochs, seed=seed, alpha=params.get("alpha"), beta=params.get("beta"),
                            method=spec.name, class_counts=class_counts_for_split(ds))
        job = TrainJob(model=state.model, dataset=source, task=task.name, shots=int(shots), seed=int(seed),
                       method=spec.name, epochs=int(epochs), loss_params=params, device=device)
        run_id = self.runner.submit(job, owner=state.owner, name=name)
        return state.with_(jobs=state.jobs + (run_id,)), run_id

    def active_job(self, state: SessionState) -> str | None:
        """The newest queued or running job of this session's owner on this server (so a reloaded page, or
        another tab of the same browser or user, follows it again), or None."""
        if self._runner is None:  # no job was ever started here (and the job pipeline stays unimported)
            return None
        return self._runner.active_job(state.owner)

    def job_status(self, state: SessionState, run_id: str) -> dict[str, Any]:
        """A run's progress (see :meth:`calibprompt.runs.jobs.JobRunner.progress`), for a run this session's
        owner may see; any other id is refused as unknown."""
        record = self._visible_run(state, run_id)
        return self.runner.progress(record.id)

    def cancel(self, state: SessionState, run_id: str) -> bool:
        """Cancel a queued or running job this session's owner started; False when it is already over (or ran
        in another process). Another owner's job is refused exactly as an unknown run id is."""
        record = self._own_run(state, run_id, "cancel it")
        if self._runner is None:  # no job was ever started here: it is not running in this process
            return False
        return self._runner.cancel(record.id)

    def run_history(self, state: SessionState, limit: int = 200) -> list[dict[str, Any]]:
        """The training runs this session's owner may see (its own and those shared with it), newest first, as
        data: ``accuracy`` and ``ece`` are fractions (None before a run is done), ``name`` the name its owner
        gave it, ``by`` "you" for this session's owner, a logged-in user's name, or "operator" (the command
        line's runs), ``shared`` whether its owner shares it."""
        rows = []
        for run in self.store.list_runs(kind="train"):
            if len(rows) >= limit:
                break
            if not self._sees(state, run):
                continue
            m = run.metrics or {}
            rows.append({
                "run": run.id, "name": run.params.get("name") or "", "status": run.status,
                "method": run.params.get("method", ""), "model": run.params.get("model", ""),
                "task": m.get("task", run.params.get("task") or ""),
                "shots": run.params.get("shots", ""), "seed": run.params.get("seed", ""),
                "accuracy": float(m["accuracy"]) if isinstance(m.get("accuracy"), (int, float)) else None,
                "ece": float(m["ece"]) if isinstance(m.get("ece"), (int, float)) else None,
                "by": self._by(state, run.params.get("owner")), "shared": run.params.get("shared") is True,
                "created": run.created_at, "error": run.error or "",
            })
        return rows

    def share_run(self, state: SessionState, run_id: str, shared: bool = True) -> dict[str, Any]:
        """Share a finished run of this session's owner, or stop sharing it (``shared=False``). A logged-in
        user's run is then seen by the team (the other logged-in users), the operator's by everyone: in their
        prompt menus and run history (:func:`calibprompt.service.access.can_see`). Only the run's owner may,
        and only a logged-in user or the operator (:func:`~calibprompt.service.access.can_share`; else
        :data:`~calibprompt.service.access.SHARING_NEEDS_LOGIN`). Returns ``{"run", "name", "shared",
        "message"}`` with ``message`` in plain words (user text: escape it where it is shown)."""
        if not can_share(state.owner):
            raise ValueError(SHARING_NEEDS_LOGIN)
        record = self._own_run(state, run_id, "change who sees it")
        record = self.store.set_shared(record.id, bool(shared))
        name = record.params.get("name") or f"Run {record.id}"
        if shared:
            who = "every user of the app" if state.owner == LOCAL else "the team (every logged-in user)"
            message = f"{name} is now shared with {who}: it is in their prompt menus and run history."
        else:
            message = f"{name} is no longer shared: only you see it now."
        return {"run": record.id, "name": record.params.get("name") or "", "shared": bool(shared),
                "message": message}

    def interpret_run(self, state: SessionState, run_id: str, top_k: int = 3) -> list[dict[str, Any]]:
        """The nearest vocabulary tokens of a finished run's context vectors (CoOp's interpretation), for a run
        this session's owner may see; any other id is refused as unknown."""
        from calibprompt.prompting.interpret import interpret_prompt

        record = self._visible_run(state, run_id)
        if record.status != "done" or not record.checkpoint:
            raise ValueError(f"Run {record.id} is {record.status}; only a finished run has a prompt to read.")
        backbone = self.pool.get(record.params["model"], self.default_device).backbone
        return interpret_prompt(record.checkpoint, top_k=top_k, backbone=backbone)

    # -- evaluation on images no chosen prompt trained on ---------------------------------------------
    def evaluation_images(self, state: SessionState, dataset: str,
                          heads: dict[str, Head]) -> tuple[str, Task, LabeledImages, int]:
        """See :func:`calibprompt.service.evaluation.evaluation_images`."""
        return evaluation_service.evaluation_images(self, state, dataset, heads)

    def evaluate(self, state: SessionState, dataset: str, heads: Sequence[str] = ()) -> EvaluationSet:
        """See :func:`calibprompt.service.evaluation.evaluate`."""
        return evaluation_service.evaluate(self, state, dataset, heads)

    def calibration(self, state: SessionState, dataset: str, heads: Sequence[str] = (), n_bins: int = defaults.N_BINS,
                    temperature_scaling: bool = True) -> tuple[dict[str, dict[str, Any]], EvaluationSet]:
        """See :func:`calibprompt.service.evaluation.calibration`."""
        return evaluation_service.calibration(self, state, dataset, heads, n_bins, temperature_scaling)

    @staticmethod
    def significance(ev: EvaluationSet, a: str = "calibprompt", b: str = "coop",
                     n_boot: int = evaluation_service.SIGNIFICANCE_BOOT) -> dict[str, dict[str, Any]] | None:
        """See :func:`calibprompt.service.evaluation.significance`."""
        return evaluation_service.significance(ev, a, b, n_boot)

    @staticmethod
    def selective(ev: EvaluationSet, threshold: float) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """See :func:`calibprompt.service.evaluation.selective`."""
        return evaluation_service.selective(ev, threshold)

    @staticmethod
    def _cross_fitted_temperature(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[float]]:
        return evaluation_service.cross_fitted_temperature(logits, labels)

    @staticmethod
    def cross_fitted_sets(ev: EvaluationSet, alpha: float = defaults.ALPHA) -> dict[str, np.ndarray] | None:
        """Each head's prediction sets (N, K) on the evaluation images, cross-fitted (even/odd halves, see
        :func:`calibprompt.evaluation.conformal.cross_fitted_sets`); None when there are too few images."""
        from calibprompt.evaluation.conformal import cross_fitted_sets

        try:
            return {head: cross_fitted_sets(probs, ev.labels, alpha)["sets"] for head, probs in ev.probs.items()}
        except ValueError:
            return None

    # -- review (see calibprompt.service.reviews) -------------------------------------------------
    def review_cases(self, state: SessionState, dataset: str, heads: Sequence[str] = (), *,
                     true_class: str | None = None, method: str | None = None, min_confidence: float = 0.0,
                     referred_only: bool = False, alpha: float = defaults.ALPHA, reader_filter: str = "all",
                     limit: int | None = None) -> tuple[list[dict[str, Any]], reviews_service.CaseList]:
        """Every confidently wrong case (the first ``limit`` if given) and the whole
        :class:`~calibprompt.service.reviews.CaseList`; see :func:`calibprompt.service.reviews.find_cases`."""
        found = reviews_service.find_cases(self, state, dataset, heads, true_class=true_class, method=method,
                                           min_confidence=min_confidence, referred_only=referred_only,
                                           reader_filter=reader_filter, alpha=alpha)
        return (found.cases if limit is None else found.cases[:limit]), found

    def save_review(self, state: SessionState, dataset: str, case: dict[str, Any], method: str, verdict: str,
                    note: str = "") -> dict[str, Any]:
        """See :func:`calibprompt.service.reviews.save_review`."""
        return reviews_service.save_review(self, state, dataset, case, method, verdict, note)

    def review_summary(self, state: SessionState, dataset: str, cases: Sequence[dict[str, Any]]) -> str:
        """One line: how many of the listed cases this reader has reviewed (the tab words it more fully)."""
        done = reviews_service.progress(reviews_service.refresh_cases(self, state, dataset, list(cases)))
        return f"You ({state.reader or 'no reader name yet'}) have reviewed {done['reviewed']} of the {done['listed']} listed cases."

    def export_reviews(self, state: SessionState, folder: Path, dataset: str | None = None) -> Path:
        """The verdicts ``state``'s owner may see (of ``dataset``, or all of them) as CSV; see
        :func:`calibprompt.service.reviews.export_reviews`."""
        return reviews_service.export_reviews(self, state, folder, dataset)
