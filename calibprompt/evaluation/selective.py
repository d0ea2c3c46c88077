"""Selective prediction: answer only the most confident cases, and what that buys.

A model that may abstain answers the cases whose top-label confidence ``conf_i = max_k p_ik``
is highest and refers the rest. These functions measure the trade-off between the fraction
answered (*coverage*) and the error rate among the answered cases (*selective risk*).

Conventions follow :mod:`calibprompt.evaluation.metrics`: ``probs`` is ``(N, K)`` with rows
summing to 1, ``labels`` is ``(N,)`` integer class indices; prediction ``argmax_k p_ik`` (first
index on ties), ``correct_i = [prediction_i == label_i]``; invalid input raises ``ValueError``.

Ranking: samples are sorted by confidence, highest first, with a *stable* sort
(``np.argsort(-conf, kind="stable")``), so among samples with exactly equal confidence the one
with the lower index is answered first. At a coverage that falls inside a group of tied
confidences the risk therefore depends on the input order; :func:`threshold_for_accuracy`, which
works with thresholds, always takes or leaves a tied group whole.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from calibprompt.evaluation.metrics import (
    _check_int,
    _check_real,
    _top_label,
    _uniform_bin_index,
    _uniform_edges,
    _validate,
)

__all__ = [
    "risk_coverage",
    "selective_accuracy",
    "threshold_for_accuracy",
    "accuracy_at_confidence",
    "wilson_interval",
]

# Guards ceil(coverage * N) against float noise such as 0.7 * 10 = 7.000000000000001.
_CEIL_TOL = 1e-9


def _ranked(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Confidences and correctness ``(N,)`` sorted by confidence, highest first (stable)."""
    p, y = _validate(probs, labels)
    conf, correct = _top_label(p, y)
    order = np.argsort(-conf, kind="stable")
    return conf[order], correct[order]


def risk_coverage(probs: Any, labels: Any) -> dict:
    """The risk-coverage curve and its area (AURC).

    With samples ranked by confidence (highest first, stable on ties), for ``k = 1..N``:

    * ``coverage[k-1] = k / N``;
    * ``risk[k-1] = (1/k) * sum_{r <= k} (1 - correct_(r))``, the error rate of the ``k`` most
      confident answers;
    * ``thresholds[k-1] = conf_(k)``, the confidence of the ``k``-th answer (non-increasing);
    * ``aurc = (1/N) * sum_k risk[k-1]``, the mean risk over the N coverages (lower is better;
      a perfect ranking of a model with error rate e gives about e^2 / 2 for large N, not 0).

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.

    Returns:
        ``{"coverage", "risk", "thresholds"}`` float64 arrays ``(N,)`` and ``"aurc"`` (float).
    """
    conf, correct = _ranked(probs, labels)
    n = conf.shape[0]
    k = np.arange(1, n + 1, dtype=np.float64)
    risk = np.cumsum(1.0 - correct) / k
    return {"coverage": k / n, "risk": risk, "thresholds": conf.copy(), "aurc": float(np.mean(risk))}


def _check_fraction(value: Any, name: str, example: str) -> float:
    v = _check_real(value, name)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"`{name}` must lie in (0, 1] (e.g. {example}), but got {value!r}.")
    return v


def selective_accuracy(probs: Any, labels: Any, coverage: float) -> float:
    """Accuracy of the ``m = ceil(coverage * N)`` most confident answers (at least one).

    ``selective_accuracy = (1/m) * sum_{r <= m} correct_(r)`` in the stable confidence ranking;
    equals ``1 - risk_coverage(...)["risk"][m - 1]``. ``coverage=1`` gives the plain accuracy.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        coverage: fraction of cases answered, in ``(0, 1]``.

    Returns:
        float in ``[0, 1]``.
    """
    c = _check_fraction(coverage, "coverage", "0.8 to answer the 80 % most confident cases")
    _, correct = _ranked(probs, labels)
    n = correct.shape[0]
    x = c * n
    m = min(n, max(1, int(math.ceil(x - _CEIL_TOL * max(1.0, x)))))
    return float(np.mean(correct[:m]))


def threshold_for_accuracy(probs: Any, labels: Any, target: float) -> dict:
    """The lowest confidence threshold whose answered cases reach a target accuracy.

    For a threshold ``t`` the answered cases are ``A(t) = {i : conf_i >= t}`` (ties kept together),
    with ``coverage(t) = |A(t)| / N`` and ``accuracy(t) = mean_{i in A(t)} correct_i``. The candidates
    are the distinct observed confidences; the result is the smallest ``t`` with
    ``accuracy(t) >= target`` — the largest coverage that meets the target. ``accuracy(t)`` need not
    be monotone in ``t``, so some thresholds above the returned one may miss the target.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        target: accuracy to reach, in ``(0, 1]``.

    Returns:
        dict with ``target``; ``threshold`` (float, or ``None`` when no threshold reaches the target),
        ``coverage``, ``accuracy`` and ``n_answered`` of that threshold (``0.0``, ``None`` and ``0``
        when none does) and ``reason`` (``None``, or a sentence saying why there is no threshold).
    """
    tgt = _check_fraction(target, "target", "0.95 for 95 % accuracy among the answered cases")
    conf, correct = _ranked(probs, labels)
    n = conf.shape[0]
    # the last position of every group of equal confidence in the descending order
    last = np.flatnonzero(np.r_[conf[1:] != conf[:-1], True])
    acc = np.cumsum(correct)[last] / (last + 1)
    ok = np.flatnonzero(acc >= tgt - 1e-12)
    if ok.size == 0:
        best = int(np.argmax(acc))
        return {
            "target": tgt, "threshold": None, "coverage": 0.0, "accuracy": None, "n_answered": 0,
            "reason": (f"No confidence threshold reaches accuracy {tgt:.4g}: the best is {acc[best]:.4g} "
                       f"(answering the {int(last[best]) + 1} of {n} cases with confidence >= "
                       f"{conf[last[best]]:.4g}). Lower the target or improve the model."),
        }
    g = int(ok[-1])
    m = int(last[g]) + 1
    return {"target": tgt, "threshold": float(conf[last[g]]), "coverage": m / n, "accuracy": float(acc[g]),
            "n_answered": m, "reason": None}


def wilson_interval(successes: int, n: int, confidence_level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``phat = successes / n`` (scipy's).

    With ``z`` the two-sided normal quantile of ``confidence_level`` (1.959964 for 0.95):
    ``centre = (phat + z^2 / (2n)) / (1 + z^2 / n)``,
    ``half = z / (1 + z^2 / n) * sqrt(phat (1 - phat) / n + z^2 / (4 n^2))``,
    interval ``[centre - half, centre + half]``, computed by
    ``scipy.stats.binomtest(successes, n).proportion_ci(confidence_level, method="wilson")``
    (which clips it to [0, 1] at ``0/n`` and ``n/n``). Requires ``n >= 1`` and ``0 <= successes <= n``.
    """
    from scipy.stats import binomtest  # lazy: importing the evaluation layer stays cheap

    n = _check_int(n, "n", 1)
    s = _check_int(successes, "successes", 0)
    if s > n:
        raise ValueError(f"`successes` must be <= n = {n}, but got {successes!r}.")
    level = _check_real(confidence_level, "confidence_level")
    if not 0.0 < level < 1.0:
        raise ValueError(f"`confidence_level` must lie in (0, 1) (e.g. 0.95 for a 95 % interval), "
                         f"but got {confidence_level!r}.")
    ci = binomtest(s, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_at_confidence(
    probs: Any,
    labels: Any,
    confidence: float,
    n_bins: int = 10,
    n_boot: int = 0,
    seed: int | None = 0,
) -> dict:
    """How often the labelled (calibration) answers were right at a given confidence.

    The answers are binned by top-label confidence in the uniform bins of
    :func:`calibprompt.evaluation.metrics.reliability_bins` (numpy.histogram edges
    ``np.linspace(0, 1, n_bins + 1)``, the last bin closed); ``confidence`` selects the bin it falls
    in, and the accuracy ``correct_b / count_b`` of that bin is returned — "when the model said 0.87,
    it was right x % of the time".

    The 95 % interval is the Wilson score interval (:func:`wilson_interval`), chosen because bins are
    often small and their accuracy close to 1: there the Wald interval ``phat +- 1.96 sqrt(phat(1 -
    phat) / n)`` collapses to zero width or leaves [0, 1], and a bootstrap of an all-correct bin is
    the single point 1. Wilson stays inside [0, 1], has close to nominal coverage for small ``n``
    and is deterministic. With ``n_boot > 0`` a percentile-bootstrap interval of the bin's accuracy
    (resampling the bin's answers, ``np.random.default_rng(seed)``) is added for comparison.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        confidence: a confidence in ``[0, 1]``.
        n_bins: positive int. n_boot: int >= 0 (0: no bootstrap). seed: int (or None).

    Returns:
        dict with ``confidence``, ``bin`` (index), ``bin_lower``, ``bin_upper``, ``count``,
        ``correct``, ``accuracy`` and ``mean_confidence`` of the bin, ``interval`` ``(lo, hi)`` (Wilson
        95 %), ``level`` (0.95), ``method`` (``"wilson"``), ``bootstrap_interval`` (``(lo, hi)`` or
        ``None``) and ``reason``. For an empty bin ``accuracy``, ``mean_confidence`` and the intervals
        are ``None`` and ``reason`` says so.
    """
    p, y = _validate(probs, labels, n_bins=n_bins, n_boot=n_boot, min_boot=0)
    c = _check_real(confidence, "confidence")
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"`confidence` must lie in [0, 1] (a top-label probability), but got {confidence!r}.")
    n_bins, n_boot = int(n_bins), int(n_boot)
    conf, correct = _top_label(p, y)
    edges = _uniform_edges(n_bins)
    b = int(_uniform_bin_index(np.array([c]), n_bins)[0])
    members = _uniform_bin_index(conf, n_bins) == b
    count = int(members.sum())
    out: dict[str, Any] = {
        "confidence": c, "bin": b, "bin_lower": float(edges[b]), "bin_upper": float(edges[b + 1]),
        "count": count, "correct": int(correct[members].sum()), "accuracy": None, "mean_confidence": None,
        "interval": None, "level": 0.95, "method": "wilson", "bootstrap_interval": None, "reason": None,
    }
    if count == 0:
        out["reason"] = (f"No labelled answer has a confidence in [{edges[b]:.3g}, {edges[b + 1]:.3g}"
                         f"{']' if b == n_bins - 1 else ')'}, so there is no accuracy to report for "
                         f"confidence {c:.3g}; use fewer bins or more labelled images.")
        return out
    hits = correct[members]
    out["accuracy"] = float(hits.mean())
    out["mean_confidence"] = float(conf[members].mean())
    out["interval"] = wilson_interval(out["correct"], count)
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        reps = hits[rng.integers(0, count, size=(n_boot, count))].mean(axis=1)
        lo, hi = np.quantile(reps, [0.025, 0.975])
        out["bootstrap_interval"] = (float(lo), float(hi))
    return out
