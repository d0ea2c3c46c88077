"""Compare and assess: each chosen prompt's answer for each image, and refer / answer / not-checked advice.

The rules of the advice (which checks, when a verdict is *answer*) live in
:mod:`calibprompt.service.advice`; this module runs them over a session's images: it reads each image,
encodes it once for every head, fits (and caches) the calibration data of the session's labelled
dataset and hands each image's probabilities to :func:`calibprompt.service.advice.assess_image`.
The stateless ``compare_api`` and ``assess_api`` are the app's public endpoints.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from calibprompt import defaults
from calibprompt.data.images import load_image
from calibprompt.data.metadata import image_metadata
from calibprompt.evaluation.ood import modality_mismatch, unknown_words
from calibprompt.service.advice import CalibrationData, assess_image, choose_answering_method, fit_calibration
from calibprompt.service.test_time import test_time_answers

if TYPE_CHECKING:
    from calibprompt.service.core import Core
    from calibprompt.service.session import SessionState

logger = logging.getLogger(__name__)

__all__ = ["ComparedImage", "check_image_count", "compare", "compare_api", "calibration_source", "calibration_data",
           "assess", "assess_api", "read_image", "bounded_preview", "calibration_summary", "no_data_reason"]


#: what every test-time tuned answer says of itself
TUNED_NOTE = ("Tuned on this image alone at test time, without labels: its confidence may be better calibrated, but "
              "no labelled image checked this answer.")


@dataclass
class ComparedImage:
    """One image's predictions: ``probs[head] = {class: p}``, ``top[head] = (class, p)``, ``flag``."""

    probs: dict[str, dict[str, float]]
    top: dict[str, tuple[str, float]]
    flag: str = ""


def check_image_count(images: Sequence[Any]) -> None:
    """Refuse no image, or more than ``defaults.LIMITS["images_per_request"]`` at once."""
    most = defaults.LIMITS["images_per_request"][1]
    if not images:
        raise ValueError("Upload an image first (PNG, JPEG, TIFF or DICOM), or pick a sample image.")
    if len(images) > most:
        raise ValueError(f"Compare at most {most} images at a time; you sent {len(images)}. Split them into "
                         "smaller batches.")


def compare(core: Core, state: SessionState, images: Sequence[Any], heads: Sequence[str] = ()) -> list[ComparedImage]:
    """Each head's class probabilities for each image, with a flag where a method is at least
    ``defaults.HIGH_CONFIDENCE`` confident while the methods disagree on the top class."""
    check_image_count(images)
    chosen = core.resolve_heads(state, heads)
    model = core.loaded(state)
    predictions = model.engine.predict_with(model.engine.image_features(images), chosen)
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


def _api_session(core: Core, image: Any, task: str | None) -> tuple[SessionState, list[str]]:
    """A throwaway session for a stateless endpoint, and the default methods its task has."""
    if image is None:
        raise ValueError("Send an image (PNG, JPEG, TIFF or DICOM).")
    state = core.new_session()
    if task:
        state = core.set_task(state, task)
    return state, [h for h in defaults.DEFAULT_HEADS if h in core.prompt_choices(state)]


def compare_api(core: Core, image: Any, task: str | None = None) -> dict[str, dict[str, float]]:
    """Stateless: ``{method: {class: probability}}`` for one image on the app's default model and ``task``
    (default: the app's default task), for the zero-shot, CoOp and CalibPrompt heads."""
    state, available = _api_session(core, image, task)
    return core.compare(state, [image], available)[0].probs


def calibration_source(core: Core, state: SessionState) -> str | None:
    """The labelled dataset that calibrates this session's advice: the one chosen in the Calibration tab,
    else the dataset named like the task, else None."""
    if state.calibration_dataset:
        return state.calibration_dataset
    if not state.classes and state.task in core.dataset_choices():
        return state.task
    return None


def calibration_data(core: Core, state: SessionState, heads: Sequence[str] = (),
                     alpha: float = defaults.ALPHA) -> CalibrationData | None:
    """Prediction sets at miscoverage ``alpha``, accuracy per confidence and the likeness reference for the
    chosen heads, from the calibration dataset's images none of them trained on (cached by backbone,
    dataset, ``alpha`` and each head's probabilities); None without labelled data."""
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"The coverage must be between 0 and 100 % (alpha in (0, 1)), got alpha {alpha}.")
    dataset = core.calibration_source(state)
    if dataset is None:
        return None
    try:
        ev = core.evaluate(state, dataset, heads)
    except ValueError as exc:
        logger.info("No calibration data for %s: %s", state.task_label, exc)
        return None
    key = ("calibration", core.loaded(state).backbone.fingerprint, dataset, float(alpha),
           tuple((h, hashlib.blake2b(ev.probs[h].tobytes(), digest_size=16).hexdigest()) for h in ev.probs))
    return core.evaluations.get_or_compute(key, lambda: fit_calibration(
        ev.describe(), ev.features, ev.labels, ev.probs, ev.task.classnames, float(alpha)))


def read_image(source: Any, index: int, frame: int | None) -> dict[str, Any]:
    """One image as the model will see it, with its file's metadata, or its plain-words error:
    ``{"name", "preview" (PIL), "metadata", "frame"}`` or ``{"name", "error"}``."""
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


def bounded_preview(picture: Any) -> Any:
    """A copy of ``picture`` (PIL) at most ``defaults.PREVIEW_SIDE`` pixels on its long side (PIL ``thumbnail``:
    the aspect ratio kept, never enlarged), so a result kept in a session never holds the full image."""
    side = defaults.PREVIEW_SIDE
    if max(picture.size) <= side:
        return picture
    preview = picture.copy()
    preview.thumbnail((side, side))
    return preview


def no_data_reason(state: SessionState) -> str:
    """Why no check that needs labelled images could run for this session."""
    return (f"No labelled test images for the task {state.task_label!r} on {state.model}: no prediction sets, "
            "accuracies or likeness check could run. Choose a labelled dataset for this task in the "
            "Calibration tab, or add one to the data directory's datasets folder.")


def calibration_summary(calibration: CalibrationData | None, no_data: str) -> dict[str, Any]:
    """Where the advice comes from, as data (the app words it): ``{"dataset"`` (a description of the labelled
    images, None without any), ``"coverage"`` (1 - alpha), ``"methods"`` ``{name: {"coverage"`` (of the
    held-out cases), ``"mean_set_size"``, ``"ece"}}``, ``"note"`` (what could not be fitted), ``"no_data"``
    (why there is no calibration, "" when there is)``}``; fractions throughout."""
    if calibration is None:
        return {"dataset": None, "coverage": None, "methods": {}, "note": "", "no_data": no_data}
    methods = {n: {"coverage": float(c.coverage), "mean_set_size": float(c.mean_set_size), "ece": float(c.ece)}
               for n, c in calibration.methods.items()}
    return {"dataset": calibration.dataset, "coverage": 1 - calibration.alpha, "methods": methods,
            "note": calibration.note, "no_data": ""}


def assess(core: Core, state: SessionState, images: Sequence[Any], heads: Sequence[str] = (),
           alpha: float = defaults.ALPHA, answer_with: str | None = None,
           frames: Mapping[int, int] | None = None, test_time: str | None = None) -> dict[str, Any]:
    """Refer / answer / not-checked advice for each image (the rules: :mod:`calibprompt.service.advice`),
    with each image as the model saw it and what was read from its file.

    ``frames`` picks a frame of a multi-frame file by the image's position. An image that cannot be read
    gets its own ``error`` and the others are answered; when none can be read the first error is raised.

    Returns ``{"images": [{"name", "preview" (PIL), "metadata", "verdict", "answering_method", "checks",
    "methods", "ood", "refer", "reasons", "notes"} or {"name", "error"}], "calibration": where the advice
    comes from, or why there is none (:func:`calibration_summary`), "vocabulary": str, "test_time": what
    test-time tuning did (:mod:`calibprompt.service.test_time`; "" without)}``; a preview is a copy at most
    ``defaults.PREVIEW_SIDE`` pixels on its long side (the model saw the full image).

    ``test_time`` (``tpt``, ``c-tpt``, ...): each chosen prompt is also tuned on each image without labels and
    answers as ``"<prompt> + <method>"``, advised on its own (never checked by labelled images)."""
    check_image_count(images)
    chosen = core.resolve_heads(state, heads)
    choose_answering_method(list(chosen), None, answer_with)  # a clear error before any work
    model = core.loaded(state)
    read = [read_image(source, i, (frames or {}).get(i)) for i, source in enumerate(images)]
    good = [r for r in read if "error" not in r]
    if not good:
        raise ValueError(" ".join(r["error"] for r in read))
    tuned = test_time_answers(core, state, list(chosen), [r["preview"] for r in good], test_time)
    feats = model.engine.image_features([r["preview"] for r in good])
    for r in good:  # the model saw the full image; what is kept (in a session, too) is a bounded copy
        r["preview"] = bounded_preview(r["preview"])
    predictions = model.engine.predict_with(feats, chosen)
    calibration = core.calibration_data(state, list(chosen), alpha)
    no_data = no_data_reason(state)
    unknown = unknown_words(list(state.classes), model.backbone.tokenizer) if state.classes else None
    task = state.task_object()
    for j, r in enumerate(good):
        r.update(assess_image({h: p.probs[j] for h, p in predictions.items()}, feats[j:j + 1].numpy(),
                              calibration, task.classnames, metadata=r["metadata"], unknown=unknown,
                              modality_reason=modality_mismatch(r["metadata"], task.modality or ""),
                              answer_with=answer_with, no_data_reason=no_data))
        if tuned.probs:  # advised on their own, so that they never change the chosen prompts' advice
            extra = assess_image({h: p[j] for h, p in tuned.probs.items()}, feats[j:j + 1].numpy(), calibration,
                                 task.classnames, metadata=r["metadata"], unknown=unknown,
                                 modality_reason=modality_mismatch(r["metadata"], task.modality or ""),
                                 no_data_reason=no_data)["methods"]
            for entry in extra.values():
                entry["notes"].append(TUNED_NOTE)
            r["methods"].update(extra)
    vocabulary = good[0]["checks"]["vocabulary"]["detail"] if unknown else ""
    return {"images": read, "calibration": calibration_summary(calibration, no_data), "vocabulary": vocabulary,
            "test_time": tuned.note}


def _api_accuracy(acc: dict[str, Any] | None) -> dict[str, Any] | None:
    """How often answers at this confidence were right, for the API: None where no guarantee holds."""
    if not acc or not acc.get("n"):
        return None
    return {"accuracy": acc["accuracy"], "low": acc["low"], "high": acc["high"], "n": acc["n"]}


def assess_api(core: Core, image: Any, task: str | None = None) -> dict[str, Any]:
    """Stateless ``/assess``: advice for one image on the default model and ``task``, as JSON-ready data
    (``calibration`` as :func:`calibration_summary` gives it: the app's endpoint words it)."""
    state, available = _api_session(core, image, task)
    result = core.assess(state, [image], available)
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
