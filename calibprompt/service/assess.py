"""Refer or answer: turn one image's predictions into advice a clinician can act on.

For each method the advice rests on its labelled test images (the *calibration data*, images none of
the chosen prompts was trained on), split in two by even and odd position:

- a split-conformal prediction set (:class:`calibprompt.evaluation.conformal.ConformalClassifier`)
  fitted on the first half, its coverage checked on the second half;
- how often this method's answers at this confidence were right on all of those images (the bin of the
  reliability diagram the confidence falls in, with a 95 % Wilson interval);
- whether the image looks like those images at all (k-nearest-neighbour distance of its embedding,
  :class:`calibprompt.evaluation.ood.KNNDistance`), and whether a DICOM's modality fits the task.

A method says **refer** when its set holds more than one class (or none), when it is overconfident at
this confidence (the bin's accuracy is below the confidence and the interval's upper end is too), or when
the image is out of distribution; the case is referred when any method refers or the methods disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calibprompt.evaluation.conformal import ConformalClassifier, mean_set_size, set_coverage
from calibprompt.evaluation.ood import KNNDistance

__all__ = ["MethodCalibration", "CalibrationData", "fit_calibration", "assess_predictions", "OVERCONFIDENCE_MARGIN"]

#: a method is called overconfident at a confidence when its answers there were right this much less often
OVERCONFIDENCE_MARGIN = 0.05


@dataclass
class MethodCalibration:
    """What one method's labelled test images say about it."""

    conformal: ConformalClassifier
    probs: np.ndarray  # (N, K) on all calibration images
    labels: np.ndarray  # (N,)
    coverage: float  # of the sets on the held-out half
    mean_set_size: float


@dataclass
class CalibrationData:
    """The calibration data of several methods on one task, and the image-likeness reference."""

    dataset: str
    n_images: int
    alpha: float
    classnames: list[str]
    methods: dict[str, MethodCalibration] = field(default_factory=dict)
    ood: KNNDistance | None = None
    note: str = ""


def fit_calibration(dataset: str, features, labels: np.ndarray, probs: dict[str, np.ndarray], classnames: list[str],
                    alpha: float) -> CalibrationData:
    """Conformal sets per method (fitted on the even-indexed images, checked on the odd ones) and the
    k-NN reference over all the images' features (N, D)."""
    labels = np.asarray(labels)
    n = len(labels)
    fit, check = np.arange(n) % 2 == 0, np.arange(n) % 2 == 1
    data = CalibrationData(dataset, n, float(alpha), list(classnames))
    for name, p in probs.items():
        try:
            conformal = ConformalClassifier(alpha=alpha).fit(p[fit], labels[fit])
        except ValueError as exc:
            data.note = f"No prediction sets: {exc}"
            data.methods.clear()
            break
        sets = conformal.predict_sets(p[check])
        data.methods[name] = MethodCalibration(conformal, p, labels, set_coverage(sets, labels[check]),
                                               mean_set_size(sets))
    try:
        data.ood = KNNDistance().fit(np.asarray(features, dtype=np.float32))
    except ValueError as exc:
        data.note = (data.note + " " if data.note else "") + f"No out-of-distribution check: {exc}"
    return data


def _accuracy_at(method: MethodCalibration, confidence: float) -> dict[str, Any]:
    """How often the method was right at this confidence: ``accuracy``, Wilson ``low``/``high``, ``n``."""
    from calibprompt.evaluation.selective import accuracy_at_confidence

    found = accuracy_at_confidence(method.probs, method.labels, confidence)
    low, high = found["interval"] if found["interval"] is not None else (None, None)
    return {"accuracy": found["accuracy"], "low": low, "high": high, "n": found["count"],
            "bin": (found["bin_lower"], found["bin_upper"])}


def assess_predictions(probs: dict[str, np.ndarray], features, calibration: CalibrationData | None,
                       classnames: list[str], *, modality_reason: str | None = None) -> list[dict[str, Any]]:
    """Advice for each of M images from each method's probabilities (M, K) and the images' features (M, D).

    Returns per image ``{"methods": {name: {...}}, "ood": {...}, "refer": bool, "reasons": [str]}``
    where a method's entry has ``probs``, ``prediction``, ``confidence``, ``set`` (class names, or None
    without calibration data), ``accuracy`` (right how often at this confidence, with ``low``/``high``
    and ``n``), ``refer`` and ``reasons``.
    """
    names = list(probs)
    m = len(next(iter(probs.values())))
    ood_scores = ood_pct = ood_flags = None
    if calibration is not None and calibration.ood is not None:
        feats = np.asarray(features, dtype=np.float32)
        ood_scores = calibration.ood.score(feats)
        ood_pct = calibration.ood.percentile(feats)
        ood_flags = calibration.ood.flag(feats)
    out = []
    for i in range(m):
        if ood_flags is not None:
            flag = bool(ood_flags[i])
            reason = (f"the image is unlike the task's {calibration.n_images} labelled images (further from them than "
                      f"{ood_pct[i]:.0f} % of those images are from each other)" if flag else "")
            ood = {"flag": flag, "score": float(ood_scores[i]), "percentile": float(ood_pct[i]), "reason": reason}
        else:
            ood = {"flag": False, "score": float("nan"), "percentile": float("nan"),
                   "reason": "not checked: no labelled images for this task"}
        if modality_reason:
            ood["flag"] = True
            ood["reason"] = modality_reason + (f"; {ood['reason']}" if ood["reason"] and ood_flags is not None
                                               and ood_flags[i] else "")
        methods: dict[str, dict[str, Any]] = {}
        for name in names:
            p = np.asarray(probs[name][i], dtype=np.float64)
            top = int(p.argmax())
            entry: dict[str, Any] = {"probs": {c: float(v) for c, v in zip(classnames, p)},
                                     "prediction": classnames[top], "confidence": float(p[top]),
                                     "set": None, "accuracy": None, "reasons": []}
            cal = calibration.methods.get(name) if calibration is not None else None
            if cal is not None:
                members = cal.conformal.predict_sets(p[None, :])[0]
                entry["set"] = [c for c, keep in zip(classnames, members) if keep]
                if len(entry["set"]) != 1:
                    entry["reasons"].append(
                        f"its {100 * (1 - calibration.alpha):.0f} % prediction set holds {len(entry['set'])} classes"
                        if entry["set"] else f"no class reaches its {100 * (1 - calibration.alpha):.0f} % prediction set")
                acc = _accuracy_at(cal, entry["confidence"])
                entry["accuracy"] = acc
                if (acc["n"] and acc["high"] is not None and acc["high"] < entry["confidence"]
                        and acc["accuracy"] < entry["confidence"] - OVERCONFIDENCE_MARGIN):
                    entry["reasons"].append(
                        f"it is overconfident here: its answers at this confidence were right "
                        f"{100 * acc['accuracy']:.0f} % of the time, not {100 * entry['confidence']:.0f} %")
            if ood["flag"]:
                entry["reasons"].append("the image is out of distribution")
            entry["refer"] = bool(entry["reasons"])
            methods[name] = entry
        reasons = []
        tops = {e["prediction"] for e in methods.values()}
        if len(tops) > 1:
            reasons.append("the methods disagree (" + ", ".join(f"{n}: {e['prediction']}" for n, e in methods.items()) + ")")
        if ood["flag"] and ood["reason"]:
            reasons.append(ood["reason"])
        for name, e in methods.items():
            reasons.extend(f"{name}: {r}" for r in e["reasons"] if r != "the image is out of distribution")
        out.append({"methods": methods, "ood": ood, "refer": bool(reasons), "reasons": reasons})
    return out
