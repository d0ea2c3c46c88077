"""Refer, answer or not checked: the advice rules, stated and enforced in one place.

The advice is for **one method**, the *answering method* (by default the chosen method with the lowest
ECE on the task's labelled images). It rests on seven checks, each ``passed``, ``failed`` or ``not run``
(with why):

============== ============================================ ============================ ==============================
check          passed                                       failed                       not run (why)
============== ============================================ ============================ ==============================
labelled       the task has labelled test images for this   –                            none: the checks that need
_images        model, none used to train the prompts                                     them do not run either
likeness       the image is as close to the labelled images the image is unlike them     no labelled images
               as they are to each other                    (out of distribution)
modality       the DICOM modality fits the task, or the     the modality does not fit    –
               file is not a DICOM
set_size       one class in the method's prediction set     0 or 2+ classes              no labelled images, or the
                                                                                         image is unlike them
overconfidence the method's answers at this confidence      they were right less often   no labelled answers at this
               were right about as often as it claims                                    confidence
vocabulary     every typed class word is known to the       unknown words                the tokenizer cannot be read
               model (or no class names were typed)
disagreement   no other method's set excludes the answer    another method's set         no prediction sets
               (a non-credible disagreement is a note)      excludes it
============== ============================================ ============================ ==============================

:func:`decide` turns the states into a verdict: **answer** only when every check passed (positive
evidence), **refer** when one failed, **not checked** when none failed but one did not run. An image
that fails the likeness or modality check gets no prediction set and no "right N % of the time" for any
method: the guarantees behind them do not cover it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from calibprompt.evaluation.conformal import ConformalClassifier, mean_set_size, set_coverage
from calibprompt.evaluation.metrics import expected_calibration_error
from calibprompt.evaluation.ood import KNNDistance

__all__ = ["PASSED", "FAILED", "NOT_RUN", "STATES", "ANSWER", "REFER", "NOT_CHECKED", "VERDICTS", "CHECKS",
           "AUTO", "Check", "decide", "MethodCalibration", "CalibrationData", "fit_calibration",
           "choose_answering_method", "assess_image", "assess_predictions", "lowest_ece_method", "refers_on_sets",
           "OVERCONFIDENCE_MARGIN"]

PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"
STATES = (PASSED, FAILED, NOT_RUN)
ANSWER, REFER, NOT_CHECKED = "answer", "refer", "not checked"
VERDICTS = (ANSWER, REFER, NOT_CHECKED)
#: the checks, in the order they are shown
CHECKS = ("labelled_images", "likeness", "modality", "set_size", "overconfidence", "vocabulary", "disagreement")
#: the answer-with choice that picks the method with the lowest ECE on the labelled images
AUTO = "auto"
#: a method is called overconfident at a confidence when its answers there were right this much less often
OVERCONFIDENCE_MARGIN = 0.05


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``state`` (passed, failed or not run) and a plain-words ``detail``."""

    state: str
    detail: str

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"A check's state must be one of {', '.join(STATES)}, got {self.state!r}.")

    def as_dict(self) -> dict[str, str]:
        return {"state": self.state, "detail": self.detail}


def decide(checks: Mapping[str, Check]) -> str:
    """The verdict from the checks: ``refer`` if any failed, else ``not checked`` if any did not run,
    else ``answer``. Every check of :data:`CHECKS` must be present: a missing check is never a pass."""
    missing = [name for name in CHECKS if name not in checks]
    if missing:
        raise ValueError(f"The advice needs every check; missing: {', '.join(missing)}.")
    states = {check.state for check in checks.values()}
    if FAILED in states:
        return REFER
    return NOT_CHECKED if NOT_RUN in states else ANSWER


# -- calibration data ---------------------------------------------------------------------------
@dataclass
class MethodCalibration:
    """What one method's labelled test images say about it."""

    conformal: ConformalClassifier
    probs: np.ndarray  # (N, K) on all calibration images
    labels: np.ndarray  # (N,)
    coverage: float  # of the sets on the held-out half
    mean_set_size: float
    ece: float  # on all calibration images


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

    @property
    def coverage_label(self) -> str:
        return f"{100 * (1 - self.alpha):.0f} %"


def fit_calibration(dataset: str, features, labels: np.ndarray, probs: dict[str, np.ndarray], classnames: list[str],
                    alpha: float) -> CalibrationData:
    """Conformal sets per method (fitted on the even-indexed images, checked on the odd ones), each
    method's ECE, and the k-NN likeness reference over all the images' features (N, D)."""
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
                                               mean_set_size(sets), expected_calibration_error(p, labels))
    try:
        data.ood = KNNDistance().fit(np.asarray(features, dtype=np.float32))
    except ValueError as exc:
        data.note = (data.note + " " if data.note else "") + f"No out-of-distribution check: {exc}"
    return data


def choose_answering_method(chosen: Sequence[str], calibration: CalibrationData | None,
                            requested: str | None = None) -> str:
    """The method the advice is for: ``requested`` when it names a chosen method; with ``auto`` (or
    nothing) the chosen method with the lowest ECE on the labelled images, else CalibPrompt when chosen,
    else the first chosen method."""
    chosen = list(chosen)
    if not chosen:
        raise ValueError("Choose at least one prompt to compare.")
    if requested and requested != AUTO:
        if requested not in chosen:
            raise ValueError(f"'Answer with' must be one of the chosen prompts ({', '.join(chosen)}) or "
                             f"{AUTO!r}, got {requested!r}.")
        return requested
    eces = {m: calibration.methods[m].ece for m in chosen
            if calibration is not None and m in calibration.methods}
    if eces:
        return min(eces, key=eces.get)
    return "calibprompt" if "calibprompt" in chosen else chosen[0]


# -- the checks of one image ---------------------------------------------------------------------
def _labelled_check(calibration: CalibrationData | None, no_data_reason: str) -> Check:
    if calibration is None:
        return Check(NOT_RUN, no_data_reason)
    return Check(PASSED, f"{calibration.n_images} labelled test images ({calibration.dataset.rstrip('.')}), "
                         "none used to train the chosen prompts")


def _likeness_check(calibration: CalibrationData | None, features: np.ndarray) -> tuple[Check, dict[str, Any]]:
    """The out-of-distribution check for each image: ``(check, ood entry)`` per image."""
    if calibration is None:
        return Check(NOT_RUN, "no labelled images to compare the image with"), {}
    if calibration.ood is None:
        return Check(NOT_RUN, calibration.note or "the likeness reference could not be built"), {}
    ood = calibration.ood
    scores = ood.score(features)  # one neighbour search per image
    score, percentile = float(scores[0]), float(ood.percentile_of(scores)[0])
    threshold = float(ood.threshold_)
    entry = {"score": score, "percentile": percentile, "threshold": threshold}
    if score > threshold:
        than = ("than any of those images is from its own nearest ones" if percentile >= 99.5 else
                f"than {percentile:.0f} % of those images are from their own nearest ones")
        return Check(FAILED, f"the image is unlike the task's {calibration.n_images} labelled images: it is farther "
                             f"from its nearest labelled images (distance {score:.3f}, limit {threshold:.3f}) {than}"), entry
    return Check(PASSED, f"the image looks like the task's labelled images (distance {score:.3f}, limit "
                         f"{threshold:.3f})"), entry


def _modality_check(metadata: Mapping[str, Any] | None, modality_reason: str | None) -> Check:
    if modality_reason:
        return Check(FAILED, modality_reason)
    code = str((metadata or {}).get("modality") or "").strip()
    if not code:
        return Check(PASSED, "not a DICOM file with a modality: the likeness check judges the kind of image")
    return Check(PASSED, f"DICOM modality {code}: no mismatch with the task")


def _vocabulary_check(unknown: Mapping[str, Sequence[str]] | None) -> Check:
    """``unknown``: None when no class names were typed; ``{}`` when the tokenizer cannot be read."""
    if unknown is None:
        return Check(PASSED, "no typed class names: the task file's names are used")
    if not unknown:
        return Check(NOT_RUN, "the model's tokenizer cannot be read, so typed words were not checked")
    bad = {c: list(w) for c, w in unknown.items() if w}
    if bad:
        return Check(FAILED, "the model's vocabulary does not know " + "; ".join(
            f"{', '.join(w)} (in '{c}')" for c, w in bad.items())
            + ": it splits such words into pieces, so answers for those classes are less reliable")
    return Check(PASSED, "every typed class word is in the model's vocabulary")


# -- the checks of one method ----------------------------------------------------------------------
def _set_check(entry: dict[str, Any], covered: bool, calibration: CalibrationData | None, coverage: str) -> Check:
    if not covered:
        return Check(NOT_RUN, "the image is not like the labelled images the sets are built on (see the likeness "
                              "and modality checks)")
    if entry["set"] is None:
        return Check(NOT_RUN, (calibration.note if calibration is not None and calibration.note
                               else "there are no labelled images to build a set on"))
    size = len(entry["set"])
    if size == 1:
        return Check(PASSED, f"its {coverage} prediction set holds one class: {entry['set'][0]}")
    if size == 0:
        return Check(FAILED, f"no class reaches its {coverage} prediction set")
    return Check(FAILED, f"its {coverage} prediction set holds {size} classes: {', '.join(entry['set'])}")


def _overconfidence_check(entry: dict[str, Any], covered: bool) -> Check:
    acc = entry["accuracy"]
    if not covered:
        return Check(NOT_RUN, "the image is not like the labelled images whose answers it would be compared with")
    if acc is None:
        return Check(NOT_RUN, "no labelled answers to compare this confidence with")
    if not acc["n"]:
        return Check(NOT_RUN, "no labelled answers at this confidence")
    conf = entry["confidence"]
    said = (f"answers at this confidence were right {100 * acc['accuracy']:.0f} % of the time "
            f"[{100 * acc['low']:.0f}–{100 * acc['high']:.0f} %, {acc['n']} answers]")
    if acc["high"] < conf and acc["accuracy"] < conf - OVERCONFIDENCE_MARGIN:
        return Check(FAILED, f"it is overconfident here: it says {100 * conf:.0f} %, but its {said}")
    return Check(PASSED, f"its {said}; it says {100 * conf:.0f} %")


def _disagreement_check(name: str, entries: Mapping[str, dict[str, Any]], coverage: str) -> tuple[Check, list[str]]:
    """Credible disagreement: another method whose own set excludes this method's answer. A
    disagreement whose set still holds the answer is returned as a note."""
    mine = entries[name]
    others = {n: e for n, e in entries.items() if n != name}
    if not others:
        return Check(PASSED, "no other method was chosen"), []
    if mine["set"] is None or any(e["set"] is None for e in others.values()):
        return Check(NOT_RUN, "no prediction sets to tell a credible disagreement from noise"), []
    credible, notes = [], []
    for other, e in others.items():
        if e["prediction"] == mine["prediction"]:
            continue
        if e["set"] and mine["prediction"] not in e["set"]:
            credible.append(f"{other} answers {e['prediction']}, and its {coverage} set ({', '.join(e['set'])}) "
                            f"excludes {mine['prediction']}")
        else:
            notes.append(f"{other} answers {e['prediction']}, but its {coverage} set still includes "
                         f"{mine['prediction']}")
    if credible:
        return Check(FAILED, "; ".join(credible)), notes
    return Check(PASSED, "no other method's set excludes this answer"), notes


def _accuracy_at(method: MethodCalibration, confidence: float) -> dict[str, Any]:
    """How often the method was right at this confidence: ``accuracy``, Wilson ``low``/``high``, ``n``."""
    from calibprompt.evaluation.selective import accuracy_at_confidence

    found = accuracy_at_confidence(method.probs, method.labels, confidence)
    low, high = found["interval"] if found["interval"] is not None else (None, None)
    return {"accuracy": found["accuracy"], "low": low, "high": high, "n": found["count"],
            "bin": (found["bin_lower"], found["bin_upper"])}


def _method_entries(probs: Mapping[str, np.ndarray], calibration: CalibrationData | None, classnames: list[str],
                    covered: bool) -> dict[str, dict[str, Any]]:
    """Each method's answer, and (for a covered image) its set and accuracy at its confidence."""
    entries = {}
    for name, row in probs.items():
        p = np.asarray(row, dtype=np.float64)
        top = int(p.argmax())
        entry: dict[str, Any] = {"probs": {c: float(v) for c, v in zip(classnames, p)},
                                 "prediction": classnames[top], "confidence": float(p[top]),
                                 "set": None, "accuracy": None}
        cal = calibration.methods.get(name) if calibration is not None and covered else None
        if cal is not None:
            members = cal.conformal.predict_sets(p[None, :])[0]
            entry["set"] = [c for c, keep in zip(classnames, members) if keep]
            entry["accuracy"] = _accuracy_at(cal, entry["confidence"])
        entries[name] = entry
    return entries


def _sentence(text: str, names: Sequence[str] = ()) -> str:
    """A detail as a sentence: capitalised (unless it starts with a method's name) and with one full stop."""
    text = text.strip().rstrip(".;")
    if not text:
        return ""
    if not any(text.startswith(n) for n in names):
        text = text[:1].upper() + text[1:]
    return text + "."


def assess_image(probs: Mapping[str, np.ndarray], features: np.ndarray, calibration: CalibrationData | None,
                 classnames: list[str], *, metadata: Mapping[str, Any] | None = None,
                 modality_reason: str | None = None, unknown: Mapping[str, Sequence[str]] | None = None,
                 answer_with: str | None = None,
                 no_data_reason: str = "no labelled test images for this task and model") -> dict[str, Any]:
    """The advice for one image from each method's probabilities (K,) and the image's features (1, D).

    Returns ``{"verdict", "answering_method", "checks" ({name: {"state", "detail"}}, the answering
    method's), "refer", "reasons" (what failed, or what did not run), "notes", "ood", "methods"}``; each
    method's entry has ``probs``, ``prediction``, ``confidence``, ``set`` and ``accuracy`` (None where no
    guarantee holds), its own ``checks``, ``verdict``, ``refer``, ``reasons`` and ``notes``.
    """
    shared = {"labelled_images": _labelled_check(calibration, no_data_reason)}
    shared["likeness"], ood = _likeness_check(calibration, np.asarray(features, dtype=np.float32).reshape(1, -1))
    shared["modality"] = _modality_check(metadata, modality_reason)
    shared["vocabulary"] = _vocabulary_check(unknown)
    covered = shared["likeness"].state != FAILED and shared["modality"].state != FAILED
    entries = _method_entries(probs, calibration, classnames, covered)
    coverage = calibration.coverage_label if calibration is not None else ""
    for name, entry in entries.items():
        checks = dict(shared, set_size=_set_check(entry, covered, calibration, coverage),
                      overconfidence=_overconfidence_check(entry, covered))
        checks["disagreement"], notes = _disagreement_check(name, entries, coverage)
        entry["checks"] = {c: checks[c].as_dict() for c in CHECKS}
        entry["verdict"] = decide(checks)
        entry["refer"] = entry["verdict"] != ANSWER
        wanted = FAILED if entry["verdict"] == REFER else NOT_RUN
        entry["reasons"] = [_sentence(checks[c].detail) for c in CHECKS if checks[c].state == wanted]
        entry["notes"] = [_sentence(n, list(entries)) for n in notes]
    answering = choose_answering_method(list(entries), calibration, answer_with)
    head = entries[answering]
    ood_entry = {"flag": shared["likeness"].state == FAILED or shared["modality"].state == FAILED,
                 "state": shared["likeness"].state, "score": ood.get("score"), "percentile": ood.get("percentile"),
                 "threshold": ood.get("threshold"),
                 "reason": "; ".join(_sentence(shared[c].detail) for c in ("likeness", "modality")
                                     if shared[c].state != PASSED)}
    return {"verdict": head["verdict"], "answering_method": answering, "checks": head["checks"],
            "refer": head["refer"], "reasons": list(head["reasons"]), "notes": list(head["notes"]),
            "ood": ood_entry, "methods": entries}


def lowest_ece_method(probs: Mapping[str, np.ndarray], labels: np.ndarray) -> str:
    """The method with the lowest ECE on labelled images (the default answering method)."""
    eces = {name: expected_calibration_error(p, labels) for name, p in probs.items()}
    return min(eces, key=eces.get)


def refers_on_sets(answering: str, predictions: Mapping[str, str], sets: Mapping[str, Sequence[str]] | None) -> bool:
    """Whether the advice refers a labelled test case on its prediction sets alone (such a case is like the
    labelled images by construction): the answering method's set is not one class, another method's set
    credibly excludes its answer, or there are no sets (not checked, so referred)."""
    if not sets or sets.get(answering) is None:
        return True
    entries = {m: {"prediction": predictions[m], "set": list(sets[m])} for m in predictions}
    check, _ = _disagreement_check(answering, entries, "")
    return len(entries[answering]["set"]) != 1 or check.state != PASSED


def assess_predictions(probs: Mapping[str, np.ndarray], features, calibration: CalibrationData | None,
                       classnames: list[str], **kwargs) -> list[dict[str, Any]]:
    """:func:`assess_image` for each of M images: ``probs[method]`` (M, K), ``features`` (M, D); the
    keyword arguments apply to every image."""
    feats = np.asarray(features, dtype=np.float32)
    m = len(feats)
    return [assess_image({n: np.asarray(p)[i] for n, p in probs.items()}, feats[i:i + 1], calibration, classnames,
                         **kwargs) for i in range(m)]
