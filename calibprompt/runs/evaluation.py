"""The one evaluation pipeline: a prompt on a backbone, over test images it never trained on, to a report.

Every path that evaluates a prompt goes through these stages: the command line (``calibprompt
evaluate``), the jobs (:func:`calibprompt.runs.jobs.evaluate_zero_shot` and
:func:`~calibprompt.runs.jobs.evaluate_trained`, behind ``train``, ``compare`` and ``reproduce``) and the
app (:mod:`calibprompt.service.evaluation`, which adds its content-keyed caches):

1. the test images never trained on: a job's and the command line's seeded split keeps its shots out of
   its test part (:func:`calibprompt.data.layouts.few_shot_split`); the app's test pool goes through
   :func:`never_trained_on` (less every image a chosen prompt's checkpoint records as trained on);
2. :func:`prompt_head`: the prompt as a head: the task's zero-shot templates, a checkpoint, a trained
   :class:`~calibprompt.prompting.learner.PromptLearner` or a head already encoded;
3. :func:`predict_prompt`: the head's logits and probabilities (N, K) for image features (N, D);
4. :func:`evaluate_prompt`: stages 2 and 3 over the image features from the feature cache, then
   :func:`calibprompt.evaluation.report.evaluate_probs`: the report, intervals and per-image rows.

The app's service adds its content-keyed caches between the stages (it caches features and predictions,
and reports over the cached predictions with the same ``evaluate_probs``).

:func:`evaluate_split` is the command line's whole evaluation: a dataset's seeded split, its test part
evaluated as above and recorded in the run store as an ``evaluate`` run.

It sits in the runs layer because it joins the layers below it (backbones, prompting, training's feature
cache, evaluation's metrics). Only :func:`evaluate_split` writes (one ``evaluate`` run); the jobs record
their own results.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from calibprompt import defaults
from calibprompt.data.layouts import LabeledImages, few_shot_split
from calibprompt.data.resolve import open_dataset
from calibprompt.evaluation.report import Evaluation, evaluate_probs
from calibprompt.prompting.engine import Engine, Head, Prediction
from calibprompt.prompting.learner import PromptLearner
from calibprompt.prompting.tasks import Task
from calibprompt.runs.store import RunStore

if TYPE_CHECKING:  # the feature cache imports torchvision: loaded with the first evaluation, not with the page
    from calibprompt.training.features import FeatureCache

__all__ = ["prompt_head", "never_trained_on", "trained_images", "relative_path", "predict_prompt", "evaluate_prompt",
           "SplitEvaluation", "evaluate_split", "test_time_prompt", "evaluate_test_time", "TPT_INIT"]

#: the context TPT starts from when there is no learned prompt (Shu et al.'s ``--ctx_init a_photo_of_a``)
TPT_INIT = "a photo of a"

def prompt_head(backbone: Any, task: Task, prompt: Any = None, name: str | None = None) -> Head:
    """``prompt`` as a head on ``backbone``: None gives the task's zero-shot head (each class's text feature
    is the normalised mean over the templates); a checkpoint path (of any learner) or a
    :class:`~calibprompt.prompting.learner.PromptLearner` gives its learned head; a
    :class:`~calibprompt.prompting.engine.Head` is returned as is. ``name`` defaults to ``"zero-shot"`` or
    ``"prompt"``."""
    if isinstance(prompt, Head):
        return prompt
    engine = Engine(backbone)
    if prompt is None:
        return engine.add_zero_shot(name or "zero-shot", task)
    if not isinstance(prompt, (str, os.PathLike, PromptLearner)):
        raise ValueError(f"A prompt to evaluate is None (zero-shot), a checkpoint path, a PromptLearner or a Head; "
                         f"got {type(prompt).__name__}.")
    if not isinstance(prompt, PromptLearner):  # a checkpoint: any learner's (CoCoOp, an adapter, a probe...)
        from calibprompt.training.learners import load_learner

        return engine.add_learner(name or "prompt", prompt, loader=load_learner)
    return engine.add_prompt(name or "prompt", prompt)


def relative_path(path: Path, root: Path) -> str:
    """``path`` inside ``root`` as a POSIX string, or ``path`` itself when it lies outside ``root``."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def trained_images(metadata: Iterable[Mapping[str, Any] | None]) -> tuple[set[str], set[str]]:
    """The training images that prompt checkpoints' ``metadata`` record (``split.train``): their paths
    relative to the training root, and the absolute ones where that root is absolute."""
    trained_rel: set[str] = set()
    trained_abs: set[str] = set()
    for meta in metadata:
        train = ((meta or {}).get("split") or {}).get("train") or {}
        root = Path(str(train.get("root", "")))
        for rel in train.get("paths", []):
            trained_rel.add(Path(rel).as_posix())
            if root.is_absolute():
                trained_abs.add(str((root / rel).resolve()))
    return trained_rel, trained_abs


def never_trained_on(pool: LabeledImages, metadata: Iterable[Mapping[str, Any] | None],
                     name: str = "the dataset") -> tuple[LabeledImages, int]:
    """``pool`` less every image any of the checkpoints (their ``metadata``) trained on, and how many were
    left out. Raises ValueError when nothing is left (``name`` names the dataset in the message)."""
    trained_rel, trained_abs = trained_images(metadata)
    keep = [i for i, s in enumerate(pool.samples)
            if relative_path(Path(s.path), Path(pool.root)) not in trained_rel
            and str(Path(s.path).resolve()) not in trained_abs]
    if not keep:
        raise ValueError(f"Every test image of {name!r} was used to train one of the chosen prompts; "
                         "choose other prompts or a dataset with a test split.")
    return pool.subset(keep), len(pool) - len(keep)


def predict_prompt(backbone: Any, task: Task, prompt: Any, features: Any) -> Prediction:
    """The prompt's (see :func:`prompt_head`) prediction for image features (N, D): ``logits = logit_scale *
    normalize(image) @ text.T (+ logit_bias)`` (N, K) and ``probs = softmax(logits)`` (N, K)."""
    head = prompt_head(backbone, task, prompt)
    return Engine(backbone).predict_with(features, {head.name: head})[head.name]


def evaluate_prompt(backbone: Any, task: Task, test: LabeledImages, prompt: Any = None, *, features: Any = None,
                    cache: FeatureCache | None = None, n_bins: int = defaults.N_BINS,
                    n_boot: int = defaults.N_BOOT) -> Evaluation:
    """Evaluate ``prompt`` (see :func:`prompt_head`) on ``backbone`` over the labelled ``test`` images.

    ``features`` are the test images' features (N, D) when already computed, else they come from ``cache``
    (a :class:`~calibprompt.training.features.FeatureCache`, default: a new one). The probabilities (N, K)
    are :func:`predict_prompt`'s; the result is :func:`calibprompt.evaluation.report.evaluate_probs` over
    them: the calibration report (with ``n_boot`` bootstrap intervals, ``n_bins`` bins) and one row per image.

    Raises ValueError when the prompt predicts other classes than ``task``'s.
    """
    head = prompt_head(backbone, task, prompt)
    if list(head.classnames) != list(task.classnames):
        raise ValueError(f"The head {head.name!r} predicts the classes {head.classnames}, but the test set has "
                         f"{list(task.classnames)}; evaluate it on a dataset of its own task.")
    if features is None:
        from calibprompt.training.features import FeatureCache

        features = (cache or FeatureCache(backbone)).plain(test.paths)
    prediction = predict_prompt(backbone, task, head, features)
    evaluation = evaluate_probs(prediction.probs, test.labels, [str(p) for p in test.paths], head.classnames,
                                n_bins=n_bins, n_boot=n_boot)
    evaluation.logits = np.asarray(prediction.logits, dtype=np.float64)
    return evaluation


@dataclass
class SplitEvaluation:
    """What :func:`evaluate_split` evaluated and found: the recorded ``run_id``, the ``task``, the ``test``
    images and the :class:`~calibprompt.evaluation.report.Evaluation`."""

    run_id: str
    task: Task
    test: LabeledImages
    evaluation: Evaluation
    backbone: Any = None  #: the backbone it was evaluated on (loaded once; reused for test-time tuning)


def evaluate_split(store: RunStore, *, model: str, dataset: str, task: str | None = None,
                   checkpoint: str | None = None, shots: int = defaults.SHOTS, seed: int = defaults.SEED,
                   device: Any = None, n_bins: int = defaults.N_BINS, n_boot: int = defaults.N_BOOT) -> SplitEvaluation:
    """Evaluate ``checkpoint`` (None: the task's zero-shot head) on ``model`` over the test part of
    ``dataset``'s seeded ``shots``-per-class split (:func:`calibprompt.data.layouts.few_shot_split`: never the
    training shots), and record it as an ``evaluate`` run (its report and per-image rows; a failure is
    recorded as the run's error, then raised)."""
    from calibprompt.backbones import load_backbone
    from calibprompt.runs.jobs import failure_text  # jobs imports this module: a function-level import

    task_obj, ds = open_dataset(dataset, task)
    _, test = few_shot_split(ds, shots, seed)
    backbone = load_backbone(model, device=device)
    head = prompt_head(backbone, task_obj, checkpoint or None)  # an unreadable checkpoint fails before a run exists
    params = {"model": model, "dataset": str(dataset), "task": task_obj.name, "head": checkpoint or "zero-shot",
              "shots": shots, "seed": seed}
    run_id = store.create_run("evaluate", params, slug="eval")
    store.start_run(run_id, str(backbone.device))
    try:
        result = evaluate_prompt(backbone, task_obj, test, head, n_bins=n_bins, n_boot=n_boot)
        store.finish_run(run_id, result.report, None, result.rows)
    except BaseException as exc:
        store.fail_run(run_id, failure_text(exc))
        raise
    return SplitEvaluation(run_id, task_obj, test, result, backbone)


def test_time_prompt(backbone: Any, task: Task, checkpoint: str | os.PathLike | None) -> PromptLearner:
    """The prompt test-time tuning starts from: the checkpoint's learned context, or, for zero-shot, TPT's
    hand-written context :data:`TPT_INIT` before the task's class names. ValueError in plain words for a
    learner checkpoint without a context (an adapter, a linear probe)."""
    from calibprompt.prompting.checkpoint import LEARNER_FORMAT, checkpoint_format, load_prompt

    if checkpoint is None:
        return PromptLearner(backbone, task.classnames, ctx_init=TPT_INIT).to(backbone.device)
    if checkpoint_format(checkpoint) == LEARNER_FORMAT:
        from calibprompt.training.learners import load_learner
        from calibprompt.training.test_time import resolve_prompt

        return resolve_prompt(load_learner(checkpoint, backbone)[0])  # ValueError: no learned context
    return load_prompt(checkpoint, backbone)[0]


def evaluate_test_time(backbone: Any, task: Task, test: LabeledImages, prompt: PromptLearner, method: str, *,
                       n_bins: int = defaults.N_BINS, on_image=None) -> dict[str, Any]:
    """Label-free test-time prompt tuning (:func:`calibprompt.training.test_time.test_time_predict`) of
    ``prompt`` on each of the ``test`` images, scored against their labels afterwards (the labels are used
    only to measure): ``{"method", "title", "needs", <metrics>, "aurc", "images", "seconds_per_image",
    "n_views", "steps", "weight", "untuned": <the same prompt's metrics without tuning>}``."""
    from calibprompt.evaluation.selective import risk_coverage
    from calibprompt.training.test_time import get_test_time, test_time_predict

    spec = get_test_time(method)
    tuned = test_time_predict(backbone, prompt, test.paths, spec.name, on_image=on_image)
    labels = np.asarray(test.labels)
    names = [str(p) for p in test.paths]

    def scored(probs: np.ndarray) -> dict[str, Any]:
        report = evaluate_probs(probs, labels, names, task.classnames, n_bins=n_bins, n_boot=0).report
        keys = ("accuracy", "ece", "mce", "ace", "nll", "brier", "mean_confidence")
        return {**{k: float(report[k]) for k in keys}, "aurc": risk_coverage(probs, labels)["aurc"]}

    from calibprompt.training.features import FeatureCache

    untuned = predict_prompt(backbone, task, prompt, FeatureCache(backbone).plain(test.paths)).probs
    return {"method": spec.name, "title": spec.title, "needs": spec.needs, **scored(tuned.probs),
            "images": len(labels), "seconds_per_image": tuned.seconds_per_image, "n_views": tuned.n_views,
            "steps": tuned.steps, "weight": tuned.weight, "untuned": scored(untuned)}

