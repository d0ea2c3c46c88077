"""Evaluation on labelled images none of the chosen prompts trained on: what the Calibration tab shows.

The stages are those of the one evaluation pipeline (:mod:`calibprompt.runs.evaluation`: the images never
trained on, each prompt's prediction, ``evaluate_probs``), with the core's content-keyed caches between them.

Functions here take the shared :class:`~calibprompt.service.core.Core` (for its backbone pool, run store
and caches) or an :class:`EvaluationSet`, and return data (fractions, arrays, dicts); the app formats
them. :class:`~calibprompt.service.core.Core` keeps thin methods of the same names that call these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from calibprompt import defaults
from calibprompt.prompting.tasks import Task
from calibprompt.runs.evaluation import never_trained_on, predict_prompt, relative_path

if TYPE_CHECKING:
    from calibprompt.prompting.engine import Head
    from calibprompt.service.core import Core
    from calibprompt.service.session import SessionState

__all__ = ["EvaluationSet", "evaluation_images", "evaluate", "calibration", "significance", "significance_pair",
           "selective", "post_hoc_maps", "cross_fitted_sets", "SIGNIFICANCE_BOOT", "SELECTIVE_COVERAGES"]

#: paired-bootstrap resamples of the significance test: its p-value resolution is 2 / 2000 = 0.001
SIGNIFICANCE_BOOT = 2000
#: the coverages at which the threshold table reports selective accuracy
SELECTIVE_COVERAGES = defaults.SELECTIVE_COVERAGES


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


def evaluation_images(core: Core, state: SessionState, dataset: str, heads: dict[str, Head]):
    """The labelled images to evaluate ``heads`` on: the dataset's test split (all its images when it has
    none), less every image any of the learned heads was trained on (as its checkpoint records; see
    :func:`calibprompt.runs.evaluation.never_trained_on`). Returns ``(source, task, images, excluded)``."""
    source, task, ds = core._open(state, dataset)
    pool = ds.test if ds.test is not None and len(ds.test) else ds.train
    if pool is None or not len(pool):
        raise ValueError(f"The dataset {dataset!r} has no images to evaluate on.")
    images, excluded = never_trained_on(pool, [head.metadata for head in heads.values()], dataset)
    return source, task, images, excluded


def evaluate(core: Core, state: SessionState, dataset: str, heads: Sequence[str] = ()) -> EvaluationSet:
    """Predictions of the chosen heads on the images none of them trained on (features cached)."""
    from calibprompt.service.pool import file_digest

    chosen = core.resolve_heads(state, heads)
    _, task, images, excluded = evaluation_images(core, state, dataset, chosen)
    loaded = core.loaded(state)
    paths = [str(p) for p in images.paths]
    ev = EvaluationSet(dataset, Path(images.root), task, paths,
                       [relative_path(Path(p), Path(images.root)) for p in paths],
                       np.asarray(images.labels), excluded)
    stamp = file_digest(*paths)
    feats = core.evaluations.get_or_compute(("features", loaded.backbone.fingerprint, stamp),
                                            lambda: loaded.features.plain(paths))
    ev.features = feats
    for name, head in chosen.items():
        key = ("probs", loaded.backbone.fingerprint, stamp, head.fingerprint())  # a learner head's state too
        pred = core.evaluations.get_or_compute(key, lambda h=head: predict_prompt(loaded.backbone, task, h, feats))
        ev.probs[name], ev.logits[name] = pred.probs, pred.logits
        run_id = (head.metadata or {}).get("run_id")
        if name.startswith("run:"):
            ev.run_ids[name] = name[4:]
        elif run_id:
            ev.run_ids[name] = str(run_id)
    return ev


def calibration(core: Core, state: SessionState, dataset: str, heads: Sequence[str] = (),
                n_bins: int = defaults.N_BINS, temperature_scaling: bool = True,
                calibrators: Sequence[str] = ()) -> tuple[dict[str, dict[str, Any]], EvaluationSet]:
    """Calibration reports per head, and per head mapped by each post-hoc calibrator: ``"<head> + TS"`` with
    ``temperature_scaling``, ``"<head> + <name>"`` for each of ``calibrators``
    (:func:`calibprompt.evaluation.calibrators.list_calibrators`; ``dac`` is refused: it needs a prompt
    evaluated on classes it was not trained on). Each map is fitted on one half of the evaluation images
    and applied to the other, both ways (:func:`~calibprompt.evaluation.calibrators.cross_fit`); its report
    records ``calibrator``, ``fitted_on`` (the smaller half), ``argmax_changed`` and, for TS, ``temperature``.

    Each head's report carries a ``card``: ``kde_ece`` (the authors'), ``smooth_ece``, ``debiased_ece``,
    ``per_class_ece_true`` (the authors' per-class ECE: the top-label ECE within each true class, averaged)
    and ``classwise_ece`` (Kull et al.'s one-vs-rest classwise ECE, averaged over classes)."""
    from calibprompt.evaluation.card import debiased_ece, kde_ece, per_class_ece, smooth_ece
    from calibprompt.evaluation.report import evaluate_probs

    from calibprompt.runs.requests import check_number

    n_bins = check_number("n_bins", n_bins)  # 8.5, NaN or text refused, naming the field
    maps = post_hoc_maps(temperature_scaling, calibrators)
    ev = evaluate(core, state, dataset, heads)
    reports = {}
    for head in ev.probs:
        reports[head] = evaluate_probs(ev.probs[head], ev.labels, ev.paths, ev.task.classnames,
                                       n_bins=int(n_bins), n_boot=defaults.N_BOOT_INTERACTIVE).report
        p = ev.probs[head]
        reports[head]["card"] = {  # the metric card: the authors' and the debiased estimates beside ours
            "kde_ece": kde_ece(p, ev.labels), "smooth_ece": smooth_ece(p, ev.labels),
            "debiased_ece": debiased_ece(p, ev.labels),
            "per_class_ece_true": float(np.nanmean(per_class_ece(p, ev.labels, by="true", n_bins=int(n_bins)))),
            "classwise_ece": float(reports[head]["classwise_ece_mean"]),
        }
        if len(ev.labels) >= 4:
            for name, label in maps:
                reports[f"{head} + {label}"] = _mapped_report(ev, head, name, int(n_bins))
    return reports, ev


def post_hoc_maps(temperature_scaling: bool, calibrators: Sequence[str]) -> list[tuple[str, str]]:
    """``[(calibrator, row label)]``: TS first (``"TS"``), then the others by registry name (ValueError naming
    them for an unknown one; ``dac`` refused in plain words)."""
    from calibprompt.evaluation.calibrators import parse_calibrators

    names = (["temperature"] if temperature_scaling else []) + parse_calibrators(calibrators)
    return [(n, "TS" if n == "temperature" else n) for n in dict.fromkeys(names)]


def _mapped_report(ev: EvaluationSet, head: str, name: str, n_bins: int) -> dict[str, Any]:
    """The report of ``head`` mapped by calibrator ``name``, cross-fitted on the evaluation images."""
    from calibprompt.evaluation.calibrators import cross_fit
    from calibprompt.evaluation.report import evaluate_probs

    fit = cross_fit(name, ev.logits[head], ev.labels)
    report = evaluate_probs(fit.probs, ev.labels, ev.paths, ev.task.classnames, n_bins=n_bins,
                            n_boot=defaults.N_BOOT_INTERACTIVE).report
    report.update(calibrator=name, fitted_on=int(min(fit.fitted_on)), seconds=float(fit.seconds),
                  argmax_changed=float(np.mean(fit.probs.argmax(1) != ev.probs[head].argmax(1))))
    if name == "temperature":
        report["temperature"] = float(np.mean([p["temperature"] for p in fit.params]))
    return report


def significance_pair(heads: Sequence[str]) -> tuple[str | None, str | None]:
    """The two heads compared by default: calibprompt and coop when both were evaluated, else the first
    two (``None`` where there are not enough heads)."""
    heads = list(heads)
    if "calibprompt" in heads and "coop" in heads:
        return "calibprompt", "coop"
    first = heads[0] if heads else None
    second = next((h for h in heads if h != first), None)
    return first, second


def significance(ev: EvaluationSet, a: str = "calibprompt", b: str = "coop", n_boot: int = SIGNIFICANCE_BOOT,
                 n_bins: int = defaults.N_BINS) -> dict[str, dict[str, Any]] | None:
    """Paired bootstrap over the same evaluation images of ``a`` minus ``b`` in ECE and accuracy
    (:func:`calibprompt.evaluation.card.paired_bootstrap`), or None when either head was not evaluated.
    Any two evaluated heads can be compared (bundled prompts, zero-shot or runs)."""
    from calibprompt.evaluation.card import paired_bootstrap

    if a not in ev.probs or b not in ev.probs:
        return None
    if a == b:
        raise ValueError(f"Choose two different prompts to compare; both are {a!r}.")
    return {metric: paired_bootstrap(ev.probs[a], ev.probs[b], ev.labels, metric=metric, n_boot=n_boot,
                                     n_bins=int(n_bins))
            for metric in ("ece", "accuracy")}


def selective(ev: EvaluationSet, threshold: float) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Risk-coverage curves per head, and what refusing to answer below ``threshold`` gives, per head:
    ``{"method", "threshold", "answered"`` (share answered), ``"n_answered"``, ``"n"``, ``"accuracy"`` (among
    the answered, None when none is), ``"aurc"``, ``"accuracy_at"`` ``{coverage: selective accuracy}}``."""
    from calibprompt.evaluation.selective import risk_coverage, selective_accuracy

    if threshold is None or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"The confidence threshold must be from 0 to 1, got {threshold}.")
    curves, rows = {}, []
    for head, probs in ev.probs.items():
        curves[head] = risk_coverage(probs, ev.labels)
        kept = probs.max(axis=1) >= float(threshold)
        accuracy = float((probs.argmax(axis=1) == ev.labels)[kept].mean()) if kept.any() else None
        rows.append({"method": head, "threshold": float(threshold), "answered": float(kept.mean()),
                     "n_answered": int(kept.sum()), "n": int(len(kept)), "accuracy": accuracy,
                     "aurc": float(curves[head]["aurc"]),
                     "accuracy_at": {c: float(selective_accuracy(probs, ev.labels, c)) for c in SELECTIVE_COVERAGES}})
    return curves, rows


def cross_fitted_sets(ev: EvaluationSet, alpha: float = defaults.ALPHA) -> dict[str, np.ndarray] | None:
    """Each head's prediction sets, boolean (N, K), on the evaluation images at miscoverage ``alpha``,
    cross-fitted (even/odd halves, see :func:`calibprompt.evaluation.conformal.cross_fitted_sets`); None when
    there are too few images for ``alpha``."""
    from calibprompt.evaluation.conformal import cross_fitted_sets as sets_of

    try:
        return {head: sets_of(probs, ev.labels, alpha)["sets"] for head, probs in ev.probs.items()}
    except ValueError:
        return None
