"""Post-hoc calibrators: maps fitted on labelled logits that turn logits into better-calibrated probabilities.

Each calibrator is a pure pair of functions (``fit_...`` returning plain parameters, and the map that
applies them) and a thin class over them, kept in a plain-dict registry (:func:`list_calibrators`,
:func:`get_calibrator`, :func:`create_calibrator`). All work on float64 numpy arrays:

* ``logits`` ``(N, K)``, finite, ``K >= 2``; ``labels`` ``(N,)`` ints in ``[0, K)`` (checked with
  :mod:`calibprompt.evaluation.validation`, the checks every evaluation module uses);
* ``transform`` returns probabilities ``(N, K)`` whose rows sum to 1.

=============  =====================================================================  ============
name           map (``z`` logits, ``p = softmax(z)``)                                 keeps argmax
=============  =====================================================================  ============
temperature    ``softmax(z / T)``                                                      yes
vector         ``softmax(w * z + b)``, ``w, b`` in R^K                                 no
dirichlet      ``softmax(W log p + b)`` with ODIR regularisation                       no
histogram      top-label confidence -> its equal-mass bin's accuracy                   yes
isotonic       ``IsotonicRegression`` per class on ``p[:, k]``, rows renormalised      no
dac            ``softmax(s_pred * z / T)``, ``s`` from text-feature distances          yes
=============  =====================================================================  ============

Cross-fitting (:func:`cross_fit`, what the app's Calibration tab and ``calibprompt evaluate`` use): fit on
the even-indexed images, apply to the odd-indexed ones, and the reverse. :func:`calibrator_reports` gives one metrics row per
calibrator (fractions, not percent), after the raw row ``"none"``.

Small data. Each half needs at least 2 images (else ``ValueError``). A half that lacks a class is
*not* an error (documented fallback): vector and Dirichlet scaling keep every parameter within
``[-PARAM_BOUND, PARAM_BOUND]`` (L-BFGS-B bounds), so a class never seen gets a finite, very low
bias instead of running off to minus infinity, and perfectly separable halves give finite maps;
isotonic regression maps an unseen class to 0 (rows that would sum to 0 become uniform); histogram
binning and temperature scaling do not look at classes.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

from calibprompt import defaults
from calibprompt.evaluation import validation as V
from calibprompt.evaluation.metrics import apply_temperature, calibration_report, fit_temperature

__all__ = [
    "PARAM_BOUND", "Calibrator", "TemperatureCalibrator", "VectorScaling", "DirichletCalibrator",
    "HistogramBinning", "IsotonicCalibrator", "DACCalibrator", "CrossFit", "list_calibrators",
    "get_calibrator", "create_calibrator", "parse_calibrators", "cross_fit", "calibrator_reports", "fit_vector_scaling",
    "vector_scaling", "fit_dirichlet", "dirichlet_scaling", "fit_histogram_binning", "histogram_binning",
    "fit_isotonic", "isotonic_calibration", "dac_class_scales",
]

#: Every vector / Dirichlet parameter is kept in [-PARAM_BOUND, PARAM_BOUND] (finite fits on tiny halves).
PARAM_BOUND = 100.0
#: The histogram-binned top-label probability is kept this far above the runner-up's share.
_ARGMAX_MARGIN = 1e-9


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------
def _check_logits(logits: Any, labels: Any = None, *, need_labels: bool = True) -> tuple[np.ndarray, Any]:
    """``(N, K)`` finite logits with ``K >= 2`` (and ``(N,)`` labels in ``[0, K)``) as float64 / int64."""
    z = V.check_scores(logits, "logits")
    if z.shape[1] < 2:
        raise ValueError(f"`logits` must have at least 2 columns (classes), but got shape {z.shape}.")
    if not need_labels:
        return z, None
    return z, V.check_labels(labels, z.shape[0], z.shape[1], "logits")


def _nll_and_grad(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean NLL of ``softmax(scores)`` and its gradient ``(P - Y) / N`` with respect to ``scores``."""
    logp = log_softmax(scores, axis=1)
    n = scores.shape[0]
    g = np.exp(logp)
    g[np.arange(n), y] -= 1.0
    return float(-np.mean(logp[np.arange(n), y])), g / n


def _lbfgsb(fun, x0: np.ndarray, max_iter: int) -> np.ndarray:
    """``scipy.optimize.minimize(method="L-BFGS-B")`` with an analytic gradient, within ``PARAM_BOUND``."""
    bounds = [(-PARAM_BOUND, PARAM_BOUND)] * x0.size
    res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": int(max_iter), "ftol": 1e-12, "gtol": 1e-8})
    return np.asarray(res.x, dtype=np.float64)


# ---------------------------------------------------------------------------
# Vector scaling (Guo et al., ICML 2017, section 4.2)
# ---------------------------------------------------------------------------
def vector_scaling(logits: Any, w: Any, b: Any) -> np.ndarray:
    """Vector scaling ``softmax(w * z + b)`` (``w, b`` of shape ``(K,)``, broadcast over rows).

    Args:
        logits: ``(N, K)`` finite logits ``z``. w, b: ``(K,)`` scales and biases.

    Returns:
        ``(N, K)`` probabilities.
    """
    z, _ = _check_logits(logits, need_labels=False)
    return softmax(z * np.asarray(w, np.float64)[None, :] + np.asarray(b, np.float64)[None, :], axis=1)


def fit_vector_scaling(logits: Any, labels: Any, max_iter: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Fit vector scaling by minimising the mean NLL of ``softmax(w * z + b)`` (Guo et al., ICML 2017).

    L-BFGS-B from the identity (``w = 1``, ``b = 0``), analytic gradient
    ``dL/dw_k = sum_i G_ik z_ik``, ``dL/db_k = sum_i G_ik`` with ``G = (softmax - onehot) / N``; every
    parameter within ``[-PARAM_BOUND, PARAM_BOUND]``. The result is returned only if its NLL is no worse
    than the identity's, so the fitted NLL never exceeds the raw one on the fitting data.
    (dirichletcal's ``calib/vectorscaling.py`` fits the same map on log-probabilities.)

    Returns:
        ``(w, b)``, each ``(K,)``.
    """
    z, y = _check_logits(logits, labels)
    V.check_int(max_iter, "max_iter", 1)
    k = z.shape[1]

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:k], theta[k:]
        loss, g = _nll_and_grad(z * w + b, y)
        return loss, np.concatenate([(g * z).sum(axis=0), g.sum(axis=0)])

    x0 = np.concatenate([np.ones(k), np.zeros(k)])
    theta = _lbfgsb(fun, x0, max_iter)
    if fun(theta)[0] > fun(x0)[0]:
        theta = x0
    return theta[:k].copy(), theta[k:].copy()


# ---------------------------------------------------------------------------
# Dirichlet calibration with ODIR (Kull et al., NeurIPS 2019)
# ---------------------------------------------------------------------------
def dirichlet_scaling(logits: Any, W: Any, b: Any) -> np.ndarray:
    """Dirichlet calibration map ``softmax(log softmax(z) @ W.T + b)``.

    Args:
        logits: ``(N, K)`` logits. W: ``(K, K)`` matrix (row ``j`` gives class ``j``'s score). b: ``(K,)``.

    Returns:
        ``(N, K)`` probabilities.
    """
    z, _ = _check_logits(logits, need_labels=False)
    x = log_softmax(z, axis=1)
    return softmax(x @ np.asarray(W, np.float64).T + np.asarray(b, np.float64)[None, :], axis=1)


def fit_dirichlet(
    logits: Any, labels: Any, reg_lambda: float = 1e-2, reg_mu: float | None = None, max_iter: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """Fit Dirichlet calibration (matrix scaling on log-probabilities) with ODIR regularisation.

    Minimises (Kull et al., "Beyond temperature scaling", NeurIPS 2019, eq. for ODIR)::

        L(W, b) = mean_i -log softmax(W x_i + b)_{y_i}
                  + reg_lambda * sum_{i != j} W_ij^2 + reg_mu * sum_j b_j^2,      x_i = log softmax(z_i)

    the penalty of the authors' Keras ``Dirichlet_NN`` (dirichletcal/experiments_dnn,
    ``scripts/calibration/cal_methods.py``: an off-diagonal L2 on the kernel and an L2 on the bias, with
    ``mu = lambda`` when ``mu`` is None); dirichletcal's ``calib/multinomial.py`` has the same ODIR terms
    (divided by ``K(K-1)`` and ``K`` when ``reg_norm``). The authors pick ``lambda, mu`` by cross-validation
    (their library default is no regularisation); ``1e-2`` here is this project's default for the small
    evaluation sets of medical tasks. The diagonal is free (so temperature scaling is in the family).
    L-BFGS-B from the identity, analytic gradient, parameters within ``[-PARAM_BOUND, PARAM_BOUND]``.
    Unlike dirichletcal, no reference row is fixed (the intercept penalty makes the optimum unique).

    Returns:
        ``(W, b)`` with shapes ``(K, K)`` and ``(K,)``.
    """
    z, y = _check_logits(logits, labels)
    lam = V.check_real(reg_lambda, "reg_lambda")
    mu = lam if reg_mu is None else V.check_real(reg_mu, "reg_mu")
    if lam < 0 or mu < 0:
        raise ValueError(f"`reg_lambda` and `reg_mu` must be >= 0, but got {reg_lambda!r} and {reg_mu!r}.")
    V.check_int(max_iter, "max_iter", 1)
    x = log_softmax(z, axis=1)
    k = z.shape[1]
    off = 1.0 - np.eye(k)

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[: k * k].reshape(k, k), theta[k * k:]
        loss, g = _nll_and_grad(x @ W.T + b, y)
        loss += lam * np.sum((W * off) ** 2) + mu * np.sum(b ** 2)
        dW = g.T @ x + 2.0 * lam * W * off
        return loss, np.concatenate([dW.ravel(), g.sum(axis=0) + 2.0 * mu * b])

    theta = _lbfgsb(fun, np.concatenate([np.eye(k).ravel(), np.zeros(k)]), max_iter)
    return theta[: k * k].reshape(k, k).copy(), theta[k * k:].copy()


# ---------------------------------------------------------------------------
# Histogram binning of the top-label confidence (Zadrozny & Elkan 2001; Kumar et al. 2019)
# ---------------------------------------------------------------------------
def _bin_of(conf: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index with ``numpy.histogram`` semantics: ``e_i <= c < e_{i+1}``, the last bin closed."""
    return np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, edges.size - 2)


def fit_histogram_binning(conf: Any, correct: Any, n_bins: int = defaults.N_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-mass histogram binning of top-label confidences.

    Edges: the confidences are stably sorted and cut into ``min(n_bins, N)`` groups with
    :func:`numpy.array_split` (the project's equal-mass convention, as ACE); the edge between two groups is
    the midpoint of the last confidence of one and the first of the next, the outer edges are 0 and 1.
    Each bin's value is the accuracy (mean of ``correct``) of the fitting confidences that fall in it
    under the same edges (``e_i <= c < e_{i+1}``, last bin closed: ``numpy.histogram`` semantics; not
    ``scipy.stats.binned_statistic``, which refuses the zero-width bins that tied confidences give). A bin
    left empty by ties gets its midpoint, as netcal's ``HistogramBinning`` fills empty bins.

    Args:
        conf: ``(N,)`` confidences in ``[0, 1]``. correct: ``(N,)`` 0/1. n_bins: int >= 1.

    Returns:
        ``(edges, accuracy, counts)`` with shapes ``(B + 1,)``, ``(B,)``, ``(B,)``, ``B = min(n_bins, N)``.
    """
    V.check_int(n_bins, "n_bins", 1)
    c = V.check_vector(conf, "conf")
    ok = V.check_vector(correct, "correct")
    if c.size == 0 or c.size != ok.size:
        raise ValueError(f"`conf` and `correct` must be non-empty and of equal length, got {c.size} and {ok.size}.")
    groups = np.array_split(np.sort(c, kind="stable"), min(int(n_bins), c.size))
    inner = [(g[-1] + h[0]) / 2.0 for g, h in zip(groups[:-1], groups[1:])]
    edges = np.array([0.0, *inner, 1.0])
    idx = _bin_of(c, edges)
    counts = np.bincount(idx, minlength=edges.size - 1)
    hits = np.bincount(idx, weights=ok, minlength=edges.size - 1)
    mid = 0.5 * (edges[:-1] + edges[1:])
    acc = np.where(counts > 0, hits / np.maximum(counts, 1), mid)
    return edges, acc, counts.astype(np.int64)


def histogram_binning(probs: Any, edges: Any, accuracy: Any) -> np.ndarray:
    """Apply top-label histogram binning to probabilities.

    The predicted class ``t = argmax p`` is kept; its probability becomes ``a`` = the accuracy of the bin
    of ``p_t``, and the other classes share ``1 - a`` in proportion to their probabilities
    (``p_j (1 - a) / (1 - p_t)``; equally when ``p_t = 1``). This choice of the remaining mass is the
    project's (top-label calibration, Kumar et al. 2019, defines only ``a``). So that the predicted class
    stays the argmax, ``a`` is floored at ``r / (1 + r) + 1e-9`` with ``r`` the runner-up's share
    ``max_{j != t} p_j / (1 - p_t)`` (it binds only where a bin's accuracy is below that level;
    for K = 2 it is 0.5).

    Args:
        probs: ``(N, K)`` probabilities. edges: ``(B + 1,)``. accuracy: ``(B,)``.

    Returns:
        ``(N, K)`` probabilities with the same argmax as ``probs``.
    """
    p = V.check_scores(probs, "probs")
    n, k = p.shape
    rows = np.arange(n)
    top = np.argmax(p, axis=1)
    rest = 1.0 - p[rows, top]
    share = p.copy()
    share[rows, top] = 0.0
    degenerate = rest <= 1e-12
    share[degenerate] = 1.0 / (k - 1)
    share[degenerate, top[degenerate]] = 0.0
    share /= share.sum(axis=1, keepdims=True)  # shares of the remaining mass, summing to 1 per row
    r = share.max(axis=1)
    a = np.asarray(accuracy, np.float64)[_bin_of(p[rows, top], np.asarray(edges, np.float64))]
    a = np.minimum(np.maximum(a, r / (1.0 + r) + _ARGMAX_MARGIN), 1.0)
    out = share * (1.0 - a)[:, None]
    out[rows, top] = a
    return out


# ---------------------------------------------------------------------------
# Isotonic regression, one-vs-rest (Zadrozny & Elkan, KDD 2002)
# ---------------------------------------------------------------------------
def fit_isotonic(probs: Any, labels: Any) -> list:
    """One ``sklearn.isotonic.IsotonicRegression(out_of_bounds="clip")`` per class, fitted on
    ``(p[:, k], [y == k])`` (Zadrozny & Elkan 2002, one-vs-rest).

    Returns:
        the K fitted regressors.
    """
    from sklearn.isotonic import IsotonicRegression

    p = V.check_scores(probs, "probs")
    y = V.check_labels(labels, p.shape[0], p.shape[1])
    return [IsotonicRegression(out_of_bounds="clip").fit(p[:, j], (y == j).astype(np.float64))
            for j in range(p.shape[1])]


def isotonic_calibration(probs: Any, models: Sequence) -> np.ndarray:
    """Each class's isotonic map on its probability, then rows renormalised to sum to 1; a row whose
    maps all give 0 becomes uniform ``1 / K`` (the limit of adding the same small mass to every class).

    Args:
        probs: ``(N, K)`` probabilities. models: the K regressors of :func:`fit_isotonic`.

    Returns:
        ``(N, K)`` probabilities.
    """
    p = V.check_scores(probs, "probs")
    if len(models) != p.shape[1]:
        raise ValueError(f"`models` must hold one regressor per class ({p.shape[1]}), but got {len(models)}.")
    q = np.column_stack([np.clip(m.predict(p[:, j]), 0.0, 1.0) for j, m in enumerate(models)])
    s = q.sum(axis=1, keepdims=True)
    return np.where(s > 0, q / np.where(s > 0, s, 1.0), 1.0 / p.shape[1])


# ---------------------------------------------------------------------------
# DAC: distance-aware calibration (Wang et al., ICML 2024)
# ---------------------------------------------------------------------------
def _unit(x: Any, name: str) -> np.ndarray:
    a = V.to_numpy(x, name).astype(np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or not np.isfinite(a).all():
        raise ValueError(f"`{name}` must be a finite (classes, dim) array of text features, got shape {a.shape}.")
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def dac_class_scales(
    text_features: Any, trained_text_features: Any, zero_shot_text_features: Any,
    zero_shot_trained_text_features: Any, k: int = 5, base_threshold: float = 0.05,
) -> np.ndarray:
    """DAC's per-class logit scale (Wang et al., "Open-Vocabulary Calibration for Fine-tuned CLIP",
    ICML 2024; ml-stat-Sustech/CLIP_Calibration ``trainers/calibration/distanse_aware_calibration.py``).

    For evaluated class ``c`` with L2-normalised text features ``t_c`` (learned prompt) and ``t0_c``
    (zero-shot), and the trained classes' features ``T`` and ``T0``::

        s_c = exp(-mean kNN_k ||t_c - T||) / exp(-mean kNN_k ||t0_c - T0||)
        s_c = 1 when the nearest trained class is closer than ``base_threshold`` (a trained class)

    Features: ``(K, D)``, ``(B, D)``, ``(K, D)``, ``(B, D)``; ``k`` is clipped to ``B`` (the paper's 5).

    Returns:
        ``(K,)`` positive scales.
    """
    t, tb = _unit(text_features, "text_features"), _unit(trained_text_features, "trained_text_features")
    z0, zb = (_unit(zero_shot_text_features, "zero_shot_text_features"),
              _unit(zero_shot_trained_text_features, "zero_shot_trained_text_features"))
    if t.shape != z0.shape or tb.shape != zb.shape or t.shape[1] != tb.shape[1]:
        raise ValueError("DAC's text features must match: text_features and zero_shot_text_features (K, D), "
                         "trained_text_features and zero_shot_trained_text_features (B, D), one D; got "
                         f"{t.shape}, {z0.shape}, {tb.shape}, {zb.shape}.")
    kk = min(V.check_int(k, "k", 1), tb.shape[0])
    d_ft = np.sort(np.linalg.norm(t[:, None, :] - tb[None, :, :], axis=2), axis=1)[:, :kk]
    d_zs = np.sort(np.linalg.norm(z0[:, None, :] - zb[None, :, :], axis=2), axis=1)[:, :kk]
    scales = np.exp(-d_ft.mean(axis=1)) / np.exp(-d_zs.mean(axis=1))
    return np.where(d_ft[:, 0] < V.check_real(base_threshold, "base_threshold"), 1.0, scales)


# ---------------------------------------------------------------------------
# Classes: thin, fit(logits, labels) -> self, transform(logits) -> probs
# ---------------------------------------------------------------------------
class Calibrator(ABC):
    """A post-hoc calibrator: :meth:`fit` on labelled logits, then :meth:`transform` logits to probabilities.

    Class attributes: ``name`` (registry key), ``title``, ``reference`` (paper and code followed),
    ``needs`` (what fitting needs, in plain words) and ``keeps_argmax`` (whether the predicted class never
    changes). ``fitted_on`` is the number of images of the last fit (0 before).
    """

    name: str = ""
    title: str = ""
    reference: str = ""
    needs: str = "labelled images"
    keeps_argmax: bool = False

    def __init__(self) -> None:
        self.fitted_on = 0
        self.num_classes = 0

    def fit(self, logits: np.ndarray, labels: np.ndarray) -> "Calibrator":
        """Fit on ``(N, K)`` logits and ``(N,)`` labels; returns ``self``."""
        z, y = _check_logits(logits, labels)
        self._fit(z, y)
        self.fitted_on, self.num_classes = int(z.shape[0]), int(z.shape[1])
        return self

    def transform(self, logits: np.ndarray) -> np.ndarray:
        """``(N, K)`` probabilities (rows sum to 1) from ``(N, K)`` logits."""
        if not self.fitted_on:
            raise ValueError(f"The {self.name!r} calibrator is not fitted yet: call fit(logits, labels) first.")
        z, _ = _check_logits(logits, need_labels=False)
        if z.shape[1] != self.num_classes:
            raise ValueError(f"`logits` has {z.shape[1]} classes but the {self.name!r} calibrator was fitted "
                             f"on {self.num_classes}.")
        return self._transform(z)

    @abstractmethod
    def params(self) -> dict:
        """The fitted parameters as a JSON-able dict of floats and lists."""

    @abstractmethod
    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        """Fit on validated logits (N, K) and labels (N,)."""

    @abstractmethod
    def _transform(self, z: np.ndarray) -> np.ndarray:
        """Probabilities (N, K) from validated logits (N, K)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fitted_on={self.fitted_on})"


class TemperatureCalibrator(Calibrator):
    """Temperature scaling ``softmax(z / T)``, via :func:`~calibprompt.evaluation.metrics.fit_temperature`."""

    name, title = "temperature", "Temperature scaling"
    reference = "Guo et al., ICML 2017, 'On Calibration of Modern Neural Networks'"
    keeps_argmax = True

    def __init__(self, max_iter: int = 200) -> None:
        super().__init__()
        self.max_iter = V.check_int(max_iter, "max_iter", 1)
        self.temperature = 1.0

    def _fit(self, z, y):
        self.temperature = fit_temperature(z, y, max_iter=self.max_iter)

    def _transform(self, z):
        return apply_temperature(z, self.temperature)

    def params(self) -> dict:
        return {"temperature": float(self.temperature)}


class VectorScaling(Calibrator):
    """Vector scaling ``softmax(w * z + b)``, :func:`fit_vector_scaling`."""

    name, title = "vector", "Vector scaling"
    reference = "Guo et al., ICML 2017, section 4.2; Kull et al., NeurIPS 2019 (dirichletcal/dirichlet_python)"

    def __init__(self, max_iter: int = 500) -> None:
        super().__init__()
        self.max_iter = V.check_int(max_iter, "max_iter", 1)
        self.w = self.b = None

    def _fit(self, z, y):
        self.w, self.b = fit_vector_scaling(z, y, self.max_iter)

    def _transform(self, z):
        return vector_scaling(z, self.w, self.b)

    def params(self) -> dict:
        return {"w": [float(v) for v in self.w], "b": [float(v) for v in self.b]}


class DirichletCalibrator(Calibrator):
    """Dirichlet calibration with ODIR, ``softmax(W log softmax(z) + b)``, :func:`fit_dirichlet`."""

    name, title = "dirichlet", "Dirichlet calibration (ODIR)"
    reference = ("Kull et al., NeurIPS 2019, 'Beyond temperature scaling' (dirichletcal/dirichlet_python "
                 "calib/multinomial.py; dirichletcal/experiments_dnn cal_methods.py Dirichlet_NN)")

    def __init__(self, reg_lambda: float = 1e-2, reg_mu: float | None = None, max_iter: int = 500) -> None:
        super().__init__()
        self.reg_lambda, self.reg_mu = reg_lambda, reg_mu
        self.max_iter = V.check_int(max_iter, "max_iter", 1)
        self.W = self.b = None

    def _fit(self, z, y):
        self.W, self.b = fit_dirichlet(z, y, self.reg_lambda, self.reg_mu, self.max_iter)

    def _transform(self, z):
        return dirichlet_scaling(z, self.W, self.b)

    def params(self) -> dict:
        mu = self.reg_lambda if self.reg_mu is None else self.reg_mu
        return {"W": self.W.tolist(), "b": [float(v) for v in self.b],
                "reg_lambda": float(self.reg_lambda), "reg_mu": float(mu)}


class HistogramBinning(Calibrator):
    """Equal-mass histogram binning of the top-label confidence, :func:`fit_histogram_binning`."""

    name, title = "histogram", "Histogram binning (top-label, equal-mass)"
    reference = ("Zadrozny & Elkan, ICML 2001; top-label: Kumar et al., NeurIPS 2019 "
                 "(netcal HistogramBinning, EFS-OpenSource/calibration-framework)")
    keeps_argmax = True

    def __init__(self, n_bins: int = defaults.N_BINS) -> None:
        super().__init__()
        self.n_bins = V.check_int(n_bins, "n_bins", 1)
        self.edges = self.accuracy = self.counts = None

    def _fit(self, z, y):
        p = softmax(z, axis=1)
        pred = np.argmax(p, axis=1)
        conf = p[np.arange(p.shape[0]), pred]
        self.edges, self.accuracy, self.counts = fit_histogram_binning(conf, (pred == y).astype(np.float64), self.n_bins)

    def _transform(self, z):
        return histogram_binning(softmax(z, axis=1), self.edges, self.accuracy)

    def params(self) -> dict:
        return {"edges": self.edges.tolist(), "accuracy": self.accuracy.tolist(), "counts": self.counts.tolist()}


class IsotonicCalibrator(Calibrator):
    """One-vs-rest isotonic regression on the class probabilities, renormalised, :func:`fit_isotonic`."""

    name, title = "isotonic", "Isotonic regression (one-vs-rest)"
    reference = "Zadrozny & Elkan, KDD 2002; scikit-learn IsotonicRegression"

    def __init__(self) -> None:
        super().__init__()
        self.models: list = []

    def _fit(self, z, y):
        self.models = fit_isotonic(softmax(z, axis=1), y)

    def _transform(self, z):
        return isotonic_calibration(softmax(z, axis=1), self.models)

    def params(self) -> dict:
        return {"thresholds": [{"x": m.X_thresholds_.tolist(), "y": m.y_thresholds_.tolist()}
                               for m in self.models]}


class DACCalibrator(Calibrator):
    """DAC: ``softmax(s_pred * z / T)``, a per-image temperature from the predicted class's textual
    deviation (:func:`dac_class_scales`), on top of temperature scaling as in the paper's code
    (``VLCalibration.predict``: DAC multiplies the logits, then the base calibrator). ``T`` is fitted by
    :func:`~calibprompt.evaluation.metrics.fit_temperature` on the labelled logits (``temperature=False``:
    ``T = 1`` and the labels are only checked). A positive per-image scale never changes the argmax.
    """

    name, title = "dac", "DAC (distance-aware calibration)"
    reference = ("Wang et al., ICML 2024, 'Open-Vocabulary Calibration for Fine-tuned CLIP' "
                 "(ml-stat-Sustech/CLIP_Calibration, trainers/calibration/distanse_aware_calibration.py)")
    needs = ("labelled images (for its temperature), and the text features of the evaluated classes and of "
             "the classes the prompt was trained on, from the learned prompt and from the zero-shot prompt")
    keeps_argmax = True

    def __init__(self, text_features: Any = None, trained_text_features: Any = None,
                 zero_shot_text_features: Any = None, zero_shot_trained_text_features: Any = None,
                 k: int = 5, base_threshold: float = 0.05, temperature: bool = True) -> None:
        super().__init__()
        feats = (text_features, trained_text_features, zero_shot_text_features, zero_shot_trained_text_features)
        if any(f is None for f in feats):
            raise ValueError("The 'dac' calibrator needs text_features, trained_text_features, "
                             "zero_shot_text_features and zero_shot_trained_text_features: pass all four "
                             "(create_calibrator('dac', text_features=..., ...)).")
        self.scales = dac_class_scales(*feats, k=k, base_threshold=base_threshold)
        self.use_temperature, self.temperature = bool(temperature), 1.0

    def _fit(self, z, y):
        if z.shape[1] != self.scales.size:
            raise ValueError(f"`logits` has {z.shape[1]} classes but DAC's text_features have {self.scales.size}.")
        self.temperature = fit_temperature(z, y) if self.use_temperature else 1.0

    def _transform(self, z):
        s = self.scales[np.argmax(z, axis=1)]
        return softmax(z * (s / self.temperature)[:, None], axis=1)

    def params(self) -> dict:
        return {"temperature": float(self.temperature), "class_scales": [float(v) for v in self.scales]}


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------
CALIBRATORS: dict[str, type] = {
    cls.name: cls for cls in (TemperatureCalibrator, VectorScaling, DirichletCalibrator, HistogramBinning,
                              IsotonicCalibrator, DACCalibrator)
}


def list_calibrators() -> list[str]:
    """The registry's names in order: temperature, vector, dirichlet, histogram, isotonic, dac."""
    return list(CALIBRATORS)


def get_calibrator(name: str) -> type:
    """The calibrator class called ``name``.

    Raises:
        ValueError: an unknown name, naming the calibrators.
    """
    if not isinstance(name, str) or name.strip().lower() not in CALIBRATORS:
        raise ValueError(f"Unknown calibrator {name!r}; choose one of: {', '.join(CALIBRATORS)}.")
    return CALIBRATORS[name.strip().lower()]


def create_calibrator(name: str, **params: Any) -> Calibrator:
    """A new, unfitted calibrator: ``get_calibrator(name)(**params)``."""
    cls = get_calibrator(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"Calibrator {cls.name!r} does not take these parameters ({exc}).") from None


def parse_calibrators(names: str | Sequence[str] | None) -> list[str]:
    """``"temperature, isotonic"`` (or a list) -> registry names, deduplicated in order, for a map fitted on
    a prompt's own labelled predictions (the CLI, tables and the app). ``ValueError`` naming the calibrators
    for an unknown one; ``dac`` is refused in plain words: it needs the text features of classes the prompt
    was not trained on (:class:`DACCalibrator`, a base-to-novel evaluation)."""
    items = names.split(",") if isinstance(names, str) else list(names or ())
    found = list(dict.fromkeys(get_calibrator(str(n).strip()).name for n in items if str(n).strip()))
    if "dac" in found:
        raise ValueError("dac calibrates a prompt on classes it was not trained on, from their text features; "
                         "here each prompt is scored on its own classes. Leave dac out.")
    return found


# ---------------------------------------------------------------------------
# Cross-fitting and reports
# ---------------------------------------------------------------------------
@dataclass
class CrossFit:
    """A cross-fitted calibration: ``probs`` ``(N, K)`` (each half transformed by the map fitted on the
    other half), ``fitted_on`` (images each map was fitted on: the even half's size, then the odd half's),
    ``params`` (each map's :meth:`Calibrator.params`, same order) and ``seconds`` (both fits and transforms)."""

    probs: np.ndarray
    fitted_on: list[int] = field(default_factory=list)
    params: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def cross_fit(name: str, logits: Any, labels: Any, **params: Any) -> CrossFit:
    """Fit calibrator ``name`` on the even-indexed images and apply it to the odd-indexed ones, and the
    reverse.

    Raises ``ValueError`` when a half has fewer than 2 images (N < 4). A half that lacks a class is
    accepted (see the module docstring for each calibrator's fallback).
    """
    cls = get_calibrator(name)
    z, y = _check_logits(logits, labels)
    if z.shape[0] < 4:
        raise ValueError(f"Cross-fitting the {cls.name!r} calibrator needs at least 4 images (2 per half), "
                         f"but got {z.shape[0]}; evaluate on more labelled images.")
    idx = np.arange(z.shape[0])
    even, odd = idx % 2 == 0, idx % 2 == 1
    out = np.empty_like(z)
    fitted_on, fitted_params = [], []
    start = time.perf_counter()
    for fit_on, apply_to in ((even, odd), (odd, even)):
        cal = create_calibrator(cls.name, **params).fit(z[fit_on], y[fit_on])
        out[apply_to] = cal.transform(z[apply_to])
        fitted_on.append(cal.fitted_on)
        fitted_params.append(cal.params())
    return CrossFit(out, fitted_on, fitted_params, time.perf_counter() - start)


_REPORT_KEYS = ("accuracy", "ece", "mce", "ace", "nll", "brier", "mean_confidence")


def _row(name: str, probs: np.ndarray, y: np.ndarray, n_bins: int, raw_pred: np.ndarray, **extra: Any) -> dict:
    report = calibration_report(probs, y, n_bins=n_bins, n_boot=0)
    row = {"calibrator": name, **{k: report[k] for k in _REPORT_KEYS}}
    row["argmax_changed"] = float(np.mean(np.argmax(probs, axis=1) != raw_pred))
    return {**row, **extra}


def calibrator_reports(
    logits: Any, labels: Any, names: Sequence[str], n_bins: int = defaults.N_BINS,
    *, params: Mapping[str, dict] | None = None,
) -> list[dict]:
    """One metrics row per calibrator, cross-fitted (:func:`cross_fit`), after the raw row ``"none"``.

    Each row: ``calibrator``, ``accuracy``, ``ece``, ``mce``, ``ace``, ``nll``, ``brier``,
    ``mean_confidence`` (from :func:`~calibprompt.evaluation.metrics.calibration_report`, fractions),
    ``fitted_on`` (images each map was fitted on: the smaller half; 0 for ``"none"``), ``argmax_changed``
    (share of images whose predicted class differs from the raw one), ``keeps_argmax`` and ``seconds``.

    Args:
        logits: ``(N, K)``. labels: ``(N,)``. names: calibrator names (see :func:`list_calibrators`).
        n_bins: bins of ECE / MCE / ACE. params: optional ``{name: kwargs}`` for :func:`create_calibrator`
            (DAC's text features, a Dirichlet ``reg_lambda``...).
    """
    z, y = _check_logits(logits, labels)
    V.check_int(n_bins, "n_bins", 1)
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    keys = [get_calibrator(n).name for n in names]
    params = dict(params or {})
    raw_pred = np.argmax(z, axis=1)
    rows = [_row("none", softmax(z, axis=1), y, int(n_bins), raw_pred, fitted_on=0, keeps_argmax=True,
                 seconds=0.0)]
    for key in keys:
        cf = cross_fit(key, z, y, **params.get(key, {}))
        rows.append(_row(key, cf.probs, y, int(n_bins), raw_pred, fitted_on=int(min(cf.fitted_on)),
                         keeps_argmax=CALIBRATORS[key].keeps_argmax, seconds=float(cf.seconds)))
    return rows
