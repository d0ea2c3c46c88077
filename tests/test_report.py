"""Tests for calibprompt.evaluation.report: the typed CalibrationReport and its single validation."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import numpy as np
import pytest

from calibprompt.evaluation import metrics as M
from calibprompt.evaluation.report import (
    CalibrationReport,
    Evaluation,
    as_calibration_report,
    evaluate_probs,
    parse_reliability,
)


def random_probs(seed: int, n: int = 200, k: int = 3, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p, rng.integers(0, k, size=n)


@pytest.fixture(scope="module")
def report_dict():
    p, y = random_probs(0)
    return M.calibration_report(p, y, n_bins=10, n_boot=25, seed=0)


@pytest.fixture(scope="module")
def sparse_dict():
    """No bootstrap (intervals None) and empty bins (None in the reliability lists)."""
    p, y = random_probs(1, n=40, k=2)
    rep = M.calibration_report(p, y, n_bins=15, n_boot=0)
    assert rep["intervals"] is None and 0 in rep["reliability"]["counts"]
    return rep


def fresh(d: dict) -> dict:
    return copy.deepcopy(d)


# ---------------------------------------------------------------------------
# Round trip and typed fields
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["report_dict", "sparse_dict"])
def test_from_dict_to_dict_round_trip(which, request):
    d = request.getfixturevalue(which)
    rep = CalibrationReport.from_dict(d)
    out = rep.to_dict()
    assert out == d
    assert list(out) == list(d)  # same key order as calibration_report
    text = json.dumps(out, allow_nan=False)  # JSON-able, no NaN
    again = CalibrationReport.from_dict(json.loads(text))
    assert again == rep and again.to_dict() == d
    assert CalibrationReport.from_dict(out) == rep


def test_typed_fields(report_dict):
    rep = CalibrationReport.from_dict(report_dict)
    for key in ("accuracy", "ece", "mce", "ace", "nll", "brier", "macro_f1", "mean_confidence", "classwise_ece_mean"):
        assert type(getattr(rep, key)) is float and getattr(rep, key) == report_dict[key]
    assert (rep.n, rep.num_classes, rep.n_bins) == (200, 3, 10)
    assert isinstance(rep.classwise_ece, tuple) and list(rep.classwise_ece) == report_dict["classwise_ece"]
    assert isinstance(rep.reliability, M.ReliabilityBins)
    assert rep.reliability.n_bins == 10 and rep.reliability.to_dict() == report_dict["reliability"]
    assert set(rep.intervals) == {"accuracy", "ece", "mce", "ace", "nll", "brier"}
    assert rep.interval("ece") == tuple(report_dict["intervals"]["ece"])
    assert all(isinstance(v, tuple) and len(v) == 2 for v in rep.intervals.values())
    assert rep.temperature is None and "temperature" not in rep.to_dict()


def test_no_intervals_is_an_empty_mapping(sparse_dict):
    rep = CalibrationReport.from_dict(sparse_dict)
    assert rep.intervals == {} and rep.interval("ece") is None
    assert rep.to_dict()["intervals"] is None
    missing = fresh(sparse_dict)
    del missing["intervals"]  # optional key
    assert CalibrationReport.from_dict(missing) == rep


def test_temperature_is_optional_and_round_trips(report_dict):
    d = {**fresh(report_dict), "temperature": 1.5}
    rep = CalibrationReport.from_dict(d)
    assert rep.temperature == 1.5
    assert rep.to_dict() == d
    assert CalibrationReport.from_dict({**fresh(report_dict), "temperature": None}).temperature is None
    scaled = dataclasses.replace(CalibrationReport.from_dict(report_dict), temperature=2)
    assert scaled.temperature == 2.0 and scaled.to_dict()["temperature"] == 2.0


def test_frozen_comparable_and_copyable(report_dict):
    rep = CalibrationReport.from_dict(report_dict)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rep.ece = 0.0  # type: ignore[misc]
    assert rep == CalibrationReport.from_dict(fresh(report_dict))
    assert rep != dataclasses.replace(rep, ece=0.5)
    assert pickle.loads(pickle.dumps(rep)) == rep
    assert copy.deepcopy(rep) == rep
    assert rep.reliability.counts.flags.writeable is False


def test_extra_keys_of_run_metrics_are_ignored(report_dict):
    metrics = {**fresh(report_dict), "train_seconds": 3.2, "history": [[1, 0.5]], "loss_params": {}}
    assert CalibrationReport.from_dict(metrics).to_dict() == report_dict


def test_as_calibration_report_and_evaluation(report_dict):
    rep = CalibrationReport.from_dict(report_dict)
    assert as_calibration_report(rep) is rep
    assert as_calibration_report(report_dict) == rep
    p, y = random_probs(2, n=60)
    ev = evaluate_probs(p, y, [f"img{i}.png" for i in range(60)], ["a", "b", "c"], n_bins=10, n_boot=10)
    assert isinstance(ev, Evaluation)
    assert isinstance(ev.calibration, CalibrationReport)
    assert ev.calibration.to_dict() == ev.report
    assert as_calibration_report(ev) == ev.calibration


# ---------------------------------------------------------------------------
# Validation: one place, clear messages naming the key
# ---------------------------------------------------------------------------


def _drop(key):
    def change(d):
        del d[key]
    return change


def _set(key, value):
    def change(d):
        d[key] = value
    return change


def _set_rel(key, value):
    def change(d):
        d["reliability"][key] = value
    return change


def _set_interval(key, value):
    def change(d):
        d["intervals"][key] = value
    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_drop("ece"), r"`report` is missing key\(s\) \['ece'\]"),
        (_drop("reliability"), r"missing key\(s\) \['reliability'\]"),
        (_set("ece", None), r"`report\['ece'\]` must be a finite number, but got None"),
        (_set("ece", "0.1"), r"`report\['ece'\]` must be a finite number"),
        (_set("ece", float("nan")), r"`report\['ece'\]` must be a finite number"),
        (_set("accuracy", 87.5), r"`report\['accuracy'\]` must lie in \[0, 1\] \(a fraction, not a percentage\)"),
        (_set("nll", -1.0), r"`report\['nll'\]` must lie in \[0, inf\]"),
        (_set("brier", 2.5), r"`report\['brier'\]` must lie in \[0, 2\]"),
        (_set("n", True), r"`report\['n'\]` must be an int >= 1"),
        (_set("n_bins", 0), r"`report\['n_bins'\]` must be an int >= 1"),
        (_set("n_bins", 12), r"`report\['n_bins'\]` is 12 but `report\['reliability'\]` has 10 bins"),
        (_set("n", 150), r"sum to 200, but `report\['n'\]` is 150"),
        (_set("classwise_ece", [0.1, 0.2]), r"`report\['classwise_ece'\]` must have one value per class \(num_classes = 3\)"),
        (_set("classwise_ece", [0.1, 0.2, 3.0]), r"`report\['classwise_ece'\]` must lie in \[0, 1\]"),
        (_set("classwise_ece", "abc"), r"`report\['classwise_ece'\]` must be a 1-D list"),
        (_set("intervals", [0.1, 0.2]), r"`report\['intervals'\]` must be None or a dict"),
        (_set_interval("ece", [0.1]), r"`report\['intervals'\]\['ece'\]` must be a pair \[lo, hi\]"),
        (_set_interval("ece", [0.3, 0.1]), r"`report\['intervals'\]\['ece'\]` must have lo <= hi"),
        (_set_interval("accuracy", [40.0, 60.0]), r"`report\['intervals'\]\['accuracy'\]` must lie in \[0, 1\]"),
        (_set("temperature", 0.0), r"`report\['temperature'\]` must be > 0"),
        (_set("temperature", "hot"), r"`report\['temperature'\]` must be a finite number"),
        (_set("reliability", [1, 2]), r"`report\['reliability'\]` must be a ReliabilityBins or its to_dict\(\) dict"),
        (_set_rel("counts", [-1] * 10), r"`report\['reliability'\]\['counts'\]` must be non-negative integers"),
        (_set_rel("extra", 1), r"`report\['reliability'\]` has unknown key\(s\) \['extra'\]"),
        (_set_rel("strategy", "log"), r"`report\['reliability'\]\['strategy'\]` must be 'uniform' or 'quantile'"),
    ],
)
def test_bad_dict_gives_a_clear_value_error(report_dict, change, message):
    d = fresh(report_dict)
    change(d)
    with pytest.raises(ValueError, match=message):
        CalibrationReport.from_dict(d)


def test_bad_types_and_names(report_dict):
    with pytest.raises(ValueError, match="must be a calibration_report"):
        CalibrationReport.from_dict([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`reports\['coop'\]\['ece'\]`"):
        CalibrationReport.from_dict({**fresh(report_dict), "ece": 2.0}, name="reports['coop']")
    bins_only = fresh(report_dict)["reliability"]
    with pytest.raises(ValueError, match="looks like a reliability dict"):
        CalibrationReport.from_dict(bins_only)
    with pytest.raises(ValueError, match="ReliabilityBins"):
        CalibrationReport(**{**CalibrationReport.from_dict(report_dict).__dict__, "reliability": bins_only})


def test_parse_reliability_accepts_bins_and_dicts():
    p, y = random_probs(3)
    rb = M.reliability_bins(p, y, n_bins=8, strategy="quantile")
    for source in (rb, rb.to_dict()):
        parsed = parse_reliability(source)
        assert isinstance(parsed, M.ReliabilityBins) and parsed.strategy == "quantile"
        assert parsed.to_dict() == rb.to_dict()
    with pytest.raises(ValueError, match=r"`reliability` is missing key\(s\) \['accuracy', 'confidence'\]"):
        parse_reliability({"edges": [0, 1], "counts": [1]})
