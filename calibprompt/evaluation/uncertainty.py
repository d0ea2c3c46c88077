"""Uncertainty beyond calibration, for one head on one labelled test set: selective prediction and
cross-fitted conformal prediction sets, as plain data (``calibprompt evaluate`` prints and writes it).

Needs only probabilities and labels: ``probs`` (N, K) rows summing to 1, ``labels`` (N,) ints in [0, K).
"""
from __future__ import annotations

from typing import Any, Sequence

from calibprompt import defaults
from calibprompt.evaluation.conformal import ALLOWED_SCORES, cross_fitted_sets
from calibprompt.evaluation.selective import risk_coverage, selective_accuracy

__all__ = ["CROSS_FIT", "selective_summary", "conformal_summary", "uncertainty_summary"]

#: how :func:`conformal_summary` measures coverage without a separate calibration split
CROSS_FIT = ("fit on the even-indexed test images, measure on the odd ones, and the reverse; the two results "
             "averaged")


def selective_summary(probs: Any, labels: Any,
                      coverages: Sequence[float] = defaults.SELECTIVE_COVERAGES) -> dict[str, Any]:
    """Selective prediction: ``{"n", "aurc"`` (area under the risk-coverage curve,
    :func:`calibprompt.evaluation.selective.risk_coverage`), ``"selective_accuracy"`` ``{f"{c:g}": accuracy of
    the share ``c`` of most confident answers}}``."""
    return {"n": int(len(labels)), "aurc": risk_coverage(probs, labels)["aurc"],
            "selective_accuracy": {f"{c:g}": selective_accuracy(probs, labels, c) for c in coverages}}


def conformal_summary(probs: Any, labels: Any, alpha: float) -> dict[str, Any]:
    """Conformal sets at miscoverage ``alpha`` (coverage ``1 - alpha``) for each score in
    :data:`~calibprompt.evaluation.conformal.ALLOWED_SCORES` (LAC, APS, RAPS), cross-fitted
    (:func:`~calibprompt.evaluation.conformal.cross_fitted_sets`): ``{"alpha", "cross_fit", "scores": {score:
    {"coverage", "mean_set_size", "folds"}}, "unavailable"}``. With too few test images for ``alpha``,
    ``scores`` is empty and ``unavailable`` says why (None otherwise)."""
    conformal: dict[str, Any] = {"alpha": alpha, "cross_fit": CROSS_FIT, "scores": {}, "unavailable": None}
    try:
        for score in ALLOWED_SCORES:
            out = cross_fitted_sets(probs, labels, alpha=alpha, score=score)
            conformal["scores"][score] = {k: out[k] for k in ("coverage", "mean_set_size", "folds")}
    except ValueError as exc:  # too few test images for this alpha: report it, keep the rest
        conformal["scores"], conformal["unavailable"] = {}, str(exc)
    return conformal


def uncertainty_summary(probs: Any, labels: Any, alpha: float) -> dict[str, Any]:
    """``{"selective": selective_summary(...), "conformal": conformal_summary(..., alpha)}``."""
    return {"selective": selective_summary(probs, labels), "conformal": conformal_summary(probs, labels, alpha)}
