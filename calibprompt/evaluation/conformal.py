"""Split conformal prediction sets for multi-class probabilities.

A :class:`ConformalClassifier` turns a model's class probabilities into *prediction sets*: for
each test image, the set of classes that cannot be ruled out at error level ``alpha``. It is fitted
on held-out labelled "calibration" probabilities and needs nothing from the model but those.

Conventions follow :mod:`calibprompt.evaluation.metrics`: ``probs`` is ``(N, K)`` with rows
summing to 1 (numpy array, torch tensor or nested list), ``labels`` is ``(N,)`` integer class
indices in ``[0, K)``; everything is computed in float64 numpy and invalid input raises
``ValueError`` naming what is wrong and what to do.

Non-conformity scores
---------------------
For one sample with probabilities ``p`` (length K) and a candidate class ``j``. Classes are ranked by
probability, highest first, with a stable sort (``np.argsort(-p, kind="stable")``), so of two classes
with exactly equal probability the lower index ranks first. ``o(j)`` is the 1-based rank of ``j``,
``rho(j) = sum of p_i over the classes ranked before j`` and ``U`` is a uniform(0, 1) draw.

* ``"lac"`` (least ambiguous set-valued classifier, Sadinle et al. 2019): ``s(j) = 1 - p_j``.
* ``"aps"`` (adaptive prediction sets, Romano et al. 2020): ``s(j) = rho(j) + p_j``, the cumulative
  sorted mass up to and including ``j``. This is the *non-randomised* APS (the default);
  ``randomized=True`` uses Romano et al.'s ``s(j) = rho(j) + U * p_j`` with one ``U`` per sample.
* ``"raps"`` (regularised APS, Angelopoulos et al. 2021): the APS score plus
  ``raps_lambda * max(0, o(j) - raps_k_reg)``, penalising classes ranked below ``raps_k_reg``.

Quantile and sets
-----------------
With ``n`` calibration scores ``s_i = s(x_i, y_i)`` and ``k = ceil((n + 1)(1 - alpha))``, the
threshold ``q`` is the ``k``-th smallest calibration score (``np.quantile(s, k / n,
method="inverted_cdf")``, equivalently ``method="lower"``; note that ``method="higher"`` at ``k / n``
picks the ``(k+1)``-th smallest whenever ``k < n``). It exists only when ``k <= n``, i.e.
``n >= ceil(1 / alpha) - 1`` (9 samples for ``alpha = 0.1``, 4 for ``alpha = 0.2``). The set of a test
sample is ``C(x) = {j : s(x, j) <= q}`` (a boolean ``(M, K)`` mask over many samples). Sets may be
empty (e.g. LAC when every class is below ``1 - q``) and, for APS/RAPS, are a prefix of the
ranked classes.

*Class-conditional* (Mondrian) sets compute one threshold ``q_j`` per class from the calibration
samples labelled ``j`` only (with ``n_j`` in place of ``n``) and include ``j`` iff ``s(x, j) <= q_j``.

Guarantee
---------
If the calibration and test samples are exchangeable (e.g. drawn i.i.d. from the same
distribution), ``P(y_test in C(x_test)) >= 1 - alpha``, where the probability is over the draw of
*both* the calibration set and the test sample (and ``U``): it holds on average over calibration
sets, not for every calibration set, and it is marginal, not per case — a single image, a
subgroup or a class can be covered less often. Class-conditional sets give the same guarantee
within each class: ``P(y in C(x) | y = j) >= 1 - alpha`` for every ``j``. For continuous scores the
coverage is also at most ``1 - alpha + 1 / (n + 1)``. Nothing holds under a distribution shift
between calibration and test (another scanner, another hospital).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from calibprompt.evaluation.metrics import _check_int, _check_real, _to_numpy, _validate

__all__ = [
    "ALLOWED_SCORES",
    "ConformalClassifier",
    "conformal_rank",
    "min_calibration_samples",
    "set_coverage",
    "mean_set_size",
    "class_coverage",
    "cross_fitted_sets",
]

ALLOWED_SCORES = ("lac", "aps", "raps")
# Guards ceil((n+1)(1-alpha)) against float noise such as (n+1) * 0.30000000000000004.
_CEIL_TOL = 1e-9


def _check_alpha(alpha: Any) -> float:
    a = _check_real(alpha, "alpha")
    if not 0.0 < a < 1.0:
        raise ValueError(
            f"`alpha` (the allowed error rate) must lie in the open interval (0, 1), e.g. 0.1 for "
            f"90 % coverage, but got {alpha!r}."
        )
    return a


def conformal_rank(n: int, alpha: float) -> int:
    """The rank ``k = ceil((n + 1)(1 - alpha))`` of the conformal quantile among ``n`` scores.

    Computed with a relative tolerance of 1e-9 so that float noise in ``1 - alpha`` does not push an
    exact integer up by one. ``k > n`` means there are too few scores for ``alpha``.
    """
    x = (int(n) + 1) * (1.0 - float(alpha))
    return int(math.ceil(x - _CEIL_TOL * max(1.0, x)))


def min_calibration_samples(alpha: float) -> int:
    """The fewest calibration scores with a finite conformal quantile: ``ceil(1 / alpha) - 1``.

    That is the smallest ``n`` with ``ceil((n + 1)(1 - alpha)) <= n`` (9 for ``alpha = 0.1``).
    """
    a = _check_alpha(alpha)
    x = 1.0 / a
    return max(1, int(math.ceil(x - _CEIL_TOL * x)) - 1)


def _conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n+1)(1-alpha))``-th smallest of ``scores`` (the caller checked there are enough)."""
    n = scores.shape[0]
    k = conformal_rank(n, alpha)
    return float(np.partition(scores, k - 1)[k - 1])


def _score_matrix(
    p: np.ndarray, score: str, lam: float, k_reg: int, u: np.ndarray | None
) -> np.ndarray:
    """Non-conformity score ``s(x_i, j)`` of every sample ``i`` and class ``j``: ``(N, K)``.

    ``u`` is ``None`` (non-randomised) or an ``(N,)`` vector of uniform draws, one per sample.
    """
    if score == "lac":
        return 1.0 - p
    n, k = p.shape
    order = np.argsort(-p, axis=1, kind="stable")  # ranked classes, highest probability first
    cum_sorted = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
    rank0 = np.empty_like(order)  # 0-based rank of each class
    np.put_along_axis(rank0, order, np.broadcast_to(np.arange(k), (n, k)), axis=1)
    s = np.take_along_axis(cum_sorted, rank0, axis=1)  # rho(j) + p_j
    if u is not None:
        s = s - (1.0 - u[:, None]) * p  # rho(j) + U * p_j
    if score == "raps":
        s = s + lam * np.maximum(0, rank0 + 1 - k_reg)
    return s


def _check_sets(sets: Any) -> np.ndarray:
    arr = _to_numpy(sets, "sets")
    if arr.ndim != 2:
        raise ValueError(
            f"`sets` must be a 2-D (M, K) boolean mask (one row per sample, True where a class is in "
            f"the set), as returned by ConformalClassifier.predict_sets, but got shape {arr.shape}."
        )
    if arr.shape[0] == 0:
        raise ValueError("`sets` is empty (M == 0); at least one sample is required.")
    if arr.dtype.kind != "b":
        if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
            raise ValueError(
                "`sets` must be a boolean mask (or 0/1 values), as returned by "
                f"ConformalClassifier.predict_sets, but got dtype {arr.dtype} with other values."
            )
        arr = arr.astype(bool)
    return arr


def _check_sets_labels(sets: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _check_sets(sets)
    # validate the labels as metrics.py does, against a dummy (M, K) probability matrix
    dummy = np.full(s.shape, 1.0 / s.shape[1])
    _, y = _validate(dummy, labels)
    return s, y


def set_coverage(sets: Any, labels: Any) -> float:
    """Empirical coverage: the fraction of samples whose true class is in their set.

    ``coverage = mean_i [sets[i, y_i]]``.

    Args:
        sets: ``(M, K)`` boolean mask from :meth:`ConformalClassifier.predict_sets`.
        labels: ``(M,)`` ints in ``[0, K)``.

    Returns:
        float in ``[0, 1]``.
    """
    s, y = _check_sets_labels(sets, labels)
    return float(np.mean(s[np.arange(s.shape[0]), y]))


def mean_set_size(sets: Any) -> float:
    """Mean number of classes per set: ``mean_i sum_j sets[i, j]`` (0 for empty sets, up to K).

    Args:
        sets: ``(M, K)`` boolean mask.
    """
    s = _check_sets(sets)
    return float(np.mean(s.sum(axis=1)))


def class_coverage(sets: Any, labels: Any) -> np.ndarray:
    """Coverage within each true class: ``cov_j = mean_{i : y_i = j} [sets[i, j]]``.

    Args:
        sets: ``(M, K)`` boolean mask. labels: ``(M,)`` ints in ``[0, K)``.

    Returns:
        float64 array ``(K,)``; NaN for a class with no samples in ``labels``.
    """
    s, y = _check_sets_labels(sets, labels)
    k = s.shape[1]
    hit = s[np.arange(s.shape[0]), y].astype(np.float64)
    counts = np.bincount(y, minlength=k)
    sums = np.bincount(y, weights=hit, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


class ConformalClassifier:
    """Split conformal prediction sets over class probabilities (see the module docstring).

    Args:
        alpha: allowed error rate in ``(0, 1)``; sets cover the true class with probability
            ``>= 1 - alpha`` (marginally, on average over calibration/test draws).
        score: ``"lac"`` (``1 - p_y``), ``"aps"`` (cumulative sorted mass up to and including ``y``)
            or ``"raps"`` (APS + ``raps_lambda * max(0, rank - raps_k_reg)``).
        class_conditional: one threshold per class (Mondrian conformal), for coverage within each
            class; needs ``ceil(1/alpha) - 1`` calibration samples of *every* class.
        raps_lambda: RAPS penalty weight, a finite number ``>= 0`` (only used by ``"raps"``).
        raps_k_reg: RAPS rank from which the penalty starts, an int ``>= 0`` (only ``"raps"``).
        randomized: use the randomised APS/RAPS score ``rho(y) + U * p_y`` (exact coverage in
            expectation, smaller sets, but a set depends on a random draw). No effect on LAC.
        seed: int ``>= 0`` (or None for fresh entropy) for the ``U`` draws. With an int, :meth:`fit`
            and every :meth:`predict_sets` call are deterministic (each call restarts its own stream).

    Attributes (after :meth:`fit`):
        quantile_: the threshold ``q`` (float) or, class-conditional, ``(K,)`` thresholds ``q_j``.
        n_calibration_: number of calibration samples ``n``.
        class_counts_: ``(K,)`` calibration samples per class.
        num_classes_: ``K``.
        calibration_scores_: ``(n,)`` scores ``s(x_i, y_i)`` of the calibration samples.

    Example::

        cc = ConformalClassifier(alpha=0.1, score="aps").fit(cal_probs, cal_labels)
        sets = cc.predict_sets(test_probs)              # (M, K) bool
        set_coverage(sets, test_labels), mean_set_size(sets)
    """

    def __init__(
        self,
        alpha: float = 0.1,
        score: str = "lac",
        class_conditional: bool = False,
        raps_lambda: float = 0.01,
        raps_k_reg: int = 1,
        randomized: bool = False,
        seed: int | None = 0,
    ) -> None:
        self.alpha = _check_alpha(alpha)
        if not isinstance(score, str) or score.lower() not in ALLOWED_SCORES:
            raise ValueError(
                f"`score` must be one of {ALLOWED_SCORES} ('lac' = 1 - p_y, 'aps' = adaptive prediction "
                f"sets, 'raps' = regularised APS), but got {score!r}."
            )
        self.score = score.lower()
        for name, flag in (("class_conditional", class_conditional), ("randomized", randomized)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"`{name}` must be True or False, but got {flag!r}.")
        self.class_conditional = bool(class_conditional)
        self.randomized = bool(randomized)
        lam = _check_real(raps_lambda, "raps_lambda")
        if lam < 0:
            raise ValueError(f"`raps_lambda` must be a number >= 0 (e.g. 0.01), but got {raps_lambda!r}.")
        self.raps_lambda = lam
        self.raps_k_reg = _check_int(raps_k_reg, "raps_k_reg", 0)
        if seed is not None:
            _check_int(seed, "seed", 0)
        self.seed = None if seed is None else int(seed)

    def __repr__(self) -> str:
        extra = f", raps_lambda={self.raps_lambda}, raps_k_reg={self.raps_k_reg}" if self.score == "raps" else ""
        return (f"ConformalClassifier(alpha={self.alpha}, score={self.score!r}, "
                f"class_conditional={self.class_conditional}{extra}, randomized={self.randomized}, "
                f"seed={self.seed})")

    # -- internals -----------------------------------------------------------------------------
    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng(None if self.seed is None else [self.seed, stream])

    def _scores(self, p: np.ndarray, stream: int) -> np.ndarray:
        u = None
        if self.randomized and self.score != "lac":
            u = self._rng(stream).random(p.shape[0])
        return _score_matrix(p, self.score, self.raps_lambda, self.raps_k_reg, u)

    # -- API -----------------------------------------------------------------------------------
    def fit(self, probs: Any, labels: Any) -> "ConformalClassifier":
        """Compute the conformal threshold(s) from labelled calibration probabilities.

        Args:
            probs: ``(n, K)`` calibration probabilities (rows sum to 1).
            labels: ``(n,)`` true classes in ``[0, K)``.

        Returns:
            ``self``, with ``quantile_`` and ``n_calibration_`` set.

        Raises:
            ValueError: invalid input, or fewer than ``ceil(1/alpha) - 1`` calibration samples (per
                class when ``class_conditional``).
        """
        p, y = _validate(probs, labels)
        n, k = p.shape
        need = min_calibration_samples(self.alpha)
        counts = np.bincount(y, minlength=k)
        if self.class_conditional:
            short = [j for j in range(k) if counts[j] < need]
            if short:
                detail = ", ".join(f"class {j} has {int(counts[j])}" for j in short)
                raise ValueError(
                    f"Too few calibration samples for class-conditional sets at alpha={self.alpha:g}: "
                    f"every class needs at least ceil(1/alpha) - 1 = {need}, but {detail}. Add labelled "
                    f"calibration images of those classes, use a larger alpha, or set "
                    f"class_conditional=False."
                )
        elif n < need:
            raise ValueError(
                f"Too few calibration samples at alpha={self.alpha:g}: need at least ceil(1/alpha) - 1 = "
                f"{need}, but got {n}. Add labelled calibration images or use a larger alpha."
            )
        cal = self._scores(p, 0)[np.arange(n), y]
        if self.class_conditional:
            q = np.array([_conformal_quantile(cal[y == j], self.alpha) for j in range(k)])
        else:
            q = _conformal_quantile(cal, self.alpha)
        self.quantile_ = q
        self.n_calibration_ = int(n)
        self.class_counts_ = counts.astype(np.int64)
        self.num_classes_ = int(k)
        self.calibration_scores_ = cal
        return self

    def predict_sets(self, probs: Any) -> np.ndarray:
        """Prediction sets of test probabilities: ``sets[i, j] = s(x_i, j) <= q`` (or ``<= q_j``).

        Args:
            probs: ``(M, K)`` probabilities with the same K as in :meth:`fit`.

        Returns:
            bool array ``(M, K)``; row ``i`` marks the classes in the set of sample ``i``.
        """
        if not hasattr(self, "quantile_"):
            raise ValueError(
                "This ConformalClassifier is not fitted yet: call fit(probs, labels) on labelled "
                "calibration probabilities before predict_sets."
            )
        p, _ = _validate(probs)
        if p.shape[1] != self.num_classes_:
            raise ValueError(
                f"`probs` has {p.shape[1]} classes (columns), but the classifier was fitted on "
                f"{self.num_classes_}; pass probabilities over the same classes."
            )
        q = np.asarray(self.quantile_, dtype=np.float64)
        return self._scores(p, 1) <= (q[None, :] if q.ndim else q)


def cross_fitted_sets(probs: Any, labels: Any, alpha: float = 0.1, score: str = "lac", **kwargs: Any) -> dict:
    """Coverage and set size of conformal sets on one labelled set, by two-fold cross-fitting.

    The samples are split by index parity into ``A = {0, 2, 4, ...}`` and ``B = {1, 3, 5, ...}``; a
    :class:`ConformalClassifier` fitted on A is measured on B and one fitted on B on A, and the two
    results are averaged: ``coverage = (cov(B | fit A) + cov(A | fit B)) / 2``, likewise the mean set
    size. Every sample is thus measured by sets calibrated without it. Use it when there is no
    separate calibration split; the guarantee applies to each half.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        alpha, score, **kwargs: as for :class:`ConformalClassifier`.

    Returns:
        ``{"alpha", "score", "coverage", "mean_set_size", "sets", "folds"}`` where ``sets`` is the
        ``(N, K)`` bool array of every sample's cross-fitted set and ``folds`` lists, for each
        direction, ``{"fit", "measure", "n_fit", "n_measure", "quantile", "coverage",
        "mean_set_size"}`` (``quantile`` a float or a list of K floats).

    Raises:
        ValueError: invalid input, or a half smaller than ``ceil(1/alpha) - 1`` (per class when
            ``class_conditional``).
    """
    p, y = _validate(probs, labels)
    n = p.shape[0]
    halves = {"even": np.arange(0, n, 2), "odd": np.arange(1, n, 2)}
    need = min_calibration_samples(alpha)
    if halves["odd"].size < need:
        raise ValueError(
            f"Too few samples for cross-fitted conformal sets at alpha={float(alpha):g}: each half "
            f"needs at least ceil(1/alpha) - 1 = {need}, but {n} samples give halves of "
            f"{halves['even'].size} and {halves['odd'].size}. Use more labelled images or a larger alpha."
        )
    folds = []
    all_sets = np.zeros(p.shape, dtype=bool)
    for fit, measure in (("even", "odd"), ("odd", "even")):
        a, b = halves[fit], halves[measure]
        cc = ConformalClassifier(alpha=alpha, score=score, **kwargs).fit(p[a], y[a])
        sets = cc.predict_sets(p[b])
        all_sets[b] = sets
        q = cc.quantile_
        folds.append({
            "fit": fit, "measure": measure, "n_fit": int(a.size), "n_measure": int(b.size),
            "quantile": [float(v) for v in q] if np.ndim(q) else float(q),
            "coverage": set_coverage(sets, y[b]), "mean_set_size": mean_set_size(sets),
        })
    return {
        "alpha": float(alpha), "score": cc.score,
        "coverage": float(np.mean([f["coverage"] for f in folds])),
        "mean_set_size": float(np.mean([f["mean_set_size"] for f in folds])),
        "sets": all_sets,
        "folds": folds,
    }
