"""The metric card: the calibration numbers a study reports besides ECE, and paired tests.

All functions are pure: they take predicted class probabilities and integer labels (the
conventions and the validation of :mod:`calibprompt.evaluation.metrics`: ``probs`` is
``(N, K)`` with rows summing to 1, ``labels`` is ``(N,)`` in ``[0, K)``, numpy arrays,
torch tensors or nested lists, everything computed in float64) and return numbers. They
never modify their inputs. Invalid input raises ``ValueError`` naming what is allowed.

Top-label quantities throughout: ``conf_i = max_k p_ik``, ``pred_i = argmax_k p_ik``
(first index on ties), ``correct_i = [pred_i == y_i]``.

Estimators
----------
* :func:`per_class_ece` - the CalibPrompt authors' per-class ECE: the top-label ECE inside
  the samples of one true (or one predicted) class.
* :func:`kde_ece` - the authors' KDE-based ECE (a leave-one-out Gaussian-kernel estimate
  of the accuracy at each confidence), with their settings.
* :func:`smooth_ece` - SmoothECE of Blasiok & Nakkiran (2023), computed by their
  ``relplot`` package.
* :func:`debiased_ece` - the debiased (squared) l2 calibration error of Kumar, Liang &
  Ma (2019).

Significance
------------
* :func:`paired_bootstrap` - two methods scored on the *same* test images: the images are
  resampled once per replicate and both methods are scored on that resample.
* :func:`seed_difference` - two methods trained with the same seeds: a paired t-test over
  seeds.

The authors' code referred to below is github.com/iabh1shekbasu/CalibPrompt (MIT),
files ``tools/metrics.py`` (``ECE``, ``ECE_KDE``) and ``evaluators/vl_evaluator.py``
(``VLClassification.evaluate``: the per-class ECE loops, ``ECE_KDE(..., p=1)``,
``CALIBRATION.METRICS.ECE_BINS = 10`` set in ``train.py``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np

from calibprompt.evaluation.metrics import (
    _bin_statistics,
    _bootstrap_index_chunks,
    _ce_from_sums,
    _check_real,
    _percentile_interval,
    _top_label,
    _uniform_bin_index,
    _validate,
    accuracy,
    expected_calibration_error,
)

__all__ = [
    "per_class_ece",
    "kde_ece",
    "smooth_ece",
    "debiased_ece",
    "paired_bootstrap",
    "seed_difference",
]

ALLOWED_BY = ("true", "predicted")
ALLOWED_METRICS = ("ece", "accuracy")
#: Kernel-matrix entries computed at once by :func:`kde_ece` (rows are processed in blocks).
_KDE_CHUNK_ELEMS = 4_000_000
#: Floor of a kernel row sum in :func:`kde_ece` (the authors' ``torch.clamp(min=1e-10)``).
_KDE_MIN_ROW_SUM = 1e-10


# ---------------------------------------------------------------------------
# Per-class ECE (the authors' definition)
# ---------------------------------------------------------------------------
def per_class_ece(probs: Any, labels: Any, by: str = "true", n_bins: int = 10) -> np.ndarray:
    """Top-label ECE inside each class's samples (the CalibPrompt authors' per-class ECE).

    For class ``k`` let ``S_k = {i : y_i = k}`` (``by="true"``, "ground-truth based") or
    ``S_k = {i : pred_i = k}`` (``by="predicted"``, "prediction based"). Then

    ``ECE_k = sum_b (n_bk / |S_k|) * |acc_bk - conf_bk|``

    over the non-empty equal-width bins ``b`` of the top-label confidences ``conf_i``,
    ``i in S_k``, where ``acc_bk`` and ``conf_bk`` are the mean of ``correct_i`` and of
    ``conf_i`` over the samples of ``S_k`` in bin ``b``. ``ECE_k`` is NaN when ``S_k`` is
    empty (a class absent from the labels, or never predicted). With ``by="predicted"``
    every sample of ``S_k`` predicts ``k``, so ``acc_bk`` is the precision of class ``k``
    in that bin.

    This is *not* Kull et al.'s one-vs-rest classwise ECE
    (:func:`calibprompt.evaluation.metrics.classwise_ece`), which bins ``p[:, k]`` of all
    N samples against ``[y == k]``.

    Source and differences: the authors' ``VLClassification.evaluate``
    (``evaluators/vl_evaluator.py``) calls ``tools/metrics.py::ECE(confs[S_k],
    preds[S_k], labels[S_k], 10)`` for every class present in the labels. That ``ECE``
    bins with ``np.digitize(conf, linspace(0, 1, 11)) - 1``, which puts a confidence of
    exactly 1.0 into an 11th index that no bin reads: such samples are left out of the
    last bin's accuracy and confidence but counted in its weight (taken from
    ``np.histogram``, whose last bin is closed). Here the project's bins are used
    instead (``numpy.histogram`` bins, the last one closed, a confidence of 1.0 counted
    in the last bin's weight *and* averages), so the two agree except when some
    ``conf_i == 1.0`` (common for fp16 models). The authors also report only the classes
    present in the test labels and average them with ``np.mean`` (NaN if some present
    class is never predicted); here all K classes are returned, so use ``np.nanmean``
    for their average.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        by: ``"true"`` (group by the true class) or ``"predicted"`` (by the predicted one).
        n_bins: positive int, equal-width bins on ``[0, 1]`` (the authors use 10).

    Returns:
        float64 array ``(K,)``, each in ``[0, 1]`` or NaN.
    """
    if not isinstance(by, str) or by not in ALLOWED_BY:
        raise ValueError(
            f"`by` must be one of {ALLOWED_BY} ('true' = samples of each true class, "
            f"'predicted' = samples predicted as each class), but got {by!r}."
        )
    p, y = _validate(probs, labels, n_bins=n_bins)
    conf, correct = _top_label(p, y)
    group = y if by == "true" else np.argmax(p, axis=1)
    out = np.full(p.shape[1], np.nan, dtype=np.float64)
    for k in range(p.shape[1]):
        sel = group == k
        if not sel.any():
            continue
        _, counts, a, c = _bin_statistics(conf[sel], correct[sel], int(n_bins), "uniform")
        out[k] = _ce_from_sums(counts, a, c, "l1")
    return out


# ---------------------------------------------------------------------------
# KDE-based ECE (the authors' ECE_KDE)
# ---------------------------------------------------------------------------
def _authors_bandwidth(n: int) -> float:
    if n < 100:
        return 0.3
    if n < 500:
        return 0.2
    if n < 2000:
        return 0.1
    return 0.05


def kde_ece(probs: Any, labels: Any, p: float = 1, bandwidth: float | None = None) -> float:
    """KDE-based top-label ECE, with the CalibPrompt authors' settings.

    The accuracy at each sample's confidence is estimated by leave-one-out
    Nadaraya-Watson kernel regression of the correctness on the top-label confidence,
    and the estimate is compared with the confidence:

    ``w_ij = exp(-(conf_i - conf_j)^2 / (2 h^2))`` for ``j != i``, ``w_ii = 0``;
    ``acc_hat_i = sum_j w_ij correct_j / max(sum_j w_ij, 1e-10)``;
    ``KDE-ECE = (1/N) sum_i |conf_i - acc_hat_i|^p``.

    Settings, as in the authors' ``tools/metrics.py::ECE_KDE`` (called from
    ``evaluators/vl_evaluator.py`` as ``ECE_KDE(confs, preds, labels, p=1)``):

    * top-label (``conf = max_k p_k``, outcome ``[pred == y]``), not canonical;
    * Gaussian kernel on the confidence (no boundary correction), unnormalised (the
      constant cancels in the ratio);
    * bandwidth ``h`` by test-set size when not given: 0.3 for ``N < 100``, 0.2 for
      ``N < 500``, 0.1 for ``N < 2000``, else 0.05;
    * leave-one-out (the kernel's diagonal is zeroed); row sums floored at ``1e-10``, so
      a sample with no neighbour within reach (e.g. ``N == 1``) gets ``acc_hat = 0``;
    * ``p = 1`` in the paper; the mean of ``|.|^p`` is returned *without* the p-th root.

    Their docstring cites Popordanoska et al. (NeurIPS 2022, "A Consistent and
    Differentiable Lp Canonical Calibration Error Estimator"), but what it computes (and
    what this function reproduces) is the Gaussian-kernel top-label estimate above, not
    that paper's Dirichlet-kernel canonical estimator. The authors compute in float32
    torch; this is float64 numpy, so values agree to about 1e-6.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        p: the power, a finite number >= 1 (1 in the paper).
        bandwidth: the kernel width ``h > 0``; ``None`` for the authors' rule above.

    Returns:
        float in ``[0, 1]``.
    """
    pw = _check_real(p, "p")
    if pw < 1.0:
        raise ValueError(f"`p` must be a finite number >= 1 (1 = L1, as in the paper), but got {p!r}.")
    P, y = _validate(probs, labels)
    conf, correct = _top_label(P, y)
    n = conf.shape[0]
    if bandwidth is None:
        h = _authors_bandwidth(n)
    else:
        h = _check_real(bandwidth, "bandwidth")
        if not h > 0.0:
            raise ValueError(f"`bandwidth` must be a finite number > 0 or None, but got {bandwidth!r}.")
    est = np.empty(n, dtype=np.float64)
    block = max(1, _KDE_CHUNK_ELEMS // n)
    inv = 1.0 / (2.0 * h * h)
    for start in range(0, n, block):
        stop = min(n, start + block)
        d = conf[start:stop, None] - conf[None, :]
        w = np.exp(-(d * d) * inv)
        w[np.arange(stop - start), np.arange(start, stop)] = 0.0  # leave one out
        est[start:stop] = (w @ correct) / np.maximum(w.sum(axis=1), _KDE_MIN_ROW_SUM)
    return float(np.mean(np.abs(conf - est) ** pw))


# ---------------------------------------------------------------------------
# SmoothECE (relplot)
# ---------------------------------------------------------------------------
def smooth_ece(probs: Any, labels: Any, sigma: float | None = None) -> float:
    """SmoothECE of the top-label confidence (Blasiok & Nakkiran 2023), via ``relplot``.

    With a reflected Gaussian kernel ``K_s`` on ``[0, 1]`` (reflected at 0 and 1),
    ``r_s(t) = sum_i K_s(t, conf_i) (conf_i - correct_i) / sum_i K_s(t, conf_i)`` and
    ``d_s(t) = (1/N) sum_i K_s(t, conf_i)``,

    ``smECE_s = integral_0^1 |r_s(t)| d_s(t) dt``,

    and SmoothECE is ``smECE_s*`` at the bandwidth ``s*`` with ``smECE_s* = s*`` (the
    fixed point, found by bisection). Computed by ``relplot.smECE(conf, correct)``
    (Apple's reference implementation, which rounds the samples onto a grid and
    convolves; its default kernel, ``ReflectedGaussianKernel``), or by
    ``relplot.smECE_sigma(conf, correct, sigma)`` at a fixed bandwidth.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        sigma: ``None`` for the automatic (fixed-point) bandwidth, or a fixed ``s > 0``.

    Returns:
        float in ``[0, 1]``.
    """
    if sigma is not None:
        s = _check_real(sigma, "sigma")
        if not 0.0 < s <= 1.0:
            raise ValueError(f"`sigma` must be None or a number in (0, 1], but got {sigma!r}.")
    P, y = _validate(probs, labels)
    conf, correct = _top_label(P, y)
    try:
        import relplot
    except ImportError as exc:  # pragma: no cover - relplot is a dependency
        raise RuntimeError(f"smooth_ece needs the `relplot` package (pip install relplot): {exc}") from None
    if sigma is None:
        value = relplot.smECE(conf, correct)
    else:
        value = relplot.smECE_sigma(conf, correct, float(sigma))
    return float(value)


# ---------------------------------------------------------------------------
# Debiased l2 ECE (Kumar, Liang & Ma 2019)
# ---------------------------------------------------------------------------
def debiased_ece(
    probs: Any, labels: Any, n_bins: int = 15, strategy: str = "quantile", squared: bool = False
) -> float:
    """Debiased l2 top-label calibration error (Kumar, Liang & Ma, NeurIPS 2019).

    The plug-in estimate of the squared l2 error, ``sum_b (n_b / N) (conf_b - acc_b)^2``,
    is biased upwards: ``acc_b`` is a mean of ``n_b`` coin flips, so even a calibrated
    model scores about ``sum_b (n_b / N) acc_b (1 - acc_b) / n_b``. The debiased
    estimate subtracts an unbiased estimate of that variance in every bin:

    ``D = sum_b (n_b / N) [ (conf_b - acc_b)^2 - acc_b (1 - acc_b) / (n_b - 1) ]``,

    where bins with ``n_b < 2`` contribute 0. Returned: ``sqrt(max(D, 0))`` (the l2
    calibration error, as the authors' ``calibration`` package's
    ``get_calibration_error(probs, labels, p=2, debias=True, mode="top-label")``), or
    with ``squared=True`` the raw ``D`` itself, which may be negative: it is the
    (approximately) unbiased estimate of the squared error, so its mean over repeated
    test sets is near the truth (near 0 for a calibrated model) while the root, clipped
    at 0, is still biased upwards for small errors.

    Settings as in that package for continuous scores: 15 bins, equal-mass, top-label.
    Equal-mass bins follow this project's convention (the stably sorted confidences cut
    by ``np.array_split``), which equals the package's bins when confidences are
    distinct; tied confidences may here be split between two bins.
    ``strategy="uniform"`` uses the equal-width numpy.histogram bins of the ECE.

    Args:
        probs: ``(N, K)`` probabilities. labels: ``(N,)`` ints in ``[0, K)``.
        n_bins: positive int (15 as in Kumar et al.).
        strategy: ``"quantile"`` (equal mass, default) or ``"uniform"`` (equal width).
        squared: return ``D`` (may be < 0) instead of ``sqrt(max(D, 0))``.

    Returns:
        float: in ``[0, 1]``, or in ``[-1, 1]`` with ``squared=True``.
    """
    if not isinstance(squared, (bool, np.bool_)):
        raise ValueError(f"`squared` must be True or False, but got {squared!r}.")
    p, y = _validate(probs, labels, n_bins=n_bins, strategy=strategy)
    conf, correct = _top_label(p, y)
    _, counts, a_sum, c_sum = _bin_statistics(conf, correct, int(n_bins), strategy)
    n = float(conf.shape[0])
    use = counts >= 2
    nb = counts[use].astype(np.float64)
    acc = a_sum[use] / nb
    cf = c_sum[use] / nb
    d = float(np.sum(nb / n * ((cf - acc) ** 2 - acc * (1.0 - acc) / (nb - 1.0))))
    if squared:
        return d
    return math.sqrt(max(d, 0.0))


# ---------------------------------------------------------------------------
# Paired significance
# ---------------------------------------------------------------------------
def _ece_rows(conf: np.ndarray, correct: np.ndarray, ubin: np.ndarray, idx: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE of each resample (row of ``idx``); uniform bins stay fixed per sample."""
    b, n = idx.shape
    offs = (np.arange(b) * n_bins)[:, None]
    flat = (ubin[idx] + offs).ravel()
    cnt = np.bincount(flat, minlength=b * n_bins).reshape(b, n_bins)
    asum = np.bincount(flat, weights=correct[idx].ravel(), minlength=b * n_bins).reshape(b, n_bins)
    csum = np.bincount(flat, weights=conf[idx].ravel(), minlength=b * n_bins).reshape(b, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(cnt > 0, np.abs(asum / cnt - csum / cnt), 0.0)
    return np.sum(cnt / n * gap, axis=1)


def _p_value(observed: float, replicates: np.ndarray) -> float:
    if observed > 0:
        share = float(np.mean(replicates <= 0.0))
    elif observed < 0:
        share = float(np.mean(replicates >= 0.0))
    else:
        return 1.0
    return min(1.0, 2.0 * share)


def _metric_name(metric: Any) -> str:
    """The name of a paired bootstrap's metric: one of :data:`ALLOWED_METRICS`, or a callable's name."""
    if callable(metric):
        return getattr(metric, "__name__", type(metric).__name__)
    if isinstance(metric, str) and metric in ALLOWED_METRICS:
        return metric
    raise ValueError(
        f"`metric` must be one of {ALLOWED_METRICS} or a callable (probs, labels) -> float, "
        f"but got {metric!r}."
    )


def _paired_differences(metric: Any, pa: np.ndarray, pb: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                        n_boot: int, n_bins: int) -> tuple[float, float, np.ndarray]:
    """``(metric(a), metric(b), d*)``: the two values on all images and the ``n_boot`` paired differences
    over the same resamples (ECE and accuracy vectorised over blocks of resamples; a callable one by one)."""
    n = pa.shape[0]
    diffs = np.empty(n_boot, dtype=np.float64)
    j = 0
    if metric == "ece":
        value_a = expected_calibration_error(pa, y, n_bins=n_bins)
        value_b = expected_calibration_error(pb, y, n_bins=n_bins)
        tops = [_top_label(q, y) for q in (pa, pb)]
        bins = [_uniform_bin_index(c, n_bins) for c, _ in tops]
        for idx in _bootstrap_index_chunks(rng, n, n_boot):
            da = _ece_rows(tops[0][0], tops[0][1], bins[0], idx, n_bins)
            db = _ece_rows(tops[1][0], tops[1][1], bins[1], idx, n_bins)
            diffs[j : j + idx.shape[0]] = da - db
            j += idx.shape[0]
    elif metric == "accuracy":
        value_a, value_b = accuracy(pa, y), accuracy(pb, y)
        ca, cb = _top_label(pa, y)[1], _top_label(pb, y)[1]
        for idx in _bootstrap_index_chunks(rng, n, n_boot):
            diffs[j : j + idx.shape[0]] = ca[idx].mean(axis=1) - cb[idx].mean(axis=1)
            j += idx.shape[0]
    else:
        value_a, value_b = float(metric(pa, y)), float(metric(pb, y))
        for block in _bootstrap_index_chunks(rng, n, n_boot):
            for idx in block:
                diffs[j] = float(metric(pa[idx], y[idx])) - float(metric(pb[idx], y[idx]))
                j += 1
    return value_a, value_b, diffs


def paired_bootstrap(
    probs_a: Any,
    probs_b: Any,
    labels: Any,
    metric: str | Callable[[np.ndarray, np.ndarray], float] = "ece",
    n_boot: int = 2000,
    seed: int | None = 0,
    n_bins: int = 10,
    level: float = 0.95,
) -> dict:
    """Paired bootstrap of ``metric(a) - metric(b)`` over the same test images.

    Both methods are scored on the same N test images (row ``i`` of ``probs_a`` and of
    ``probs_b`` is the same image, with label ``labels[i]``). Each replicate draws one
    resample of the images, ``idx = rng.integers(0, N, size=N)`` with
    ``rng = np.random.default_rng(seed)`` (the index stream of
    :func:`calibprompt.evaluation.metrics.bootstrap_interval`), and computes
    ``d* = metric(probs_a[idx], labels[idx]) - metric(probs_b[idx], labels[idx])``:
    the pairing keeps the between-image variation out of the difference.

    * ``difference`` = ``metric(a) - metric(b)`` on all N images (for ECE, negative
      means a is better calibrated; for accuracy, positive means a is more accurate);
    * ``interval`` = the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the
      ``n_boot`` values ``d*`` (percentile interval, numpy's linear interpolation);
    * ``p_value`` (two-sided) = twice the share of ``d*`` on the other side of 0 from
      ``difference`` (``d* <= 0`` when ``difference > 0``, ``d* >= 0`` when it is < 0;
      ties at 0 count as the other side), capped at 1; exactly 1 when ``difference``
      is 0. Its resolution is ``2 / n_boot``: 0 means "below that";
    * ``significant`` = the interval excludes 0 (``lo > 0`` or ``hi < 0``).

    Args:
        probs_a, probs_b: ``(N, K)`` probabilities of the two methods, same shape.
        labels: ``(N,)`` ints in ``[0, K)``.
        metric: ``"ece"`` (:func:`~calibprompt.evaluation.metrics.expected_calibration_error`
            with ``n_bins``), ``"accuracy"``, or a callable ``(probs, labels) -> float``.
        n_boot: int >= 1 replicates. seed: int, or None for fresh entropy.
        n_bins: bins of the ECE (ignored for other metrics).
        level: interval coverage in ``(0, 1)``.

    Returns:
        dict with ``metric`` (its name), ``value_a``, ``value_b``, ``difference``,
        ``interval`` (``(lo, hi)``), ``p_value``, ``significant``, ``n_boot``, ``level``.
    """
    name = _metric_name(metric)
    pa, y = _validate(probs_a, labels, n_bins=n_bins, n_boot=n_boot, level=level)
    pb, _ = _validate(probs_b, labels)
    if pa.shape != pb.shape:
        raise ValueError(
            f"`probs_a` and `probs_b` must have the same shape (the same N test images and K classes), "
            f"but got {pa.shape} and {pb.shape}."
        )
    n_bins, n_boot, level = int(n_bins), int(n_boot), float(level)
    rng = np.random.default_rng(seed)
    value_a, value_b, diffs = _paired_differences(metric, pa, pb, y, rng, n_boot, n_bins)
    difference = float(value_a - value_b)
    lo, hi = _percentile_interval(diffs, level)
    return {
        "metric": name,
        "value_a": float(value_a),
        "value_b": float(value_b),
        "difference": difference,
        "interval": (lo, hi),
        "p_value": _p_value(difference, diffs),
        "significant": bool(lo > 0.0 or hi < 0.0),
        "n_boot": n_boot,
        "level": level,
    }


def _seed_values(values: Any, name: str) -> tuple[list, np.ndarray]:
    """Keys (seeds or positions) and float values of a per-seed sequence or mapping."""
    if isinstance(values, Mapping):
        keys = list(values)
        raw = [values[k] for k in keys]
    elif isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise ValueError(
            f"`{name}` must be a list of one metric value per seed or a dict {{seed: value}}, "
            f"but got {type(values).__name__}."
        )
    else:
        raw = list(np.asarray(values).ravel()) if isinstance(values, np.ndarray) else list(values)
        keys = list(range(len(raw)))
    out = []
    for k, v in zip(keys, raw):
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise ValueError(f"`{name}` must hold finite numbers, but the value for seed {k!r} is {v!r}.")
        out.append(float(v))
    if not out:
        raise ValueError(f"`{name}` is empty; pass one value per seed.")
    return keys, np.asarray(out, dtype=np.float64)


def seed_difference(values_a: Any, values_b: Any, alpha: float = 0.05) -> dict:
    """Difference of two methods over training seeds, paired by seed.

    ``values_a[s]`` and ``values_b[s]`` are one metric (e.g. the test ECE) of methods a and
    b trained with seed ``s``. Pass two lists in the same seed order, or two dicts
    ``{seed: value}`` with the same seeds (paired by key, in the order of ``values_a``).
    With ``d_s = a_s - b_s`` over the S seeds:

    * ``mean_difference`` = ``mean_s d_s``;
    * ``std`` = the sample standard deviation of ``d_s`` (``ddof=1``; ``None`` for one seed);
    * ``t_statistic`` and ``p_value`` = ``scipy.stats.ttest_rel(a, b)`` (two-sided paired
      t-test, ``S - 1`` degrees of freedom), for ``S >= 2``; ``None`` for one seed. When
      all ``d_s`` are equal the t-test is degenerate: all zero gives ``t = 0, p = 1``;
      a constant non-zero difference gives scipy's ``t = +-inf, p = 0``;
    * ``significant`` = ``p_value < alpha`` (False without a p-value).

    Args:
        values_a, values_b: one finite number per seed (lists or ``{seed: value}`` dicts).
        alpha: significance level in ``(0, 1)``.

    Returns:
        dict with ``n_seeds``, ``seeds``, ``differences`` (list), ``mean_difference``,
        ``std``, ``t_statistic``, ``p_value``, ``significant``.
    """
    a_level = _check_real(alpha, "alpha")
    if not 0.0 < a_level < 1.0:
        raise ValueError(f"`alpha` must lie in the open interval (0, 1), but got {alpha!r}.")
    if isinstance(values_a, Mapping) != isinstance(values_b, Mapping):
        raise ValueError("`values_a` and `values_b` must both be lists or both be {seed: value} dicts.")
    keys_a, a = _seed_values(values_a, "values_a")
    keys_b, b = _seed_values(values_b, "values_b")
    if isinstance(values_a, Mapping):
        if set(keys_a) != set(keys_b):
            raise ValueError(
                f"`values_a` and `values_b` must have the same seeds, but got {sorted(map(str, keys_a))} "
                f"and {sorted(map(str, keys_b))}."
            )
        b = np.asarray([float(values_b[k]) for k in keys_a], dtype=np.float64)
    elif a.shape[0] != b.shape[0]:
        raise ValueError(
            f"`values_a` and `values_b` must have one value per seed each, paired by position, but got "
            f"{a.shape[0]} and {b.shape[0]} values."
        )
    d = a - b
    s = int(d.shape[0])
    std = float(np.std(d, ddof=1)) if s >= 2 else None
    t_stat: float | None = None
    p_value: float | None = None
    if s >= 2:
        if np.all(d == d[0]):
            if d[0] == 0.0:
                t_stat, p_value = 0.0, 1.0
            else:
                t_stat, p_value = math.copysign(math.inf, float(d[0])), 0.0
        else:
            from scipy.stats import ttest_rel

            res = ttest_rel(a, b)
            t_stat, p_value = float(res.statistic), float(res.pvalue)
    return {
        "n_seeds": s,
        "seeds": keys_a,
        "differences": [float(v) for v in d],
        "mean_difference": float(np.mean(d)),
        "std": std,
        "t_statistic": t_stat,
        "p_value": p_value,
        "significant": bool(p_value is not None and p_value < a_level),
    }
