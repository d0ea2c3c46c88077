"""Evaluation of a prediction head on a labelled test set: the calibration report and per-image rows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .metrics import calibration_report

__all__ = ["Evaluation", "evaluate_probs", "evaluate_head"]


@dataclass
class Evaluation:
    """``report``: :func:`calibprompt.metrics.calibration_report`; ``rows``: one dict per image with
    path, true label, predicted label, confidence and every class probability."""

    report: dict[str, Any]
    rows: list[dict[str, Any]]
    probs: np.ndarray
    labels: np.ndarray
    classnames: list[str]

    @property
    def summary(self) -> dict[str, float]:
        """The headline numbers as fractions (the ``compare`` JSON row fields)."""
        keys = ("accuracy", "ece", "mce", "ace", "nll", "brier", "mean_confidence", "macro_f1", "classwise_ece_mean")
        return {k: float(self.report[k]) for k in keys}


def evaluate_probs(probs: np.ndarray, labels: Sequence[int], paths: Sequence[str], classnames: Sequence[str],
                   n_bins: int = 10, n_boot: int = 1000, seed: int = 0) -> Evaluation:
    """Evaluate class probabilities (N, K) against labels (N,)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels_arr = np.asarray(labels, dtype=np.int64)
    if len(paths) != len(labels_arr) or probs.shape[0] != len(labels_arr):
        raise ValueError(f"Got {probs.shape[0]} predictions, {len(labels_arr)} labels and {len(paths)} paths.")
    report = calibration_report(probs, labels_arr, n_bins=n_bins, n_boot=n_boot, seed=seed)
    predicted = probs.argmax(axis=1)
    rows = []
    for i, path in enumerate(paths):
        rows.append({
            "path": str(path),
            "label": int(labels_arr[i]),
            "label_name": classnames[labels_arr[i]],
            "predicted": int(predicted[i]),
            "predicted_name": classnames[predicted[i]],
            "confidence": float(probs[i, predicted[i]]),
            "correct": bool(predicted[i] == labels_arr[i]),
            "probs": [float(p) for p in probs[i]],
        })
    return Evaluation(report, rows, probs, labels_arr, list(classnames))


def evaluate_head(engine, head: str, features, labels: Sequence[int], paths: Sequence[str],
                  classnames: Sequence[str] | None = None, n_bins: int = 10, n_boot: int = 1000) -> Evaluation:
    """Evaluate one of ``engine``'s heads on precomputed image features (N, D) of a test set."""
    head_obj = engine.heads.get(head)
    if head_obj is None:
        raise ValueError(f"Unknown head {head!r}; available: {', '.join(engine.heads) or 'none'}.")
    if classnames is not None and list(classnames) != list(head_obj.classnames):
        raise ValueError(
            f"The head {head!r} predicts the classes {head_obj.classnames}, but the test set has {list(classnames)}."
        )
    prediction = engine.predict_features(features, [head])[head]
    return evaluate_probs(prediction.probs, labels, paths, head_obj.classnames, n_bins=n_bins, n_boot=n_boot)
