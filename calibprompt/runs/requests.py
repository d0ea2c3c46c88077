"""Checks on a training request, before anything is trained or written.

:func:`check_train_request` refuses values no run could use (0 shots, 5000 epochs, a NaN weight,
more shots than the smallest class has images) with one plain sentence that says the allowed range
and what to do. The bounds come from :data:`calibprompt.defaults.LIMITS`. The CLI, the jobs and the
app call it; :func:`class_counts_for_split` gives it the pool the k-shot sampler draws from.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, NamedTuple

from calibprompt.defaults import BATCH_SIZE, EPOCHS, LIMITS, N_BINS, N_VIEWS, SHOTS

__all__ = ["check_train_request", "check_number", "number_from_text", "FIELDS", "class_counts_for_split", "OptionRange",
           "CLI_LIMITS", "check_option"]


def class_counts_for_split(dataset) -> dict[str, int]:
    """Images per class (class id -> count, in label order) of the pool the k-shot sampler draws from.

    :func:`calibprompt.data.layouts.few_shot_split` always picks its shots from ``dataset.train``: the
    train split of a dataset with train/test splits, and all the images of a single-folder dataset
    (whose test set is then what is left over). A bare :class:`LabeledImages` is that pool itself. A
    dataset without training images gives ``{}``.
    """
    pool = dataset if hasattr(dataset, "counts") else getattr(dataset, "train", None)
    if pool is None:
        return {}
    return {str(k): int(v) for k, v in pool.counts().items()}


class OptionRange(NamedTuple):
    """The values a numeric command-line option accepts: whole numbers (``integer``) or numbers from
    ``low`` to ``high``, either end excluded when ``low_open`` / ``high_open``."""

    integer: bool
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def text(self) -> str:
        if self.integer:
            return f"a whole number from {_num(self.low)} to {_num(self.high)}"
        low, high = _num(self.low), _num(self.high)
        if self.low_open:
            return f"a number above {low} and {'below' if self.high_open else 'at most'} {high}"
        if self.high_open:
            return f"a number from {low} up to, but not including, {high}"
        return f"a number from {low} to {high}"


def _whole(name: str) -> OptionRange:
    return OptionRange(True, *LIMITS[name])


def _real(name: str, **open_ends: bool) -> OptionRange:
    return OptionRange(False, *LIMITS[name], **open_ends)


#: The ranges of the numeric options of the ``calibprompt`` command line, by option (without the
#: leading dashes, with underscores); :func:`check_option` checks a value against them. The bounds are
#: those of :data:`calibprompt.defaults.LIMITS`.
CLI_LIMITS: dict[str, OptionRange] = {
    "shots": _whole("cli_shots"),  # and at most the smallest class (checked against the dataset)
    "epochs": _whole("epochs"),
    "seed": _whole("seed"),
    "bins": _whole("n_bins"),
    "views": _whole("n_views"),  # cached augmented views per training image (memory grows with it)
    "batch_size": _whole("batch_size"),
    "max_batch_prompts": _whole("max_batch_prompts"),
    "alpha": _real("alpha", high_open=True),  # the smoothing weight of training
    "beta": _real("beta"),
    "coverage": _real("coverage", low_open=True, high_open=True),  # evaluate's conformal coverage
    "tolerance": _real("tolerance"),
    "limit": _whole("limit"),
    "top_k": _whole("top_k"),
    "train_per_class": _whole("train_per_class"),
    "test_per_class": _whole("test_per_class"),
    "shift": _real("shift"),
    "workers": _whole("workers"),
    "steps": _whole("steps"),
    "ray_gpus_per_task": _real("ray_gpus_per_task"),
    "ray_cpus_per_task": _real("ray_cpus_per_task", low_open=True),
    "days": _whole("days"),  # store clean-uploads: age of the uploads removed (0: none)
}


def check_option(name: str, text: str) -> int | float:
    """The value of the numeric command-line option ``name`` (a key of :data:`CLI_LIMITS`) typed as
    ``text``; ValueError saying the range when it is not a number in that range."""
    spec = CLI_LIMITS[name]
    allowed = f"must be {spec.text()}"
    try:
        number = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{allowed}; got {text!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{allowed}; got {text!r}")
    if spec.integer:
        if not number.is_integer():
            raise ValueError(f"{allowed}; got {text!r}, which is not a whole number")
        number = int(number)
    below = number <= spec.low if spec.low_open else number < spec.low
    above = number >= spec.high if spec.high_open else number > spec.high
    if below or above:
        raise ValueError(f"{allowed}; got {text}")
    return number


def _bounds(name: str) -> tuple[Any, Any]:
    return LIMITS[name]


def _num(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _range_text(low, high) -> str:
    if high is None:
        return f"of at least {_num(low)}"
    return f"from {_num(low)} to {_num(high)}"


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _got(value) -> str:
    return "nothing" if value is None or value == "" else repr(value)


def _check_integer(label: str, value, low: int, high: int | None, hint: str) -> int:
    """``value`` as an int, or ValueError naming the range; integral floats (8.0) are accepted."""
    allowed = f"{label} must be a whole number {_range_text(low, high)}"
    if not _is_number(value):
        raise ValueError(f"{allowed}; got {_got(value)}. {hint}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{allowed}; got {value!r}. {hint}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif float(value).is_integer():
        number = int(float(value))
    else:
        raise ValueError(f"{allowed}; got {value!r}, which is not a whole number. {hint}")
    if number < low or (high is not None and number > high):
        raise ValueError(f"{allowed}; got {number}. {hint}")
    return number


def _check_real(label: str, value, low: float, high: float, *, high_exclusive: bool, hint: str) -> float:
    if high_exclusive:
        allowed = f"{label} must be a number from {_num(low)} up to, but not including, {_num(high)}"
    else:
        allowed = f"{label} must be a number from {_num(low)} to {_num(high)}"
    if not _is_number(value):
        raise ValueError(f"{allowed}; got {_got(value)}. {hint}")
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"{allowed}; got {value!r}, which is not a finite number. {hint}")
    if number < low or number > high or (high_exclusive and number >= high):
        raise ValueError(f"{allowed}; got {value!r}. {hint}")
    return number


class Field(NamedTuple):
    """A number a request may hold: how a message names it, whether it is whole, its bounds (a key of
    :data:`calibprompt.defaults.LIMITS`), whether the upper bound is excluded, and what to do."""

    label: str
    integer: bool
    limits: str
    hint: str
    high_exclusive: bool = False


#: Every number of a training or calibration request, from the app, the API, the jobs or the command line;
#: :func:`check_number` checks a value against its field.
FIELDS: dict[str, Field] = {
    "shots": Field("Shots (training images per class)", True, "shots", f"The paper uses {SHOTS} per class."),
    "epochs": Field("Epochs", True, "epochs", f"The paper trains for {EPOCHS} epochs; choose a value in that range."),
    "seed": Field("The seed", True, "seed", "Use a small non-negative whole number such as 1, 2 or 3."),
    "alpha": Field("Alpha (the smoothing weight)", False, "alpha",
                   "Leave it empty for the paper's value, or use e.g. 0.1.", high_exclusive=True),
    "beta": Field("Beta (the regulariser weight)", False, "beta",
                  "Leave it empty for the paper's value, or use e.g. 1."),
    "n_bins": Field("The number of calibration bins", True, "n_bins", f"The paper uses {N_BINS} bins."),
    "n_views": Field("Views (cached augmented views per training image)", True, "n_views",
                     f"The default is {N_VIEWS}; more views take more memory."),
    "batch_size": Field("The batch size (training images per step)", True, "batch_size",
                        f"The default is {BATCH_SIZE}."),
}


def check_number(field: str, value) -> int | float:
    """``value`` checked as the request field ``field`` (a key of :data:`FIELDS`) and returned as an int
    (whole-number fields; 8.0 becomes 8) or a float; ValueError naming the field, its range and what to do
    for anything else: text, None, booleans, NaN, infinities, 8.5 for a whole number, a value out of range."""
    spec = FIELDS[field]
    low, high = _bounds(spec.limits)
    if spec.integer:
        return _check_integer(spec.label, value, low, high, spec.hint)
    return _check_real(spec.label, value, low, high, high_exclusive=spec.high_exclusive, hint=spec.hint)


def number_from_text(text: str):
    """A command-line value as a number for :func:`check_number` (``"8"`` -> 8, ``"8.0"`` -> 8, ``"8.5"``
    -> 8.5, ``"nan"`` -> nan), or the text itself when it is not a number, so that the check names the
    field and says what it got."""
    try:
        return int(text)
    except (TypeError, ValueError):
        pass
    try:
        number = float(text)
    except (TypeError, ValueError):
        return text
    return int(number) if math.isfinite(number) and number.is_integer() else number


def _check_shots_against_classes(shots: int, class_counts: Mapping[str, int]) -> None:
    if not class_counts:
        raise ValueError("The dataset has no training images to pick shots from; add a train split "
                         "(or class folders) with images.")
    smallest_class, smallest = min(class_counts.items(), key=lambda item: (int(item[1]), str(item[0])))
    smallest = int(smallest)
    if smallest < 1:
        raise ValueError(f"The class {smallest_class!r} has no training images, so no shots can be drawn "
                         "from it; add images of that class to the training split.")
    if shots > smallest:
        images = "image" if smallest == 1 else "images"
        raise ValueError(
            f"Shots (training images per class) must be a whole number from 1 to {smallest}, because the "
            f"smallest class, {smallest_class!r}, has only {smallest} training {images}; got {shots}. "
            f"Choose {smallest} shots or fewer, or add images to that class.")


def check_train_request(*, shots, epochs, seed, alpha=None, beta=None, method=None,
                        class_counts: Mapping[str, int] | None = None, n_bins=None, n_views=None,
                        batch_size=None) -> None:
    """Refuse a training request no run could honour, with a plain message (ValueError).

    Args:
        shots: training images per class: a whole number from 1 to the size of the smallest class of
            ``class_counts`` (when given).
        epochs: a whole number within ``LIMITS["epochs"]`` (1..1000).
        seed: a whole number within ``LIMITS["seed"]`` (0..2**31-1).
        alpha: smoothing weight, ``LIMITS["alpha"]`` ([0, 1), upper bound exclusive); None: not given.
        beta: regulariser weight, ``LIMITS["beta"]`` ([0, 100]); None: not given.
        method: a trainable method name (:func:`calibprompt.training.losses.get_method`); None: not checked.
        class_counts: images per class of the pool the shots are drawn from (the training pool, see
            :func:`class_counts_for_split`); None: not checked.
        n_bins: calibration bins, a whole number within ``LIMITS["n_bins"]`` (2..100); None: not checked.
        n_views: cached augmented views per training image, ``LIMITS["n_views"]`` (1..100); None: not checked.
        batch_size: training images per step, ``LIMITS["batch_size"]`` (1..4096); None: not checked.

    Booleans, NaN, infinities and non-integral numbers for whole-number fields (8.5 shots) are refused;
    integral floats (8.0, as a number box sends) are accepted. Each number is checked by :func:`check_number`.
    """
    shots = check_number("shots", shots)
    check_number("epochs", epochs)
    check_number("seed", seed)
    for field, value in (("alpha", alpha), ("beta", beta), ("n_bins", n_bins), ("n_views", n_views),
                         ("batch_size", batch_size)):
        if value is not None:
            check_number(field, value)
    if method is not None:
        from calibprompt.training.losses import get_method

        get_method(method)  # ValueError naming the methods
    if class_counts is not None:
        _check_shots_against_classes(shots, class_counts)
