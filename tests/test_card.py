"""Tests for calibprompt.evaluation.card: per-class ECE, KDE-ECE, SmoothECE, debiased ECE, paired tests."""

from __future__ import annotations

import math

import numpy as np
import pytest

import calibprompt as cp
from calibprompt.evaluation import card as C
from calibprompt.evaluation import metrics as M

# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def binary_top_label(conf, correct, seed=0):
    """Two-class probabilities whose top-label confidence is ``conf`` and whose argmax is
    right exactly where ``correct`` is true (true class drawn at random)."""
    rng = np.random.default_rng(seed)
    conf = np.asarray(conf, dtype=np.float64)
    n = conf.shape[0]
    pred = rng.integers(0, 2, size=n)
    p = np.empty((n, 2))
    p[np.arange(n), pred] = conf
    p[np.arange(n), 1 - pred] = 1.0 - conf
    labels = np.where(np.asarray(correct, dtype=bool), pred, 1 - pred)
    return p, labels


def calibrated(n, seed, lo=0.5, hi=1.0, truth=lambda c: c):
    """Top-label confidences ~ U(lo, hi), correct with probability truth(conf)."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(lo, hi, size=n)
    correct = rng.uniform(size=n) < truth(conf)
    return binary_top_label(conf, correct, seed=seed + 1)


def random_probs(seed, n=300, k=3, scale=2.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p, rng.integers(0, k, size=n)


# ---------------------------------------------------------------------------
# per_class_ece (the authors' definition)
# ---------------------------------------------------------------------------

# Hand-worked example: 3 classes, class 2 never the label and never predicted.
#   i  probs               y   pred  conf  correct  bin (10 equal-width bins)
#   0  .93 .07 0           0   0     .93   1        9
#   1  .72 .28 0           0   0     .72   1        7
#   2  .64 .36 0           1   0     .64   0        6
#   3  .19 .81 0           1   1     .81   1        8
#   4  .44 .56 0           0   1     .56   0        5
#   5  .33 .67 0           0   1     .67   0        6
#   6  .66 .34 0           0   0     .66   1        6
HAND_P = np.array(
    [[0.93, 0.07, 0], [0.72, 0.28, 0], [0.64, 0.36, 0], [0.19, 0.81, 0], [0.44, 0.56, 0], [0.33, 0.67, 0],
     [0.66, 0.34, 0]]
)
HAND_Y = np.array([0, 0, 1, 1, 0, 0, 0])


def test_per_class_ece_by_true_class_by_hand():
    # true class 0 = {0, 1, 4, 5, 6}: bin 9 |1 - .93| = .07, bin 7 .28, bin 5 .56,
    #   bin 6 {5 (.67, wrong), 6 (.66, right)}: acc .5, conf .665 -> .165 with weight 2/5
    #   ECE_0 = (.07 + .28 + .56 + 2 * .165) / 5 = 1.24 / 5 = 0.248
    # true class 1 = {2, 3}: bin 6 |0 - .64| = .64, bin 8 |1 - .81| = .19 -> (.64 + .19) / 2 = .415
    out = C.per_class_ece(HAND_P, HAND_Y, by="true")
    assert out.shape == (3,)
    np.testing.assert_allclose(out[:2], [0.248, 0.415], atol=1e-12)
    assert math.isnan(out[2])


def test_per_class_ece_by_predicted_class_by_hand():
    # predicted 0 = {0, 1, 2, 6}: bin 9 .07, bin 7 .28, bin 6 {2 (.64, wrong), 6 (.66, right)}:
    #   acc .5, conf .65 -> .15 with weight 2/4;  ECE_0 = (.07 + .28 + 2 * .15) / 4 = .1625
    # predicted 1 = {3, 4, 5}: bin 8 .19, bin 5 .56, bin 6 .67 -> 1.42 / 3
    out = C.per_class_ece(HAND_P, HAND_Y, by="predicted")
    np.testing.assert_allclose(out[:2], [0.1625, 1.42 / 3], atol=1e-12)
    assert math.isnan(out[2])


def test_per_class_ece_is_the_ece_of_each_subset_and_not_kull():
    p, y = random_probs(3, n=500, k=4)
    pred = p.argmax(axis=1)
    for by, group in (("true", y), ("predicted", pred)):
        out = C.per_class_ece(p, y, by=by, n_bins=15)
        for k in range(4):
            sel = group == k
            assert out[k] == pytest.approx(M.expected_calibration_error(p[sel], y[sel], n_bins=15), abs=1e-12)
    assert not np.allclose(C.per_class_ece(p, y), M.classwise_ece(p, y))


def test_per_class_ece_confidence_one_counts_in_the_last_bin():
    # Both samples have confidence exactly 1.0; the one of class 1 is wrong.
    # Ours: last bin, acc 0, conf 1 -> ECE_1 = 1. (The authors' np.digitize drops such
    # samples from the bin's averages while counting them in its weight, giving 0.)
    p = np.array([[1.0, 0.0], [1.0, 0.0]])
    y = np.array([0, 1])
    np.testing.assert_allclose(C.per_class_ece(p, y, by="true"), [0.0, 1.0])
    out = C.per_class_ece(p, y, by="predicted")
    assert out[0] == pytest.approx(0.5) and math.isnan(out[1])


def test_per_class_ece_validation():
    with pytest.raises(ValueError, match=r"\('true', 'predicted'\)"):
        C.per_class_ece(HAND_P, HAND_Y, by="gt")
    with pytest.raises(ValueError, match="n_bins"):
        C.per_class_ece(HAND_P, HAND_Y, n_bins=0)
    with pytest.raises(ValueError, match="sum to 1"):
        C.per_class_ece(HAND_P * 0.5, HAND_Y)


# ---------------------------------------------------------------------------
# kde_ece (the authors' ECE_KDE)
# ---------------------------------------------------------------------------


def kde_ece_loops(conf, correct, h, p=1.0):
    """The same estimator written out with plain loops (no vectorisation, no blocks)."""
    n = len(conf)
    total = 0.0
    for i in range(n):
        num = den = 0.0
        for j in range(n):
            if j == i:
                continue
            w = math.exp(-((conf[i] - conf[j]) ** 2) / (2 * h * h))
            num += w * correct[j]
            den += w
        total += abs(conf[i] - num / max(den, 1e-10)) ** p
    return total / n


def test_kde_ece_constant_confidence_by_hand():
    # conf 0.9 everywhere, 60 of 100 right: every kernel weight is 1, so the leave-one-out
    # accuracy is 59/99 for the right ones and 60/99 for the wrong ones, and
    # 0.6 (0.9 - 59/99) + 0.4 (0.9 - 60/99) = 0.9 - (0.6 * 59 + 0.4 * 60) / 99 = 0.3 exactly.
    correct = np.arange(100) < 60
    p, y = binary_top_label(np.full(100, 0.9), correct)
    assert C.kde_ece(p, y) == pytest.approx(0.3, abs=1e-12)
    expected_sq = 0.6 * (0.9 - 59 / 99) ** 2 + 0.4 * (0.9 - 60 / 99) ** 2
    assert C.kde_ece(p, y, p=2) == pytest.approx(expected_sq, abs=1e-12)  # mean of squares, no root


@pytest.mark.parametrize("seed, n", [(0, 40), (1, 150)])
def test_kde_ece_matches_loops(seed, n):
    p, y = random_probs(seed, n=n, k=3)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    h = 0.3 if n < 100 else 0.2  # the authors' rule for these sizes
    assert C.kde_ece(p, y) == pytest.approx(kde_ece_loops(conf, correct, h), abs=1e-12)
    assert C.kde_ece(p, y, bandwidth=0.07, p=2) == pytest.approx(kde_ece_loops(conf, correct, 0.07, 2), abs=1e-12)


def test_kde_ece_bandwidth_rule_and_blocks(monkeypatch):
    for n, h in ((99, 0.3), (100, 0.2), (499, 0.2), (500, 0.1), (1999, 0.1), (2000, 0.05)):
        assert C._authors_bandwidth(n) == h
    p, y = random_probs(5, n=600, k=2)
    assert C.kde_ece(p, y) == C.kde_ece(p, y, bandwidth=0.1)
    full = C.kde_ece(p, y)
    monkeypatch.setattr(C, "_KDE_CHUNK_ELEMS", 1000)  # many row blocks
    assert C.kde_ece(p, y) == pytest.approx(full, abs=1e-14)


def test_kde_ece_calibrated_is_near_zero_and_miscalibration_is_found():
    p, y = calibrated(4000, seed=2)
    assert C.kde_ece(p, y) < 0.02
    # correct with probability conf - 0.2: a gap of 0.2 everywhere
    p, y = calibrated(4000, seed=3, lo=0.6, truth=lambda c: c - 0.2)
    assert C.kde_ece(p, y) == pytest.approx(0.2, abs=0.02)


def test_kde_ece_single_sample_and_validation():
    # no neighbour: the row sum is floored at 1e-10, the estimated accuracy is 0
    assert C.kde_ece([[0.8, 0.2]], [0]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match=">= 1"):
        C.kde_ece(HAND_P, HAND_Y, p=0.5)
    with pytest.raises(ValueError, match="bandwidth"):
        C.kde_ece(HAND_P, HAND_Y, bandwidth=0.0)


# ---------------------------------------------------------------------------
# smooth_ece (relplot)
# ---------------------------------------------------------------------------


def smece_at(f, y, s, grid=1001):
    """smECE_s by the paper's definition: reflected Gaussian kernel, integral on a grid."""
    t = np.linspace(0.0, 1.0, grid)[:, None]
    r = f - y
    total = np.zeros(grid)
    for m in range(-2, 3):  # images of the samples under reflection at 0 and 1
        for image in (f + 2 * m, -f + 2 * m):
            total += np.exp(-((t - image[None, :]) ** 2) / (2 * s * s)) @ r
    total /= math.sqrt(2 * math.pi) * s * len(f)
    return float(np.trapezoid(np.abs(total), t[:, 0]))


def smece_fixed_point(f, y):
    lo, hi = 0.0, 1.0
    for _ in range(16):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if smece_at(f, y, mid) > mid else (lo, mid)
    return smece_at(f, y, (lo + hi) / 2)


@pytest.mark.parametrize("truth", [lambda c: c, lambda c: 0.6 + 0 * c])
def test_smooth_ece_matches_the_definition(truth):
    pytest.importorskip("relplot")
    p, y = calibrated(300, seed=4, truth=truth)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    assert C.smooth_ece(p, y) == pytest.approx(smece_fixed_point(conf, correct), abs=3e-3)
    assert C.smooth_ece(p, y, sigma=0.1) == pytest.approx(smece_at(conf, correct, 0.1), abs=2e-3)


def test_smooth_ece_calibrated_small_miscalibrated_large():
    pytest.importorskip("relplot")
    p, y = calibrated(3000, seed=5)
    assert C.smooth_ece(p, y) < 0.03
    p, y = calibrated(3000, seed=6, truth=lambda c: c**2)  # E|c - c^2| over c ~ U(.5, 1) = 1/6
    assert C.smooth_ece(p, y) == pytest.approx(1 / 6, abs=0.02)
    with pytest.raises(ValueError, match="sigma"):
        C.smooth_ece(p, y, sigma=0)


# ---------------------------------------------------------------------------
# debiased_ece (Kumar, Liang & Ma 2019)
# ---------------------------------------------------------------------------


def kumar_debiased_l2(conf, correct, n_bins):
    """Independent transcription of the estimator with the verified_calibration package's
    equal-mass bins (edges at midpoints between neighbouring groups, searchsorted)."""
    s = np.sort(conf)
    groups = np.array_split(s, n_bins)
    edges = [(groups[i][-1] + groups[i + 1][0]) / 2 for i in range(n_bins - 1)] + [1.0]
    idx = np.searchsorted(edges, conf)
    total = 0.0
    for b in range(n_bins):
        sel = idx == b
        nb = sel.sum()
        if nb < 2:
            continue
        acc, cf = correct[sel].mean(), conf[sel].mean()
        total += nb / len(conf) * ((cf - acc) ** 2 - acc * (1 - acc) / (nb - 1))
    return total


def test_debiased_ece_matches_independent_transcription():
    p, y = random_probs(7, n=400, k=3)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    d = kumar_debiased_l2(conf, correct, 15)
    assert C.debiased_ece(p, y, squared=True) == pytest.approx(d, abs=1e-12)
    assert C.debiased_ece(p, y) == pytest.approx(math.sqrt(max(d, 0.0)), abs=1e-12)


def test_debiased_ece_removes_the_plug_in_bias():
    """Calibrated data: the plug-in squared error is > 0 on average, the debiased one ~0.
    Constant confidence 0.8 with accuracy 0.6: truth 0.04, the plug-in exceeds it."""
    plug, deb = [], []
    for seed in range(200):
        p, y = calibrated(300, seed=100 + seed)
        conf = p.max(axis=1)
        correct = (p.argmax(axis=1) == y).astype(float)
        _, counts, a, c = M._bin_statistics(conf, correct, 15, "quantile")
        plug.append(float(np.sum(counts / 300 * (a / counts - c / counts) ** 2)))
        deb.append(C.debiased_ece(p, y, squared=True))
    plug, deb = np.array(plug), np.array(deb)
    se = deb.std(ddof=1) / math.sqrt(len(deb))
    assert plug.mean() > 0.004  # about sum_b (n_b / N) acc_b (1 - acc_b) / n_b
    assert abs(deb.mean()) < 3 * se and abs(deb.mean()) < 0.1 * plug.mean()
    assert (deb < 0).any()  # unclipped: an unbiased estimate of a tiny error goes below 0
    assert all(C.debiased_ece(*calibrated(300, seed=s)) >= 0 for s in range(3))  # the root is clipped

    plug, deb = [], []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        p, y = binary_top_label(np.full(200, 0.8), rng.uniform(size=200) < 0.6, seed=seed)
        deb.append(C.debiased_ece(p, y, squared=True))
        _, counts, a, c = M._bin_statistics(p.max(axis=1), (p.argmax(axis=1) == y).astype(float), 15, "quantile")
        plug.append(float(np.sum(counts / 200 * (a / counts - c / counts) ** 2)))
    assert np.mean(deb) == pytest.approx(0.04, abs=0.004)
    assert np.mean(plug) > 0.04 + 0.01  # + sum_b (n_b/N) 0.24 / n_b = 0.24 * 15 / 200 = 0.018


def test_debiased_ece_uniform_bins_and_validation():
    p, y = random_probs(8, n=200)
    assert C.debiased_ece(p, y, n_bins=10, strategy="uniform") >= 0.0
    with pytest.raises(ValueError, match="strategy"):
        C.debiased_ece(p, y, strategy="log")
    with pytest.raises(ValueError, match="squared"):
        C.debiased_ece(p, y, squared="yes")
    # one sample per bin: every bin has n_b < 2 and contributes 0
    assert C.debiased_ece(p[:5], y[:5], n_bins=15) == 0.0


# ---------------------------------------------------------------------------
# paired_bootstrap
# ---------------------------------------------------------------------------


def test_paired_bootstrap_identical_methods_are_not_different():
    p, y = random_probs(9)
    for metric in ("ece", "accuracy"):
        out = C.paired_bootstrap(p, p.copy(), y, metric=metric, n_boot=300)
        assert out["difference"] == 0.0
        assert out["interval"] == (0.0, 0.0)
        assert out["p_value"] == 1.0 and out["significant"] is False


def test_paired_bootstrap_always_right_vs_always_wrong():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=120)
    right = np.eye(3)[y]  # one-hot on the label: accuracy 1, confidence 1, ECE 0
    wrong = np.eye(3)[(y + 1) % 3]  # one-hot elsewhere: accuracy 0, confidence 1, ECE 1
    acc = C.paired_bootstrap(right, wrong, y, metric="accuracy", n_boot=500)
    assert acc["difference"] == 1.0 and acc["interval"] == (1.0, 1.0)
    assert acc["p_value"] == 0.0 and acc["significant"] is True
    ece = C.paired_bootstrap(right, wrong, y, metric="ece", n_boot=500)
    assert ece["value_a"] == 0.0 and ece["value_b"] == 1.0
    assert ece["difference"] == -1.0 and ece["significant"] is True and ece["p_value"] == 0.0


def test_paired_bootstrap_fast_paths_equal_the_generic_loop():
    p, y = random_probs(10, n=200)
    q, _ = random_probs(11, n=200, scale=4.0)
    for metric, fn in (
        ("ece", lambda a, b: M.expected_calibration_error(a, b, n_bins=12)),
        ("accuracy", M.accuracy),
    ):
        fast = C.paired_bootstrap(p, q, y, metric=metric, n_boot=150, seed=3, n_bins=12)
        slow = C.paired_bootstrap(p, q, y, metric=fn, n_boot=150, seed=3, n_bins=12)
        assert fast["difference"] == pytest.approx(slow["difference"], abs=1e-12)
        np.testing.assert_allclose(fast["interval"], slow["interval"], atol=1e-12)
        assert fast["p_value"] == slow["p_value"] and fast["significant"] == slow["significant"]
    assert slow["metric"] == "accuracy" and fast["metric"] == "accuracy"


def test_paired_bootstrap_finds_a_real_ece_gain_and_p_value_definition():
    # a: calibrated; b: the same images' predictions made overconfident
    p, y = calibrated(600, seed=12)
    conf = p.max(axis=1)
    hot = p.copy()
    top = p.argmax(axis=1)
    boosted = np.minimum(1.0, conf + 0.15)
    hot[np.arange(600), top] = boosted
    hot[np.arange(600), 1 - top] = 1.0 - boosted
    out = C.paired_bootstrap(p, hot, y, metric="ece", n_boot=1000, seed=1)
    assert out["difference"] < -0.05 and out["interval"][1] < 0 and out["significant"]
    assert out["p_value"] < 0.01
    # p-value by hand from the replicates of a callable metric
    lo, hi = out["interval"]
    assert lo <= out["difference"] <= hi
    assert C._p_value(0.3, np.array([0.1, -0.2, 0.0, 0.5])) == 1.0  # 2 of 4 on the other side -> 2 * 0.5
    assert C._p_value(0.3, np.array([0.1, 0.2, 0.4, -0.5])) == 0.5
    assert C._p_value(-0.3, np.array([-0.1, -0.2, -0.4, 0.5])) == 0.5
    assert C._p_value(0.0, np.array([0.1, 0.2])) == 1.0


def test_paired_bootstrap_is_deterministic_and_validates():
    p, y = random_probs(13)
    q, _ = random_probs(14)
    a = C.paired_bootstrap(p, q, y, n_boot=100, seed=5)
    assert a == C.paired_bootstrap(p, q, y, n_boot=100, seed=5)
    assert a["n_boot"] == 100 and a["level"] == 0.95 and a["metric"] == "ece"
    with pytest.raises(ValueError, match=r"\('ece', 'accuracy'\) or a callable"):
        C.paired_bootstrap(p, q, y, metric="nll")
    with pytest.raises(ValueError, match="same shape"):
        C.paired_bootstrap(p, q[:, :2] / q[:, :2].sum(1, keepdims=True), y % 2)
    with pytest.raises(ValueError, match="same number of samples"):
        C.paired_bootstrap(p, q[:10], y)
    with pytest.raises(ValueError, match="n_boot"):
        C.paired_bootstrap(p, q, y, n_boot=0)


# ---------------------------------------------------------------------------
# seed_difference
# ---------------------------------------------------------------------------


def test_seed_difference_paired_t_test():
    from scipy.stats import ttest_rel

    a, b = [0.061, 0.072, 0.058], [0.045, 0.050, 0.049]
    out = C.seed_difference(a, b)
    ref = ttest_rel(a, b)
    assert out["n_seeds"] == 3 and out["seeds"] == [0, 1, 2]
    np.testing.assert_allclose(out["differences"], np.subtract(a, b))
    assert out["mean_difference"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert out["std"] == pytest.approx(np.std(np.subtract(a, b), ddof=1))
    assert out["t_statistic"] == pytest.approx(ref.statistic) and out["p_value"] == pytest.approx(ref.pvalue)
    assert out["significant"] == (ref.pvalue < 0.05)


def test_seed_difference_dicts_pair_by_seed_and_degenerate_cases():
    out = C.seed_difference({1: 0.5, 2: 0.7, 3: 0.6}, {3: 0.5, 1: 0.45, 2: 0.6})
    np.testing.assert_allclose(out["differences"], [0.05, 0.1, 0.1])
    assert out["seeds"] == [1, 2, 3]
    same = C.seed_difference([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert same["mean_difference"] == 0.0 and same["p_value"] == 1.0 and not same["significant"]
    shift = C.seed_difference([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])  # always exactly 1 better
    assert shift["p_value"] == 0.0 and shift["t_statistic"] == math.inf and shift["significant"]
    one = C.seed_difference([0.3], [0.1])
    assert one["mean_difference"] == pytest.approx(0.2)
    assert one["std"] is None and one["p_value"] is None and one["significant"] is False


def test_seed_difference_validation():
    with pytest.raises(ValueError, match="one value per seed each"):
        C.seed_difference([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="same seeds"):
        C.seed_difference({1: 0.1}, {2: 0.1})
    with pytest.raises(ValueError, match="both be lists"):
        C.seed_difference({1: 0.1}, [0.1])
    with pytest.raises(ValueError, match="finite"):
        C.seed_difference([0.1, float("nan")], [0.1, 0.2])
    with pytest.raises(ValueError, match="empty"):
        C.seed_difference([], [])
    with pytest.raises(ValueError, match="alpha"):
        C.seed_difference([0.1, 0.2], [0.1, 0.3], alpha=1.5)


def test_exported_from_the_package():
    for name in C.__all__:
        assert getattr(cp, name) is getattr(C, name)
        assert name in cp.__all__
