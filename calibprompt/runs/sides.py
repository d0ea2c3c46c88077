"""The evaluation protocols' other sides: the novel classes of a base-to-novel split, a cross-domain dataset.

A training job (:class:`calibprompt.runs.jobs.TrainJob`) with ``classes="base"`` trains on the base classes
(:mod:`calibprompt.data.class_splits`) and is evaluated on them as usual; :func:`protocol_split` also gives it
a ``novel`` :class:`Side`, on which :func:`evaluate_sides` evaluates the trained learner transferred to the
novel class names (:mod:`calibprompt.training.learners.transfer`), and DAC on top of it
(:func:`novel_with_dac`). A job with ``eval_dataset`` gets a ``target`` side: the same learner on another
dataset with the same classes. The zero-shot rows of a comparison use the same split (``compare``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from calibprompt import defaults
from calibprompt.data.class_splits import base_novel_classes, check_same_classes, evaluation_images, restrict_classes
from calibprompt.data.layouts import LabeledImages, few_shot_split
from calibprompt.data.resolve import open_dataset
from calibprompt.evaluation.report import Evaluation, evaluate_probs
from calibprompt.evaluation.selective import risk_coverage
from calibprompt.prompting.engine import Engine
from calibprompt.prompting.learner import PromptLearner
from calibprompt.prompting.tasks import Task
from calibprompt.runs.evaluation import evaluate_prompt
from calibprompt.training.learners.transfer import for_classes

__all__ = ["Side", "protocol_split", "SIDE_FIELDS", "side_metrics", "evaluate_sides", "novel_with_dac"]


@dataclass
class Side:
    """Images a trained run is evaluated on besides its own test split: the novel classes of a base-to-novel
    split (``name="novel"``) or another dataset with the same classes (``name="target"``); ``features``
    (N, D) and, for the novel side, ``zero_shot_text`` are filled once by
    :func:`calibprompt.runs.jobs.prepare_jobs`, however many runs share the side."""

    name: str
    task: Task
    images: LabeledImages
    dataset: str
    features: Any = None
    #: the side's zero-shot class text features (K', D) for the novel classes (filled once by prepare_jobs)
    zero_shot_text: Any = None


def protocol_split(dataset: str, task: str | Task | None, shots: int, seed: int, *, classes: str = "all",
                   eval_dataset: str | None = None) -> tuple[Task, Any, LabeledImages, LabeledImages, list[Side]]:
    """``(task, dataset, train, test, sides)`` of a protocol: the seeded k-shot split
    (:func:`~calibprompt.data.layouts.few_shot_split`); with ``classes="base"`` the task, the shots and the
    test images of the base classes only, and a ``novel`` side with the novel classes' test images
    (:func:`~calibprompt.data.class_splits.base_novel_classes`); with ``eval_dataset`` a ``target`` side with
    that dataset's test images (the same classes, checked). The sides' features are not computed here."""
    task_obj, ds = open_dataset(dataset, task)
    train, test = few_shot_split(ds, shots, seed)
    sides: list[Side] = []
    if classes == "base":
        base, novel = base_novel_classes(task_obj.num_classes)
        sides.append(Side("novel", task_obj.subset(novel, "novel"), restrict_classes(test, novel), str(dataset)))
        task_obj, train, test = (task_obj.subset(base, "base"), restrict_classes(train, base),
                                 restrict_classes(test, base))
    if eval_dataset:
        _, target = open_dataset(eval_dataset)  # its own classes: compared with the source's, not forced
        check_same_classes(ds.class_ids, target, str(dataset), str(eval_dataset))
        sides.append(Side("target", task_obj, evaluation_images(target), str(eval_dataset)))
    return task_obj, ds, train, test, sides


#: what a side's evaluation records (fractions; ``aurc``: the area under the risk-coverage curve)
SIDE_FIELDS = ("accuracy", "ece", "mce", "ace", "nll", "brier", "mean_confidence", "aurc")


def side_metrics(evaluation: Evaluation) -> dict[str, Any]:
    """The headline numbers of one evaluation (:data:`SIDE_FIELDS`) and its number of images."""
    report = {**evaluation.report, "aurc": risk_coverage(evaluation.probs, evaluation.labels)["aurc"]}
    return {**{k: float(report[k]) for k in SIDE_FIELDS}, "test_images": int(len(evaluation.labels))}


def evaluate_sides(prepared, learner, backbone, *, n_boot: int = defaults.N_BOOT,
                   base: Evaluation | None = None) -> dict[str, Any]:
    """The trained ``learner`` on each of a prepared job's (:class:`~calibprompt.runs.jobs.PreparedJob`) other sides (:class:`Side`): ``{name: metrics}``
    (:func:`side_metrics`, plus ``classes`` and ``dataset``), or ``{name: {"refused": why}}`` where the learner
    cannot be applied (a learner with a weight per class on the novel classes, :mod:`~calibprompt.training.
    learners.transfer`). The novel classes get the learner transferred to their names, and, with ``base``
    (the evaluation on the base classes' test images, with logits) and class text features, their metrics
    after DAC in ``"dac"`` (:func:`novel_with_dac`)."""
    out: dict[str, Any] = {}
    for side in prepared.sides:
        where = {"classes": list(side.task.classnames), "dataset": side.dataset}
        try:
            trained = learner
            if side.name == "novel":
                trained = for_classes(learner, backbone, side.task.classnames, zero_shot_text=side.zero_shot_text)
        except ValueError as exc:
            out[side.name] = {"refused": str(exc), **where}
            continue
        head = trained if isinstance(trained, PromptLearner) else Engine(backbone).add_learner("prompt", trained)
        evaluation = evaluate_prompt(backbone, side.task, side.images, head, features=side.features,
                                     n_bins=prepared.job.n_bins, n_boot=n_boot)
        out[side.name] = {**side_metrics(evaluation), **where}
        if side.name == "novel" and base is not None:
            dac = novel_with_dac(learner, trained, prepared.zero_shot_text, side.zero_shot_text, base, evaluation,
                                 n_bins=prepared.job.n_bins)
            if dac is not None:
                out[side.name]["dac"] = dac
    return out


def _class_text(learner) -> torch.Tensor | None:
    """A learner's class text features (K, D), or None for a learner without fixed ones (CoCoOp's vary per image)."""
    with torch.no_grad():
        if isinstance(learner, PromptLearner):
            return learner.encode_text(normalize=True).float().cpu()
        if getattr(learner, "meta_net", None) is not None or not hasattr(learner, "class_text_features"):
            return None
        text = learner.class_text_features()
        return None if text is None else text.detach().float().cpu()


def novel_with_dac(learner, novel_learner, zero_shot_base, zero_shot_novel, base: Evaluation, novel: Evaluation, *,
                   n_bins: int = defaults.N_BINS) -> dict[str, Any] | None:
    """The novel classes' predictions after DAC (Wang et al., ICML 2024;
    :class:`calibprompt.evaluation.calibrators.DACCalibrator`): ``softmax(s_pred * z / T)`` with ``T`` fitted on
    the base classes' labelled test logits (as the paper fits temperature scaling on base data) and the
    per-class scales from the distances of the novel classes' text features to the base ones. No novel label
    is used to calibrate. None when a learner has no fixed class text features (CoCoOp) or no logits."""
    from calibprompt.evaluation.calibrators import create_calibrator
    from calibprompt.evaluation.metrics import fit_temperature

    texts = (_class_text(novel_learner), _class_text(learner))
    if any(t is None for t in texts) or base.logits is None or novel.logits is None:
        return None
    temperature = fit_temperature(base.logits, base.labels)
    dac = create_calibrator("dac", text_features=texts[0].numpy(), trained_text_features=texts[1].numpy(),
                            zero_shot_text_features=np.asarray(zero_shot_novel),
                            zero_shot_trained_text_features=np.asarray(zero_shot_base), temperature=False)
    dac.fit(novel.logits, np.zeros(len(novel.labels), dtype=int))  # temperature=False: the labels are not used
    probs = dac.transform(novel.logits / temperature)
    report = evaluate_probs(probs, novel.labels, [str(i) for i in range(len(novel.labels))], novel.classnames,
                            n_bins=n_bins, n_boot=0).report
    return {**{k: float(report[k]) for k in ("accuracy", "ece", "nll", "brier", "mean_confidence")},
            "temperature": float(temperature), "fitted_on": int(len(base.labels))}
