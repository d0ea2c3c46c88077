"""Calibration and classification metrics for multi-class predictions.

All functions are pure: they take predicted class probabilities and integer labels
and return numbers. They never modify their inputs.

Conventions (the project's contract)
------------------------------------
* ``probs`` has shape ``(N, K)``: one row of class probabilities per sample, each row
  summing to 1 (within ``1e-3``). ``labels`` has shape ``(N,)`` with integer class
  indices in ``[0, K)``. Either may be a numpy array, a torch tensor (any float dtype,
  any device) or a nested list. Everything is computed in float64 numpy.
* Scalars are returned as Python ``float``; vectors as numpy arrays.
* Top-label confidence ``conf_i = max_k p_ik``; prediction ``argmax_k p_ik`` (first index
  on ties); ``correct_i = [prediction_i == label_i]``.
* Equal-width ("uniform") bins follow :func:`numpy.histogram` exactly: edges
  ``e = np.linspace(0, 1, n_bins + 1)``; bin ``i`` holds ``e_i <= conf < e_{i+1}``, the
  last bin is closed, so a confidence of exactly 1.0 lands in the last bin (it neither
  gets a bin of its own, as in torchmetrics, nor is it dropped). A confidence of 0 lands
  in bin 0. Note the float edges are those of ``np.linspace``: e.g. for ``n_bins=10``
  ``e_3 == 0.30000000000000004``, so a confidence of ``0.3`` lies in bin 2, exactly as
  ``np.histogram`` would count it.
* Equal-mass ("quantile") bins, used by ACE: samples are sorted by confidence with a
  stable sort and the sorted order is cut into ``n_bins`` contiguous groups with
  :func:`numpy.array_split` (group sizes differ by at most one, larger groups first);
  empty groups (``N < n_bins``) are skipped.
* For a bin ``b`` with ``n_b`` samples: ``acc_b`` = mean correctness and ``conf_b`` =
  mean confidence of its samples.

  - ECE = ``sum_b (n_b / N) * |acc_b - conf_b|`` over non-empty uniform bins;
  - MCE = ``max_b |acc_b - conf_b|`` over non-empty uniform bins (not weighted;
    ``min_count`` can leave out bins with fewer samples);
  - ACE = the ECE sum over non-empty quantile bins.

One private helper (:func:`_bin_statistics`) does the binning for ECE, MCE, ACE,
classwise ECE and the reliability diagram, and one private helper (:func:`_validate`)
validates the inputs of every public function with the checks of
:mod:`calibprompt.evaluation.validation`: the scalar arguments first
(:func:`_arg_validation`), then the arrays (:func:`_tensor_validation`). Invalid input
raises ``ValueError`` with a message naming what is wrong and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from calibprompt import defaults
from calibprompt.evaluation import validation as V

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "mean_confidence",
    "reliability_bins",
    "expected_calibration_error",
    "maximum_calibration_error",
    "adaptive_calibration_error",
    "classwise_ece",
    "negative_log_likelihood",
    "brier_score",
    "macro_f1",
    "bootstrap_interval",
    "ece_interval",
    "calibration_report",
    "fit_temperature",
    "apply_temperature",
]

#: Tolerance for "rows sum to 1" and for "probabilities lie in [0, 1]".
PROB_ATOL = V.PROB_ATOL
ALLOWED_STRATEGIES = ("uniform", "quantile")

# Bounds of the temperature search (on log T).
_LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))
# Bootstrap replicates processed at once in the vectorised paths.
_BOOT_CHUNK_ELEMS = 2_000_000

_MISSING = object()


# ---------------------------------------------------------------------------
# Validation (the checks live in calibprompt.evaluation.validation)
# ---------------------------------------------------------------------------
# The names other evaluation modules (conformal, selective) import from here.
_to_numpy = V.to_numpy
_check_int = V.check_int
_check_real = V.check_real


def _arg_validation(
    *,
    n_bins: Any = _MISSING,
    strategy: Any = _MISSING,
    eps: Any = _MISSING,
    n_boot: Any = _MISSING,
    min_boot: int = 1,
    level: Any = _MISSING,
    temperature: Any = _MISSING,
    max_iter: Any = _MISSING,
) -> None:
    """Check the scalar arguments that were given (``_MISSING``: not an argument of the caller).

    ``n_bins >= 1``, ``strategy`` in :data:`ALLOWED_STRATEGIES`, ``eps`` and ``level`` in ``(0, 1)``,
    ``n_boot >= min_boot``, ``temperature > 0``, ``max_iter >= 1``.
    """
    if n_bins is not _MISSING:
        V.check_int(n_bins, "n_bins", 1)
    if strategy is not _MISSING:
        V.check_choice(strategy, "strategy", ALLOWED_STRATEGIES,
                       "'uniform' = equal-width bins, 'quantile' = equal-mass bins")
    if eps is not _MISSING:
        V.check_open_unit(eps, "eps")
    if n_boot is not _MISSING:
        V.check_int(n_boot, "n_boot", min_boot)
    if level is not _MISSING:
        V.check_open_unit(level, "level", "0.95 for a 95 % interval")
    if temperature is not _MISSING:
        V.check_positive(temperature, "temperature")
    if max_iter is not _MISSING:
        V.check_int(max_iter, "max_iter", 1)


def _tensor_validation(
    scores: Any, labels: Any = _MISSING, *, kind: str = "probs", labels_optional: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Check and convert ``(N, K)`` scores and ``(N,)`` labels (:func:`~calibprompt.evaluation.validation.check_scores`,
    :func:`~calibprompt.evaluation.validation.check_labels`); labels is ``None`` when omitted (or
    ``None`` with ``labels_optional``)."""
    arr = V.check_scores(scores, kind)
    if labels is _MISSING or (labels is None and labels_optional):
        return arr, None
    return arr, V.check_labels(labels, arr.shape[0], arr.shape[1], kind)


def _validate(
    scores: Any,
    labels: Any = _MISSING,
    *,
    kind: str = "probs",
    labels_optional: bool = False,
    **arguments: Any,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate and convert the inputs of a public function: the scalar ``arguments`` first (cheap,
    and their errors are the most specific; see :func:`_arg_validation`), then the arrays.

    Args:
        scores: ``(N, K)`` probabilities (``kind="probs"``) or logits (``kind="logits"``).
        labels: ``(N,)`` integer class indices; omit it when the caller takes none.
            ``None`` is an error unless ``labels_optional`` is true.
        kind: ``"probs"`` (rows must sum to 1, values in [0, 1]) or ``"logits"`` (finite).
        arguments: ``n_bins``, ``strategy``, ``eps``, ``n_boot`` (with ``min_boot``), ``level``,
            ``temperature``, ``max_iter``: checked only when given.

    Returns:
        ``(scores, labels)`` as float64 ``(N, K)`` and int64 ``(N,)`` arrays (labels is
        ``None`` when not given). Probabilities are clipped to [0, 1] after the tolerance
        check so that every confidence falls into a histogram bin.
    """
    _arg_validation(**arguments)
    return _tensor_validation(scores, labels, kind=kind, labels_optional=labels_optional)


# ---------------------------------------------------------------------------
# Binning (shared by ECE, MCE, ACE, classwise ECE and reliability diagrams)
# ---------------------------------------------------------------------------
def _uniform_edges(n_bins: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n_bins + 1)


def _uniform_bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index of each confidence in [0, 1], with numpy.histogram semantics."""
    edges = _uniform_edges(n_bins)
    idx = np.searchsorted(edges, conf, side="right") - 1  # e_i <= c < e_{i+1}
    return np.clip(idx, 0, n_bins - 1)  # c == 1.0 (== e_n) joins the last, closed bin


def _quantile_group_of_rank(n: int, n_bins: int) -> np.ndarray:
    """Group id of each position of the sorted order under ``np.array_split``."""
    sizes = [len(g) for g in np.array_split(np.arange(n), n_bins)]
    return np.repeat(np.arange(n_bins), sizes)


def _bin_statistics(
    conf: np.ndarray, correct: np.ndarray, n_bins: int, strategy: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The one binning routine.

    Args:
        conf: ``(N,)`` confidences in [0, 1].
        correct: ``(N,)`` 0/1 outcomes.
        n_bins: number of bins.
        strategy: ``"uniform"`` (numpy.histogram bins) or ``"quantile"`` (equal mass).

    Returns:
        ``(edges, counts, acc_sum, conf_sum)`` with shapes ``(n_bins+1,)`` and
        ``(n_bins,)``: the per-bin sample count and sums of correctness / confidence.
    """
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    n = conf.shape[0]
    if strategy == "uniform":
        edges = _uniform_edges(n_bins)
        idx = _uniform_bin_index(conf, n_bins)
    else:
        order = np.argsort(conf, kind="stable")
        group = _quantile_group_of_rank(n, n_bins)
        idx = np.empty(n, dtype=np.int64)
        idx[order] = group
        # Descriptive edges: 0, the smallest confidence of each non-empty group 1..n-1
        # (1.0 for trailing empty groups), 1. Membership is by rank, not by these edges.
        edges = np.ones(n_bins + 1, dtype=np.float64)
        edges[0] = 0.0
        starts = np.cumsum([0] + [int(s) for s in np.bincount(group, minlength=n_bins)])[:-1]
        for i in range(1, n_bins):
            if starts[i] < n:
                edges[i] = conf[order[starts[i]]]
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    return edges, counts, acc_sum, conf_sum


def _top_label(p: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    pred = np.argmax(p, axis=1)
    conf = p[np.arange(p.shape[0]), pred]
    correct = None if y is None else (pred == y).astype(np.float64)
    return conf, correct


def _ce_from_sums(
    counts: np.ndarray, acc_sum: np.ndarray, conf_sum: np.ndarray, norm: str, min_count: int = 0
) -> float:
    """Reduce per-bin sums to the L1 (weighted sum) or max calibration error.

    ``min_count`` applies to ``norm="max"`` only: bins with fewer samples are left out
    of the maximum; when no bin is left the result is 0.0 (as for an empty maximum in
    the bootstrap replicates).
    """
    nonempty = counts > 0
    c = counts[nonempty].astype(np.float64)
    gap = np.abs(acc_sum[nonempty] / c - conf_sum[nonempty] / c)
    if norm == "l1":
        return float(np.sum(c / counts.sum() * gap))
    keep = c >= min_count
    return float(np.max(gap[keep])) if keep.any() else 0.0


# ---------------------------------------------------------------------------
# Reliability diagram data
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ReliabilityBins:
    """Per-bin statistics for a reliability diagram (arrays are read-only).

    Attributes:
        edges: ``(n_bins + 1,)`` bin edges. For ``"uniform"`` these are
            ``np.linspace(0, 1, n_bins + 1)``. For ``"quantile"`` they are descriptive
            only (membership is by rank): ``edges[0] = 0``, ``edges[-1] = 1`` and
            ``edges[i]`` (``0 < i < n_bins``) is the smallest confidence in group ``i``
            (1.0 if that group is empty because ``N < n_bins``).
        counts: ``(n_bins,)`` int sample counts.
        accuracy: ``(n_bins,)`` mean correctness per bin; NaN for empty bins.
        confidence: ``(n_bins,)`` mean top-label confidence per bin; NaN for empty bins.
        strategy: ``"uniform"`` or ``"quantile"``.
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    strategy: str = "uniform"

    def __post_init__(self) -> None:
        for name in ("edges", "counts", "accuracy", "confidence"):
            arr = np.array(getattr(self, name), copy=True)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def n_bins(self) -> int:
        return int(self.counts.shape[0])

    @property
    def gap(self) -> np.ndarray:
        """``|accuracy - confidence|`` per bin, shape ``(n_bins,)``; NaN for empty bins."""
        return np.abs(self.accuracy - self.confidence)

    def to_dict(self) -> dict:
        """JSON-friendly dict of plain lists (``None`` in place of NaN)."""

        def clean(a: np.ndarray) -> list:
            return [None if not np.isfinite(v) else float(v) for v in a.tolist()]

        return {
            "strategy": self.strategy,
            "n_bins": self.n_bins,
            "edges": clean(self.edges),
            "counts": [int(c) for c in self.counts.tolist()],
            "accuracy": clean(self.accuracy),
            "confidence": clean(self.confidence),
            "gap": clean(self.gap),
        }


def reliability_bins(
    probs: Any, labels: Any, n_bins: int = defaults.N_BINS, strategy: str = "uniform"
) -> ReliabilityBins:
    """Bin top-label confidences for a reliability diagram.

    Args:
        probs: ``(N, K)`` class probabilities (rows sum to 1).
        labels: ``(N,)`` integer labels in ``[0, K)``.
        n_bins: positive int, number of bins.
        strategy: ``"uniform"`` (equal-width bins with numpy.histogram semantics, a
            confidence of 1.0 in the last bin) or ``"quantile"`` (equal-mass groups of the
            stably sorted confidences, ``np.array_split`` sizes).

    Returns:
        :class:`ReliabilityBins` with ``edges`` ``(n_bins+1,)``, ``counts``,
        ``accuracy`` and ``confidence`` ``(n_bins,)`` (NaN where a bin is empty).
    """
    p, y = _validate(probs, labels, n_bins=n_bins, strategy=strategy)
    conf, correct = _top_label(p, y)
    edges, counts, acc_sum, conf_sum = _bin_statistics(conf, correct, int(n_bins), strategy)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(counts > 0, acc_sum / counts, np.nan)
        cf = np.where(counts > 0, conf_sum / counts, np.nan)
    return ReliabilityBins(edges=edges, counts=counts, accuracy=acc, confidence=cf, strategy=strategy)


# ---------------------------------------------------------------------------
# Scalar metrics
# ---------------------------------------------------------------------------
def accuracy(probs: Any, labels: Any) -> float:
    """Top-1 accuracy: ``mean_i [argmax_k p_ik == y_i]``.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
    """
    p, y = _validate(probs, labels)
    return float(np.mean(np.argmax(p, axis=1) == y))


def mean_confidence(probs: Any, labels: Any = None) -> float:
    """Mean top-label confidence: ``mean_i max_k p_ik``.

    Args:
        probs: ``(N, K)`` probabilities. labels: optional ``(N,)``, only validated.
    """
    p, _ = _validate(probs, labels, labels_optional=True)
    return float(np.mean(np.max(p, axis=1)))


def _calibration_error(
    probs: Any, labels: Any, n_bins: int, strategy: str, norm: str, min_count: int = 0
) -> float:
    """Shared body of ECE, MCE and ACE: validate, bin the top-label confidences, reduce."""
    p, y = _validate(probs, labels, n_bins=n_bins)
    conf, correct = _top_label(p, y)
    _, counts, a, c = _bin_statistics(conf, correct, int(n_bins), strategy)
    return _ce_from_sums(counts, a, c, norm, min_count)


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = defaults.N_BINS) -> float:
    """Expected calibration error with equal-width bins (top-label, L1).

    ``ECE = sum_b (n_b / N) * |acc_b - conf_b|`` over the non-empty bins of
    ``np.histogram(conf, bins=np.linspace(0, 1, n_bins + 1))`` (a confidence of exactly
    1.0 is in the last bin).

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        n_bins: positive int.

    Returns:
        float in ``[0, 1]``.
    """
    return _calibration_error(probs, labels, n_bins, "uniform", "l1")


def maximum_calibration_error(
    probs: Any, labels: Any, n_bins: int = defaults.N_BINS, min_count: int = defaults.MCE_MIN_COUNT
) -> float:
    """Maximum calibration error with equal-width bins.

    ``MCE = max_b |acc_b - conf_b|`` over the non-empty equal-width bins (same bins as
    :func:`expected_calibration_error`) that hold at least ``min_count`` samples. This is
    the standard definition (Naeini et al. 2015; torchmetrics ``norm="max"``); it is
    *not* weighted by ``n_b / N`` as some research code does, so a single-sample bin can
    dominate it, which ``min_count`` guards against.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        n_bins: positive int.
        min_count: int >= 0; bins with fewer than ``min_count`` samples are left out of
            the maximum (``0`` and ``1``: every non-empty bin counts, the default
            behaviour). When no bin has ``min_count`` samples the result is ``0.0``.

    Returns:
        float in ``[0, 1]``.
    """
    _check_int(min_count, "min_count", 0)
    return _calibration_error(probs, labels, n_bins, "uniform", "max", int(min_count))


def adaptive_calibration_error(probs: Any, labels: Any, n_bins: int = defaults.N_BINS) -> float:
    """Adaptive calibration error (ACE, equal-mass bins; as in the CalibPrompt paper).

    Samples are sorted by top-label confidence (stable sort), the sorted order is split
    into ``n_bins`` contiguous groups by ``np.array_split`` (sizes differ by at most one,
    larger groups first), empty groups (``N < n_bins``) are skipped, and
    ``ACE = sum_g (n_g / N) * |acc_g - conf_g|``.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        n_bins: positive int.

    Returns:
        float in ``[0, 1]``.
    """
    return _calibration_error(probs, labels, n_bins, "quantile", "l1")


def classwise_ece(probs: Any, labels: Any, n_bins: int = defaults.N_BINS) -> np.ndarray:
    """Classwise ECE (Kull et al. 2019), one value per class.

    For class ``k``: the equal-width-bin ECE of the one-vs-rest problem with confidence
    ``p[:, k]`` and outcome ``[y == k]`` over all ``N`` samples,
    ``cwECE_k = sum_b (n_bk / N) * |mean_{i in b}[y_i == k] - mean_{i in b} p_ik|``.
    The mean of the returned vector is the usual scalar cw-ECE.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        n_bins: positive int.

    Returns:
        float64 array of shape ``(K,)``.
    """
    p, y = _validate(probs, labels, n_bins=n_bins)
    out = np.empty(p.shape[1], dtype=np.float64)
    for k in range(p.shape[1]):
        _, counts, a, c = _bin_statistics(p[:, k], (y == k), int(n_bins), "uniform")
        out[k] = _ce_from_sums(counts, a, c, "l1")
    return out


def negative_log_likelihood(probs: Any, labels: Any, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood: ``mean_i -log(max(p_{i, y_i}, eps))``.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        eps: floor in ``(0, 1)`` applied to the true-class probability.
    """
    p, y = _validate(probs, labels, eps=eps)
    return float(np.mean(_per_sample_nll(p, y, float(eps))))


def _per_sample_nll(p: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    return -np.log(np.maximum(p[np.arange(p.shape[0]), y], eps))


def _per_sample_brier(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = p.copy()
    d[np.arange(p.shape[0]), y] -= 1.0
    return np.sum(d * d, axis=1)


def brier_score(probs: Any, labels: Any) -> float:
    """Multi-class Brier score: ``mean_i sum_k (p_ik - [y_i == k])^2``, range ``[0, 2]``.

    (Not halved for K == 2; equals ``sklearn.metrics.brier_score_loss(..., labels=range(K),
    scale_by_half=False)``.)

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
    """
    p, y = _validate(probs, labels)
    return float(np.mean(_per_sample_brier(p, y)))


def macro_f1(probs: Any, labels: Any) -> float:
    """Macro-averaged F1 of the argmax predictions over all K classes.

    ``sklearn.metrics.f1_score(labels, argmax(probs), average="macro",
    labels=range(K), zero_division=0)``: classes absent from both labels and predictions
    count as F1 = 0.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
    """
    from sklearn.metrics import f1_score

    p, y = _validate(probs, labels)
    pred = np.argmax(p, axis=1)
    return float(
        f1_score(y, pred, average="macro", labels=list(range(p.shape[1])), zero_division=0)
    )


# ---------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------
def _bootstrap_index_chunks(rng: np.random.Generator, n: int, n_boot: int) -> Iterator[np.ndarray]:
    """Yield ``(b, n)`` blocks of resampling indices, ``n_boot`` rows in total.

    Drawing ``rng.integers(0, n, size=(b, n))`` in blocks gives the same stream as
    drawing one row at a time, so every bootstrap in this module sees the same
    resamples for the same seed regardless of the block size.
    """
    per = max(1, _BOOT_CHUNK_ELEMS // max(n, 1))
    done = 0
    while done < n_boot:
        b = min(per, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.asarray(values, dtype=np.float64), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_interval(
    metric: Callable[..., float],
    probs: Any,
    labels: Any,
    n_boot: int = defaults.N_BOOT,
    level: float = defaults.LEVEL,
    seed: int | None = 0,
    **metric_kwargs: Any,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of any metric of this module.

    ``n_boot`` resamples of the N rows are drawn with replacement
    (``np.random.default_rng(seed).integers(0, N, size=N)`` each), the metric is
    evaluated on each as ``metric(probs[idx], labels[idx], **metric_kwargs)``, and the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (numpy's default linear
    interpolation) of the replicates are returned. Deterministic for a given ``seed``.

    Note: binned calibration errors are biased upwards on resamples (duplicated rows
    make bins noisier), so for a well-calibrated model the interval of ECE may lie
    above the point estimate.

    Args:
        metric: callable ``(probs, labels, **kw) -> float``.
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        n_boot: int >= 1. level: in ``(0, 1)``. seed: int (or None for fresh entropy).

    Returns:
        ``(lo, hi)`` floats.
    """
    if not callable(metric):
        raise ValueError(
            f"`metric` must be a callable taking (probs, labels, **kw), got {metric!r}."
        )
    p, y = _validate(probs, labels, n_boot=n_boot, level=level)
    metric(p, y, **metric_kwargs)  # fail fast on bad metric_kwargs
    rng = np.random.default_rng(seed)
    values = np.empty(int(n_boot), dtype=np.float64)
    j = 0
    for block in _bootstrap_index_chunks(rng, p.shape[0], int(n_boot)):
        for idx in block:
            values[j] = float(metric(p[idx], y[idx], **metric_kwargs))
            j += 1
    return _percentile_interval(values, float(level))


def ece_interval(
    probs: Any,
    labels: Any,
    n_bins: int = defaults.N_BINS,
    n_boot: int = defaults.N_BOOT,
    level: float = defaults.LEVEL,
    seed: int | None = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of :func:`expected_calibration_error`.

    Same as ``bootstrap_interval(expected_calibration_error, probs, labels, n_boot,
    level, seed, n_bins=n_bins)``.
    """
    _validate(probs, labels, n_bins=n_bins, n_boot=n_boot, level=level)
    return bootstrap_interval(
        expected_calibration_error, probs, labels, n_boot=n_boot, level=level, seed=seed, n_bins=n_bins
    )


def _fast_bootstrap(
    p: np.ndarray, y: np.ndarray, n_bins: int, n_boot: int, seed: int | None, min_count: int = 0
) -> dict[str, np.ndarray]:
    """Vectorised replicates of accuracy, ECE, MCE, ACE, NLL and Brier.

    Per-sample quantities are computed once and the resamples gather them; uses the
    same index stream as :func:`bootstrap_interval`, so results agree with it. The MCE
    replicates leave out bins with fewer than ``min_count`` samples of the resample.
    """
    n = p.shape[0]
    conf, correct = _top_label(p, y)
    nll = _per_sample_nll(p, y, 1e-12)
    brier = _per_sample_brier(p, y)
    ubin = _uniform_bin_index(conf, n_bins)
    qgroup = _quantile_group_of_rank(n, n_bins)
    rng = np.random.default_rng(seed)
    out = {k: np.empty(n_boot) for k in ("accuracy", "ece", "mce", "ace", "nll", "brier")}
    j = 0
    for idx in _bootstrap_index_chunks(rng, n, n_boot):
        b = idx.shape[0]
        sl = slice(j, j + b)
        c = conf[idx]
        a = correct[idx]
        out["accuracy"][sl] = a.mean(axis=1)
        out["nll"][sl] = nll[idx].mean(axis=1)
        out["brier"][sl] = brier[idx].mean(axis=1)
        offs = (np.arange(b) * n_bins)[:, None]
        # uniform bins: a sample keeps its bin in every resample
        flat = (ubin[idx] + offs).ravel()
        cnt = np.bincount(flat, minlength=b * n_bins).reshape(b, n_bins)
        asum = np.bincount(flat, weights=a.ravel(), minlength=b * n_bins).reshape(b, n_bins)
        csum = np.bincount(flat, weights=c.ravel(), minlength=b * n_bins).reshape(b, n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = np.abs(asum / cnt - csum / cnt)
        gap = np.where(cnt > 0, gap, 0.0)
        out["ece"][sl] = np.sum(cnt / n * gap, axis=1)
        out["mce"][sl] = np.max(np.where(cnt >= max(min_count, 1), gap, 0.0), axis=1)
        # quantile bins: stable sort of each resample, groups by rank
        order = np.argsort(c, axis=1, kind="stable")
        cs = np.take_along_axis(c, order, axis=1)
        as_ = np.take_along_axis(a, order, axis=1)
        qflat = (qgroup[None, :] + offs).ravel()
        qcnt = np.bincount(qflat, minlength=b * n_bins).reshape(b, n_bins)
        qa = np.bincount(qflat, weights=as_.ravel(), minlength=b * n_bins).reshape(b, n_bins)
        qc = np.bincount(qflat, weights=cs.ravel(), minlength=b * n_bins).reshape(b, n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            qgap = np.where(qcnt > 0, np.abs(qa / qcnt - qc / qcnt), 0.0)
        out["ace"][sl] = np.sum(qcnt / n * qgap, axis=1)
        j += b
    return out


def calibration_report(
    probs: Any,
    labels: Any,
    n_bins: int = defaults.N_BINS,
    n_boot: int = defaults.N_BOOT,
    seed: int | None = 0,
    min_count: int = defaults.MCE_MIN_COUNT,
) -> dict:
    """All metrics of this module in one JSON-serialisable dict.

    Keys: ``n``, ``num_classes``, ``accuracy``, ``ece``, ``mce``, ``ace``, ``nll``,
    ``brier``, ``macro_f1``, ``mean_confidence``, ``classwise_ece`` (list of K floats),
    ``classwise_ece_mean``, ``n_bins``, ``reliability`` (``reliability_bins(...).to_dict()``
    with uniform bins) and ``intervals``: ``{"accuracy": [lo, hi], "ece", "mce", "ace",
    "nll", "brier"}`` — 95 % percentile-bootstrap intervals over ``n_boot`` resamples
    (the same resamples, for the same seed, as :func:`bootstrap_interval`), or ``None``
    when ``n_boot == 0``.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        n_bins: positive int. n_boot: int >= 0. seed: int (or None).
        min_count: int >= 0, passed to :func:`maximum_calibration_error` for ``mce``
            (and applied to each resample for its interval): bins with fewer samples are
            left out of the maximum. ``0`` (default) keeps every non-empty bin. The
            report does not record it (its keys are fixed).
    """
    _check_int(min_count, "min_count", 0)
    min_count = int(min_count)
    p, y = _validate(probs, labels, n_bins=n_bins, n_boot=n_boot, min_boot=0)
    n_bins = int(n_bins)
    n_boot = int(n_boot)
    cw = classwise_ece(p, y, n_bins=n_bins)
    report: dict[str, Any] = {
        "n": int(p.shape[0]),
        "num_classes": int(p.shape[1]),
        "accuracy": accuracy(p, y),
        "ece": expected_calibration_error(p, y, n_bins=n_bins),
        "mce": maximum_calibration_error(p, y, n_bins=n_bins, min_count=min_count),
        "ace": adaptive_calibration_error(p, y, n_bins=n_bins),
        "nll": negative_log_likelihood(p, y),
        "brier": brier_score(p, y),
        "macro_f1": macro_f1(p, y),
        "mean_confidence": mean_confidence(p),
        "classwise_ece": [float(v) for v in cw],
        "classwise_ece_mean": float(np.mean(cw)),
        "n_bins": n_bins,
        "reliability": reliability_bins(p, y, n_bins=n_bins).to_dict(),
        "intervals": None,
    }
    if n_boot > 0:
        reps = _fast_bootstrap(p, y, n_bins, n_boot, seed, min_count)
        report["intervals"] = {
            k: list(_percentile_interval(v, defaults.LEVEL)) for k, v in reps.items()
        }
    return report


# ---------------------------------------------------------------------------
# Temperature scaling
# ---------------------------------------------------------------------------
def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll_at_log_t(z: np.ndarray, y: np.ndarray, log_t: float) -> float:
    s = z * math.exp(-log_t)
    m = s.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
    return float(np.mean(lse - s[np.arange(s.shape[0]), y]))


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities ``softmax(logits / T)`` (numerically stable).

    Args:
        logits: ``(N, K)`` finite real scores.
        temperature: finite ``T > 0``.

    Returns:
        float64 array ``(N, K)`` whose rows sum to 1.
    """
    z, _ = _validate(logits, kind="logits", temperature=temperature)
    return _softmax(z / _check_real(temperature, "temperature"))


def fit_temperature(logits: Any, labels: Any, max_iter: int = 200) -> float:
    """Fit the temperature ``T > 0`` minimising ``NLL(softmax(logits / T), labels)``.

    The NLL is minimised over ``log T`` in ``[log 0.05, log 20]`` with bounded Brent
    search (``scipy.optimize.minimize_scalar(method="bounded")``; the NLL is convex in
    ``1/T`` hence unimodal in ``log T``). Deterministic. If ``T = 1`` is at least as good
    as the optimiser's answer, 1.0 is returned, so the fitted NLL never exceeds the
    NLL at ``T = 1``. When the optimum lies outside the bounds the result approaches
    the nearest bound; for perfectly separable data the NLL becomes exactly 0 in
    float64 well before ``T = 0.05``, and a small T from that flat region is returned.

    Args:
        logits: ``(N, K)`` finite real scores (not probabilities).
        labels: ``(N,)`` ints in ``[0, K)``.
        max_iter: int >= 1, maximum Brent iterations.

    Returns:
        the temperature as a float.
    """
    from scipy.optimize import minimize_scalar

    z, y = _validate(logits, labels, kind="logits", max_iter=max_iter)
    res = minimize_scalar(
        lambda s: _nll_at_log_t(z, y, s),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-7, "maxiter": int(max_iter)},
    )
    log_t = float(res.x)
    if _nll_at_log_t(z, y, 0.0) <= _nll_at_log_t(z, y, log_t):
        return 1.0
    return float(math.exp(log_t))
