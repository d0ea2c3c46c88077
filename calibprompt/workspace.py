"""Everything the app does, without the UI: the active model, the task and its prompts, comparisons,
training jobs, calibration reports and case review. ``app.py`` only draws widgets around a
:class:`Workspace`; tests drive the same object directly.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data.datasets import LabeledImages, few_shot_split
from .data.zipfiles import extract_zip
from .demo.bundle import SAMPLE_IMAGES_DIR, bundled_prompt
from .demo.datasets import DEMO_TASKS
from .engine import Engine
from .evaluation import evaluate_probs
from .features import FeatureCache
from .jobs import JobRunner, TrainJob, open_dataset
from .losses import get_method, list_methods
from .metrics import apply_temperature, fit_temperature
from .models import BACKBONES, hub_is_offline, hub_reachable, load_backbone, missing_hub_files
from .paths import data_dir, datasets_dir, inside, uploads_dir
from .store import RunStore
from .tasks import Task, list_tasks, load_task

logger = logging.getLogger(__name__)

__all__ = ["Workspace", "choose_backbone", "DEFAULT_HEADS", "HIGH_CONFIDENCE", "DISCLAIMER"]

DEFAULT_HEADS = ("zero-shot", "coop", "calibprompt")
HIGH_CONFIDENCE = 0.8
DISCLAIMER = ("For research and review only, not for diagnosis. The probabilities come from a vision-language "
              "model and can be confidently wrong.")
DEFAULT_TASK = {"demo": "demo", "biomedclip": "covid", "quiltnet": "kather", "clip": "kather"}


def choose_backbone(requested: str = "auto", *, download_timeout: float = 45.0):
    """Load the model the app starts on; returns ``(backbone, banner)``.

    ``auto`` uses BiomedCLIP when it is in the local Hugging Face cache, or when it downloads within
    ``download_timeout`` seconds (the download goes on in the background otherwise); else the bundled
    demo model, with a banner that says why and how to switch. ``HF_HUB_OFFLINE=1`` skips the attempt.
    """
    if requested != "auto":
        backbone = load_backbone(requested)
        return backbone, f"Model: {backbone.name}. {backbone.description}"
    spec = BACKBONES["biomedclip"]
    why = ""
    if not missing_hub_files(spec):
        try:
            return load_backbone("biomedclip"), "Model: BiomedCLIP (from the local Hugging Face cache)."
        except Exception as exc:  # a damaged cache must not stop the app
            why = f"BiomedCLIP is in the cache but failed to load ({exc})"
    elif hub_is_offline():
        why = "HF_HUB_OFFLINE is set, and BiomedCLIP is not in the local Hugging Face cache"
    else:
        ok, reason = hub_reachable()
        if not ok:
            why = f"the Hugging Face Hub is unreachable ({reason}) and BiomedCLIP is not in the local cache"
        else:
            result: dict[str, Any] = {}

            def download():
                try:
                    result["backbone"] = load_backbone("biomedclip")
                except Exception as exc:  # noqa: BLE001 - reported in the banner
                    result["error"] = exc

            thread = threading.Thread(target=download, name="biomedclip-download", daemon=True)
            thread.start()
            thread.join(download_timeout)
            if "backbone" in result:
                return result["backbone"], "Model: BiomedCLIP (downloaded from the Hugging Face Hub)."
            why = (f"BiomedCLIP could not be downloaded ({result['error']})" if "error" in result else
                   f"BiomedCLIP did not download within {download_timeout:.0f} s (it goes on in the background)")
    backbone = load_backbone("demo")
    banner = (f"Model: the bundled demo model, because {why}. It knows only a synthetic histology world "
              "(tasks 'demo' and 'demo-binary'). To use a real Med-VLM, connect to the internet and pick "
              "BiomedCLIP or QuiltNet in the model menu, or start with `python app.py --model biomedclip`.")
    return backbone, banner


@dataclass
class ComparedImage:
    """One image's predictions: ``probs[head] = {class: p}``, ``top[head] = (class, p)``, ``flag``."""

    probs: dict[str, dict[str, float]]
    top: dict[str, tuple[str, float]]
    flag: str = ""


@dataclass
class EvaluationSet:
    """Predictions of several heads on one labelled test set (for calibration and review)."""

    dataset: str
    task: Task
    paths: list[str]
    labels: np.ndarray
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    logits: dict[str, np.ndarray] = field(default_factory=dict)


class Workspace:
    """The app's state: one active backbone with its engine, the current task and its prompt heads,
    the run store and the background job runner."""

    def __init__(self, backbone=None, banner: str = "", store: RunStore | None = None):
        if backbone is None:
            backbone, banner = choose_backbone("auto")
        self.store = store or RunStore()
        self.runner = JobRunner(self.store, backbone_loader=self._load_for_job)
        self._lock = threading.RLock()
        self.banner = banner
        self._evaluations: dict[tuple, EvaluationSet] = {}
        self._use(backbone)

    # -- model and task -------------------------------------------------------------------
    def _use(self, backbone) -> None:
        with self._lock:
            self.backbone = backbone
            self.engine = Engine(backbone)
            self.features = FeatureCache(backbone)
            self._evaluations.clear()
            self.set_task(DEFAULT_TASK.get(backbone.family, "kather"))

    def _load_for_job(self, model: str, device: str):
        if model == self.backbone.name and str(self.backbone.device) == device:
            return self.backbone
        return load_backbone(model, device=device)

    def switch_model(self, name: str) -> str:
        """Load another backbone and make it the active one; returns the new banner."""
        backbone = load_backbone(name)
        self.banner = f"Model: {backbone.name}. {backbone.description}"
        self._use(backbone)
        return self.banner

    @staticmethod
    def model_choices() -> list[str]:
        return [name for name in BACKBONES if not name.startswith("tiny")]

    @staticmethod
    def task_choices() -> list[str]:
        return list_tasks()

    def set_task(self, task: str | Task | Sequence[str]) -> Task:
        """Make ``task`` current (a task name, a Task, or typed class names) and rebuild its heads:
        zero-shot, and CoOp/CalibPrompt from the bundled demo prompts or the latest finished runs."""
        if isinstance(task, str):
            task = load_task(task)
        elif not isinstance(task, Task):
            task = Task.from_classnames(task)
        with self._lock:
            self.task = task
            for name in list(self.engine.heads):
                self.engine.remove_head(name)
            self.engine.add_zero_shot("zero-shot", task)
            for method in ("coop", "calibprompt"):
                source = self.default_prompt(method)
                if source is not None:
                    try:
                        self.engine.add_prompt(method, source)
                    except ValueError as exc:
                        logger.warning("Skipping the %s prompt %s: %s", method, source, exc)
        return task

    def default_prompt(self, method: str) -> str | None:
        """Checkpoint used for ``method`` on the current task: the bundled demo prompt, else the newest
        finished run of this model, task and method."""
        if self.backbone.name == "demo" and self.task.name in DEMO_TASKS:
            path = bundled_prompt(self.task.name, method)
            if path.is_file():
                return str(path)
        for run in self.finished_runs():
            if run["method"] == method:
                return run["checkpoint"]
        return None

    def finished_runs(self) -> list[dict[str, Any]]:
        """Done training runs of the active model on the current task (newest first)."""
        rows = []
        for run in self.store.list_runs(status="done", kind="train"):
            if run.params.get("model") != self.backbone.name or not run.checkpoint:
                continue
            if (run.metrics or {}).get("task") != self.task.name:
                continue
            rows.append({"id": run.id, "method": run.params.get("method"), "seed": run.params.get("seed"),
                         "checkpoint": run.checkpoint})
        return rows

    def prompt_choices(self) -> list[str]:
        """Heads the user can pick: the defaults present, plus every finished run as ``run:<id>``."""
        return [h for h in DEFAULT_HEADS if h in self.engine.heads] + [f"run:{r['id']}" for r in self.finished_runs()]

    def ensure_heads(self, names: Sequence[str]) -> list[str]:
        names = list(names) or [h for h in DEFAULT_HEADS if h in self.engine.heads]
        for name in names:
            if name in self.engine.heads:
                continue
            if not name.startswith("run:"):
                raise ValueError(f"No prompt {name!r} for the task {self.task.name!r}; train one in the Train tab.")
            record = self.store.get_run(name[4:])
            if record.status != "done" or not record.checkpoint:
                raise ValueError(f"Run {record.id} is {record.status}; only finished runs can be used.")
            self.engine.add_prompt(name, record.checkpoint)
        return names

    # -- compare --------------------------------------------------------------------------
    def compare(self, images: Sequence[Any], heads: Sequence[str] = ()) -> list[ComparedImage]:
        """Each head's class probabilities for each image, with a flag where a method is highly
        confident while the methods disagree on the top class."""
        if not images:
            raise ValueError("Upload an image first (PNG, JPEG, TIFF or DICOM), or pick a sample image.")
        with self._lock:
            names = self.ensure_heads(heads)
            predictions = self.engine.predict(images, names)
        out = []
        for i in range(len(images)):
            probs = {h: predictions[h].as_dicts()[i] for h in names}
            top = {h: predictions[h].top(i, 1)[0] for h in names}
            confident = [h for h, (_, p) in top.items() if p >= HIGH_CONFIDENCE]
            flag = ""
            if len({c for c, _ in top.values()}) > 1 and confident:
                flag = (f"The methods disagree, yet {', '.join(confident)} "
                        f"{'is' if len(confident) == 1 else 'are'} at least {HIGH_CONFIDENCE:.0%} confident: "
                        "treat this confidence with caution.")
            out.append(ComparedImage(probs, top, flag))
        return out

    def compare_api(self, image: Any) -> dict[str, dict[str, float]]:
        """``{method: {class: probability}}`` for one image, for the zero-shot, CoOp and CalibPrompt heads."""
        heads = [h for h in DEFAULT_HEADS if h in self.engine.heads]
        return self.compare([image], heads)[0].probs

    @staticmethod
    def sample_images() -> list[tuple[str, str]]:
        """``(path, caption)`` of the bundled sample images."""
        import csv

        listing = SAMPLE_IMAGES_DIR / "labels.csv"
        if not listing.is_file():
            return []
        with open(listing, newline="") as handle:
            return [(str(SAMPLE_IMAGES_DIR / r["file"]), f"{r['task']}: {r['true_class']}") for r in csv.DictReader(handle)]

    # -- datasets and training -------------------------------------------------------------
    def dataset_choices(self) -> list[str]:
        """Demo tasks' standard splits and the dataset folders under the data directory."""
        folders = sorted(p.name for p in datasets_dir().iterdir() if p.is_dir() and not p.name.startswith(".")
                         and "-standard-" not in p.name)
        uploads = sorted(f"uploads/{self._upload_root(p).relative_to(uploads_dir()).as_posix()}"
                         for p in uploads_dir().iterdir() if p.is_dir() and not p.name.startswith("."))
        return list(DEMO_TASKS) + folders + uploads

    def resolve_dataset(self, choice: str) -> str:
        """A dataset choice as a path or demo task name, refusing anything outside the data directory."""
        choice = (choice or "").strip()
        if not choice:
            raise ValueError("Pick a dataset: a demo set, an uploaded zip or a folder under the data directory.")
        if choice in DEMO_TASKS:
            return choice
        path = (uploads_dir().parent / choice) if choice.startswith("uploads/") else datasets_dir() / choice
        if not inside(path, data_dir()) or not path.exists():
            raise ValueError(f"No dataset {choice!r} in the data directory {data_dir()}.")
        return str(path)

    def upload_dataset(self, zip_path: str | os.PathLike) -> str:
        """Unpack an uploaded zip into the data directory; returns its dataset choice name."""
        if not zip_path:
            raise ValueError("Choose a .zip file with one folder of images per class (or train/ and test/ folders).")
        root = extract_zip(zip_path, uploads_dir())
        return f"uploads/{root.relative_to(uploads_dir()).as_posix()}"

    @staticmethod
    def _upload_root(folder: Path) -> Path:
        """An unpacked upload's dataset folder: its single top-level folder, if that is all it holds."""
        entries = [e for e in folder.iterdir() if not e.name.startswith(".") and e.name != "__MACOSX"]
        return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder

    def start_training(self, dataset: str, *, method: str = "calibprompt", shots: int = 8, seed: int = 1,
                       epochs: int = 50, alpha: float | None = None, beta: float | None = None,
                       device: str = "auto") -> str:
        """Queue a prompt-tuning job on the active model and the current task; returns its run id."""
        method = get_method(method).name
        params = {k: v for k, v in (("alpha", alpha), ("beta", beta)) if v is not None and k in get_method(method).params}
        source = self.resolve_dataset(dataset)
        task = self.task.name if self.task.path else None
        if source in DEMO_TASKS:
            task = source
        job = TrainJob(model=self.backbone.name, dataset=source, task=task, shots=int(shots), seed=int(seed),
                       method=method, epochs=int(epochs), loss_params=params, device=device)
        open_dataset(source, task)  # fail now, in the request, on a bad dataset or class mismatch
        return self.runner.submit(job)

    def job_status(self, run_id: str) -> dict[str, Any]:
        return self.runner.progress(run_id)

    def cancel(self, run_id: str) -> bool:
        return self.runner.cancel(run_id)

    def run_history(self, limit: int = 200) -> list[dict[str, Any]]:
        rows = []
        for run in self.store.list_runs(kind="train", limit=limit):
            m = run.metrics or {}
            rows.append({
                "run": run.id, "status": run.status, "method": run.params.get("method", ""),
                "model": run.params.get("model", ""), "task": m.get("task", run.params.get("task") or ""),
                "shots": run.params.get("shots", ""), "seed": run.params.get("seed", ""),
                "accuracy": round(m["accuracy"], 4) if isinstance(m.get("accuracy"), float) else None,
                "ece": round(m["ece"], 4) if isinstance(m.get("ece"), float) else None,
                "created": run.created_at, "error": run.error or "",
            })
        return rows

    @staticmethod
    def method_defaults(method: str, task: Task | None = None, family: str | None = None) -> dict[str, float]:
        from .losses import build_objective

        return build_objective(method, backbone_family=family, task=task).params

    @staticmethod
    def methods() -> list[str]:
        return list_methods()

    # -- calibration and review --------------------------------------------------------------
    def test_split(self, dataset: str) -> LabeledImages:
        source = self.resolve_dataset(dataset)
        task = source if source in DEMO_TASKS else (self.task.name if self.task.path else None)
        _, ds = open_dataset(source, task)
        if ds.class_ids != self.task.class_ids:
            raise ValueError(f"The dataset's classes {ds.class_ids} are not those of the task {self.task.name!r}.")
        _, test = few_shot_split(ds, 8, 1)
        return test

    def evaluate(self, dataset: str, heads: Sequence[str] = ()) -> EvaluationSet:
        """Predictions of the chosen heads on a dataset's test split (image features cached on disk)."""
        names = self.ensure_heads(heads)
        key = (self.backbone.name, self.task.name, dataset)
        with self._lock:
            ev = self._evaluations.get(key)
            if ev is None:
                test = self.test_split(dataset)
                ev = EvaluationSet(dataset, self.task, [str(p) for p in test.paths], np.asarray(test.labels))
                self._evaluations[key] = ev
            todo = [h for h in names if h not in ev.probs]
            if todo:
                feats = self.features.plain(ev.paths)
                for head, pred in self.engine.predict_features(feats, todo).items():
                    ev.probs[head], ev.logits[head] = pred.probs, pred.logits
        return ev

    def calibration(self, dataset: str, heads: Sequence[str] = (), n_bins: int = 10,
                    temperature_scaling: bool = True) -> dict[str, dict[str, Any]]:
        """Calibration reports per head (and, with ``temperature_scaling``, per temperature-scaled head:
        T fitted on one half of the test set and applied to the other, both ways)."""
        ev = self.evaluate(dataset, heads)
        names = self.ensure_heads(heads)
        reports = {}
        for head in names:
            reports[head] = evaluate_probs(ev.probs[head], ev.labels, ev.paths, self.task.classnames,
                                           n_bins=n_bins, n_boot=300).report
            if temperature_scaling:
                scaled, temps = self._cross_fitted_temperature(ev.logits[head], ev.labels)
                report = evaluate_probs(scaled, ev.labels, ev.paths, self.task.classnames, n_bins=n_bins,
                                        n_boot=300).report
                report["temperature"] = float(np.mean(temps))
                reports[f"{head} + TS"] = report
        return reports

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

    def review_cases(self, dataset: str, heads: Sequence[str] = (), *, true_class: str | None = None,
                     method: str | None = None, min_confidence: float = 0.0, limit: int = 48) -> list[dict[str, Any]]:
        """Test cases ranked by how confidently wrong they are (the largest confidence among the chosen
        methods that got the case wrong, or of ``method`` alone), with every method's prediction."""
        ev = self.evaluate(dataset, heads)
        names = self.ensure_heads(heads)
        if method and method not in names:
            raise ValueError(f"Method {method!r} is not among the chosen prompts {names}.")
        classes = self.task.class_ids
        reviews = {r["image"]: r for r in self.store.reviews()}
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
            review = reviews.get(path, {})
            cases.append({
                "path": path, "true": classes[label], "score": score,
                "predictions": {h: (classes[p], c) for h, (p, c) in per.items()},
                "verdict": review.get("verdict", ""), "note": review.get("note", ""),
            })
        cases.sort(key=lambda c: -c["score"])
        return cases[:limit]

    def review(self, image: str, verdict: str, note: str = "", reviewer: str = "") -> dict:
        if not image:
            raise ValueError("Select a case in the gallery first.")
        return self.store.set_review(image, verdict, note=note, reviewer=reviewer)

    def export_reviews(self) -> Path:
        return self.store.export_reviews_csv(data_dir() / "exports" / "reviews.csv")
