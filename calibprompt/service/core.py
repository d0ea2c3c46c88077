"""The composition root of the service layer: one shared core, many sessions.

:class:`Core` builds what every user shares (the backbone pool, the run store, the job runner, caches
keyed by content) and offers the actions the app and the CLI call, each a one-line delegation to the
service module of its concern: :mod:`~calibprompt.service.models` (the default model, its background load),
:mod:`~calibprompt.service.session` (the per-session state, its task), :mod:`~calibprompt.service.heads`
(prompt menus and heads), :mod:`~calibprompt.service.compare` (compare and assess over the rules of
:mod:`~calibprompt.service.advice`), :mod:`~calibprompt.service.datasets` (samples, uploads, sharing),
:mod:`~calibprompt.service.training` (jobs and runs, owner-checked by :mod:`~calibprompt.service.access`),
:mod:`~calibprompt.service.evaluation` (reports, temperature scaling, significance, selective, conformal)
and :mod:`~calibprompt.service.reviews`. A service reaches another concern through these methods, so each
action has one entry point. Every action that depends on a user's choices takes that user's
:class:`~calibprompt.service.session.SessionState` and returns a new one where it changes it.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from calibprompt import defaults
from calibprompt.data.layouts import Dataset, LabeledImages
from calibprompt.data.resolve import LOCAL_OWNER
from calibprompt.prompting.engine import Head
from calibprompt.prompting.tasks import Task, list_tasks
from calibprompt.runs.store import RunStore
from calibprompt.service import compare as compare_service
from calibprompt.service import datasets as datasets_service
from calibprompt.service import evaluation as evaluation_service
from calibprompt.service import heads as heads_service
from calibprompt.service import models as models_service
from calibprompt.service import reviews as reviews_service
from calibprompt.service import training as training_service
from calibprompt.service.advice import CalibrationData
from calibprompt.service.compare import ComparedImage
from calibprompt.service.evaluation import EvaluationSet
from calibprompt.service.pool import BackbonePool, ContentCache, LoadedBackbone
from calibprompt.service.session import SessionState, new_session, set_task

if TYPE_CHECKING:  # the job pipeline imports torchvision: loaded with the first job, not with the page
    from calibprompt.runs.jobs import JobRunner

__all__ = ["Core", "ComparedImage", "EvaluationSet"]


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
        self.pool = pool or BackbonePool()
        default = models_service.pin_default(self.pool, backbone, device)
        # the app starts even on a damaged run database: it is kept aside and a new one started
        self.store = store or RunStore(set_aside_damaged=True)
        self.default_model, self.default_device = default.name, default.device
        self.default_family, self.default_task = default.family, default.task
        self.banner = models_service.banner(default, banner, getattr(self.store, "notice", None))
        self.heads = ContentCache(512)
        self.evaluations = ContentCache(64)
        self._models = list(models) if models is not None else None
        self._runner: JobRunner | None = None
        self._runner_lock = threading.Lock()
        self._preload = models_service.Preload()

    # -- shared resources ------------------------------------------------------------------------
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

    @property
    def started_runner(self) -> JobRunner | None:
        """The job runner if a job was ever started here, else None (the job pipeline stays unimported)."""
        return self._runner

    # -- models (see calibprompt.service.models) --------------------------------------------------
    def preload(self, warm: bool = True) -> Future[LoadedBackbone]:
        """Load the default model in a background thread (once; later calls return the same future); with
        ``warm``, also compute the default session's heads and run the image encoder once. See
        :class:`calibprompt.service.models.Preload` and :func:`calibprompt.service.models.warm_up`."""
        warm_up = (lambda loaded: models_service.warm_up(self, loaded)) if warm else None
        return self._preload.start(self.default_model, lambda: self.pool.get(self.default_model, self.default_device),
                                   warm_up)

    def model_family(self, name: str) -> str:
        """See :func:`calibprompt.service.models.model_family`."""
        return models_service.model_family(self, name)

    def loaded(self, state: SessionState) -> LoadedBackbone:
        """See :func:`calibprompt.service.models.loaded`."""
        return models_service.loaded(self, state)

    def banner_for(self, state: SessionState) -> str:
        """See :func:`calibprompt.service.models.banner_for`."""
        return models_service.banner_for(self, state)

    def switch_model(self, state: SessionState, name: str) -> SessionState:
        """See :func:`calibprompt.service.models.switch_model`."""
        return models_service.switch_model(self, state, name)

    def model_choices(self) -> list[str]:
        """See :func:`calibprompt.service.models.model_choices`."""
        return models_service.model_choices(self._models)

    # -- sessions and tasks (see calibprompt.service.session) -------------------------------------
    def new_session(self, username: str | None = None, owner: str | None = None) -> SessionState:
        """A fresh session on the default model and task; see :func:`calibprompt.service.session.new_session`."""
        return new_session(self.default_model, self.default_task, username=username, owner=owner)

    def set_task(self, state: SessionState, task: str | None = None, typed: str | None = None) -> SessionState:
        """See :func:`calibprompt.service.session.set_task`."""
        return set_task(state, task, typed)

    @staticmethod
    def task_choices() -> list[str]:
        """See :func:`calibprompt.prompting.tasks.list_tasks`."""
        return list_tasks()

    # -- prompt heads (see calibprompt.service.heads) ---------------------------------------------
    def finished_runs(self, state: SessionState, task: Task | None = None) -> list[dict[str, Any]]:
        """See :func:`calibprompt.service.heads.finished_runs`."""
        return heads_service.finished_runs(self, state, task)

    def default_prompt(self, state: SessionState, method: str, task: Task | None = None) -> str | None:
        """See :func:`calibprompt.service.heads.default_prompt`."""
        return heads_service.default_prompt(self, state, method, task)

    def prompt_choices(self, state: SessionState) -> list[str]:
        """See :func:`calibprompt.service.heads.prompt_choices`."""
        return heads_service.prompt_choices(self, state)

    def prompt_options(self, state: SessionState) -> list[dict[str, Any]]:
        """See :func:`calibprompt.service.heads.prompt_options`."""
        return heads_service.prompt_options(self, state)

    def resolve_heads(self, state: SessionState, names: Sequence[str] = ()) -> dict[str, Head]:
        """See :func:`calibprompt.service.heads.resolve_heads`."""
        return heads_service.resolve_heads(self, state, names)

    # -- compare and assess (see calibprompt.service.compare) -------------------------------------
    def compare(self, state: SessionState, images: Sequence[Any], heads: Sequence[str] = ()) -> list[ComparedImage]:
        """See :func:`calibprompt.service.compare.compare`."""
        return compare_service.compare(self, state, images, heads)

    def compare_api(self, image: Any, task: str | None = None) -> dict[str, dict[str, float]]:
        """See :func:`calibprompt.service.compare.compare_api`."""
        return compare_service.compare_api(self, image, task)

    def calibration_source(self, state: SessionState) -> str | None:
        """See :func:`calibprompt.service.compare.calibration_source`."""
        return compare_service.calibration_source(self, state)

    def calibration_data(self, state: SessionState, heads: Sequence[str] = (),
                         alpha: float = defaults.ALPHA) -> CalibrationData | None:
        """See :func:`calibprompt.service.compare.calibration_data`."""
        return compare_service.calibration_data(self, state, heads, alpha)

    def assess(self, state: SessionState, images: Sequence[Any], heads: Sequence[str] = (),
               alpha: float = defaults.ALPHA, answer_with: str | None = None,
               frames: Mapping[int, int] | None = None, test_time: str | None = None) -> dict[str, Any]:
        """See :func:`calibprompt.service.compare.assess`."""
        return compare_service.assess(self, state, images, heads, alpha, answer_with, frames, test_time)

    def assess_api(self, image: Any, task: str | None = None) -> dict[str, Any]:
        """See :func:`calibprompt.service.compare.assess_api`."""
        return compare_service.assess_api(self, image, task)

    # -- datasets (see calibprompt.service.datasets) ----------------------------------------------
    @staticmethod
    def sample_images() -> list[tuple[str, str]]:
        """See :func:`calibprompt.service.datasets.sample_images`."""
        return datasets_service.sample_images()

    @staticmethod
    def dataset_choices(owner: str | None = LOCAL_OWNER) -> list[str]:
        """See :func:`calibprompt.service.datasets.dataset_choices`."""
        return datasets_service.dataset_choices(owner)

    @staticmethod
    def upload_dataset(zip_path: str | None, owner: str | None = LOCAL_OWNER) -> str:
        """See :func:`calibprompt.service.datasets.upload_dataset`."""
        return datasets_service.upload_dataset(zip_path, owner)

    @staticmethod
    def share_dataset(state: SessionState, choice: str, shared: bool = True) -> str:
        """See :func:`calibprompt.service.datasets.share_dataset`."""
        return datasets_service.share_dataset(state, choice, shared)

    @staticmethod
    def _open(state: SessionState, dataset: str) -> tuple[str, Task, Dataset]:
        """See :func:`calibprompt.service.datasets.open_for`."""
        return datasets_service.open_for(state, dataset)

    # -- training (see calibprompt.service.training) ----------------------------------------------
    @staticmethod
    def method_defaults(state: SessionState | None, method: str, family: str | None = None) -> dict[str, float]:
        """See :func:`calibprompt.service.training.method_defaults`."""
        return training_service.method_defaults(state, method, family)

    @staticmethod
    def methods() -> list[str]:
        """See :func:`calibprompt.service.training.methods`."""
        return training_service.methods()

    def start_training(self, state: SessionState, dataset: str, *, method: str = "calibprompt",
                       shots: int = defaults.SHOTS, seed: int = defaults.SEED, epochs: int = defaults.EPOCHS,
                       alpha: float | None = None, beta: float | None = None,
                       device: str = "auto", name: str | None = None,
                       learner: str = "coop") -> tuple[SessionState, str]:
        """See :func:`calibprompt.service.training.start_training`."""
        return training_service.start_training(self, state, dataset, method=method, shots=shots, seed=seed,
                                               epochs=epochs, alpha=alpha, beta=beta, device=device, name=name,
                                               learner=learner)

    @staticmethod
    def learners() -> list[dict[str, Any]]:
        """See :func:`calibprompt.service.training.learners`."""
        return training_service.learners()

    def active_job(self, state: SessionState) -> str | None:
        """See :func:`calibprompt.service.training.active_job`."""
        return training_service.active_job(self, state)

    def job_status(self, state: SessionState, run_id: str) -> dict[str, Any]:
        """See :func:`calibprompt.service.training.job_status`."""
        return training_service.job_status(self, state, run_id)

    def cancel(self, state: SessionState, run_id: str) -> bool:
        """See :func:`calibprompt.service.training.cancel`."""
        return training_service.cancel(self, state, run_id)

    def run_history(self, state: SessionState, limit: int = 200) -> list[dict[str, Any]]:
        """See :func:`calibprompt.service.training.run_history`."""
        return training_service.run_history(self, state, limit)

    def share_run(self, state: SessionState, run_id: str, shared: bool = True) -> dict[str, Any]:
        """See :func:`calibprompt.service.training.share_run`."""
        return training_service.share_run(self, state, run_id, shared)

    def interpret_run(self, state: SessionState, run_id: str, top_k: int = 3) -> list[dict[str, Any]]:
        """See :func:`calibprompt.service.training.interpret_run`."""
        return training_service.interpret_run(self, state, run_id, top_k)

    # -- evaluation (see calibprompt.service.evaluation) ------------------------------------------
    def evaluation_images(self, state: SessionState, dataset: str,
                          heads: dict[str, Head]) -> tuple[str, Task, LabeledImages, int]:
        """See :func:`calibprompt.service.evaluation.evaluation_images`."""
        return evaluation_service.evaluation_images(self, state, dataset, heads)

    def evaluate(self, state: SessionState, dataset: str, heads: Sequence[str] = ()) -> EvaluationSet:
        """See :func:`calibprompt.service.evaluation.evaluate`."""
        return evaluation_service.evaluate(self, state, dataset, heads)

    def calibration(self, state: SessionState, dataset: str, heads: Sequence[str] = (), n_bins: int = defaults.N_BINS,
                    temperature_scaling: bool = True,
                    calibrators: Sequence[str] = ()) -> tuple[dict[str, dict[str, Any]], EvaluationSet]:
        """See :func:`calibprompt.service.evaluation.calibration`."""
        return evaluation_service.calibration(self, state, dataset, heads, n_bins, temperature_scaling, calibrators)

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
    def cross_fitted_sets(ev: EvaluationSet, alpha: float = defaults.ALPHA) -> dict[str, np.ndarray] | None:
        """See :func:`calibprompt.service.evaluation.cross_fitted_sets`."""
        return evaluation_service.cross_fitted_sets(ev, alpha)

    # -- review (see calibprompt.service.reviews) -------------------------------------------------
    def review_cases(self, state: SessionState, dataset: str, heads: Sequence[str] = (), *,
                     true_class: str | None = None, method: str | None = None, min_confidence: float = 0.0,
                     referred_only: bool = False, alpha: float = defaults.ALPHA, reader_filter: str = "all",
                     limit: int | None = None) -> tuple[list[dict[str, Any]], reviews_service.CaseList]:
        """Every confidently wrong case (the first ``limit`` if given) and the whole case list; see
        :func:`calibprompt.service.reviews.find_cases`."""
        found = reviews_service.find_cases(self, state, dataset, heads, true_class=true_class, method=method,
                                           min_confidence=min_confidence, referred_only=referred_only,
                                           reader_filter=reader_filter, alpha=alpha)
        return (found.cases if limit is None else found.cases[:limit]), found

    def save_review(self, state: SessionState, dataset: str, case: dict[str, Any], method: str, verdict: str,
                    note: str = "") -> dict[str, Any]:
        """See :func:`calibprompt.service.reviews.save_review`."""
        return reviews_service.save_review(self, state, dataset, case, method, verdict, note)

    def review_progress(self, state: SessionState, dataset: str, cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """See :func:`calibprompt.service.reviews.review_progress`."""
        return reviews_service.review_progress(self, state, dataset, cases)

    def export_reviews(self, state: SessionState, folder: Path, dataset: str | None = None) -> Path:
        """See :func:`calibprompt.service.reviews.export_reviews`."""
        return reviews_service.export_reviews(self, state, folder, dataset)
