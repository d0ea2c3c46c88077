"""Agreement between two readers who labelled the same cases (Cohen's kappa).

Pure functions over plain label sequences; nothing here touches the run store.

For two readers ``a`` and ``b`` who each gave one label to the same ``n`` cases, over the label set
``L`` (the given ``labels``, or every label either reader used):

* observed agreement ``p_o = (1 / n) * sum_i [a_i == b_i]``;
* chance agreement ``p_e = sum_{k in L} (n_a(k) / n) * (n_b(k) / n)``, where ``n_a(k)`` is how many
  cases reader ``a`` labelled ``k`` (each reader's own label frequencies, as in Cohen 1960);
* ``kappa = (p_o - p_e) / (1 - p_e)``: 1 for perfect agreement, 0 for agreement at chance level,
  negative for less than chance (down to -1).

Kappa is undefined when ``p_e == 1``, i.e. both readers gave every case one and the same label:
:func:`cohen_kappa` returns ``nan`` then (as :func:`sklearn.metrics.cohen_kappa_score` does). The value
itself is computed by :func:`sklearn.metrics.cohen_kappa_score`; this module checks the input and
words the errors.

Kappa alone misleads on few cases or skewed verdicts: two readers who agree on 2 of 3 cases (67 %)
can have kappa 0 (reader ``b`` said "agree" three times, so every agreement is what chance predicts).
:func:`pair_agreement` therefore reports the percentage agreement and the number of shared cases
beside kappa, and :data:`FEW_CASES` is where a reader should be warned that kappa is unstable.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["cohen_kappa", "percent_agreement", "pair_agreement", "FEW_CASES"]

#: below this many shared cases kappa is unstable (one changed verdict moves it a lot): say so beside it
FEW_CASES = 20


def cohen_kappa(a: Sequence[str], b: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Cohen's kappa of two readers' labels on the same cases: ``(p_o - p_e) / (1 - p_e)``.

    ``a[i]`` and ``b[i]`` are the two readers' labels for case ``i`` (same length ``n >= 1``).
    ``labels`` optionally fixes the label set; every label in ``a`` and ``b`` must then be in it
    (labels nobody used do not change the value). Returns ``nan`` when kappa is undefined
    (``p_e == 1``: both readers used one single, identical label). See the module docstring for
    ``p_o`` and ``p_e``.
    """
    a, b = _checked(a, b, labels)
    if len(set(a) | set(b)) == 1:  # one single label, used by both: p_e == 1
        return math.nan
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():  # sklearn warns where kappa is undefined; nan says so here
        warnings.simplefilter("ignore")
        value = cohen_kappa_score(a, b, labels=list(labels) if labels is not None else None)
    return float(value)


def percent_agreement(a: Sequence[str], b: Sequence[str]) -> float:
    """The fraction of cases (0 to 1) on which the two readers gave the same label (``p_o``)."""
    a, b = _checked(a, b, None)
    return sum(x == y for x, y in zip(a, b)) / len(a)


def pair_agreement(a: Sequence[str], b: Sequence[str], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Everything a reader needs to judge two readers' agreement on the same cases.

    Returns ``{"cases": n, "agreed": how many cases got the same label, "percent": agreed / n (0 to 1),
    "kappa": Cohen's kappa or None (undefined, or fewer than 2 cases), "few": n < FEW_CASES}``.
    """
    a, b = _checked(a, b, labels)
    agreed = sum(x == y for x, y in zip(a, b))
    kappa = cohen_kappa(a, b, labels) if len(a) >= 2 else math.nan
    return {"cases": len(a), "agreed": agreed, "percent": agreed / len(a),
            "kappa": None if math.isnan(kappa) else kappa, "few": len(a) < FEW_CASES}


def _checked(a: Sequence[str], b: Sequence[str], labels: Sequence[str] | None) -> tuple[list, list]:
    a, b = _as_labels(a, "a"), _as_labels(b, "b")
    if len(a) != len(b):
        raise ValueError(f"a and b must label the same cases: got {len(a)} and {len(b)} labels.")
    if not a:
        raise ValueError("a and b are empty; give at least one case labelled by both readers.")
    if labels is not None:
        allowed = set(_as_labels(labels, "labels"))
        unknown = sorted({str(x) for x in (*a, *b) if x not in allowed})
        if unknown:
            raise ValueError(f"Labels {unknown} are not in labels={sorted(map(str, allowed))}; "
                             "add them to labels or leave labels=None.")
    return a, b


def _as_labels(values: Sequence[str], name: str) -> list:
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of labels (e.g. a list of strings), not one string.")
    try:
        return list(values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of labels, got a {type(values).__name__}.") from None
