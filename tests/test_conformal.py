"""Split conformal prediction sets: coverage over many random splits, agreement with references
(MAPIE and crepes, when installed, and a brute-force implementation written with explicit loops),
and the errors a user can hit."""
from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

from calibprompt.evaluation.conformal import (
    ConformalClassifier,
    class_coverage,
    conformal_rank,
    cross_fitted_sets,
    mean_set_size,
    min_calibration_samples,
    set_coverage,
)

K = 5


def make_data(n: int, k: int = K, seed: int = 0, sharpen: float = 1.6):
    """Labels drawn from Dirichlet class probabilities; the *reported* probabilities are a sharpened
    (over-confident, i.e. miscalibrated) version of them. Conformal coverage must not care."""
    rng = np.random.default_rng(seed)
    true = np.clip(rng.dirichlet(np.full(k, 0.8), size=n), 1e-12, None)
    true /= true.sum(axis=1, keepdims=True)
    u = rng.random(n)[:, None]
    labels = np.minimum((np.cumsum(true, axis=1) < u).sum(axis=1), k - 1)
    z = sharpen * np.log(true)
    z -= z.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return probs, labels


# ---------------------------------------------------------------------------
# brute force: explicit loops, no numpy vector tricks, exact rational rank
# ---------------------------------------------------------------------------
def brute_rank(n: int, alpha: float) -> int:
    """ceil((n + 1)(1 - alpha)) in exact rational arithmetic, alpha read as the simple fraction it stands
    for (0.1 -> 1/10, 0.3333333333333333 -> 1/3), not as the float's binary value."""
    return math.ceil((n + 1) * (1 - Fraction(alpha).limit_denominator(10**6)))


def brute_score(row, j: int, score: str, lam: float = 0.01, k_reg: int = 1) -> float:
    if score == "lac":
        return 1.0 - row[j]
    ranked = sorted(range(len(row)), key=lambda c: (-row[c], c))  # highest first, lower index on ties
    total = 0.0
    for position, c in enumerate(ranked, start=1):
        total += row[c]
        if c == j:
            if score == "raps":
                total += lam * max(0, position - k_reg)
            return total
    raise AssertionError("unreachable")


def brute_quantile(values, alpha: float) -> float:
    ordered = sorted(values)
    return ordered[brute_rank(len(ordered), alpha) - 1]


def brute_fit_predict(cal_p, cal_y, test_p, alpha, score, class_conditional=False, **kw):
    cal_p, test_p = cal_p.tolist(), test_p.tolist()
    cal_scores = [brute_score(row, int(y), score, **kw) for row, y in zip(cal_p, cal_y)]
    if class_conditional:
        q = [brute_quantile([s for s, y in zip(cal_scores, cal_y) if y == j], alpha) for j in range(K)]
    else:
        q = [brute_quantile(cal_scores, alpha)] * K
    sets = [[brute_score(row, j, score, **kw) <= q[j] for j in range(K)] for row in test_p]
    return (q if class_conditional else q[0]), np.array(sets, dtype=bool)


def test_rank_and_minimum_match_exact_arithmetic():
    for alpha in (0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.7, 0.9, 0.99):
        for n in range(1, 400):
            assert conformal_rank(n, alpha) == brute_rank(n, alpha), (n, alpha)
        need = min_calibration_samples(alpha)
        assert conformal_rank(need, alpha) <= need  # enough: a finite quantile exists
        if need > 1:
            assert conformal_rank(need - 1, alpha) > need - 1  # one fewer is not
    assert min_calibration_samples(0.1) == 9 and min_calibration_samples(0.2) == 4
    assert min_calibration_samples(0.05) == 19 and min_calibration_samples(0.6) == 1


# ---------------------------------------------------------------------------
# coverage over many random splits
# ---------------------------------------------------------------------------
N_SPLITS = 200


def _split_coverages(probs, labels, alpha, **kw):
    """Per split: (marginal coverage, per-class coverage (K,), mean set size) on a random half split."""
    n = probs.shape[0]
    rng = np.random.default_rng(1234)
    marginal, per_class, size = [], [], []
    for split in range(N_SPLITS):
        perm = rng.permutation(n)
        cal, test = perm[: n // 2], perm[n // 2:]
        cc = ConformalClassifier(alpha=alpha, seed=split, **kw).fit(probs[cal], labels[cal])
        sets = cc.predict_sets(probs[test])
        marginal.append(set_coverage(sets, labels[test]))
        per_class.append(class_coverage(sets, labels[test]))
        size.append(mean_set_size(sets))
    return np.array(marginal), np.array(per_class), np.array(size)


@pytest.fixture(scope="module")
def data_2000():
    return make_data(2000, seed=7)


@pytest.fixture(scope="module")
def data_4000():
    return make_data(4000, seed=8)


MARGINAL = [
    pytest.param({"score": "lac"}, id="lac"),
    pytest.param({"score": "aps"}, id="aps"),
    pytest.param({"score": "raps", "raps_lambda": 0.05, "raps_k_reg": 2}, id="raps"),
    pytest.param({"score": "aps", "randomized": True}, id="aps-randomized"),
    pytest.param({"score": "raps", "randomized": True}, id="raps-randomized"),
]


@pytest.mark.parametrize("alpha", [0.1, 0.2])
@pytest.mark.parametrize("kw", MARGINAL)
def test_marginal_coverage_over_random_splits(data_2000, alpha, kw):
    probs, labels = data_2000
    marginal, _, size = _split_coverages(probs, labels, alpha, **kw)
    mean = marginal.mean()
    # n = 1000 calibration samples: E[coverage] lies in [1 - alpha, 1 - alpha + 1/1001]; the mean of
    # 200 splits has a standard error of about 0.001.
    assert abs(mean - (1 - alpha)) <= 0.01, mean
    assert mean >= 1 - alpha - 0.003, mean
    assert 1.0 <= size.mean() < K  # informative sets, not the whole label space


@pytest.mark.parametrize("alpha", [0.1, 0.2])
@pytest.mark.parametrize("score", ["lac", "aps", "raps"])
def test_class_conditional_coverage_per_class(data_4000, alpha, score):
    probs, labels = data_4000
    _, per_class, _ = _split_coverages(probs, labels, alpha, score=score, class_conditional=True)
    means = np.nanmean(per_class, axis=0)
    assert means.shape == (K,)
    assert np.all(np.abs(means - (1 - alpha)) <= 0.01), means
    assert np.all(means >= 1 - alpha - 0.005), means


def test_marginal_sets_can_undercover_a_class_that_class_conditional_sets_cover(data_4000):
    # Not a guarantee, a property of this data: marginal LAC sets trade the classes off against each
    # other; the Mondrian sets are what the per-class guarantee needs.
    probs, labels = data_4000
    _, marginal_pc, _ = _split_coverages(probs, labels, 0.1, score="lac")
    _, mondrian_pc, _ = _split_coverages(probs, labels, 0.1, score="lac", class_conditional=True)
    spread = lambda pc: np.ptp(np.nanmean(pc, axis=0))  # noqa: E731
    assert spread(mondrian_pc) < spread(marginal_pc)


# ---------------------------------------------------------------------------
# against a brute-force implementation (explicit loops)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_cal", [9, 20, 137, 1000])
@pytest.mark.parametrize("alpha", [0.1, 0.2])
@pytest.mark.parametrize("score,kw", [("lac", {}), ("aps", {}), ("raps", {"lam": 0.05, "k_reg": 2})])
def test_matches_brute_force(n_cal, alpha, score, kw):
    if n_cal < min_calibration_samples(alpha):
        pytest.skip("too few samples for this alpha (tested in the error tests)")
    probs, labels = make_data(n_cal + 300, seed=n_cal)
    cal_p, cal_y, test_p = probs[:n_cal], labels[:n_cal], probs[n_cal:]
    q, sets = brute_fit_predict(cal_p, cal_y, test_p, alpha, score, **kw)
    cc = ConformalClassifier(alpha=alpha, score=score, raps_lambda=kw.get("lam", 0.01),
                             raps_k_reg=kw.get("k_reg", 1)).fit(cal_p, cal_y)
    assert cc.n_calibration_ == n_cal
    assert isinstance(cc.quantile_, float) and cc.quantile_ == pytest.approx(q, abs=1e-12)
    got = cc.predict_sets(test_p)
    assert got.dtype == bool and got.shape == (300, K)
    np.testing.assert_array_equal(got, sets)


@pytest.mark.parametrize("alpha", [0.1, 0.2])
@pytest.mark.parametrize("score", ["lac", "aps", "raps"])
def test_class_conditional_matches_brute_force(alpha, score):
    probs, labels = make_data(900, seed=3)
    q, sets = brute_fit_predict(probs[:600], labels[:600], probs[600:], alpha, score, class_conditional=True)
    cc = ConformalClassifier(alpha=alpha, score=score, class_conditional=True).fit(probs[:600], labels[:600])
    assert cc.quantile_.shape == (K,)
    np.testing.assert_allclose(cc.quantile_, q, atol=1e-12)
    np.testing.assert_array_equal(cc.class_counts_, np.bincount(labels[:600], minlength=K))
    np.testing.assert_array_equal(cc.predict_sets(probs[600:]), sets)


def test_a_score_equal_to_the_quantile_is_in_the_set():
    probs, labels = make_data(50, seed=5)
    cc = ConformalClassifier(alpha=0.1, score="lac").fit(probs, labels)
    i = int(np.flatnonzero(cc.calibration_scores_ == cc.quantile_)[0])
    assert cc.predict_sets(probs[i:i + 1])[0, labels[i]]


def test_aps_sets_are_prefixes_of_the_ranking_and_ties_rank_the_lower_index_first():
    probs, labels = make_data(400, seed=6)
    for randomized in (False, True):
        cc = ConformalClassifier(alpha=0.2, score="aps", randomized=randomized).fit(probs[:200], labels[:200])
        sets = cc.predict_sets(probs[200:])
        ranked = np.take_along_axis(sets, np.argsort(-probs[200:], axis=1, kind="stable"), axis=1)
        assert np.all(ranked[:, :-1] >= ranked[:, 1:])  # once a class is out, all lower-ranked ones are
    # two classes with exactly equal probability: the lower index ranks first, so it gets the smaller score
    tied = np.array([[0.4, 0.4, 0.2]] * 20)
    cc = ConformalClassifier(alpha=0.1, score="aps").fit(tied, np.zeros(20, dtype=int))
    assert cc.quantile_ == pytest.approx(0.4)
    np.testing.assert_array_equal(cc.predict_sets(tied[:1]), [[True, False, False]])


def test_randomized_scores_are_deterministic_for_a_seed_and_differ_across_seeds():
    probs, labels = make_data(600, seed=9)
    fit = lambda seed: ConformalClassifier(alpha=0.1, score="aps", randomized=True, seed=seed).fit(  # noqa: E731
        probs[:300], labels[:300])
    a, b, c = fit(0), fit(0), fit(1)
    assert a.quantile_ == b.quantile_ != c.quantile_
    np.testing.assert_array_equal(a.predict_sets(probs[300:]), a.predict_sets(probs[300:]))
    np.testing.assert_array_equal(a.predict_sets(probs[300:]), b.predict_sets(probs[300:]))
    # randomised APS never scores above the plain one: rho + U p <= rho + p
    plain = ConformalClassifier(alpha=0.1, score="aps").fit(probs[:300], labels[:300])
    assert np.all(a.calibration_scores_ <= plain.calibration_scores_ + 1e-15)


def test_lac_ignores_randomized_and_accepts_torch_and_lists():
    torch = pytest.importorskip("torch")
    probs, labels = make_data(100, seed=10)
    base = ConformalClassifier(alpha=0.1).fit(probs, labels)
    assert ConformalClassifier(alpha=0.1, randomized=True).fit(probs, labels).quantile_ == base.quantile_
    t = ConformalClassifier(alpha=0.1).fit(torch.tensor(probs, dtype=torch.float32), torch.tensor(labels))
    assert t.quantile_ == pytest.approx(base.quantile_, abs=1e-6)
    np.testing.assert_array_equal(
        ConformalClassifier(alpha=0.1).fit(probs.tolist(), labels.tolist()).predict_sets(probs.tolist()),
        base.predict_sets(probs))


# ---------------------------------------------------------------------------
# against reference libraries (skipped with a reason when not installed)
# ---------------------------------------------------------------------------
def test_lac_matches_mapie():
    try:
        from mapie.classification import SplitConformalClassifier
        from sklearn.base import BaseEstimator, ClassifierMixin
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"MAPIE reference not installed ({exc}); pip install 'calibprompt[test]'")

    class Passthrough(ClassifierMixin, BaseEstimator):
        """A 'prefit model' whose predict_proba returns its input: MAPIE sees our probabilities."""

        def fit(self, X, y):
            self.classes_ = np.arange(np.asarray(X).shape[1])
            self.n_features_in_ = np.asarray(X).shape[1]
            return self

        def predict_proba(self, X):
            return np.asarray(X, dtype=np.float64)

        def predict(self, X):
            return np.argmax(np.asarray(X), axis=1)

    probs, labels = make_data(1600, seed=11)
    cal_p, cal_y, test_p = probs[:1000], labels[:1000], probs[1000:]
    for alpha in (0.1, 0.2):
        ours = ConformalClassifier(alpha=alpha, score="lac").fit(cal_p, cal_y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = SplitConformalClassifier(estimator=Passthrough().fit(cal_p, cal_y), confidence_level=1 - alpha,
                                           conformity_score="lac", prefit=True)
            ref.conformalize(cal_p, cal_y)
            _, ref_sets = ref.predict_set(test_p)
        np.testing.assert_array_equal(ours.predict_sets(test_p), ref_sets[:, :, 0])
        # MAPIE keeps its quantile in a private attribute; compare it when this version has it
        score_fn = getattr(getattr(ref, "_mapie_classifier", None), "conformity_score_function_", None)
        ref_q = getattr(score_fn, "quantiles_", None)
        if ref_q is not None:
            assert ours.quantile_ == pytest.approx(float(np.ravel(ref_q)[0]), abs=1e-12)


def test_sets_match_crepes():
    """crepes turns non-conformity scores into p-values ``(#{cal >= s} + 1) / (n + 1)`` and includes a
    class iff its p-value is >= alpha; that equals ``s <= q`` whenever (n + 1) * alpha is not an
    integer (at an integer crepes also keeps the class whose p-value equals alpha exactly), so the
    calibration sizes here avoid that case. The scores fed to crepes come from the brute-force loops."""
    try:
        from crepes import ConformalClassifier as CrepesClassifier
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"crepes reference not installed ({exc}); pip install 'calibprompt[test]'")

    probs, labels = make_data(1400, seed=12)
    cal_p, cal_y, test_p = probs[:1000], labels[:1000], probs[1000:]
    for score, kw in (("lac", {}), ("aps", {}), ("raps", {"lam": 0.05, "k_reg": 2})):
        cal_s = np.array([brute_score(r, int(y), score, **kw) for r, y in zip(cal_p.tolist(), cal_y)])
        test_s = np.array([[brute_score(r, j, score, **kw) for j in range(K)] for r in test_p.tolist()])
        for alpha in (0.1, 0.2):
            assert ((1000 + 1) * alpha) % 1 != 0
            ref = CrepesClassifier().fit(cal_s).predict_set(test_s, confidence=1 - alpha, smoothing=False)
            ours = ConformalClassifier(alpha=alpha, score=score, raps_lambda=kw.get("lam", 0.01),
                                       raps_k_reg=kw.get("k_reg", 1)).fit(cal_p, cal_y)
            np.testing.assert_array_equal(ours.predict_sets(test_p), ref.astype(bool), err_msg=f"{score} {alpha}")

    # class-conditional: crepes fitted on each class's calibration scores, predicting that class's column
    counts = [90, 120, 150, 170, 180]  # (n_j + 1) * alpha is never an integer for alpha 0.1 / 0.2
    idx = np.concatenate([np.flatnonzero(cal_y == j)[:c] for j, c in enumerate(counts)])
    assert np.array_equal(np.bincount(cal_y[idx], minlength=K), counts)
    sub_p, sub_y = cal_p[idx], cal_y[idx]
    cal_s = np.array([brute_score(r, int(y), "aps") for r, y in zip(sub_p.tolist(), sub_y)])
    test_s = np.array([[brute_score(r, j, "aps") for j in range(K)] for r in test_p.tolist()])
    for alpha in (0.1, 0.2):
        ours = ConformalClassifier(alpha=alpha, score="aps", class_conditional=True).fit(sub_p, sub_y)
        ref = np.column_stack([
            CrepesClassifier().fit(cal_s[sub_y == j]).predict_set(test_s[:, [j]], confidence=1 - alpha,
                                                                    smoothing=False)[:, 0]
            for j in range(K)])
        np.testing.assert_array_equal(ours.predict_sets(test_p), ref.astype(bool))


# ---------------------------------------------------------------------------
# cross-fitting and the helpers
# ---------------------------------------------------------------------------
def test_cross_fitted_sets_average_the_two_directions():
    probs, labels = make_data(301, seed=13)
    out = cross_fitted_sets(probs, labels, alpha=0.1, score="aps")
    even, odd = np.arange(0, 301, 2), np.arange(1, 301, 2)
    a = ConformalClassifier(alpha=0.1, score="aps").fit(probs[even], labels[even]).predict_sets(probs[odd])
    b = ConformalClassifier(alpha=0.1, score="aps").fit(probs[odd], labels[odd]).predict_sets(probs[even])
    assert out["coverage"] == pytest.approx((set_coverage(a, labels[odd]) + set_coverage(b, labels[even])) / 2)
    assert out["mean_set_size"] == pytest.approx((mean_set_size(a) + mean_set_size(b)) / 2)
    assert [(f["fit"], f["n_fit"], f["n_measure"]) for f in out["folds"]] == [("even", 151, 150), ("odd", 150, 151)]
    with pytest.raises(ValueError, match="each half needs at least ceil\\(1/alpha\\) - 1 = 9"):
        cross_fitted_sets(probs[:17], labels[:17], alpha=0.1)
    assert cross_fitted_sets(probs[:18], labels[:18], alpha=0.1)["folds"][1]["n_fit"] == 9


def test_helpers_on_a_hand_example():
    sets = np.array([[True, False, False], [True, True, False], [False, False, False], [False, True, True]])
    labels = np.array([0, 2, 1, 2])
    assert set_coverage(sets, labels) == pytest.approx(2 / 4)  # rows 0 and 3 contain their label
    assert mean_set_size(sets) == pytest.approx((1 + 2 + 0 + 2) / 4)
    np.testing.assert_allclose(class_coverage(sets, labels), [1.0, 0.0, 0.5])
    assert np.isnan(class_coverage(sets[:1], labels[:1])[1])  # no sample of class 1
    assert set_coverage(sets.astype(int), labels) == 0.5


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, float("nan"), "0.1", True, None])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        ConformalClassifier(alpha=alpha)


def test_unknown_score_names_the_allowed_ones():
    with pytest.raises(ValueError, match="'lac', 'aps', 'raps'.*'thr'"):
        ConformalClassifier(score="thr")
    assert ConformalClassifier(score="APS").score == "aps"


@pytest.mark.parametrize("kw,match", [({"raps_lambda": -0.1}, "raps_lambda"), ({"raps_k_reg": -1}, "raps_k_reg"),
                                      ({"raps_k_reg": 1.5}, "raps_k_reg"), ({"randomized": "yes"}, "randomized"),
                                      ({"class_conditional": 1}, "class_conditional"), ({"seed": -1}, "seed")])
def test_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        ConformalClassifier(**kw)


def test_too_few_calibration_samples():
    probs, labels = make_data(40, seed=14)
    with pytest.raises(ValueError, match=r"at least ceil\(1/alpha\) - 1 = 9, but got 8\. Add labelled"):
        ConformalClassifier(alpha=0.1).fit(probs[:8], labels[:8])
    assert ConformalClassifier(alpha=0.1).fit(probs[:9], labels[:9]).quantile_ == pytest.approx(
        np.max(1 - probs[np.arange(9), labels[:9]]))  # n = 9: k = 9, the largest score
    with pytest.raises(ValueError, match="= 4, but got 3"):
        ConformalClassifier(alpha=0.2).fit(probs[:3], labels[:3])


def test_too_few_calibration_samples_per_class_names_the_class():
    probs, labels = make_data(400, seed=15)
    keep = np.concatenate([np.flatnonzero(labels == 2)[:3], np.flatnonzero(labels != 2)])
    with pytest.raises(ValueError, match=r"every class needs at least ceil\(1/alpha\) - 1 = 9, but class 2 has 3"):
        ConformalClassifier(alpha=0.1, class_conditional=True).fit(probs[keep], labels[keep])
    none_of_4 = labels != 4
    with pytest.raises(ValueError, match="class 4 has 0"):
        ConformalClassifier(alpha=0.1, class_conditional=True).fit(probs[none_of_4], labels[none_of_4])
    ConformalClassifier(alpha=0.1).fit(probs[keep], labels[keep])  # marginal sets only need n >= 9


def test_predict_before_fit_and_wrong_inputs():
    probs, labels = make_data(50, seed=16)
    with pytest.raises(ValueError, match=r"not fitted yet: call fit\(probs, labels\)"):
        ConformalClassifier().predict_sets(probs)
    cc = ConformalClassifier().fit(probs, labels)
    with pytest.raises(ValueError, match="fitted on 5"):
        cc.predict_sets(probs[:, :3] / probs[:, :3].sum(axis=1, keepdims=True))
    with pytest.raises(ValueError, match="sum to 1"):
        ConformalClassifier().fit(probs * 0.5, labels)
    with pytest.raises(ValueError, match="not logits"):
        ConformalClassifier().fit(np.log(probs), labels)
    with pytest.raises(ValueError, match="labels"):
        ConformalClassifier().fit(probs, labels[:-1])
    with pytest.raises(ValueError, match="boolean mask"):
        set_coverage(np.full((2, 3), 0.5), [0, 1])
    with pytest.raises(ValueError, match=r"\(M, K\)"):
        mean_set_size(np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match=r"\[0, K\)"):
        class_coverage(np.ones((2, 3), dtype=bool), [0, 3])
