"""Tests for calibprompt.evaluation.metrics.

Every metric is checked against an independent computation: torchmetrics, scikit-learn,
plain-Python brute-force loops written here, or arithmetic worked by hand (in comments).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy.special import softmax as scipy_softmax
from sklearn.metrics import brier_score_loss, f1_score, log_loss
from torchmetrics.functional.classification import (
    binary_calibration_error,
    multiclass_accuracy,
    multiclass_calibration_error,
)

from calibprompt.evaluation import metrics as M

# ---------------------------------------------------------------------------
# Data helpers
# ---------------------------------------------------------------------------


def random_probs(seed: int, n: int, k: int, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Continuous random probabilities (softmax of Gaussian logits) and labels.

    Labels are drawn from the probabilities half of the time and uniformly otherwise, so
    the model is neither perfectly calibrated nor hopeless. All confidences are < 1.
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    p = scipy_softmax(z, axis=1)
    drawn = np.array([rng.choice(k, p=row) for row in p]) if n else np.zeros(0, int)
    uniform = rng.integers(0, k, size=n)
    y = np.where(rng.random(n) < 0.5, drawn, uniform).astype(np.int64)
    assert (p.max(axis=1) < 1.0).all()
    return p, y


def row_with_confidence(c: float, k: int = 4) -> list[float]:
    """A probability row whose maximum is exactly ``c`` (at column 0)."""
    rest = (1.0 - c) / (k - 1)
    assert rest < c or c == 1.0
    return [c] + [rest] * (k - 1)


# ---------------------------------------------------------------------------
# Independent brute-force references (plain Python loops; no module helpers)
# ---------------------------------------------------------------------------


def ref_bin_of(c: float, edges: list[float]) -> int:
    """numpy.histogram membership: [e_i, e_{i+1}), last bin closed."""
    n = len(edges) - 1
    for i in range(n):
        if edges[i] <= c < edges[i + 1]:
            return i
    if c == edges[n]:
        return n - 1
    raise AssertionError(f"confidence {c} outside [0, 1]")


def ref_top_label(probs, labels):
    out = []
    for row, lab in zip(np.asarray(probs, dtype=float).tolist(), np.asarray(labels).tolist()):
        conf = max(row)
        pred = row.index(conf)  # first maximum, like argmax
        out.append((conf, 1.0 if pred == lab else 0.0))
    return out


def ref_binned_errors(pairs, n_bins):
    """(ECE, MCE, counts) over equal-width bins for (confidence, outcome) pairs."""
    edges = np.linspace(0.0, 1.0, n_bins + 1).tolist()  # the contract's float edges
    bins = [[] for _ in range(n_bins)]
    for conf, ok in pairs:
        bins[ref_bin_of(conf, edges)].append((conf, ok))
    n = len(pairs)
    ece, mce = 0.0, 0.0
    for b in bins:
        if not b:
            continue
        acc = sum(ok for _, ok in b) / len(b)
        cf = sum(c for c, _ in b) / len(b)
        ece += len(b) / n * abs(acc - cf)
        mce = max(mce, abs(acc - cf))
    return ece, mce, [len(b) for b in bins]


def ref_ace(pairs, n_bins):
    """ACE: python's sorted() is stable; group sizes computed by hand (larger first)."""
    n = len(pairs)
    order = sorted(range(n), key=lambda i: pairs[i][0])
    base, extra = divmod(n, n_bins)
    total, start = 0.0, 0
    sizes = []
    for g in range(n_bins):
        size = base + (1 if g < extra else 0)
        sizes.append(size)
        members = [pairs[i] for i in order[start : start + size]]
        start += size
        if not members:
            continue
        acc = sum(ok for _, ok in members) / size
        cf = sum(c for c, _ in members) / size
        total += size / n * abs(acc - cf)
    return total, sizes


def edge_case_inputs(seed: int, n_bins: int):
    """Random rows plus rows whose confidence is 1.0, decimal 'edges' and float edges."""
    rng = np.random.default_rng(seed)
    k = 4
    p, _ = random_probs(seed, 40, k)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    special = [1.0, 1.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9] + [float(e) for e in edges if e > 0.26]
    rows = [row_with_confidence(c, k) for c in special]
    p = np.vstack([p, np.array(rows)])
    y = rng.integers(0, k, size=p.shape[0])
    # make the special rows both right and wrong
    y[40::2] = 0
    perm = rng.permutation(p.shape[0])
    return p[perm], y[perm]


# ---------------------------------------------------------------------------
# torchmetrics comparisons
# ---------------------------------------------------------------------------

SEEDS = [0, 1, 2]
NS = [1, 7, 100, 1000]
KS = [2, 3, 9]
BINS = [5, 10, 15]


@pytest.mark.parametrize("n_bins", BINS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("seed", SEEDS)
def test_ece_mce_match_torchmetrics(seed, n, k, n_bins):
    # torchmetrics casts multiclass preds to float32 (its result is float32 even for
    # float64 input), hence the 1e-6 tolerance. (A float64 confidence within ~6e-8 of an
    # edge could round across it in float32; the fixed seeds here have none.)
    # torchmetrics bins with torch.bucketize(right=True) on torch.linspace edges: the
    # same [e_i, e_{i+1}) bins as numpy.histogram, except that a confidence of exactly
    # 1.0 gets a bin of its own, and torch.linspace's float edges differ from
    # np.linspace's by an ulp at some edges. Continuous random confidences < 1 never hit
    # either case, so the two must agree.
    p, y = random_probs(seed * 1000 + n * 7 + k, n, k)
    pt, yt = torch.from_numpy(p), torch.from_numpy(y)
    tm_ece = multiclass_calibration_error(pt, yt, num_classes=k, n_bins=n_bins, norm="l1").item()
    tm_mce = multiclass_calibration_error(pt, yt, num_classes=k, n_bins=n_bins, norm="max").item()
    assert M.expected_calibration_error(p, y, n_bins=n_bins) == pytest.approx(tm_ece, abs=1e-6)
    assert M.maximum_calibration_error(p, y, n_bins=n_bins) == pytest.approx(tm_mce, abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", KS)
def test_accuracy_matches_torchmetrics(seed, k):
    p, y = random_probs(seed, 500, k)
    tm = multiclass_accuracy(torch.from_numpy(p), torch.from_numpy(y), num_classes=k, average="micro").item()
    # torchmetrics returns its accuracy in float32 even for float64 inputs
    assert M.accuracy(p, y) == pytest.approx(tm, abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 3, 9])
@pytest.mark.parametrize("n_bins", [5, 15])
def test_classwise_ece_matches_torchmetrics_binary(seed, k, n_bins):
    # torchmetrics' binary calibration error uses preds (p[:, k]) as the confidence and
    # the target as the outcome: exactly the one-vs-rest problem of classwise ECE.
    p, y = random_probs(seed + 50, 300, k)
    cw = M.classwise_ece(p, y, n_bins=n_bins)
    assert cw.shape == (k,)
    for c in range(k):
        tm = binary_calibration_error(
            torch.from_numpy(np.ascontiguousarray(p[:, c])),
            torch.from_numpy((y == c).astype(np.int64)),
            n_bins=n_bins,
        ).item()
        assert cw[c] == pytest.approx(tm, abs=1e-6)


# ---------------------------------------------------------------------------
# Hand-worked examples
# ---------------------------------------------------------------------------


def test_hand_confidence_one_lands_in_last_bin():
    # n_bins = 10, K = 2.
    #   s1 [1.00, 0.00] y=1 -> conf 1.00, wrong   -> bin 9 (last bin is closed)
    #   s2 [0.08, 0.92] y=1 -> conf 0.92, correct -> bin 9
    #   s3 [0.85, 0.15] y=0 -> conf 0.85, correct -> bin 8
    #   s4 [0.35, 0.65] y=0 -> conf 0.65, wrong   -> bin 6
    # bin 9: acc 1/2, conf (1 + .92)/2 = .96, gap .46, weight 2/4
    # bin 8: acc 1,   conf .85,               gap .15, weight 1/4
    # bin 6: acc 0,   conf .65,               gap .65, weight 1/4
    # ECE = (2*.46 + .15 + .65) / 4 = 1.72 / 4 = 0.43 ;  MCE = .65
    # (torchmetrics would give 1.0 its own bin: (1 + .08 + .15 + .65)/4 = 0.47;
    #  dropping the 1.0 sample would give (.08 + .15 + .65)/3 = 0.29333.)
    p = np.array([[1.0, 0.0], [0.08, 0.92], [0.85, 0.15], [0.35, 0.65]])
    y = np.array([1, 1, 0, 0])
    assert M.expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.43, abs=1e-12)
    assert M.maximum_calibration_error(p, y, n_bins=10) == pytest.approx(0.65, abs=1e-12)
    rb = M.reliability_bins(p, y, n_bins=10)
    assert rb.counts.tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 1, 2]
    assert rb.accuracy[9] == pytest.approx(0.5)
    assert rb.confidence[9] == pytest.approx(0.96)
    tm = multiclass_calibration_error(torch.from_numpy(p), torch.from_numpy(y), num_classes=2, n_bins=10).item()
    # the documented torchmetrics difference (which also computes in float32)
    assert tm == pytest.approx(0.47, abs=1e-6)


def test_hand_empty_bins():
    # n_bins = 5 (edges 0, .2, .4, .6, .8, 1), K = 3.
    #   [0.70, 0.20, 0.10] y=0 -> conf .70 correct -> bin 3
    #   [0.10, 0.75, 0.15] y=2 -> conf .75 wrong   -> bin 3
    #   [0.45, 0.30, 0.25] y=0 -> conf .45 correct -> bin 2
    # bins 0, 1, 4 are empty.
    # bin 2: acc 1,   conf .45,   gap .55,  weight 1/3
    # bin 3: acc 1/2, conf .725,  gap .225, weight 2/3
    # ECE = (.55 + 2*.225) / 3 = 1/3 ;  MCE = .55
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.75, 0.15], [0.45, 0.3, 0.25]])
    y = np.array([0, 2, 0])
    assert M.expected_calibration_error(p, y, n_bins=5) == pytest.approx(1 / 3, abs=1e-12)
    assert M.maximum_calibration_error(p, y, n_bins=5) == pytest.approx(0.55, abs=1e-12)
    rb = M.reliability_bins(p, y, n_bins=5)
    assert rb.counts.tolist() == [0, 0, 1, 2, 0]
    assert np.isnan(rb.accuracy[[0, 1, 4]]).all()
    assert np.isnan(rb.confidence[[0, 1, 4]]).all()
    assert np.isnan(rb.gap[[0, 1, 4]]).all()
    assert rb.gap[2] == pytest.approx(0.55) and rb.gap[3] == pytest.approx(0.225)
    d = rb.to_dict()
    assert d["accuracy"][0] is None and d["confidence"][4] is None and d["gap"][1] is None
    assert d["accuracy"][2] == pytest.approx(1.0)
    assert d["counts"] == [0, 0, 1, 2, 0]
    assert d["edges"] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    json.dumps(d, allow_nan=False)


def test_hand_mce_is_not_weighted():
    # n_bins = 10, K = 3, N = 10.
    #   8 samples with conf .75, 6 of them correct -> bin 7: acc .75, conf .75, gap 0
    #   2 samples with conf .35, both correct      -> bin 3: acc 1,   conf .35, gap .65
    # MCE (standard)          = max(0, .65)              = .65
    # weighted variant        = max(8/10*0, 2/10*.65)    = .13  (NOT what we compute)
    # ECE                     = 8/10*0 + 2/10*.65        = .13
    hi = [0.75, 0.15, 0.10]
    lo = [0.35, 0.33, 0.32]
    p = np.array([hi] * 8 + [lo] * 2)
    y = np.array([0] * 6 + [1] * 2 + [0] * 2)
    assert M.maximum_calibration_error(p, y, n_bins=10) == pytest.approx(0.65, abs=1e-12)
    assert M.expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.13, abs=1e-12)


def test_hand_mce_min_count_leaves_out_small_bins():
    # The data above (bin 7: 8 samples, gap 0; bin 3: 2 samples, gap .65) plus 5 samples
    # at conf .55, 2 of them right: bin 5, acc .4, gap .15.
    #   min_count 0, 1 or 2: all three bins    -> MCE .65 (today's behaviour)
    #   min_count 3 .. 5:    bins 7 and 5      -> MCE .15
    #   min_count 6 .. 8:    only bin 7        -> MCE 0
    #   min_count 9:         no bin qualifies  -> 0.0 (an empty max is taken as 0)
    hi = [0.75, 0.15, 0.10]
    lo = [0.35, 0.33, 0.32]
    mid = [0.55, 0.25, 0.20]
    p = np.array([hi] * 8 + [lo] * 2 + [mid] * 5)
    y = np.array([0] * 6 + [1] * 2 + [0] * 2 + [0] * 2 + [1] * 3)
    assert M.maximum_calibration_error(p, y) == pytest.approx(0.65, abs=1e-12)
    for m in (0, 1, 2):
        assert M.maximum_calibration_error(p, y, min_count=m) == pytest.approx(0.65, abs=1e-12)
    for m in (3, 5):
        assert M.maximum_calibration_error(p, y, min_count=m) == pytest.approx(0.15, abs=1e-12)
    assert M.maximum_calibration_error(p, y, min_count=6) == 0.0  # only bin 7 (gap 0) is left
    assert M.maximum_calibration_error(p, y, min_count=9) == 0.0  # nothing is left
    # ECE is unaffected; the report passes min_count through to "mce" only
    rep = M.calibration_report(p, y, n_boot=0, min_count=3)
    assert rep["mce"] == pytest.approx(0.15, abs=1e-12)
    assert rep["ece"] == M.calibration_report(p, y, n_boot=0)["ece"]
    assert M.calibration_report(p, y, n_boot=0)["mce"] == pytest.approx(0.65, abs=1e-12)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="min_count"):
            M.maximum_calibration_error(p, y, min_count=bad)
        with pytest.raises(ValueError, match="min_count"):
            M.calibration_report(p, y, n_boot=0, min_count=bad)


def test_report_mce_interval_with_min_count_equals_generic_bootstrap():
    p, y = overconfident_sample(4, 300, k=4)
    rep = M.calibration_report(p, y, n_bins=10, n_boot=80, seed=3, min_count=10)
    ref = M.bootstrap_interval(M.maximum_calibration_error, p, y, n_boot=80, seed=3, n_bins=10, min_count=10)
    assert rep["intervals"]["mce"] == pytest.approx(list(ref), abs=1e-12)
    assert rep["mce"] == M.maximum_calibration_error(p, y, n_bins=10, min_count=10)
    default = M.calibration_report(p, y, n_bins=10, n_boot=80, seed=3)
    assert default["intervals"]["mce"] == pytest.approx(
        list(M.bootstrap_interval(M.maximum_calibration_error, p, y, n_boot=80, seed=3, n_bins=10)), abs=1e-12
    )


def test_hand_ace_n_not_divisible():
    # K = 2, n_bins = 3, N = 7 -> np.array_split sizes 3, 2, 2 (larger groups first).
    # sorted confidences / outcomes:
    #   g0: .55 W, .60 C, .65 C -> acc 2/3, conf .60,  gap 1/15, weight 3/7
    #   g1: .70 W, .80 C        -> acc 1/2, conf .75,  gap .25,  weight 2/7
    #   g2: .90 C, .95 C        -> acc 1,   conf .925, gap .075, weight 2/7
    # ACE = (3*(1/15) + 2*.25 + 2*.075) / 7 = (.2 + .5 + .15) / 7 = .85/7 = 0.12142857...
    confs = [0.9, 0.55, 0.8, 0.65, 0.95, 0.6, 0.7]  # deliberately unsorted
    correct = [True, False, True, True, True, True, False]
    p = np.array([[c, 1 - c] for c in confs])
    y = np.array([0 if ok else 1 for ok in correct])
    assert M.adaptive_calibration_error(p, y, n_bins=3) == pytest.approx(0.85 / 7, abs=1e-12)
    rb = M.reliability_bins(p, y, n_bins=3, strategy="quantile")
    assert rb.counts.tolist() == [3, 2, 2]
    assert rb.accuracy == pytest.approx([2 / 3, 0.5, 1.0])
    assert rb.confidence == pytest.approx([0.6, 0.75, 0.925])
    # descriptive edges: 0, smallest conf of groups 1 and 2, 1
    assert rb.edges.tolist() == pytest.approx([0.0, 0.7, 0.9, 1.0])


def test_hand_ace_fewer_samples_than_bins():
    # N = 3 < n_bins = 5: groups of 1, 1, 1 and two empty groups (skipped), so
    # ACE = mean |correct - conf| = (|1 - .6| + |0 - .7| + |1 - .9|) / 3 = 1.2/3 = .4
    p = np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1]])
    y = np.array([0, 0, 0])
    assert M.adaptive_calibration_error(p, y, n_bins=5) == pytest.approx(0.4, abs=1e-12)
    rb = M.reliability_bins(p, y, n_bins=5, strategy="quantile")
    assert rb.counts.tolist() == [1, 1, 1, 0, 0]
    assert np.isnan(rb.accuracy[3:]).all()
    assert np.all(np.diff(rb.edges) >= 0) and rb.edges[0] == 0.0 and rb.edges[-1] == 1.0


def test_hand_ace_ties_use_stable_order():
    # All confidences are .6; outcomes in input order C, C, W, W; n_bins = 2.
    # Stable sort keeps the input order: g0 = (C, C) gap .4, g1 = (W, W) gap .6
    # ACE = .5*.4 + .5*.6 = .5   (an order mixing them would give 0.1)
    p = np.array([[0.6, 0.4]] * 4)
    y = np.array([0, 0, 1, 1])
    assert M.adaptive_calibration_error(p, y, n_bins=2) == pytest.approx(0.5, abs=1e-12)


def test_hand_classwise_ece():
    # K = 3, N = 4, n_bins = 2 (edges 0, .5, 1).
    #   s1 [.6 .3 .1] y=0 ; s2 [.2 .7 .1] y=1 ; s3 [.1 .2 .7] y=0 ; s4 [.3 .3 .4] y=2
    # class 0: p = .6 .2 .1 .3, ind = 1 0 1 0
    #   bin0 {.2:0, .1:1, .3:0}: acc 1/3, conf .2,   gap 2/15, w 3/4 -> .1
    #   bin1 {.6:1}:             acc 1,   conf .6,   gap .4,   w 1/4 -> .1    => .2
    # class 1: p = .3 .7 .2 .3, ind = 0 1 0 0
    #   bin0 {.3, .2, .3}: acc 0, conf 4/15, gap 4/15, w 3/4 -> .2
    #   bin1 {.7:1}:       acc 1, conf .7,   gap .3,   w 1/4 -> .075  => .275
    # class 2: p = .1 .1 .7 .4, ind = 0 0 0 1
    #   bin0 {.1, .1, .4:1}: acc 1/3, conf .2, gap 2/15, w 3/4 -> .1
    #   bin1 {.7:0}:         acc 0,   conf .7, gap .7,   w 1/4 -> .175  => .275
    # mean = .75 / 3 = .25
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    y = np.array([0, 1, 0, 2])
    cw = M.classwise_ece(p, y, n_bins=2)
    assert isinstance(cw, np.ndarray) and cw.shape == (3,)
    np.testing.assert_allclose(cw, [0.2, 0.275, 0.275], atol=1e-12)
    rep = M.calibration_report(p, y, n_bins=2, n_boot=0)
    assert rep["classwise_ece_mean"] == pytest.approx(0.25, abs=1e-12)


def test_hand_macro_f1():
    # K = 4, labels [0 0 1 1 2 2], predictions [0 1 1 1 2 0]; class 3 never occurs.
    # class 0: TP 1 FP 1 FN 1 -> P .5,  R .5 -> F1 .5
    # class 1: TP 2 FP 1 FN 0 -> P 2/3, R 1  -> F1 .8
    # class 2: TP 1 FP 0 FN 1 -> P 1,   R .5 -> F1 2/3
    # class 3: nothing        -> F1 0 (zero_division=0; labels=range(K))
    # macro = (.5 + .8 + 2/3 + 0) / 4 = 0.491666...
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    p = np.full((6, 4), 0.1)
    p[np.arange(6), pred] = 0.7
    assert M.macro_f1(p, y) == pytest.approx((0.5 + 0.8 + 2 / 3) / 4, abs=1e-12)


def test_hand_brier_and_nll():
    # rows [.7 .2 .1] y=0 and [.1 .6 .3] y=2
    # Brier: (.3^2 + .2^2 + .1^2) = .14 ; (.1^2 + .6^2 + .7^2) = .86 ; mean = .5
    # NLL: (-log .7 - log .3) / 2
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    y = np.array([0, 2])
    assert M.brier_score(p, y) == pytest.approx(0.5, abs=1e-12)
    assert M.negative_log_likelihood(p, y) == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2, abs=1e-12)
    # eps floor: p[label] = 0 -> -log(eps)
    q = np.array([[1.0, 0.0]])
    assert M.negative_log_likelihood(q, [1]) == pytest.approx(-math.log(1e-12))
    assert M.negative_log_likelihood(q, [1], eps=1e-3) == pytest.approx(-math.log(1e-3))
    # worst case Brier is 2 (all mass on a wrong class)
    assert M.brier_score(q, [1]) == pytest.approx(2.0)


# ---------------------------------------------------------------------------
# Brute-force references, incl. conf == 1.0 and values on bin edges
# ---------------------------------------------------------------------------


def test_decimal_edges_follow_numpy_histogram():
    # np.linspace(0, 1, 11)[3] == 0.30000000000000004 > 0.3, so 0.3 is counted in bin 2
    # by np.histogram (and hence by us); 0.5 is exactly an edge and opens bin 5.
    edges = np.linspace(0, 1, 11)
    assert edges[3] > 0.3 and edges[5] == 0.5
    p = np.array([row_with_confidence(c) for c in (0.3, 0.5, 1.0)])
    rb = M.reliability_bins(p, [0, 0, 0], n_bins=10)
    assert rb.counts.tolist() == np.histogram(p.max(axis=1), bins=edges)[0].tolist()
    assert rb.counts[2] == 1 and rb.counts[5] == 1 and rb.counts[9] == 1


@pytest.mark.parametrize("n_bins", [3, 5, 10, 15])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ece_mce_ace_vs_brute_force(seed, n_bins):
    p, y = edge_case_inputs(seed, n_bins)
    pairs = ref_top_label(p, y)
    ece, mce, counts = ref_binned_errors(pairs, n_bins)
    ace, sizes = ref_ace(pairs, n_bins)
    assert M.expected_calibration_error(p, y, n_bins=n_bins) == pytest.approx(ece, abs=1e-12)
    assert M.maximum_calibration_error(p, y, n_bins=n_bins) == pytest.approx(mce, abs=1e-12)
    assert M.adaptive_calibration_error(p, y, n_bins=n_bins) == pytest.approx(ace, abs=1e-12)
    conf = p.max(axis=1)
    hist = np.histogram(conf, bins=np.linspace(0, 1, n_bins + 1))[0]
    rb = M.reliability_bins(p, y, n_bins=n_bins)
    assert rb.counts.tolist() == counts == hist.tolist()
    assert rb.counts.sum() == len(y)  # nothing dropped, incl. conf == 1.0
    rq = M.reliability_bins(p, y, n_bins=n_bins, strategy="quantile")
    assert rq.counts.tolist() == sizes


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_bins", [4, 10])
def test_classwise_ece_vs_brute_force(seed, n_bins):
    p, y = edge_case_inputs(seed, n_bins)
    cw = M.classwise_ece(p, y, n_bins=n_bins)
    for k in range(p.shape[1]):
        pairs = [(float(p[i, k]), 1.0 if y[i] == k else 0.0) for i in range(len(y))]
        assert cw[k] == pytest.approx(ref_binned_errors(pairs, n_bins)[0], abs=1e-12)


@pytest.mark.parametrize("n", [1, 7, 100, 1000])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_vs_brute_force(seed, n):
    p, y = random_probs(seed + 7, n, 3)
    pairs = ref_top_label(p, y)
    for n_bins in (5, 10, 15):
        ece, mce, _ = ref_binned_errors(pairs, n_bins)
        assert M.expected_calibration_error(p, y, n_bins) == pytest.approx(ece, abs=1e-12)
        assert M.maximum_calibration_error(p, y, n_bins) == pytest.approx(mce, abs=1e-12)
        assert M.adaptive_calibration_error(p, y, n_bins) == pytest.approx(ref_ace(pairs, n_bins)[0], abs=1e-12)


def test_ace_equals_ece_when_groups_match_bins():
    # One sample per quantile group and one per uniform bin -> same partitions.
    confs = [0.55, 0.65, 0.75, 0.85, 0.95]
    p = np.array([[c, 1 - c] for c in confs])
    y = np.array([0, 1, 0, 1, 0])
    # uniform bins of width .1 over [.5, 1] need n_bins=10: bins 5..9, one sample each
    # quantile groups with n_bins=5: one sample each
    assert M.adaptive_calibration_error(p, y, 5) == pytest.approx(M.expected_calibration_error(p, y, 10))


# ---------------------------------------------------------------------------
# sklearn comparisons
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("seed", SEEDS)
def test_nll_matches_sklearn(seed, k):
    p, y = random_probs(seed + 11, 400, k)
    ref = log_loss(y, p, labels=list(range(k)))
    assert M.negative_log_likelihood(p, y) == pytest.approx(ref, abs=1e-10)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("seed", SEEDS)
def test_brier_matches_hand_and_sklearn(seed, k):
    p, y = random_probs(seed + 13, 400, k)
    hand = sum(
        sum((p[i, c] - (1.0 if y[i] == c else 0.0)) ** 2 for c in range(k)) for i in range(len(y))
    ) / len(y)
    ours = M.brier_score(p, y)
    assert ours == pytest.approx(hand, abs=1e-12)
    # sklearn >= 1.7 has a multiclass Brier with labels=...; its default
    # scale_by_half="auto" halves the binary case even for 2-column input, so ask for
    # the unscaled [0, 2] form explicitly.
    ref = brier_score_loss(y, p, labels=list(range(k)), scale_by_half=False)
    assert ours == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_macro_f1_matches_sklearn_random(seed):
    p, y = random_probs(seed + 17, 300, 9)
    ref = f1_score(y, p.argmax(axis=1), average="macro", labels=list(range(9)), zero_division=0)
    assert M.macro_f1(p, y) == pytest.approx(ref, abs=1e-12)


def test_mean_confidence():
    p = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    assert M.mean_confidence(p) == pytest.approx((0.7 + 0.8 + 0.5) / 3)
    assert M.mean_confidence(p, [0, 1, 1]) == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------
# Input types
# ---------------------------------------------------------------------------

SCALAR_FUNCS = [
    M.accuracy,
    M.expected_calibration_error,
    M.maximum_calibration_error,
    M.adaptive_calibration_error,
    M.negative_log_likelihood,
    M.brier_score,
    M.macro_f1,
]


def test_input_types_agree():
    p, y = random_probs(3, 200, 5)
    p32 = p.astype(np.float32)
    variants64 = [
        (p, y),
        (p.tolist(), y.tolist()),
        (torch.from_numpy(p), torch.from_numpy(y)),
        (torch.from_numpy(p).requires_grad_(True), torch.from_numpy(y).to(torch.int32)),
        (p, y.astype(np.int32)),
        (p, y.astype(np.float64)),  # integral floats are accepted as labels
    ]
    variants32 = [(p32, y), (torch.from_numpy(p32), torch.from_numpy(y)), (p32.tolist(), y.tolist())]
    for f in SCALAR_FUNCS:
        ref64 = f(p, y)
        ref32 = f(p32, y)
        assert isinstance(ref64, float)
        for pv, yv in variants64:
            assert f(pv, yv) == pytest.approx(ref64, abs=1e-12), f.__name__
        for pv, yv in variants32:
            assert f(pv, yv) == pytest.approx(ref32, abs=1e-12), f.__name__
        assert ref32 == pytest.approx(ref64, abs=1e-5)
    np.testing.assert_allclose(M.classwise_ece(torch.from_numpy(p32), y), M.classwise_ece(p32, y), atol=1e-12)
    assert M.mean_confidence(torch.from_numpy(p32)) == pytest.approx(M.mean_confidence(p32), abs=1e-12)
    a = M.reliability_bins(torch.from_numpy(p), torch.from_numpy(y)).to_dict()
    b = M.reliability_bins(p.tolist(), y.tolist()).to_dict()
    assert a == b


def test_inputs_not_modified():
    p, y = random_probs(4, 50, 3)
    p0, y0 = p.copy(), y.copy()
    M.calibration_report(p, y, n_boot=5)
    M.fit_temperature(np.log(p), y)
    assert (p == p0).all() and (y == y0).all()


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

GOOD_P = np.array([[0.7, 0.3], [0.4, 0.6]])
GOOD_Y = np.array([0, 1])


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        (np.array([0.7, 0.3]), [0], r"2-D.*\(N, K\)"),
        (np.ones((2, 2, 1)) / 2, [0, 1], r"2-D"),
        (GOOD_P, np.array([[0], [1]]), r"1-D.*\(N,\)"),
        (GOOD_P, [0, 1, 1], r"same number of samples"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), r"N == 0"),
        (np.zeros((2, 0)), [0, 0], r"K == 0"),
        (GOOD_P, [0, 2], r"\[0, K\) = \[0, 2\)"),
        (GOOD_P, [-1, 0], r"\[0, K\)"),
        (GOOD_P, [0.5, 1.0], r"integer"),
        (GOOD_P, ["a", "b"], r"integer"),
        (np.array([[np.nan, 1.0], [0.5, 0.5]]), GOOD_Y, r"NaN/inf.*finite"),
        (np.array([[np.inf, 0.0], [0.5, 0.5]]), GOOD_Y, r"NaN/inf"),
        (np.array([[0.6, 0.6], [0.5, 0.5]]), GOOD_Y, r"sum to 1.*softmax of logits\), not logits"),
        (np.array([[2.0, -1.0], [0.5, 0.5]]), GOOD_Y, r"\[0, 1\].*softmax of logits"),
        (np.array([["a", "b"], ["c", "d"]]), GOOD_Y, r"real numbers"),
        ([[0.5, 0.5], [1.0]], GOOD_Y, r"rectangular"),
    ],
)
def test_validation_errors(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        M.expected_calibration_error(probs, labels)


@pytest.mark.parametrize("func", SCALAR_FUNCS + [M.classwise_ece, M.reliability_bins, M.calibration_report])
def test_labels_none_is_rejected(func):
    with pytest.raises(ValueError, match="`labels` is required"):
        func(GOOD_P, None)
    assert M.mean_confidence(GOOD_P, None) == pytest.approx(0.65)


PUBLIC_PROB_FUNCS = [
    M.accuracy,
    M.expected_calibration_error,
    M.maximum_calibration_error,
    M.adaptive_calibration_error,
    M.classwise_ece,
    M.negative_log_likelihood,
    M.brier_score,
    M.macro_f1,
    M.reliability_bins,
    M.ece_interval,
    M.calibration_report,
    M.mean_confidence,
    lambda p, y: M.bootstrap_interval(M.accuracy, p, y, n_boot=3),
]


@pytest.mark.parametrize("func", PUBLIC_PROB_FUNCS)
def test_every_function_rejects_logits_and_bad_labels(func):
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    with pytest.raises(ValueError, match="not logits"):
        func(logits, [0, 1])
    with pytest.raises(ValueError, match=r"\[0, K\)"):
        func(np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]), [0, 3])


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10", None])
@pytest.mark.parametrize(
    "func",
    [
        M.expected_calibration_error,
        M.maximum_calibration_error,
        M.adaptive_calibration_error,
        M.classwise_ece,
        M.reliability_bins,
        M.ece_interval,
        M.calibration_report,
    ],
)
def test_bad_n_bins(func, bad):
    with pytest.raises(ValueError, match=r"`n_bins` must be an int >= 1"):
        func(GOOD_P, GOOD_Y, n_bins=bad)


def test_n_bins_accepts_numpy_int():
    assert M.expected_calibration_error(GOOD_P, GOOD_Y, n_bins=np.int64(4)) == M.expected_calibration_error(
        GOOD_P, GOOD_Y, n_bins=4
    )


@pytest.mark.parametrize("bad", ["equal", "Uniform", None, 1])
def test_bad_strategy(bad):
    with pytest.raises(ValueError, match=r"one of \('uniform', 'quantile'\)"):
        M.reliability_bins(GOOD_P, GOOD_Y, strategy=bad)


@pytest.mark.parametrize("bad", [0, -1e-3, 1.0, 2, float("nan"), "x"])
def test_bad_eps(bad):
    with pytest.raises(ValueError, match="eps"):
        M.negative_log_likelihood(GOOD_P, GOOD_Y, eps=bad)


def test_bad_bootstrap_arguments():
    with pytest.raises(ValueError, match=r"`n_boot` must be an int >= 1"):
        M.bootstrap_interval(M.accuracy, GOOD_P, GOOD_Y, n_boot=0)
    with pytest.raises(ValueError, match=r"`n_boot` must be an int >= 0"):
        M.calibration_report(GOOD_P, GOOD_Y, n_boot=-1)
    with pytest.raises(ValueError, match=r"`n_boot`"):
        M.ece_interval(GOOD_P, GOOD_Y, n_boot=10.5)
    for lv in (0, 1, 1.5, 95):
        with pytest.raises(ValueError, match=r"`level` must lie in the open interval \(0, 1\)"):
            M.bootstrap_interval(M.accuracy, GOOD_P, GOOD_Y, level=lv)
    with pytest.raises(ValueError, match="callable"):
        M.bootstrap_interval("ece", GOOD_P, GOOD_Y)
    with pytest.raises(ValueError, match="n_bins"):  # metric kwargs checked before resampling
        M.bootstrap_interval(M.expected_calibration_error, GOOD_P, GOOD_Y, n_bins=0)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "2", None, True])
def test_apply_temperature_rejects_bad_t(bad):
    with pytest.raises(ValueError, match="temperature"):
        M.apply_temperature(np.zeros((2, 3)), bad)


def test_temperature_input_validation():
    with pytest.raises(ValueError, match="NaN/inf"):
        M.fit_temperature(np.array([[np.nan, 0.0]]), [0])
    with pytest.raises(ValueError, match=r"`logits` must be 2-D"):
        M.apply_temperature(np.zeros(3), 1.0)
    with pytest.raises(ValueError, match=r"`max_iter` must be an int >= 1"):
        M.fit_temperature(np.zeros((2, 2)), [0, 1], max_iter=0)
    with pytest.raises(ValueError, match=r"\[0, K\)"):
        M.fit_temperature(np.zeros((2, 2)), [0, 2])


# ---------------------------------------------------------------------------
# ReliabilityBins
# ---------------------------------------------------------------------------


def test_reliability_bins_frozen_and_readonly():
    p, y = random_probs(5, 100, 3)
    rb = M.reliability_bins(p, y, n_bins=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rb.counts = np.zeros(8)
    with pytest.raises(ValueError):
        rb.counts[0] = 5
    assert rb.edges.shape == (9,) and rb.counts.shape == (8,)
    assert rb.counts.dtype.kind == "i" and rb.counts.sum() == 100
    np.testing.assert_array_equal(rb.edges, np.linspace(0, 1, 9))
    # ECE recomputed from the diagram data
    ne = rb.counts > 0
    ece = float(np.sum(rb.counts[ne] / 100 * rb.gap[ne]))
    assert ece == pytest.approx(M.expected_calibration_error(p, y, n_bins=8), abs=1e-12)
    rq = M.reliability_bins(p, y, n_bins=8, strategy="quantile")
    assert rq.strategy == "quantile" and rq.counts.tolist() == [13, 13, 13, 13, 12, 12, 12, 12]
    assert rq.edges[0] == 0.0 and rq.edges[-1] == 1.0 and np.all(np.diff(rq.edges) >= 0)
    ne = rq.counts > 0
    ace = float(np.sum(rq.counts[ne] / 100 * rq.gap[ne]))
    assert ace == pytest.approx(M.adaptive_calibration_error(p, y, n_bins=8), abs=1e-12)
    d = rq.to_dict()
    assert set(d) >= {"edges", "counts", "accuracy", "confidence", "gap"}
    json.dumps(d, allow_nan=False)


# ---------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------


def overconfident_sample(seed: int, n: int, k: int = 4):
    """Labels drawn from softmax(z), reported probs softmax(2 z): overconfident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k))
    true_p = scipy_softmax(z, axis=1)
    y = (rng.random(n)[:, None] > np.cumsum(true_p, axis=1)).sum(axis=1).clip(0, k - 1)
    return scipy_softmax(2.5 * z, axis=1), y


def test_bootstrap_deterministic_and_seeded():
    p, y = overconfident_sample(0, 300)
    a = M.bootstrap_interval(M.expected_calibration_error, p, y, n_boot=100, seed=3)
    b = M.bootstrap_interval(M.expected_calibration_error, p, y, n_boot=100, seed=3)
    c = M.bootstrap_interval(M.expected_calibration_error, p, y, n_boot=100, seed=4)
    assert a == b and a != c
    assert isinstance(a, tuple) and all(isinstance(v, float) for v in a) and a[0] <= a[1]
    r1 = M.calibration_report(p, y, n_boot=100, seed=3)
    r2 = M.calibration_report(p, y, n_boot=100, seed=3)
    assert r1 == r2


def test_bootstrap_contains_point_estimate_and_shrinks():
    p, y = overconfident_sample(1, 2000)
    for f in (M.accuracy, M.expected_calibration_error, M.negative_log_likelihood, M.brier_score):
        lo, hi = M.bootstrap_interval(f, p, y, n_boot=200, seed=0)
        assert lo <= f(p, y) <= hi, f.__name__
    small = M.calibration_report(p[:200], y[:200], n_boot=300, seed=0)["intervals"]
    pb, yb = overconfident_sample(2, 8000)
    large = M.calibration_report(pb, yb, n_boot=300, seed=0)["intervals"]
    for key in ("accuracy", "ece", "ace", "nll", "brier"):
        assert large[key][1] - large[key][0] < small[key][1] - small[key][0], key
    # a lower level gives a narrower interval
    lo95, hi95 = M.bootstrap_interval(M.accuracy, p, y, n_boot=200, level=0.95)
    lo50, hi50 = M.bootstrap_interval(M.accuracy, p, y, n_boot=200, level=0.5)
    assert lo95 <= lo50 <= hi50 <= hi95 and hi50 - lo50 < hi95 - lo95


def test_bootstrap_by_hand_quantiles():
    # Independent re-implementation: same index stream, np.quantile of replicates.
    p, y = overconfident_sample(5, 150)
    rng = np.random.default_rng(9)
    reps = []
    for _ in range(50):
        idx = rng.integers(0, 150, size=150)
        reps.append(np.mean(p[idx].argmax(axis=1) == y[idx]))
    expected = tuple(np.quantile(reps, [0.05, 0.95]))
    got = M.bootstrap_interval(M.accuracy, p, y, n_boot=50, level=0.9, seed=9)
    assert got == pytest.approx(expected, abs=1e-12)


def test_report_intervals_equal_generic_bootstrap():
    # The vectorised bootstrap inside calibration_report draws the same resamples as
    # bootstrap_interval, so the intervals must agree with calling each metric.
    p, y = overconfident_sample(3, 257, k=5)
    rep = M.calibration_report(p, y, n_bins=7, n_boot=120, seed=11)
    funcs = {
        "accuracy": (M.accuracy, {}),
        "ece": (M.expected_calibration_error, {"n_bins": 7}),
        "mce": (M.maximum_calibration_error, {"n_bins": 7}),
        "ace": (M.adaptive_calibration_error, {"n_bins": 7}),
        "nll": (M.negative_log_likelihood, {}),
        "brier": (M.brier_score, {}),
    }
    assert set(rep["intervals"]) == set(funcs)
    for key, (f, kw) in funcs.items():
        ref = M.bootstrap_interval(f, p, y, n_boot=120, seed=11, **kw)
        assert rep["intervals"][key] == pytest.approx(list(ref), abs=1e-12), key
    assert M.ece_interval(p, y, n_bins=7, n_boot=120, seed=11) == M.bootstrap_interval(
        M.expected_calibration_error, p, y, n_boot=120, seed=11, n_bins=7
    )


def test_report_intervals_with_ties_and_saturated_confidences():
    # Repeated rows (ties in confidence) and conf == 1.0 exercise the stable sort and
    # the closed last bin inside the vectorised bootstrap.
    rows = [[1.0, 0.0, 0.0], [0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]]
    p = np.array(rows * 6)
    y = np.array([0, 0, 1, 1, 2, 1] * 5)
    rep = M.calibration_report(p, y, n_bins=4, n_boot=60, seed=2)
    for key, f in (("ece", M.expected_calibration_error), ("mce", M.maximum_calibration_error),
                   ("ace", M.adaptive_calibration_error)):
        ref = M.bootstrap_interval(f, p, y, n_boot=60, seed=2, n_bins=4)
        assert rep["intervals"][key] == pytest.approx(list(ref), abs=1e-12), key


# ---------------------------------------------------------------------------
# calibration_report
# ---------------------------------------------------------------------------

REPORT_KEYS = {
    "n", "num_classes", "accuracy", "ece", "mce", "ace", "nll", "brier", "macro_f1",
    "mean_confidence", "classwise_ece", "classwise_ece_mean", "n_bins", "reliability", "intervals",
}


def test_report_contents():
    p, y = random_probs(8, 500, 9)
    rep = M.calibration_report(torch.from_numpy(p).float(), torch.from_numpy(y), n_bins=12, n_boot=50)
    assert set(rep) == REPORT_KEYS
    p32 = p.astype(np.float32)
    assert rep["n"] == 500 and rep["num_classes"] == 9 and rep["n_bins"] == 12
    assert rep["accuracy"] == M.accuracy(p32, y)
    assert rep["ece"] == M.expected_calibration_error(p32, y, 12)
    assert rep["mce"] == M.maximum_calibration_error(p32, y, 12)
    assert rep["ace"] == M.adaptive_calibration_error(p32, y, 12)
    assert rep["nll"] == M.negative_log_likelihood(p32, y)
    assert rep["brier"] == M.brier_score(p32, y)
    assert rep["macro_f1"] == M.macro_f1(p32, y)
    assert rep["mean_confidence"] == M.mean_confidence(p32)
    assert rep["classwise_ece"] == pytest.approx(M.classwise_ece(p32, y, 12).tolist(), abs=0)
    assert rep["classwise_ece_mean"] == pytest.approx(np.mean(rep["classwise_ece"]))
    assert rep["reliability"] == M.reliability_bins(p32, y, 12).to_dict()
    assert set(rep["intervals"]) == {"accuracy", "ece", "mce", "ace", "nll", "brier"}
    for lo, hi in rep["intervals"].values():
        assert isinstance(lo, float) and lo <= hi
    json.loads(json.dumps(rep, allow_nan=False))
    rep0 = M.calibration_report(p, y, n_boot=0)
    assert set(rep0) == REPORT_KEYS and rep0["intervals"] is None


class _CountingRng:
    """A ``np.random.Generator`` that counts its ``integers`` draws and the indices they hold."""

    def __init__(self, rng: np.random.Generator, counts: dict):
        self._rng, self._counts = rng, counts

    def integers(self, *args, **kwargs):
        out = self._rng.integers(*args, **kwargs)
        self._counts["draws"] += 1
        self._counts["indices"] += int(np.size(out))
        return out

    def __getattr__(self, name):
        return getattr(self._rng, name)


def test_report_bootstrap_is_vectorised(monkeypatch):
    """1000 resamples of 5000 rows are drawn in a few blocks, each index once, and the metric functions run
    the same number of times whatever ``n_boot`` is: the work per resample is numpy's, not Python's. (The
    wall-clock figure is measured by ``benchmarks/fast_paths.py``, as a ratio to the report without intervals.)"""
    p, y = random_probs(9, 5000, 9)
    counts = {"draws": 0, "indices": 0, "metric_calls": 0}
    default_rng = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda *a, **k: _CountingRng(default_rng(*a, **k), counts))
    for name in ("accuracy", "expected_calibration_error", "maximum_calibration_error",
                 "adaptive_calibration_error", "negative_log_likelihood", "brier_score", "macro_f1"):
        original = getattr(M, name)

        def counted(*args, _original=original, **kwargs):
            counts["metric_calls"] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(M, name, counted)
    calls = []
    for n_boot in (10, 1000):
        counts.update(draws=0, indices=0, metric_calls=0)
        rep = M.calibration_report(p, y, n_bins=10, n_boot=n_boot, seed=0)
        assert counts["indices"] == n_boot * 5000  # every resample drawn once, whole
        calls.append(counts["metric_calls"])
    assert counts["draws"] <= 1000 // 100  # in blocks, not one draw per resample
    assert calls[0] == calls[1]  # no metric function runs per resample
    assert set(rep["intervals"]) == {"accuracy", "ece", "mce", "ace", "nll", "brier"}


# ---------------------------------------------------------------------------
# Temperature scaling
# ---------------------------------------------------------------------------


def sample_labels(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.random(p.shape[0])[:, None]
    return (u > np.cumsum(p, axis=1)).sum(axis=1).clip(0, p.shape[1] - 1)


@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_fit_temperature_recovers_truth(t_true):
    rng = np.random.default_rng(int(t_true * 10))
    z = rng.normal(size=(20000, 5)) * 2.0
    y = sample_labels(scipy_softmax(z / t_true, axis=1), rng)
    t = M.fit_temperature(z, y)
    assert isinstance(t, float)
    assert abs(t - t_true) / t_true < 0.10
    assert M.fit_temperature(torch.from_numpy(z).float(), torch.from_numpy(y)) == pytest.approx(t, rel=1e-4)
    assert M.fit_temperature(z, y) == t  # deterministic


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fit_temperature_never_increases_nll(seed):
    rng = np.random.default_rng(seed)
    n = [1, 5, 50, 500][seed]
    z = rng.normal(size=(n, 3)) * rng.uniform(0.2, 5)
    y = rng.integers(0, 3, size=n) if seed % 2 else sample_labels(scipy_softmax(z, axis=1), rng)
    t = M.fit_temperature(z, y)
    assert t > 0
    nll_fit = M.negative_log_likelihood(M.apply_temperature(z, t), y)
    nll_one = M.negative_log_likelihood(M.apply_temperature(z, 1.0), y)
    assert nll_fit <= nll_one + 1e-12
    # and it is (close to) the minimum on a grid
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 400))
    best = min(M.negative_log_likelihood(M.apply_temperature(z, g), y) for g in grid)
    assert nll_fit <= best + 1e-6


def test_fit_temperature_calibrated_is_near_one():
    rng = np.random.default_rng(42)
    z = rng.normal(size=(20000, 4)) * 1.5
    y = sample_labels(scipy_softmax(z, axis=1), rng)
    assert M.fit_temperature(z, y) == pytest.approx(1.0, rel=0.1)


def test_apply_temperature():
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0], [-5e4, -5e4, -5e4]])
    for t in (0.1, 1.0, 3.0):
        q = M.apply_temperature(z, t)
        assert q.shape == (3, 3) and np.isfinite(q).all()
        np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(q, scipy_softmax(z / t, axis=1), atol=1e-12)
    np.testing.assert_allclose(M.apply_temperature(torch.tensor(z), np.float64(2.0)), scipy_softmax(z / 2, axis=1))
    # argmax (hence accuracy) does not change with T
    p, y = random_probs(1, 100, 4)
    z = np.log(p)
    assert M.accuracy(M.apply_temperature(z, 3.0), y) == M.accuracy(p, y)
