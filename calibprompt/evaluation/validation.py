"""The one validation module of the evaluation layer: argument checks apart from array checks.

As in torchmetrics (``_binary_calibration_error_arg_validation`` next to ``..._tensor_validation``),
the checks come in two kinds:

* **argument checks** (``check_int``, ``check_real``, ``check_open_unit``, ``check_positive``,
  ``check_range``, ``check_choice``, ``check_mapping``): one scalar or container argument such as
  ``n_bins``, ``strategy``, ``level``, ``temperature``, ``min_count`` or a dict of reports. They are
  cheap and run first, so their messages are the most specific.
* **array checks** (``to_numpy``, ``check_scores``, ``check_labels``, ``check_vector``,
  ``check_confidences``, ``check_outcomes``): shapes, dtypes, finiteness, probabilities in ``[0, 1]`` whose rows sum to 1,
  labels in ``[0, K)``. Each accepts a numpy array, a torch tensor (any float dtype, any device) or a
  nested list and returns a float64 (or int64) numpy array.

Every check raises ``ValueError`` with a message that names the argument, the allowed values and,
where it helps, what to pass instead. :mod:`~calibprompt.evaluation.metrics`,
:mod:`~calibprompt.evaluation.report` and :mod:`~calibprompt.evaluation.plots` use these and carry no
validator of their own. The module needs only numpy.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "PROB_ATOL", "VALUE_ATOL", "is_real", "check_int", "check_real", "check_open_unit", "check_positive",
    "check_range", "check_choice", "check_mapping", "to_numpy", "check_scores", "check_labels",
    "check_vector", "check_confidences", "check_outcomes",
]

#: Tolerance for "rows of probabilities sum to 1" and "probabilities lie in [0, 1]".
PROB_ATOL = 1e-3
#: Stored values this far outside their range (e.g. [0, 1]) are accepted and clipped into it.
VALUE_ATOL = 1e-9


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------
def is_real(x: Any) -> bool:
    """Whether ``x`` is a Python/numpy real number (booleans are not numbers here)."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an ``int >= minimum``; booleans, floats (even 8.0) and strings are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"`{name}` must be an int >= {minimum}, but got {value!r} (type {type(value).__name__})."
        )
    if int(value) < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, but got {value!r}.")
    return int(value)


def check_real(value: Any, name: str) -> float:
    """``value`` as a finite float; a 0-d array or tensor holding one number is accepted too."""
    if not is_real(value):
        try:
            arr = to_numpy(value, name)
        except ValueError:
            arr = None
        if arr is None or arr.ndim != 0 or arr.dtype.kind not in "iuf":
            raise ValueError(f"`{name}` must be a real number, but got {value!r}.")
        value = arr.item()
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite real number, but got {value!r}.")
    return value


def check_open_unit(value: Any, name: str, example: str = "") -> float:
    """A finite real in the open interval ``(0, 1)``; ``example`` (e.g. ``"0.95 for a 95 % interval"``)
    is shown in the message."""
    v = check_real(value, name)
    if not 0.0 < v < 1.0:
        hint = f" (e.g. {example})" if example else ""
        raise ValueError(f"`{name}` must lie in the open interval (0, 1){hint}, but got {value!r}.")
    return v


def check_positive(value: Any, name: str) -> float:
    """A finite real ``> 0`` (a temperature, a scale)."""
    v = check_real(value, name)
    if not v > 0.0:
        raise ValueError(f"`{name}` must be a finite number > 0, but got {value!r}.")
    return v


def check_range(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite real in ``[lo, hi]``, accepted ``VALUE_ATOL`` outside and then clipped into the range
    (for values read back from stored reports)."""
    if not is_real(value) or not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be a finite number, but got {value!r}.")
    v = float(value)
    if not lo - VALUE_ATOL <= v <= hi + VALUE_ATOL:
        what = " (a fraction, not a percentage)" if (lo, hi) == (0.0, 1.0) else ""
        raise ValueError(f"`{name}` must lie in [{lo:g}, {hi:g}]{what}, but got {v!r}.")
    return min(max(v, lo), hi)


def check_choice(value: Any, name: str, allowed: Sequence[str], meaning: str = "") -> str:
    """One of the strings ``allowed``; ``meaning`` explains them in the message."""
    if not isinstance(value, str) or value not in allowed:
        extra = f" ({meaning})" if meaning else ""
        raise ValueError(f"`{name}` must be one of {tuple(allowed)}{extra}, but got {value!r}.")
    return value


def check_mapping(obj: Any, name: str, what: str) -> Mapping:
    """A non-empty dict whose keys are non-empty strings (method names); ``what`` says what it maps."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"`{name}` must be a dict mapping {what}, but got {type(obj).__name__}.")
    if len(obj) == 0:
        raise ValueError(f"`{name}` is empty; pass at least one entry ({what}).")
    for key in obj:
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"every key of `{name}` must be a non-empty str (a method name), but got {key!r}.")
    return obj


# ---------------------------------------------------------------------------
# Array checks
# ---------------------------------------------------------------------------
def to_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (float16/bfloat16 become float64) or a
    rectangular nested list."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and type(x).__module__.startswith("torch"):
        t = x.detach().cpu()
        if t.is_floating_point():  # covers float16 / bfloat16, which numpy may not know
            t = t.double()
        return t.numpy()
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged nested lists, odd objects
        raise ValueError(
            f"`{name}` could not be converted to a numeric array ({exc}); pass a numpy "
            "array, a torch tensor or a rectangular nested list of numbers."
        ) from None


def _check_probability_rows(arr: np.ndarray) -> None:
    """``arr`` ``(N, K)``: values in ``[0, 1]`` and rows summing to 1, both within ``PROB_ATOL``."""
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -PROB_ATOL or hi > 1.0 + PROB_ATOL:
        raise ValueError(
            f"`probs` must lie in [0, 1] (within {PROB_ATOL:g}), but values range over "
            f"[{lo:.6g}, {hi:.6g}]; pass probabilities (softmax of logits), not logits."
        )
    sums = arr.sum(axis=1)
    dev = np.abs(sums - 1.0)
    if (dev > PROB_ATOL).any():
        i = int(np.argmax(dev))
        raise ValueError(
            f"every row of `probs` must sum to 1 (within {PROB_ATOL:g}), but row {i} sums "
            f"to {sums[i]:.6g}; pass probabilities (softmax of logits), not logits."
        )


def check_scores(scores: Any, kind: str = "probs") -> np.ndarray:
    """``(N, K)`` scores as a float64 copy, ``N >= 1``, ``K >= 1``, every value finite.

    ``kind="probs"``: values in ``[0, 1]`` and rows summing to 1 (within :data:`PROB_ATOL`), then
    clipped to ``[0, 1]`` so that every confidence falls into a histogram bin. ``kind="logits"``:
    any finite reals.
    """
    name = check_choice(kind, "kind", ("probs", "logits"))
    arr = to_numpy(scores, name)
    if arr.dtype.kind not in "iufb":
        raise ValueError(f"`{name}` must hold real numbers (int or float dtype), but got dtype {arr.dtype}.")
    if arr.ndim != 2:
        raise ValueError(
            f"`{name}` must be 2-D with shape (N, K) (one row per sample, one column per "
            f"class), but got {arr.ndim}-D array of shape {arr.shape}."
        )
    n, k = arr.shape
    if n == 0:
        raise ValueError(f"`{name}` is empty (N == 0); at least one sample is required.")
    if k == 0:
        raise ValueError(f"`{name}` has K == 0 columns; at least one class is required.")
    arr = arr.astype(np.float64, copy=True)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"`{name}` contains {bad} NaN/inf value(s); only finite numbers are allowed.")
    if kind == "probs":
        _check_probability_rows(arr)
        np.clip(arr, 0.0, 1.0, out=arr)
    return arr


def check_labels(labels: Any, n: int, k: int, scores_name: str = "probs") -> np.ndarray:
    """``(N,)`` integer class indices in ``[0, K)`` as int64 (booleans and integral floats accepted)."""
    if labels is None:
        raise ValueError("`labels` is required: pass an (N,) array of integer class indices in [0, K).")
    lab = to_numpy(labels, "labels")
    if lab.ndim != 1:
        raise ValueError(
            f"`labels` must be 1-D with shape (N,) (one class index per sample), but got "
            f"{lab.ndim}-D array of shape {lab.shape}."
        )
    if lab.shape[0] != n:
        raise ValueError(
            f"`{scores_name}` and `labels` must have the same number of samples N, but {scores_name} has "
            f"{n} rows and labels has {lab.shape[0]} entries."
        )
    if lab.dtype.kind == "f" and (not np.isfinite(lab).all() or not (lab == np.round(lab)).all()):
        raise ValueError("`labels` must be integer class indices in [0, K); got non-integer values.")
    if lab.dtype.kind not in "iufb":
        raise ValueError(f"`labels` must be integer class indices in [0, K), but got dtype {lab.dtype}.")
    lab = lab.astype(np.int64, copy=False)
    if lab.min() < 0 or lab.max() >= k:
        raise ValueError(
            f"`labels` must be class indices in [0, K) = [0, {k}) for {scores_name} with K={k} "
            f"columns, but values range over [{int(lab.min())}, {int(lab.max())}]."
        )
    return lab


def check_vector(values: Any, name: str, allow_none: bool = False) -> np.ndarray:
    """A 1-D float64 array of numbers; ``None`` entries become NaN when ``allow_none``."""
    if isinstance(values, (str, bytes, Mapping)) or values is None:
        raise ValueError(f"`{name}` must be a 1-D list or array of numbers, but got {values!r}.")
    if isinstance(values, np.ndarray):
        arr = values
    else:
        try:
            items = list(values)
        except TypeError:
            raise ValueError(f"`{name}` must be a 1-D list or array of numbers, but got {values!r}.") from None
        if allow_none:
            items = [np.nan if v is None else v for v in items]
        try:
            arr = np.asarray(items)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"`{name}` could not be read as a 1-D array of numbers ({exc}).") from None
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, but got an array of shape {arr.shape}.")
    if arr.size and arr.dtype.kind not in "iuf":
        raise ValueError(f"`{name}` must hold numbers, but got dtype {arr.dtype}.")
    return arr.astype(np.float64)


def check_confidences(values: Any, name: str) -> np.ndarray:
    """Top-label confidences ``(N,)`` in ``[0, 1]`` from a 1-D array, or the row maxima of ``(N, K >= 2)``
    probabilities; ``N >= 1``, finite, accepted ``VALUE_ATOL`` outside ``[0, 1]`` and clipped into it."""
    try:
        arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` could not be read as an array of numbers ({exc}).") from None
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"`{name}` must hold numbers, but got dtype {arr.dtype}.")
    if arr.ndim == 2 and arr.shape[1] >= 2:
        arr = arr.max(axis=1)
    elif arr.ndim != 1:
        raise ValueError(
            f"`{name}` must be 1-D top-label confidences (N,) or (N, K >= 2) probabilities, "
            f"but got shape {arr.shape}."
        )
    arr = arr.astype(np.float64)
    if arr.size == 0:
        raise ValueError(f"`{name}` is empty; at least one confidence is required.")
    if not np.isfinite(arr).all() or arr.min() < -VALUE_ATOL or arr.max() > 1 + VALUE_ATOL:
        raise ValueError(f"`{name}` must hold finite confidences in [0, 1] (probabilities, not logits).")
    return np.clip(arr, 0.0, 1.0)


def check_outcomes(values: Any, name: str, n: int) -> np.ndarray:
    """``(n,)`` 0/1 outcomes (booleans or 0/1 numbers), one per confidence, as a bool array."""
    ok = np.asarray(values)
    if ok.ndim != 1 or ok.shape[0] != n:
        raise ValueError(f"`{name}` must be 1-D with one entry per confidence ({n}), but got shape {ok.shape}.")
    if ok.dtype.kind not in "biuf" or not np.isin(ok.astype(np.float64), (0.0, 1.0)).all():
        raise ValueError(f"`{name}` must hold booleans or 0/1 values.")
    return ok.astype(bool)
