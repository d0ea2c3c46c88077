"""Evaluation of a prediction head on a labelled test set: the calibration report and per-image rows.

:class:`CalibrationReport` is the typed form of the dict returned by
:func:`calibprompt.evaluation.metrics.calibration_report`. That dict stays the stored and
public format (run metrics, JSON files); :meth:`CalibrationReport.from_dict` is the one
place where such a dict (and the reliability dict inside it) is validated, and
:meth:`CalibrationReport.to_dict` gives the dict back. Code that draws or tabulates a
report (the plots, the app) converts once and then reads typed fields.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from calibprompt import defaults
from calibprompt.evaluation import validation as V
from calibprompt.evaluation.metrics import ReliabilityBins, calibration_report

__all__ = [
    "CalibrationReport",
    "Evaluation",
    "as_calibration_report",
    "evaluate_head",
    "evaluate_probs",
    "parse_reliability",
]

#: Values this far outside their range (e.g. [0, 1]) are accepted and clipped into it.
VALUE_ATOL = V.VALUE_ATOL

_RELIABILITY_REQUIRED = ("edges", "counts", "accuracy", "confidence")
_RELIABILITY_OPTIONAL = ("strategy", "n_bins", "gap")
_STRATEGIES = ("uniform", "quantile")

#: Keys of ``calibration_report(...)``, in its order; ``intervals`` and ``temperature`` may be absent.
REPORT_KEYS = (
    "n", "num_classes", "accuracy", "ece", "mce", "ace", "nll", "brier", "macro_f1", "mean_confidence",
    "classwise_ece", "classwise_ece_mean", "n_bins", "reliability", "intervals",
)
_OPTIONAL_REPORT_KEYS = ("intervals", "temperature")
#: Metrics that are fractions in [0, 1] (the others: ``nll`` >= 0, ``brier`` in [0, 2]).
_FRACTIONS = ("accuracy", "ece", "mce", "ace", "macro_f1", "mean_confidence", "classwise_ece_mean")
_RANGES: dict[str, tuple[float, float]] = {
    **{k: (0.0, 1.0) for k in _FRACTIONS}, "nll": (0.0, math.inf), "brier": (0.0, 2.0),
}


# ---------------------------------------------------------------------------
# Validation: the checks of calibprompt.evaluation.validation, under this module's short names
# ---------------------------------------------------------------------------
_is_real = V.is_real
_int = V.check_int
_number = V.check_range
_vector = V.check_vector


# ---------------------------------------------------------------------------
# Reliability bins
# ---------------------------------------------------------------------------
def _reliability_data(reliability: Any, name: str) -> dict[str, Any]:
    """The keys of a :class:`ReliabilityBins` or its ``to_dict()``: the required ones present, no
    unknown one."""
    if isinstance(reliability, ReliabilityBins):
        data: dict[str, Any] = {
            "edges": reliability.edges,
            "counts": reliability.counts,
            "accuracy": reliability.accuracy,
            "confidence": reliability.confidence,
            "strategy": reliability.strategy,
        }
    elif isinstance(reliability, Mapping):
        data = dict(reliability)
        unknown = sorted(str(k) for k in data if k not in _RELIABILITY_REQUIRED + _RELIABILITY_OPTIONAL)
        if unknown:
            raise ValueError(
                f"`{name}` has unknown key(s) {unknown}; a reliability dict (ReliabilityBins.to_dict()) "
                f"has keys {list(_RELIABILITY_REQUIRED + _RELIABILITY_OPTIONAL)}. To plot a whole "
                "calibration_report, pass the report itself (it has a 'reliability' key)."
            )
        missing = [k for k in _RELIABILITY_REQUIRED if k not in data]
        if missing:
            raise ValueError(f"`{name}` is missing key(s) {missing}; required keys are {list(_RELIABILITY_REQUIRED)}.")
    else:
        raise ValueError(
            f"`{name}` must be a ReliabilityBins or its to_dict() dict, but got {type(reliability).__name__}."
        )
    return data


def _bin_arrays(data: Mapping[str, Any], name: str) -> tuple[np.ndarray, ...]:
    """``(edges, counts, accuracy, confidence)`` as float64 vectors with ``n_bins + 1`` and ``n_bins``
    entries (``n_bins >= 1``); ``None`` accuracy/confidence become NaN."""
    edges = _vector(data["edges"], f"{name}['edges']")
    counts_raw = _vector(data["counts"], f"{name}['counts']")
    acc = _vector(data["accuracy"], f"{name}['accuracy']", allow_none=True)
    conf = _vector(data["confidence"], f"{name}['confidence']", allow_none=True)
    n = counts_raw.shape[0]
    if n < 1:
        raise ValueError(f"`{name}['counts']` is empty; at least one bin is required.")
    if edges.shape[0] != n + 1:
        raise ValueError(
            f"`{name}['edges']` must have n_bins + 1 = {n + 1} entries for {n} bins, but has {edges.shape[0]}."
        )
    for key, arr in (("accuracy", acc), ("confidence", conf)):
        if arr.shape[0] != n:
            raise ValueError(f"`{name}['{key}']` must have one entry per bin ({n}), but has {arr.shape[0]}.")
    if "n_bins" in data and data["n_bins"] != n:
        raise ValueError(f"`{name}['n_bins']` is {data['n_bins']!r} but there are {n} bins.")
    if "gap" in data and data["gap"] is not None:
        gap = data["gap"]
        if isinstance(gap, (str, bytes, Mapping)) or not hasattr(gap, "__len__") or len(gap) != n:
            raise ValueError(f"`{name}['gap']` must have one entry per bin ({n}).")
    return edges, counts_raw, acc, conf


def _check_bin_values(edges: np.ndarray, counts_raw: np.ndarray, acc: np.ndarray, conf: np.ndarray,
                      name: str) -> tuple[np.ndarray, np.ndarray]:
    """Edges finite, non-decreasing in ``[0, 1]``; counts non-negative integers; accuracy and confidence in
    ``[0, 1]`` for each non-empty bin and NaN for each empty one. Returns ``(counts, filled)``."""
    if not np.isfinite(edges).all() or edges.min() < -VALUE_ATOL or edges.max() > 1 + VALUE_ATOL:
        raise ValueError(f"`{name}['edges']` must be finite and lie in [0, 1].")
    if np.any(np.diff(edges) < 0):
        raise ValueError(f"`{name}['edges']` must be non-decreasing.")
    if not np.isfinite(counts_raw).all() or np.any(counts_raw < 0) or np.any(counts_raw != np.round(counts_raw)):
        raise ValueError(f"`{name}['counts']` must be non-negative integers.")
    counts = counts_raw.astype(np.int64)
    filled = counts > 0
    for key, arr in (("accuracy", acc), ("confidence", conf)):
        finite = np.isfinite(arr)
        if np.any(filled & ~finite):
            i = int(np.argmax(filled & ~finite))
            raise ValueError(f"`{name}['{key}']` is missing (None/NaN) for bin {i}, which has {counts[i]} samples.")
        if np.any(~filled & ~np.isnan(arr)):
            i = int(np.argmax(~filled & ~np.isnan(arr)))
            raise ValueError(
                f"`{name}['{key}']` has a value for bin {i}, which is empty (count 0); empty bins must be None/NaN."
            )
        vals = arr[filled]
        if vals.size and (vals.min() < -VALUE_ATOL or vals.max() > 1 + VALUE_ATOL):
            raise ValueError(f"`{name}['{key}']` must lie in [0, 1] (fractions, not percentages).")
    return counts, filled


def parse_reliability(reliability: Any, name: str = "reliability") -> ReliabilityBins:
    """Validate a :class:`ReliabilityBins` or its ``to_dict()`` form; return clean bins.

    Checks: the keys (``edges``, ``counts``, ``accuracy``, ``confidence`` required;
    ``strategy``, ``n_bins``, ``gap`` optional, nothing else), ``n_bins + 1`` edges,
    non-decreasing in ``[0, 1]``; non-negative integer counts; accuracy and confidence
    in ``[0, 1]`` for every non-empty bin and ``None``/NaN for every empty one.

    Args:
        reliability: the bins, or ``calibration_report(...)["reliability"]``.
        name: how error messages call the input (e.g. ``"reports['coop']['reliability']"``).

    Returns:
        a :class:`ReliabilityBins` (float64 edges/accuracy/confidence clipped into
        ``[0, 1]``, NaN for empty bins, int64 counts).

    Raises:
        ValueError: naming the key that is missing, unknown or wrong.
    """
    data = _reliability_data(reliability, name)
    edges, counts_raw, acc, conf = _bin_arrays(data, name)
    strategy = data.get("strategy", "uniform")
    if strategy not in _STRATEGIES:
        raise ValueError(f"`{name}['strategy']` must be 'uniform' or 'quantile', but got {strategy!r}.")
    counts, filled = _check_bin_values(edges, counts_raw, acc, conf, name)
    return ReliabilityBins(
        edges=np.clip(edges, 0.0, 1.0),
        counts=counts,
        accuracy=np.where(filled, np.clip(acc, 0.0, 1.0), np.nan),
        confidence=np.where(filled, np.clip(conf, 0.0, 1.0), np.nan),
        strategy=str(strategy),
    )


def _parse_classwise(values: Any, name: str, num_classes: int) -> tuple[float, ...]:
    """One ECE in ``[0, 1]`` per class: ``(num_classes,)``."""
    cw = _vector(values, name)
    if cw.shape[0] != num_classes:
        raise ValueError(
            f"`{name}` must have one value per class (num_classes = {num_classes}), but has {cw.shape[0]}."
        )
    return tuple(_number(v, name, 0.0, 1.0) for v in cw.tolist())


def _parse_report_bins(reliability: Any, name: str, n: int, n_bins: int) -> ReliabilityBins:
    """A report's reliability bins: ``n_bins`` bins whose counts sum to the report's ``n``."""
    bins = parse_reliability(reliability, f"{name}['reliability']")
    if bins.n_bins != n_bins:
        raise ValueError(f"`{name}['n_bins']` is {n_bins} but `{name}['reliability']` has {bins.n_bins} bins.")
    if int(bins.counts.sum()) != n:
        raise ValueError(
            f"`{name}['reliability']['counts']` sum to {int(bins.counts.sum())}, but `{name}['n']` is {n}."
        )
    return bins


def _parse_intervals(raw: Any, name: str) -> dict[str, tuple[float, float]]:
    """``None`` (no intervals: ``{}``) or ``{metric: [lo, hi]}`` with ``lo <= hi`` in the metric's range."""
    intervals: dict[str, tuple[float, float]] = {}
    if raw is None:
        return intervals
    if not isinstance(raw, Mapping):
        raise ValueError(f"`{name}` must be None or a dict {{metric: [lo, hi]}}, but got {type(raw).__name__}.")
    for key, pair in raw.items():
        iv_name = f"{name}[{key!r}]"
        if not isinstance(key, str):
            raise ValueError(f"every key of `{name}` must be a metric name (str), but got {key!r}.")
        if isinstance(pair, (str, bytes, Mapping)) or not isinstance(pair, (Sequence, np.ndarray)) or len(pair) != 2:
            raise ValueError(f"`{iv_name}` must be a pair [lo, hi], but got {pair!r}.")
        lo, hi = (_number(v, iv_name, *_RANGES.get(key, (-math.inf, math.inf))) for v in pair)
        if lo > hi:
            raise ValueError(f"`{iv_name}` must have lo <= hi, but got {pair!r}.")
        intervals[key] = (lo, hi)
    return intervals


# ---------------------------------------------------------------------------
# The typed report
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CalibrationReport:
    """A validated :func:`~calibprompt.evaluation.metrics.calibration_report`, with typed fields.

    Build one with :meth:`from_dict` (which validates) or :func:`as_calibration_report`;
    :meth:`to_dict` gives back the ``calibration_report`` dict (JSON-serialisable, equal
    to the original). Direct construction only normalises types (floats, tuples, a
    copied ``intervals`` dict) and checks nothing else.

    Attributes:
        n: number of samples. num_classes: K.
        accuracy, ece, mce, ace, macro_f1, mean_confidence, classwise_ece_mean: fractions
            in ``[0, 1]``. nll: mean negative log-likelihood (>= 0). brier: multi-class
            Brier score in ``[0, 2]``.
        classwise_ece: one ECE per class (a tuple of K floats).
        n_bins: number of uniform bins of the ECE and of ``reliability``.
        reliability: the uniform-bin :class:`ReliabilityBins` of the reliability diagram.
        intervals: ``{metric: (lo, hi)}`` 95 % bootstrap intervals (keys ``accuracy``,
            ``ece``, ``mce``, ``ace``, ``nll``, ``brier``); empty when the report was made
            with ``n_boot=0`` (its dict has ``"intervals": None``).
        temperature: the temperature of a temperature-scaled head, else ``None`` (the dict
            has a ``"temperature"`` key only when it is set).
    """

    n: int
    num_classes: int
    accuracy: float
    ece: float
    mce: float
    ace: float
    nll: float
    brier: float
    macro_f1: float
    mean_confidence: float
    classwise_ece: tuple[float, ...]
    classwise_ece_mean: float
    n_bins: int
    reliability: ReliabilityBins
    intervals: dict[str, tuple[float, float]]
    temperature: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.reliability, ReliabilityBins):
            raise ValueError(
                f"`reliability` must be a ReliabilityBins, but got {type(self.reliability).__name__}; "
                "build a report from a calibration_report dict with CalibrationReport.from_dict(d)."
            )
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        for key in ("n", "num_classes", "n_bins"):
            put(key, int(getattr(self, key)))
        for key in _RANGES:
            put(key, float(getattr(self, key)))
        put("classwise_ece", tuple(float(v) for v in self.classwise_ece))
        put("intervals", {str(k): (float(lo), float(hi)) for k, (lo, hi) in (self.intervals or {}).items()})
        if self.temperature is not None:
            put("temperature", float(self.temperature))

    # -- conversion ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str = "report") -> CalibrationReport:
        """Validate a ``calibration_report(...)`` dict and build the typed report.

        Required keys are those of :func:`calibration_report` (``intervals`` may be absent
        or ``None``); an optional ``"temperature"`` (finite, > 0, or ``None``) is kept.
        Other keys (timings, history, ... of stored run metrics) are ignored.

        Args:
            d: the dict, e.g. ``calibration_report(probs, labels)`` or a run's metrics.
            name: how error messages call ``d`` (e.g. ``"reports['coop']"``).

        Raises:
            ValueError: naming the key that is missing or holds a bad value.
        """
        if isinstance(d, CalibrationReport):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(
                f"`{name}` must be a calibration_report(...) dict or a CalibrationReport, "
                f"but got {type(d).__name__}."
            )
        missing = [k for k in REPORT_KEYS if k not in d and k not in _OPTIONAL_REPORT_KEYS]
        if missing:
            hint = ""
            if "reliability" not in d and any(k in d for k in ("edges", "counts")):
                hint = "; this looks like a reliability dict (ReliabilityBins.to_dict()), not a whole report"
            raise ValueError(
                f"`{name}` is missing key(s) {missing}; a calibration_report(...) dict has keys "
                f"{list(REPORT_KEYS)}{hint}."
            )
        n = _int(d["n"], f"{name}['n']", 1)
        num_classes = _int(d["num_classes"], f"{name}['num_classes']", 1)
        n_bins = _int(d["n_bins"], f"{name}['n_bins']", 1)
        values = {k: _number(d[k], f"{name}[{k!r}]", *_RANGES[k]) for k in _RANGES}

        classwise = _parse_classwise(d["classwise_ece"], f"{name}['classwise_ece']", num_classes)
        reliability = _parse_report_bins(d["reliability"], name, n, n_bins)
        intervals = _parse_intervals(d.get("intervals"), f"{name}['intervals']")
        temperature = d.get("temperature")
        if temperature is not None:
            temperature = _number(temperature, f"{name}['temperature']")
            if not temperature > 0:
                raise ValueError(f"`{name}['temperature']` must be > 0, but got {d['temperature']!r}.")
        return cls(
            n=n, num_classes=num_classes, classwise_ece=classwise, n_bins=n_bins, reliability=reliability,
            intervals=intervals, temperature=temperature, **values,
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``calibration_report`` dict: plain JSON types, keys in its order
        (plus ``"temperature"`` when set); ``from_dict(r.to_dict()) == r``."""
        out: dict[str, Any] = {
            "n": self.n,
            "num_classes": self.num_classes,
            "accuracy": self.accuracy,
            "ece": self.ece,
            "mce": self.mce,
            "ace": self.ace,
            "nll": self.nll,
            "brier": self.brier,
            "macro_f1": self.macro_f1,
            "mean_confidence": self.mean_confidence,
            "classwise_ece": list(self.classwise_ece),
            "classwise_ece_mean": self.classwise_ece_mean,
            "n_bins": self.n_bins,
            "reliability": self.reliability.to_dict(),
            "intervals": {k: [lo, hi] for k, (lo, hi) in self.intervals.items()} or None,
        }
        if self.temperature is not None:
            out["temperature"] = self.temperature
        return out

    # -- reading -----------------------------------------------------------------------
    def interval(self, metric: str) -> tuple[float, float] | None:
        """The 95 % bootstrap interval of ``metric``, or ``None`` without one."""
        return self.intervals.get(metric)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CalibrationReport):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # holds arrays and a dict


def as_calibration_report(report: Any, name: str = "report") -> CalibrationReport:
    """A :class:`CalibrationReport` from a report, a ``calibration_report`` dict or an
    :class:`Evaluation` (its :attr:`Evaluation.calibration`). Dicts are validated by
    :meth:`CalibrationReport.from_dict`; a ``CalibrationReport`` is returned as is."""
    if isinstance(report, CalibrationReport):
        return report
    if isinstance(report, Evaluation):
        return report.calibration
    return CalibrationReport.from_dict(report, name=name)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------
@dataclass
class Evaluation:
    """``report``: :func:`calibprompt.evaluation.metrics.calibration_report`; ``rows``: one dict per image with
    path, true label, predicted label, confidence and every class probability; ``logits`` where known."""

    report: dict[str, Any]
    rows: list[dict[str, Any]]
    probs: np.ndarray
    labels: np.ndarray
    classnames: list[str]
    #: the logits (N, K) the probabilities came from, where the evaluation had them (what post-hoc calibrators fit)
    logits: np.ndarray | None = None

    @property
    def calibration(self) -> CalibrationReport:
        """``report`` as a typed, validated :class:`CalibrationReport`."""
        return CalibrationReport.from_dict(self.report)

    @property
    def summary(self) -> dict[str, float]:
        """The headline numbers as fractions (the ``compare`` JSON row fields)."""
        keys = ("accuracy", "ece", "mce", "ace", "nll", "brier", "mean_confidence", "macro_f1", "classwise_ece_mean")
        return {k: float(self.report[k]) for k in keys}


def evaluate_probs(probs: np.ndarray, labels: Sequence[int], paths: Sequence[str], classnames: Sequence[str],
                   n_bins: int = defaults.N_BINS, n_boot: int = defaults.N_BOOT, seed: int = 0) -> Evaluation:
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
                  classnames: Sequence[str] | None = None, n_bins: int = defaults.N_BINS,
                  n_boot: int = defaults.N_BOOT) -> Evaluation:
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
