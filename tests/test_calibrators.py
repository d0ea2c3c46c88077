"""Tests for calibprompt.evaluation.calibrators.

Each calibrator is checked against an independent computation: scikit-learn (IsotonicRegression,
LogisticRegression), a known generating map recovered from sampled labels, the ODIR objective written
out here and differentiated numerically, or arithmetic worked by hand (in comments).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import log_softmax, softmax
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from calibprompt.evaluation import calibrators as C
from calibprompt.evaluation import metrics as M

NAMES = ["temperature", "vector", "dirichlet", "histogram", "isotonic"]


def sample_labels(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One label per row drawn from its probabilities (inverse CDF)."""
    u = rng.random(probs.shape[0])[:, None]
    return np.minimum((np.cumsum(probs, axis=1) < u).sum(axis=1), probs.shape[1] - 1)


def noisy_logits(seed: int, n: int, k: int, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    return z, sample_labels(rng, softmax(z / 2.0, axis=1))


# ---------------------------------------------------------------------------
# Registry and validation
# ---------------------------------------------------------------------------
def test_registry_order_names_and_flags():
    assert C.list_calibrators() == NAMES + ["dac"]
    for name in C.list_calibrators():
        cls = C.get_calibrator(name)
        assert cls.name == name and cls.title and cls.reference and cls.needs
    keeps = {n: C.get_calibrator(n).keeps_argmax for n in C.list_calibrators()}
    assert keeps == {"temperature": True, "vector": False, "dirichlet": False, "histogram": True,
                     "isotonic": False, "dac": True}
    assert "text features" in C.get_calibrator("dac").needs
    assert C.create_calibrator("temperature").fitted_on == 0


def test_unknown_name_and_bad_parameters_raise_value_error():
    with pytest.raises(ValueError, match="temperature, vector, dirichlet, histogram, isotonic"):
        C.get_calibrator("platt")
    with pytest.raises(ValueError, match="does not take"):
        C.create_calibrator("vector", n_bins=3)
    with pytest.raises(ValueError, match="needs text_features"):
        C.create_calibrator("dac")
    with pytest.raises(ValueError, match="not fitted"):
        C.create_calibrator("vector").transform(np.zeros((2, 3)))


@pytest.mark.parametrize("logits, labels, match", [
    (np.array([[0.0, np.nan], [1.0, 0.0]]), [0, 1], "NaN"),
    (np.zeros((3, 2)), [0, 2, 1], r"\[0, 2\)"),
    (np.zeros((3, 1)), [0, 0, 0], "at least 2 columns"),
    (np.zeros(3), [0, 0, 0], "2-D"),
])
def test_fit_validates_logits_and_labels(logits, labels, match):
    for name in NAMES:
        with pytest.raises(ValueError, match=match):
            C.create_calibrator(name).fit(logits, labels)


# ---------------------------------------------------------------------------
# Temperature scaling
# ---------------------------------------------------------------------------
def test_temperature_recovers_a_known_temperature_and_keeps_argmax():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20000, 5)) * 4.0
    y = sample_labels(rng, softmax(z / 2.5, axis=1))
    cal = C.create_calibrator("temperature").fit(z, y)
    assert cal.params()["temperature"] == pytest.approx(2.5, rel=0.03)
    assert cal.fitted_on == 20000
    p = cal.transform(z)
    np.testing.assert_allclose(p, softmax(z / cal.params()["temperature"], axis=1), atol=1e-12)
    assert (np.argmax(p, axis=1) == np.argmax(z, axis=1)).all()


# ---------------------------------------------------------------------------
# Vector scaling
# ---------------------------------------------------------------------------
def test_vector_scaling_recovers_the_generating_map():
    rng = np.random.default_rng(2)
    w0, b0 = np.array([0.5, 1.5, 1.0, 0.8]), np.array([0.3, -0.2, 0.0, 0.4])
    z = rng.normal(size=(40000, 4)) * 2.0
    y = sample_labels(rng, softmax(z * w0 + b0, axis=1))
    w, b = C.fit_vector_scaling(z, y)
    np.testing.assert_allclose(w, w0, atol=0.06)
    # the biases are identifiable up to a common shift (softmax is invariant to it)
    np.testing.assert_allclose(b - b.mean(), b0 - b0.mean(), atol=0.06)


def test_vector_scaling_equals_logistic_regression_for_two_classes():
    # K = 2: s1 - s0 = w1 z1 - w0 z0 + (b1 - b0), an unpenalised logistic regression on (z1, z0)
    z, y = noisy_logits(3, 400, 2)
    w, b = C.fit_vector_scaling(z, y)
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(np.column_stack([z[:, 1], z[:, 0]]), y)
    np.testing.assert_allclose([w[1], -w[0], b[1] - b[0]], [*lr.coef_[0], lr.intercept_[0]], atol=1e-4)


def test_vector_scaling_nll_never_worse_than_identity_on_fit_data():
    for seed in range(5):
        z, y = noisy_logits(seed, 60, 4)
        cal = C.create_calibrator("vector").fit(z, y)
        assert log_loss(y, cal.transform(z), labels=range(4)) <= log_loss(y, softmax(z, axis=1), labels=range(4)) + 1e-12


def test_vector_scaling_may_change_the_argmax_and_reports_say_so():
    # class 0 always has the larger logit (by 0.5 on average), but 80 % of images are class 1:
    # the fitted bias moves most predictions to class 1; temperature and histogram cannot.
    rng = np.random.default_rng(4)
    n = 200
    z = np.column_stack([0.5 + 0.1 * rng.normal(size=n), np.zeros(n)])
    y = (rng.random(n) < 0.8).astype(int)
    rows = {r["calibrator"]: r for r in C.calibrator_reports(z, y, NAMES)}
    assert rows["vector"]["argmax_changed"] > 0.5
    assert rows["vector"]["accuracy"] > rows["none"]["accuracy"]
    assert rows["temperature"]["argmax_changed"] == 0.0 and rows["histogram"]["argmax_changed"] == 0.0


# ---------------------------------------------------------------------------
# Dirichlet calibration (ODIR)
# ---------------------------------------------------------------------------
def test_dirichlet_without_regularisation_equals_multinomial_logistic_regression():
    # matrix scaling on log-probabilities with lambda = mu = 0 is unpenalised multinomial LR on x = log p
    z, y = noisy_logits(5, 500, 3)
    x = log_softmax(z, axis=1)
    W, b = C.fit_dirichlet(z, y, reg_lambda=0.0, reg_mu=0.0)
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(x, y)
    np.testing.assert_allclose(C.dirichlet_scaling(z, W, b), lr.predict_proba(x), atol=1e-4)


def test_dirichlet_recovers_a_known_map():
    rng = np.random.default_rng(6)
    W0 = np.array([[1.5, 0.3, 0.0], [-0.2, 0.7, 0.4], [0.1, 0.0, 1.2]])
    b0 = np.array([0.2, -0.3, 0.1])
    z = rng.normal(size=(40000, 3)) * 2.0
    y = sample_labels(rng, softmax(log_softmax(z, axis=1) @ W0.T + b0, axis=1))
    W, b = C.fit_dirichlet(z, y, reg_lambda=0.0, reg_mu=0.0)
    # identifiable up to adding one row vector to every row of W (and a constant to b): compare with
    # the last row subtracted, dirichletcal's reference-row parameterisation
    np.testing.assert_allclose(W - W[-1], W0 - W0[-1], atol=0.08)
    # the intercepts are weakly determined next to W (x = log p is far from 0): compare the maps instead
    zt = rng.normal(size=(2000, 3)) * 2.0
    true = softmax(log_softmax(zt, axis=1) @ W0.T + b0, axis=1)
    np.testing.assert_allclose(C.dirichlet_scaling(zt, W, b), true, atol=0.03)


def odir_objective(theta: np.ndarray, x: np.ndarray, y: np.ndarray, lam: float, mu: float) -> float:
    """The ODIR objective written out independently: sklearn's log-loss + off-diagonal and bias L2."""
    k = x.shape[1]
    W, b = theta[: k * k].reshape(k, k), theta[k * k:]
    off = W[~np.eye(k, dtype=bool)]
    return log_loss(y, softmax(x @ W.T + b, axis=1), labels=range(k)) + lam * np.sum(off ** 2) + mu * np.sum(b ** 2)


def test_dirichlet_fit_is_the_minimum_of_the_odir_objective():
    z, y = noisy_logits(7, 120, 3)
    x = log_softmax(z, axis=1)
    W, b = C.fit_dirichlet(z, y, reg_lambda=0.05, reg_mu=0.02)
    theta = np.concatenate([W.ravel(), b])
    h = 1e-5
    grad = [(odir_objective(theta + h * e, x, y, 0.05, 0.02) - odir_objective(theta - h * e, x, y, 0.05, 0.02)) / (2 * h)
            for e in np.eye(theta.size)]
    np.testing.assert_allclose(grad, 0.0, atol=1e-5)
    # a different regulariser gives a different, still stationary, point: the penalty is really applied
    W2, b2 = C.fit_dirichlet(z, y, reg_lambda=5.0, reg_mu=5.0)
    assert np.abs(W2[~np.eye(3, dtype=bool)]).max() < 0.5 * np.abs(W[~np.eye(3, dtype=bool)]).max()
    assert np.abs(b2).max() < 0.5 * np.abs(b).max()


def test_dirichlet_nll_never_worse_than_identity_and_mu_defaults_to_lambda():
    for seed in range(4):
        z, y = noisy_logits(seed + 10, 60, 4)
        cal = C.create_calibrator("dirichlet").fit(z, y)
        assert log_loss(y, cal.transform(z), labels=range(4)) <= log_loss(y, softmax(z, axis=1), labels=range(4)) + 1e-12
    assert cal.params()["reg_mu"] == cal.params()["reg_lambda"] == 1e-2


@pytest.mark.parametrize("name", ["vector", "dirichlet", "isotonic", "histogram", "temperature"])
def test_small_separable_data_and_missing_class_stay_finite(name):
    # 2 images per class, perfectly separable, and class 3 never seen in the fitting data
    z = np.array([[5.0, 0, 0, 0], [4.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 4.0, 0, 0], [0, 0, 5.0, 0], [0, 0, 4.0, 0]])
    y = np.array([0, 0, 1, 1, 2, 2])
    cal = C.create_calibrator(name).fit(z, y)
    p = cal.transform(np.vstack([z, [[0, 0, 0, 6.0]], [[1.0, 1.0, 1.0, 1.0]]]))
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1.0)
    assert all(np.isfinite(v).all() for v in map(np.asarray, _flat(cal.params())))
    json.dumps(cal.params())


@pytest.mark.parametrize("name", ["vector", "dirichlet"])
def test_parameters_stay_within_their_bound_on_separable_data(name):
    # separable by logit gaps of 0.01: the unbounded NLL keeps falling as the scales grow (an unbounded
    # L-BFGS stops near 1.7e3 and 3e3 here); the fit stops at PARAM_BOUND
    z = np.array([[0.01, 0, 0], [0.02, 0, 0], [0, 0.01, 0], [0, 0.02, 0], [0, 0, 0.01], [0, 0, 0.02]])
    y = np.array([0, 0, 1, 1, 2, 2])
    params = C.create_calibrator(name).fit(z, y).params()
    values = np.concatenate([np.ravel(params["w" if name == "vector" else "W"]), params["b"]])
    assert np.abs(values).max() <= C.PARAM_BOUND
    assert np.abs(values).max() == pytest.approx(C.PARAM_BOUND)


def _flat(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _flat(v)
    elif isinstance(obj, list) and obj and isinstance(obj[0], (dict, list)):
        for v in obj:
            yield from _flat(v)
    else:
        yield obj


# ---------------------------------------------------------------------------
# Histogram binning
# ---------------------------------------------------------------------------
def test_histogram_binning_equal_mass_edges_and_accuracies_by_hand():
    # 6 confidences, 3 bins: groups {.55, .6}, {.7, .8}, {.9, .95};
    # edges 0, (.6 + .7) / 2 = .65, (.8 + .9) / 2 = .85, 1; accuracies 1/2, 1/2, 2/2
    conf = [0.9, 0.55, 0.7, 0.95, 0.6, 0.8]
    correct = [1, 0, 1, 1, 1, 0]
    edges, acc, counts = C.fit_histogram_binning(conf, correct, n_bins=3)
    np.testing.assert_allclose(edges, [0.0, 0.65, 0.85, 1.0])
    np.testing.assert_allclose(acc, [0.5, 0.5, 1.0])
    assert counts.tolist() == [2, 2, 2]
    # 10 bins but 6 confidences: one bin per confidence
    assert C.fit_histogram_binning(conf, correct, n_bins=10)[0].size == 7


def test_histogram_binning_transform_by_hand():
    edges, acc = np.array([0.0, 0.65, 0.85, 1.0]), np.array([0.5, 0.5, 1.0])
    probs = np.array([
        [0.2, 0.7, 0.1],    # bin 1, a = .5; the rest .5 shared 2:1 -> 1/3, 1/6
        [0.05, 0.05, 0.9],  # bin 2, a = 1 -> others 0
        [0.6, 0.35, 0.05],  # bin 0, a = .5; shares .875 / .125 -> .4375, .0625 (floor .875/1.875 < .5)
        [0.0, 1.0, 0.0],    # bin 2 (1.0 is in the last, closed bin), a = 1
    ])
    expected = np.array([[1 / 3, 0.5, 1 / 6], [0.0, 0.0, 1.0], [0.5, 0.4375, 0.0625], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(C.histogram_binning(probs, edges, acc), expected, atol=1e-12)
    # a bin accuracy of .2 would let class 1 overtake class 2: floored at r / (1 + r) = (3/4) / (7/4) = 3/7
    out = C.histogram_binning(np.array([[0.1, 0.3, 0.6]]), np.array([0.0, 1.0]), np.array([0.2]))
    np.testing.assert_allclose(out, [[1 / 7, 3 / 7, 3 / 7]], atol=1e-8)
    assert np.argmax(out) == 2


def test_histogram_binning_never_changes_the_argmax():
    for seed in range(10):
        z, y = noisy_logits(seed, 80, 2 + seed % 4)
        y = np.random.default_rng(seed).integers(0, z.shape[1], z.shape[0])  # low accuracies: the floor binds
        cal = C.create_calibrator("histogram", n_bins=5).fit(z[::2], y[::2])
        p = cal.transform(z)
        assert (np.argmax(p, axis=1) == np.argmax(z, axis=1)).all()
        np.testing.assert_allclose(p.sum(axis=1), 1.0)


# ---------------------------------------------------------------------------
# Isotonic regression
# ---------------------------------------------------------------------------
def test_isotonic_equals_scikit_learn_one_vs_rest_renormalised():
    z, y = noisy_logits(8, 300, 4)
    zt, _ = noisy_logits(9, 200, 4, scale=4.0)  # test logits beyond the fitting range: clipped
    p, pt = softmax(z, axis=1), softmax(zt, axis=1)
    cols = []
    for k in range(4):
        iso = IsotonicRegression(out_of_bounds="clip").fit(p[:, k], (y == k).astype(float))
        cols.append(iso.predict(pt[:, k]))
    q = np.column_stack(cols)
    s = q.sum(axis=1, keepdims=True)
    expected = np.where(s > 0, q / np.where(s > 0, s, 1), 0.25)
    got = C.create_calibrator("isotonic").fit(z, y).transform(zt)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 1.0)


def test_isotonic_row_of_zeros_becomes_uniform():
    # class k is never the label where p_k is low: every map gives 0 at the low end
    z = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0]])
    y = np.array([0, 1, 2, 0, 1, 2])
    p = C.create_calibrator("isotonic").fit(z, y).transform(np.array([[0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(p, [[1 / 3, 1 / 3, 1 / 3]])


# ---------------------------------------------------------------------------
# DAC
# ---------------------------------------------------------------------------
def test_dac_class_scales_by_hand():
    # trained classes at angles 0 and 90 deg; zero-shot trained features the same.
    # evaluated class 0 = trained class 0 (distance 0 < 0.05): scale 1.
    # evaluated class 1 at 45 deg (tuned) vs 30 deg (zero-shot), k = 1:
    #   tuned nearest distance 2 sin(22.5 deg), zero-shot 2 sin(15 deg)
    #   s = exp(-2 sin 22.5) / exp(-2 sin 15)
    def unit(deg):
        return [np.cos(np.radians(deg)), np.sin(np.radians(deg))]
    base = np.array([unit(0), unit(90)])
    s = C.dac_class_scales([unit(0), unit(45)], base, [unit(0), unit(30)], base, k=1)
    expected = np.exp(-2 * np.sin(np.radians(22.5))) / np.exp(-2 * np.sin(np.radians(15)))
    np.testing.assert_allclose(s, [1.0, expected])
    # k = 2: the mean of both distances; feature norms do not matter (normalised)
    s2 = C.dac_class_scales([unit(0), [3 * v for v in unit(45)]], base, [unit(0), unit(30)], base, k=2)
    d_ft = 2 * np.sin(np.radians(22.5))
    d_zs = (2 * np.sin(np.radians(15)) + 2 * np.sin(np.radians(30))) / 2
    np.testing.assert_allclose(s2[1], np.exp(-d_ft) / np.exp(-d_zs))
    # "trained class" is decided on the learned prompt's features, not the zero-shot ones:
    # tuned at 90 deg (= trained class 1): scale 1 although zero-shot is at 60 deg;
    # tuned at 20 deg but zero-shot exactly at 0 deg: a scale, exp(-2 sin 10) / exp(0)
    s3 = C.dac_class_scales([unit(90), unit(20)], base, [unit(60), unit(0)], base, k=1)
    np.testing.assert_allclose(s3, [1.0, np.exp(-2 * np.sin(np.radians(10)))])


def test_dac_transform_is_a_per_image_temperature_on_temperature_scaling():
    rng = np.random.default_rng(11)
    feats = {"text_features": rng.normal(size=(3, 8)), "trained_text_features": rng.normal(size=(5, 8)),
             "zero_shot_text_features": rng.normal(size=(3, 8)), "zero_shot_trained_text_features": rng.normal(size=(5, 8))}
    z, y = noisy_logits(12, 200, 3)
    cal = C.create_calibrator("dac", **feats).fit(z, y)
    scales = C.dac_class_scales(*feats.values())
    t = M.fit_temperature(z, y)
    expected = softmax(z * (scales[np.argmax(z, axis=1)] / t)[:, None], axis=1)
    np.testing.assert_allclose(cal.transform(z), expected, atol=1e-12)
    assert cal.params()["temperature"] == pytest.approx(t)
    assert (np.argmax(cal.transform(z), axis=1) == np.argmax(z, axis=1)).all()
    rows = C.calibrator_reports(z, y, ["dac"], params={"dac": feats})
    assert rows[1]["calibrator"] == "dac" and rows[1]["argmax_changed"] == 0.0


# ---------------------------------------------------------------------------
# Cross-fitting and reports
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_cross_fit_applies_each_half_the_map_fitted_on_the_other(name):
    z, y = noisy_logits(13, 41, 3)
    cf = C.cross_fit(name, z, y)
    even, odd = np.arange(41) % 2 == 0, np.arange(41) % 2 == 1
    on_even = C.create_calibrator(name).fit(z[even], y[even])
    on_odd = C.create_calibrator(name).fit(z[odd], y[odd])
    np.testing.assert_allclose(cf.probs[odd], on_even.transform(z[odd]), atol=1e-10)
    np.testing.assert_allclose(cf.probs[even], on_odd.transform(z[even]), atol=1e-10)
    assert cf.fitted_on == [21, 20]
    assert cf.params == [on_even.params(), on_odd.params()]
    assert cf.seconds >= 0.0 and len(cf.params) == 2


def test_cross_fit_needs_two_images_per_half():
    with pytest.raises(ValueError, match="at least 4 images"):
        C.cross_fit("temperature", np.zeros((3, 2)), [0, 1, 0])
    with pytest.raises(ValueError, match="Unknown calibrator"):
        C.cross_fit("nope", np.zeros((4, 2)), [0, 1, 0, 1])


def test_calibrator_reports_keys_and_raw_row_equals_calibration_report():
    z, y = noisy_logits(14, 101, 4)
    rows = C.calibrator_reports(z, y, NAMES, n_bins=8)
    assert [r["calibrator"] for r in rows] == ["none"] + NAMES
    keys = {"calibrator", "accuracy", "ece", "mce", "ace", "nll", "brier", "mean_confidence", "fitted_on",
            "argmax_changed", "keeps_argmax", "seconds"}
    assert all(set(r) == keys for r in rows)
    ref = M.calibration_report(softmax(z, axis=1), y, n_bins=8, n_boot=0)
    for k in ("accuracy", "ece", "mce", "ace", "nll", "brier", "mean_confidence"):
        assert rows[0][k] == pytest.approx(ref[k], abs=1e-12)
    assert rows[0]["fitted_on"] == 0 and rows[0]["argmax_changed"] == 0.0
    assert all(r["fitted_on"] == 50 for r in rows[1:])
    # the temperature row is temperature scaling fitted by hand on each half and applied to the other
    ts = np.empty_like(z)
    even, odd = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    for fit_on, apply_to in ((even, odd), (odd, even)):
        ts[apply_to] = M.apply_temperature(z[apply_to], M.fit_temperature(z[fit_on], y[fit_on]))
    assert rows[1]["ece"] == pytest.approx(M.expected_calibration_error(ts, y, n_bins=8), abs=1e-12)
    json.dumps(rows)


# ---------------------------------------------------------------------------
# netcal (optional: not a dependency; it pulls torch, pyro-ppl, gpytorch and tensorboard)
# ---------------------------------------------------------------------------
def test_against_netcal_when_installed():
    netcal = pytest.importorskip("netcal")  # noqa: F841
    from netcal.binning import IsotonicRegression as NetcalIsotonic
    from netcal.scaling import LogisticCalibration

    z, y = noisy_logits(15, 600, 3)
    zt, _ = noisy_logits(16, 300, 3, scale=4.0)
    iso = NetcalIsotonic()
    iso.fit(softmax(z, axis=1), y)
    np.testing.assert_allclose(C.create_calibrator("isotonic").fit(z, y).transform(zt),
                               iso.transform(softmax(zt, axis=1)), atol=1e-10)
    # netcal's multi-class LogisticCalibration is vector scaling on log-probabilities
    x = log_softmax(z, axis=1)
    vec = LogisticCalibration(method="mle")
    vec.fit(softmax(z, axis=1), y)
    w, b = C.fit_vector_scaling(x, y)
    np.testing.assert_allclose(C.vector_scaling(x, w, b), vec.transform(softmax(z, axis=1)), atol=1e-4)
