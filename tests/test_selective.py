"""Selective prediction: the risk-coverage curve and AURC, selective accuracy, the threshold for a
target accuracy and the accuracy at a confidence with its Wilson interval — on hand-worked examples
and against brute force."""
from __future__ import annotations

import math

import numpy as np
import pytest

from calibprompt.evaluation.metrics import accuracy, reliability_bins
from calibprompt.evaluation.selective import (
    accuracy_at_confidence,
    risk_coverage,
    selective_accuracy,
    threshold_for_accuracy,
    wilson_interval,
)


def two_class(confidences, correct):
    """Binary probabilities whose top-label confidence and correctness are as given (class 0 predicted)."""
    probs = np.array([[c, 1.0 - c] for c in confidences])
    labels = np.array([0 if ok else 1 for ok in correct])
    return probs, labels


# The hand-worked example. Samples (index: confidence, correct?):
#   0: 0.90 yes   1: 0.60 no   2: 0.80 no   3: 0.70 yes   4: 0.95 yes
# Ranked by confidence, highest first: 4 (0.95, yes), 0 (0.90, yes), 2 (0.80, no), 3 (0.70, yes),
# 1 (0.60, no). Cumulative errors after k answers: 0, 0, 1, 1, 2.
#   risk(k) = errors / k = 0/1, 0/2, 1/3, 1/4, 2/5  at coverage k/5 = 0.2, 0.4, 0.6, 0.8, 1.0
#   AURC = (0 + 0 + 1/3 + 1/4 + 2/5) / 5 = (20/60 + 15/60 + 24/60) / 5 = (59/60) / 5 = 59/300 = 0.19667
HAND = two_class([0.90, 0.60, 0.80, 0.70, 0.95], [True, False, False, True, True])


def test_risk_coverage_hand_example():
    out = risk_coverage(*HAND)
    np.testing.assert_allclose(out["coverage"], [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(out["risk"], [0.0, 0.0, 1 / 3, 1 / 4, 2 / 5])
    np.testing.assert_allclose(out["thresholds"], [0.95, 0.90, 0.80, 0.70, 0.60])
    assert out["aurc"] == pytest.approx(59 / 300)
    assert isinstance(out["aurc"], float)


def test_selective_accuracy_hand_example():
    # m = ceil(coverage * 5) most confident answers:
    assert selective_accuracy(*HAND, coverage=0.2) == 1.0  # m = 1: sample 4
    assert selective_accuracy(*HAND, coverage=0.4) == 1.0  # m = 2: 4, 0
    assert selective_accuracy(*HAND, coverage=0.5) == pytest.approx(2 / 3)  # m = ceil(2.5) = 3: 4, 0, 2
    assert selective_accuracy(*HAND, coverage=0.8) == pytest.approx(3 / 4)  # m = 4 (0.8 * 5 is 4, not 4.0000001)
    assert selective_accuracy(*HAND, coverage=0.9) == pytest.approx(3 / 5)  # m = ceil(4.5) = 5
    assert selective_accuracy(*HAND, coverage=1.0) == pytest.approx(accuracy(*HAND))
    assert selective_accuracy(*HAND, coverage=0.01) == 1.0  # at least one answer


def test_threshold_for_accuracy_hand_example():
    # Thresholds t and the answers with confidence >= t:
    #   t = 0.95: {4}           accuracy 1/1
    #   t = 0.90: {4, 0}        accuracy 2/2
    #   t = 0.80: {4, 0, 2}     accuracy 2/3 = 0.667
    #   t = 0.70: {4, 0, 2, 3}  accuracy 3/4 = 0.75
    #   t = 0.60: all five      accuracy 3/5 = 0.6
    out = threshold_for_accuracy(*HAND, target=0.75)
    # the lowest t reaching 0.75 is 0.70 even though the higher t = 0.80 misses it (not monotone)
    assert out == {"target": 0.75, "threshold": 0.70, "coverage": 0.8, "accuracy": 0.75, "n_answered": 4,
                   "reason": None}
    assert threshold_for_accuracy(*HAND, target=0.7)["threshold"] == 0.70
    assert threshold_for_accuracy(*HAND, target=0.76)["threshold"] == 0.90
    full = threshold_for_accuracy(*HAND, target=1.0)
    assert (full["threshold"], full["coverage"], full["accuracy"]) == (0.90, 0.4, 1.0)
    assert threshold_for_accuracy(*HAND, target=0.6)["coverage"] == 1.0


def test_threshold_for_accuracy_none_with_a_reason():
    probs, labels = two_class([0.9, 0.8, 0.7], [False, True, False])  # best: t = 0.8, accuracy 1/2
    out = threshold_for_accuracy(probs, labels, target=0.9)
    assert out["threshold"] is None and out["accuracy"] is None
    assert out["coverage"] == 0.0 and out["n_answered"] == 0
    assert "No confidence threshold reaches accuracy 0.9" in out["reason"] and "the best is 0.5" in out["reason"]


def test_ties_are_ranked_stably_and_thresholds_keep_tied_groups_whole():
    # samples 0 and 1 tie at 0.9: sample 0 (correct) is answered first
    probs, labels = two_class([0.9, 0.9, 0.8], [True, False, True])
    np.testing.assert_allclose(risk_coverage(probs, labels)["risk"], [0.0, 0.5, 1 / 3])
    assert selective_accuracy(probs, labels, coverage=1 / 3) == 1.0
    swapped = two_class([0.9, 0.9, 0.8], [False, True, True])
    np.testing.assert_allclose(risk_coverage(*swapped)["risk"], [1.0, 0.5, 1 / 3])
    # a threshold takes both tied samples: t = 0.9 gives 1/2, t = 0.8 gives 2/3, neither reaches 1
    assert threshold_for_accuracy(probs, labels, target=1.0)["threshold"] is None
    assert threshold_for_accuracy(probs, labels, target=0.6)["n_answered"] == 3


def _random(n=500, k=4, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 2.0
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = np.where(rng.random(n) < 0.7, probs.argmax(axis=1), rng.integers(0, k, size=n))
    return probs, labels


def test_risk_coverage_shapes_and_brute_force():
    probs, labels = _random()
    out = risk_coverage(probs, labels)
    n = len(labels)
    for key in ("coverage", "risk", "thresholds"):
        assert out[key].shape == (n,)
    assert np.all(np.diff(out["coverage"]) > 0) and out["coverage"][-1] == 1.0
    assert np.all(np.diff(out["thresholds"]) <= 0)
    assert np.all((out["risk"] >= 0) & (out["risk"] <= 1))
    assert out["risk"][-1] == pytest.approx(1 - accuracy(probs, labels))
    # brute force: for each k, the k highest confidences (stable) and their errors
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    order = sorted(range(n), key=lambda i: (-conf[i], i))
    risks = [sum(pred[i] != labels[i] for i in order[:k]) / k for k in range(1, n + 1)]
    np.testing.assert_allclose(out["risk"], risks)
    assert out["aurc"] == pytest.approx(sum(risks) / n)
    for c in (0.8, 0.9):
        m = math.ceil(c * n)
        assert selective_accuracy(probs, labels, c) == pytest.approx(1 - risks[m - 1])
    # a model that ranks better has a lower AURC: confidences that follow correctness
    oracle = probs.copy()
    oracle[np.arange(n), pred] += np.where(pred == labels, 10.0, 0.0)
    oracle /= oracle.sum(axis=1, keepdims=True)
    assert risk_coverage(oracle, labels)["aurc"] < out["aurc"]


def test_threshold_for_accuracy_brute_force():
    probs, labels = _random(seed=1)
    conf, ok = probs.max(axis=1), probs.argmax(axis=1) == labels
    for target in (0.5, 0.8, 0.9, 0.95):
        passing = [t for t in np.unique(conf) if ok[conf >= t].mean() >= target]
        out = threshold_for_accuracy(probs, labels, target)
        assert out["threshold"] == min(passing)
        assert out["n_answered"] == int((conf >= min(passing)).sum())
        assert out["accuracy"] == pytest.approx(ok[conf >= min(passing)].mean())
        assert out["accuracy"] >= target


def test_wilson_interval_hand_example():
    # 8 of 10 correct, z = 1.959964, z^2 = 3.841459:
    #   centre = (0.8 + 3.841459 / 20) / (1 + 3.841459 / 10) = 0.992073 / 1.384146 = 0.716740
    #   half   = 1.959964 / 1.384146 * sqrt(0.8 * 0.2 / 10 + 3.841459 / 400)
    #          = 1.416009 * sqrt(0.016 + 0.00960365) = 1.416009 * 0.1600114 = 0.226578
    #   -> [0.490162, 0.943318] (the textbook Wilson interval for 8/10: 0.490-0.943)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.490162, abs=2e-6) and hi == pytest.approx(0.943318, abs=2e-6)
    # the interval never leaves [0, 1] and is not degenerate at 0/n or n/n (Wald would be)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(10 / (10 + 1.959964 ** 2), abs=1e-6)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(0, 5)[1] > 0
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_wilson_interval_other_levels_match_the_closed_form():
    # 3 of 20 correct at 90 %: z = 1.644854, z^2 = 2.705543, phat = 0.15
    #   centre = (0.15 + 2.705543 / 40) / (1 + 2.705543 / 20) = 0.217639 / 1.135277 = 0.191705
    #   half   = 1.644854 / 1.135277 * sqrt(0.15 * 0.85 / 20 + 2.705543 / 1600)
    #          = 1.448858 * sqrt(0.006375 + 0.001690964) = 1.448858 * 0.0898107 = 0.130123
    #   -> [0.061582, 0.321828]
    lo, hi = wilson_interval(3, 20, confidence_level=0.90)
    assert lo == pytest.approx(0.061582, abs=2e-6) and hi == pytest.approx(0.321828, abs=2e-6)
    # a wider level gives a wider interval around the same centre
    lo99, hi99 = wilson_interval(3, 20, 0.99)
    assert lo99 < lo and hi99 > hi
    for bad in (0.0, 1.0, 95, -0.5):
        with pytest.raises(ValueError, match=r"confidence_level.*\(0, 1\)"):
            wilson_interval(3, 20, bad)
    with pytest.raises(ValueError, match="n"):
        wilson_interval(0, 0)


def test_accuracy_at_confidence_hand_example():
    # ten answers in the bin [0.8, 0.9) (8 right), two elsewhere
    confs = [0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89, 0.895, 0.55, 0.99]
    right = [True] * 8 + [False, False, True, False]
    probs, labels = two_class(confs, right)
    out = accuracy_at_confidence(probs, labels, confidence=0.87)
    assert (out["bin"], out["bin_lower"], out["bin_upper"]) == (8, 0.8, 0.9)
    assert (out["count"], out["correct"], out["accuracy"]) == (10, 8, 0.8)
    assert out["mean_confidence"] == pytest.approx(np.mean(confs[:10]))
    assert out["method"] == "wilson" and out["level"] == 0.95
    lo, hi = out["interval"]
    assert lo == pytest.approx(0.490162, abs=2e-6) and hi == pytest.approx(0.943318, abs=2e-6)
    assert lo <= out["accuracy"] <= hi
    assert out["bootstrap_interval"] is None


def test_accuracy_at_confidence_uses_the_reliability_bins():
    probs, labels = _random(n=800, seed=2)
    bins = reliability_bins(probs, labels, n_bins=10)
    for c in (0.3, 0.45, 0.5, 0.77, 0.9, 1.0):
        out = accuracy_at_confidence(probs, labels, c, n_bins=10)
        b = out["bin"]
        assert out["count"] == bins.counts[b]
        if out["count"] == 0:
            assert np.isnan(bins.accuracy[b]) and out["accuracy"] is None and out["interval"] is None
            continue
        assert out["accuracy"] == pytest.approx(bins.accuracy[b])
        assert out["mean_confidence"] == pytest.approx(bins.confidence[b])
        assert out["interval"][0] <= out["accuracy"] <= out["interval"][1]
        assert out["interval"] == pytest.approx(wilson_interval(out["correct"], out["count"]))
    assert accuracy_at_confidence(probs, labels, 0.3)["bin"] == 2  # np.linspace edge 0.30000000000000004
    assert accuracy_at_confidence(probs, labels, 1.0)["bin"] == 9  # the last bin is closed


def test_accuracy_at_confidence_empty_bin_and_bootstrap():
    probs, labels = two_class([0.9, 0.95, 0.92], [True, True, False])
    out = accuracy_at_confidence(probs, labels, 0.65)
    assert out["count"] == 0 and out["accuracy"] is None and out["interval"] is None
    assert "No labelled answer has a confidence in [0.6, 0.7)" in out["reason"]
    a = accuracy_at_confidence(probs, labels, 0.93, n_boot=200, seed=3)
    b = accuracy_at_confidence(probs, labels, 0.93, n_boot=200, seed=3)
    assert a["bootstrap_interval"] == b["bootstrap_interval"]
    lo, hi = a["bootstrap_interval"]
    assert 0.0 <= lo <= 2 / 3 <= hi <= 1.0


@pytest.mark.parametrize("call,match", [
    (lambda p, y: selective_accuracy(p, y, 0.0), "coverage"),
    (lambda p, y: selective_accuracy(p, y, 1.2), "coverage"),
    (lambda p, y: selective_accuracy(p, y, "0.8"), "coverage"),
    (lambda p, y: threshold_for_accuracy(p, y, 0.0), "target"),
    (lambda p, y: threshold_for_accuracy(p, y, float("nan")), "target"),
    (lambda p, y: accuracy_at_confidence(p, y, 1.5), "confidence"),
    (lambda p, y: accuracy_at_confidence(p, y, 0.5, n_bins=0), "n_bins"),
    (lambda p, y: accuracy_at_confidence(p, y, 0.5, n_boot=-1), "n_boot"),
    (lambda p, y: risk_coverage(p * 2, y), "probs"),
    (lambda p, y: risk_coverage(p, y[:-1]), "same number of samples"),
    (lambda p, y: risk_coverage(p, None), "labels"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(*HAND)
