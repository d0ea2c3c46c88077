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
:func:`cohen_kappa` returns ``nan`` then (as :func:`sklearn.metrics.cohen_kappa_score` does).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

__all__ = ["cohen_kappa"]


def cohen_kappa(a: Sequence[str], b: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Cohen's kappa of two readers' labels on the same cases: ``(p_o - p_e) / (1 - p_e)``.

    ``a[i]`` and ``b[i]`` are the two readers' labels for case ``i`` (same length ``n >= 1``).
    ``labels`` optionally fixes the label set; every label in ``a`` and ``b`` must then be in it
    (labels nobody used do not change the value). Returns ``nan`` when kappa is undefined
    (``p_e == 1``: both readers used one single, identical label). See the module docstring for
    ``p_o`` and ``p_e``.
    """
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
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b)) / n
    count_a, count_b = Counter(a), Counter(b)
    chance = sum(count_a[k] * count_b[k] for k in count_a)  # n * n * p_e, exact in integers
    if chance == n * n:
        return math.nan
    p_e = chance / (n * n)
    return float((p_o - p_e) / (1.0 - p_e))


def _as_labels(values: Sequence[str], name: str) -> list:
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of labels (e.g. a list of strings), not one string.")
    try:
        return list(values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of labels, got a {type(values).__name__}.") from None
