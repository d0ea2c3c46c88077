"""Tests for calibprompt.evaluation.plots: the data in the traces, layout conventions, validation."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from calibprompt.evaluation import metrics as M
from calibprompt.evaluation import plots as P
from calibprompt.evaluation.report import CalibrationReport

# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def random_probs(seed: int, n: int = 400, k: int = 3, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = rng.integers(0, k, size=n)
    return p, y


@pytest.fixture(scope="module")
def reports():
    out = {}
    for i, name in enumerate(["zero-shot", "coop", "calibprompt", "ls"]):
        p, y = random_probs(i, k=2 + i % 2)
        out[name] = M.calibration_report(p, y, n_bins=10, n_boot=30, seed=0)
    return out


@pytest.fixture(scope="module")
def sparse_report():
    """Two classes: every confidence >= 0.5, so with 10 bins bins 0-4 are empty."""
    p, y = random_probs(7, n=200, k=2)
    rep = M.calibration_report(p, y, n_bins=10, n_boot=0)
    assert rep["reliability"]["counts"][:5] == [0] * 5
    return rep


def traces_named(fig: go.Figure, name: str) -> list:
    return [t for t in fig.data if t.name == name]


def only(fig: go.Figure, name: str):
    found = traces_named(fig, name)
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def nonempty_bins(rel: dict):
    idx = [i for i, c in enumerate(rel["counts"]) if c > 0]
    e = rel["edges"]
    return idx, [(e[i] + e[i + 1]) / 2 for i in idx], [e[i + 1] - e[i] for i in idx]


def assert_serialises(fig: go.Figure) -> dict:
    text = fig.to_json()
    assert "NaN" not in text
    return json.loads(text)


# ---------------------------------------------------------------------------
# Colours
# ---------------------------------------------------------------------------


def test_method_colours_main_fallback_and_distinct():
    assert set(P.METHOD_COLOURS) == {"zero-shot", "coop", "calibprompt"}
    assert P.method_colour("CoOp") == P.METHOD_COLOURS["coop"]
    assert P.method_colour("Zero_Shot") == P.METHOD_COLOURS["zero-shot"]
    assert P.method_colour("ls") in P.FALLBACK_PALETTE
    assert P.method_colour("ls") == P.method_colour("ls")  # stable
    names = ["ls", "fl", "temperature-scaled coop", "coop", "mdca", "dca", "mmce", "zero-shot"]
    colours = P.method_colours(names)
    assert list(colours) == names
    assert len(set(colours.values())) == len(names)
    assert colours["coop"] == P.METHOD_COLOURS["coop"]
    with pytest.raises(ValueError, match="str"):
        P.method_colour(3)


# ---------------------------------------------------------------------------
# Reliability diagram
# ---------------------------------------------------------------------------


def test_reliability_diagram_bars_match_the_bins(reports):
    rep = reports["coop"]
    rel = rep["reliability"]
    fig = P.reliability_diagram(rel, title="CoOp", ece=rep["ece"])
    idx, centres, widths = nonempty_bins(rel)

    bars = only(fig, "Accuracy")
    assert bars.type == "bar"
    np.testing.assert_allclose(bars.y, [rel["accuracy"][i] for i in idx])
    np.testing.assert_allclose(bars.x, centres)
    np.testing.assert_allclose(bars.width, widths)

    counts = only(fig, "Samples per bin (n)")
    assert list(counts.text) == [str(rel["counts"][i]) for i in idx]
    np.testing.assert_allclose(counts.x, centres)
    for i, h in zip(idx, bars.hovertext):  # counts and percentages in the hover
        assert f"Samples: {rel['counts'][i]} " in h
        assert f"Accuracy: {100 * rel['accuracy'][i]:.1f} %" in h
        assert f"Mean confidence: {100 * rel['confidence'][i]:.1f} %" in h

    diag = only(fig, "Perfect calibration")
    assert list(diag.x) == [0.0, 1.0] and list(diag.y) == [0.0, 1.0]
    assert diag.line.dash == "dash"

    assert fig.layout.title.text == "CoOp"
    assert fig.layout.xaxis.title.text == "Confidence" and fig.layout.yaxis.title.text == "Accuracy"
    # the y axis leaves a band above 100 % for the counts of full bars
    assert tuple(fig.layout.xaxis.range) == (0, 1) and tuple(fig.layout.yaxis.range) == (0, P.RELIABILITY_Y_TOP)
    assert P.RELIABILITY_Y_TOP > 1.0
    assert fig.layout.yaxis.scaleanchor == "x"
    assert [a.text for a in fig.layout.annotations] == [f"ECE {100 * rep['ece']:.1f} %"]
    assert_serialises(fig)


def test_gap_bars_span_accuracy_to_confidence_coloured_by_direction(reports):
    rel = reports["zero-shot"]["reliability"]
    fig = P.reliability_diagram(rel)
    idx, centres, _ = nonempty_bins(rel)
    acc = np.array([rel["accuracy"][i] for i in idx])
    conf = np.array([rel["confidence"][i] for i in idx])
    centres = np.array(centres)
    for name, sel in (("Gap: overconfident", conf > acc), ("Gap: underconfident", conf < acc)):
        found = traces_named(fig, name)
        if not sel.any():
            assert found == []
            continue
        (gap,) = found
        np.testing.assert_allclose(gap.x, centres[sel])
        np.testing.assert_allclose(gap.base, np.minimum(acc, conf)[sel])
        np.testing.assert_allclose(np.array(gap.base) + np.array(gap.y), np.maximum(acc, conf)[sel])
    over = traces_named(fig, "Gap: overconfident")
    assert over and "214, 39, 40" in over[0].marker.color  # red-ish: confidence > accuracy
    assert fig.layout.annotations == ()  # no ECE passed -> no annotation
    assert fig.layout.barmode == "overlay"


def test_underconfident_gap_is_blue():
    rel = {"edges": [0.0, 0.5, 1.0], "counts": [0, 4], "accuracy": [None, 1.0], "confidence": [None, 0.75]}
    fig = P.reliability_diagram(rel)
    gap = only(fig, "Gap: underconfident")
    assert "31, 119, 180" in gap.marker.color
    assert list(gap.base) == [0.75] and list(gap.y) == [0.25]
    assert traces_named(fig, "Gap: overconfident") == []
    counts = only(fig, "Samples per bin (n)")
    # above the bar even at 100 %: the axis runs to RELIABILITY_Y_TOP
    assert list(counts.text) == ["4"] and counts.textposition == "top center" and counts.y == (1.0,)
    assert "Confidence bin 50 % - 100 %" in only(fig, "Accuracy").hovertext[0]


def test_empty_bins_draw_no_bar(sparse_report):
    rel = sparse_report["reliability"]
    fig = P.reliability_diagram(rel)
    bars = only(fig, "Accuracy")
    idx, _, _ = nonempty_bins(rel)
    assert len(bars.x) == len(idx) == sum(c > 0 for c in rel["counts"])
    assert min(bars.x) > 0.5  # nothing drawn in the empty bins 0..4 (not even a zero bar)
    assert all(v is not None and not math.isnan(v) for v in bars.y)
    for t in fig.data:
        if t.type == "bar":
            assert all(x > 0.5 for x in t.x)
    assert_serialises(fig)


def test_diagram_accepts_bins_object_and_whole_report(reports):
    p, y = random_probs(3)
    rb = M.reliability_bins(p, y, n_bins=8)
    a = P.reliability_diagram(rb)
    b = P.reliability_diagram(rb.to_dict())
    assert a.to_json() == b.to_json()

    rep = reports["calibprompt"]
    fig = P.reliability_diagram(rep, colour="#123456")
    assert only(fig, "Accuracy").marker.color == "#123456"
    (note,) = fig.layout.annotations
    assert note.text.startswith(f"ECE {100 * rep['ece']:.1f} %") and "95 % CI" in note.text
    # an explicit ece wins over the report's
    assert P.reliability_diagram(rep, ece=0.5).layout.annotations[0].text == "ECE 50.0 %"


def test_quantile_bins_are_labelled_ace():
    p, y = random_probs(5)
    fig = P.reliability_grid({"coop": M.reliability_bins(p, y, n_bins=5, strategy="quantile")})
    assert "ACE" in fig.layout.annotations[0].text


@pytest.mark.parametrize(
    "change, message",
    [
        ({"extra": 1}, "unknown key"),
        ({"edges": [0.0, 1.0]}, "edges"),
        ({"accuracy": [0.5]}, "accuracy"),
        ({"counts": [1, 2, 3]}, "edges"),
        ({"counts": [-1, 2]}, "non-negative integers"),
        ({"accuracy": [None, 0.5]}, "missing"),
        ({"counts": [0, 2], "accuracy": [0.0, 0.5], "confidence": [None, 0.6]}, "empty"),
        ({"accuracy": [40.0, 50.0]}, r"\[0, 1\]"),
        ({"edges": [0.0, 0.7, 0.5]}, "non-decreasing"),
        ({"strategy": "log"}, "strategy"),
        ({"n_bins": 3}, "n_bins"),
        ({"accuracy": ["a", "b"]}, "numbers"),
    ],
)
def test_reliability_validation(change, message):
    rel = {"edges": [0.0, 0.5, 1.0], "counts": [2, 3], "accuracy": [0.5, 1 / 3], "confidence": [0.4, 0.7]}
    rel.update(change)
    with pytest.raises(ValueError, match=message):
        P.reliability_diagram(rel)


def test_reliability_diagram_rejects_other_types():
    with pytest.raises(ValueError, match="ReliabilityBins"):
        P.reliability_diagram([0.1, 0.2])
    with pytest.raises(ValueError, match="missing"):
        P.reliability_diagram({"edges": [0, 1], "counts": [1]})
    with pytest.raises(ValueError, match="ece"):
        P.reliability_diagram({"edges": [0, 1], "counts": [1], "accuracy": [1], "confidence": [1]}, ece=2.0)


# ---------------------------------------------------------------------------
# Grid and overlay
# ---------------------------------------------------------------------------


def test_grid_one_subplot_per_method_with_ece_titles(reports):
    fig = P.reliability_grid(reports, n_cols=3)
    names = list(reports)
    titles = [a.text for a in fig.layout.annotations]
    assert len(titles) == len(names)
    for name, title in zip(names, titles):
        assert name in title
        assert f"ECE {100 * reports[name]['ece']:.1f} %" in title
    # 4 methods in 3 columns: 2 rows; one x axis per method
    xaxes = sorted({t.xaxis for t in fig.data})
    assert len(xaxes) == len(names)
    assert fig.layout.height == P._GRID_EXTRA_HEIGHT + 2 * P._GRID_ROW_HEIGHT
    for i, name in enumerate(names):
        axis = "x" if i == 0 else f"x{i + 1}"
        bars = [t for t in fig.data if t.xaxis == axis and t.name == "Accuracy"]
        assert len(bars) == 1
        rel = reports[name]["reliability"]
        np.testing.assert_allclose(bars[0].y, [a for a, c in zip(rel["accuracy"], rel["counts"]) if c > 0])
        assert bars[0].marker.color == P.method_colour(name)
        assert any(t.xaxis == axis and t.name == "Perfect calibration" for t in fig.data)
    # each legend entry once
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert len(legend) == len(set(legend))
    assert "Perfect calibration" in legend
    assert_serialises(fig)


def test_grid_single_row_and_validation(reports):
    fig = P.reliability_grid({"coop": reports["coop"], "calibprompt": reports["calibprompt"]}, n_cols=3)
    assert fig.layout.xaxis2 is not None and "xaxis3" not in fig.layout.to_plotly_json()
    assert fig.layout.height == P._GRID_EXTRA_HEIGHT + P._GRID_ROW_HEIGHT
    with pytest.raises(ValueError, match="empty"):
        P.reliability_grid({})
    with pytest.raises(ValueError, match="n_cols"):
        P.reliability_grid(reports, n_cols=0)
    with pytest.raises(ValueError, match="dict"):
        P.reliability_grid([reports["coop"]])
    # a partial report dict is rejected by CalibrationReport.from_dict, naming what is missing
    with pytest.raises(ValueError, match=r"reports\['coop'\]` is missing key\(s\) \['n', 'num_classes', 'mce'"):
        P.reliability_grid({"coop": {"accuracy": 0.5, "ece": 0.1}})


def test_overlay_one_trace_per_method_plus_diagonal(reports):
    fig = P.reliability_overlay(reports, min_count=0)  # nothing marked: diagonal + one trace per method
    assert len(fig.data) == len(reports) + 1
    diag = fig.data[0]
    assert diag.name == "Perfect calibration" and diag.line.dash == "dash"
    max_count = max(max(r["reliability"]["counts"]) for r in reports.values())
    for trace, (name, rep) in zip(fig.data[1:], reports.items()):
        rel = rep["reliability"]
        idx = [i for i, c in enumerate(rel["counts"]) if c > 0]
        assert trace.name.startswith(name) and f"ECE {100 * rep['ece']:.1f} %" in trace.name
        assert trace.mode == "lines+markers"
        np.testing.assert_allclose(trace.x, [rel["confidence"][i] for i in idx])
        np.testing.assert_allclose(trace.y, [rel["accuracy"][i] for i in idx])
        assert list(trace.customdata) == [rel["counts"][i] for i in idx]
        sizes = np.array(trace.marker.size)
        counts = np.array(trace.customdata)
        order = np.argsort(counts)
        assert (np.diff(sizes[order]) >= 0).all()  # bigger bins, bigger markers
        assert sizes.max() <= 22 + 1e-9
        assert trace.line.color == P.method_colour(name)
    largest = max(max(t.marker.size) for t in fig.data[1:])
    assert largest == pytest.approx(22.0) and max_count > 0
    assert_serialises(fig)


# ---------------------------------------------------------------------------
# Typed reports (CalibrationReport) and dict reports draw the same figures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def typed(reports):
    return {name: CalibrationReport.from_dict(rep) for name, rep in reports.items()}


def test_typed_and_dict_reports_give_identical_figures(reports, typed):
    assert P.reliability_grid(typed).to_json() == P.reliability_grid(reports).to_json()
    assert P.reliability_grid(typed, n_cols=2).to_json() == P.reliability_grid(reports, n_cols=2).to_json()
    assert P.reliability_overlay(typed).to_json() == P.reliability_overlay(reports).to_json()
    for name in reports:
        assert P.reliability_diagram(typed[name]).to_json() == P.reliability_diagram(reports[name]).to_json()
    mixed = {"coop": typed["coop"], "calibprompt": reports["calibprompt"]}
    assert P.reliability_overlay(mixed).to_json() == P.reliability_overlay(
        {k: reports[k] for k in mixed}
    ).to_json()
    three = {k: typed[k] for k in ("coop", "ls")}
    as_lists = {k: reports[k]["classwise_ece"] for k in three}
    names = ["covid", "normal", "pneumonia"]
    assert P.classwise_ece_bars(three, names).to_json() == P.classwise_ece_bars(as_lists, names).to_json()
    assert P.classwise_ece_bars({k: reports[k] for k in three}, names).to_json() == P.classwise_ece_bars(
        as_lists, names
    ).to_json()


def test_typed_report_fields_are_what_is_drawn(typed):
    rep = typed["coop"]
    fig = P.reliability_grid({"coop": rep})
    (title,) = [a.text for a in fig.layout.annotations]
    lo, hi = rep.interval("ece")
    assert f"ECE {100 * rep.ece:.1f} %" in title and f"[{100 * lo:.1f}–{100 * hi:.1f}]" in title
    bars = only(fig, "Accuracy")
    m = rep.reliability.counts > 0
    np.testing.assert_allclose(bars.y, rep.reliability.accuracy[m])


def test_reports_with_a_temperature_plot_like_without(reports, typed):
    scaled_dicts = {f"{k} + TS": {**v, "temperature": 1.3} for k, v in reports.items()}
    scaled_typed = {k: CalibrationReport.from_dict(v) for k, v in scaled_dicts.items()}
    assert all(r.temperature == 1.3 for r in scaled_typed.values())
    renamed = {f"{k} + TS": v for k, v in typed.items()}
    for figure in (P.reliability_grid, P.reliability_overlay):
        expected = figure(renamed).to_json()
        assert figure(scaled_dicts).to_json() == expected
        assert figure(scaled_typed).to_json() == expected


def test_dict_reports_are_converted_once_typed_ones_never(reports, typed, monkeypatch):
    calls = []
    original = CalibrationReport.from_dict.__func__

    def counting(cls, d, name="report"):
        calls.append(name)
        return original(cls, d, name)

    monkeypatch.setattr(CalibrationReport, "from_dict", classmethod(counting))
    P.reliability_grid(typed)
    P.reliability_overlay(typed)
    assert calls == []
    P.reliability_grid(reports)
    assert calls == [f"reports[{n!r}]" for n in reports]


def test_bad_report_dict_is_rejected_by_from_dict_with_the_method_named(reports):
    bad = {**reports["coop"], "ece": 1.5}
    for figure in (P.reliability_grid, P.reliability_overlay):
        with pytest.raises(ValueError, match=r"`reports\['coop'\]\['ece'\]` must lie in \[0, 1\]"):
            figure({"coop": bad})
    broken = {**reports["coop"], "reliability": {**reports["coop"]["reliability"], "counts": [1, 2]}}
    with pytest.raises(ValueError, match=r"`reports\['coop'\]\['reliability'\]\['edges'\]` must have n_bins \+ 1"):
        P.reliability_overlay({"coop": broken})
    with pytest.raises(ValueError, match=r"`classwise\['coop'\]` is missing key"):
        P.classwise_ece_bars({"coop": {"ece": 0.1}}, ["a", "b"])


# ---------------------------------------------------------------------------
# Confidence histogram
# ---------------------------------------------------------------------------


def test_confidence_histogram_bins_cover_unit_interval():
    p1, _ = random_probs(1)
    p2, _ = random_probs(2, scale=4.0)
    conf1 = p1.max(axis=1)
    conf1[0] = 1.0  # in the last, closed bin (numpy.histogram semantics)
    fig = P.confidence_histogram({"coop": conf1, "calibprompt": p2}, n_bins=10)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [b.name for b in bars] == ["coop", "calibprompt"]
    edges = np.linspace(0, 1, 11)
    for bar, conf in zip(bars, (conf1, p2.max(axis=1))):
        x, w = np.array(bar.x), bar.width
        assert x[0] - w / 2 == pytest.approx(0.0) and x[-1] + w / 2 == pytest.approx(1.0)
        np.testing.assert_allclose(x[1:] - x[:-1], 0.1)
        np.testing.assert_array_equal(bar.customdata, np.histogram(conf, bins=edges)[0])
        assert sum(bar.customdata) == len(conf)
        assert sum(bar.y) == pytest.approx(1.0)
        assert bar.marker.color == P.method_colour(bar.name)
    means = [t for t in fig.data if t.type == "scatter"]
    assert len(means) == 2
    for line, conf in zip(means, (conf1, p2.max(axis=1))):
        assert line.x[0] == line.x[1] == pytest.approx(conf.mean())
        assert f"{100 * conf.mean():.1f} %" in line.name
    assert fig.layout.barmode == "overlay"
    assert tuple(fig.layout.xaxis.range) == (0, 1)
    assert_serialises(fig)


def test_confidence_histogram_correct_incorrect_stacked():
    p, y = random_probs(4)
    conf, ok = p.max(axis=1), p.argmax(axis=1) == y
    fig = P.confidence_histogram({"coop": conf}, correct={"coop": ok}, n_bins=5)
    good, bad = only(fig, "Correct"), only(fig, "Incorrect")
    edges = np.linspace(0, 1, 6)
    np.testing.assert_array_equal(good.customdata, np.histogram(conf[ok], bins=edges)[0])
    np.testing.assert_array_equal(
        np.array(good.customdata) + np.array(bad.customdata), np.histogram(conf, bins=edges)[0]
    )
    assert sum(good.y) + sum(bad.y) == pytest.approx(1.0)
    assert fig.layout.barmode == "stack"
    names = [t.name for t in fig.data if t.type == "scatter"]
    assert any("accuracy" in n and f"{100 * ok.mean():.1f} %" in n for n in names)
    assert any("mean confidence" in n and f"{100 * conf.mean():.1f} %" in n for n in names)
    assert_serialises(fig)


def test_confidence_histogram_validation():
    conf = np.array([0.2, 0.9, 0.7])
    with pytest.raises(ValueError, match="single method"):
        P.confidence_histogram({"a": conf, "b": conf}, correct={"a": [1, 0, 1]})
    with pytest.raises(ValueError, match="not in `confidences`"):
        P.confidence_histogram({"a": conf}, correct={"b": [1, 0, 1]})
    with pytest.raises(ValueError, match="one entry per confidence"):
        P.confidence_histogram({"a": conf}, correct={"a": [1, 0]})
    with pytest.raises(ValueError, match="0/1"):
        P.confidence_histogram({"a": conf}, correct={"a": [1, 0, 2]})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        P.confidence_histogram({"a": [0.5, 3.0]})
    with pytest.raises(ValueError, match="shape"):
        P.confidence_histogram({"a": np.zeros((2, 2, 2))})
    with pytest.raises(ValueError, match="empty"):
        P.confidence_histogram({"a": []})
    with pytest.raises(ValueError, match="n_bins"):
        P.confidence_histogram({"a": conf}, n_bins=0)
    with pytest.raises(ValueError, match="empty"):
        P.confidence_histogram({})


# ---------------------------------------------------------------------------
# Loss curve
# ---------------------------------------------------------------------------


def test_loss_curve_single_and_named_series():
    pts = [(1, 2.5), (2, 1.75), (3, 1.2)]
    fig = P.loss_curve(pts)
    (trace,) = fig.data
    assert list(trace.x) == [1, 2, 3] and list(trace.y) == [2.5, 1.75, 1.2]
    assert fig.layout.title.text == "Training loss"
    assert fig.layout.xaxis.title.text == "Step" and fig.layout.yaxis.title.text == "Loss"
    assert fig.layout.uirevision is not None

    parts = {"total": pts, "LS": [(1, 1.0), (2, float("nan")), (3, 0.5)], "AS": []}
    fig = P.loss_curve(parts, title="Loss parts")
    assert [t.name for t in fig.data] == ["total", "LS"]  # empty series skipped
    assert list(fig.data[1].y) == [1.0, None, 0.5]  # a diverged step is a gap
    assert fig.layout.title.text == "Loss parts"
    assert_serialises(fig)
    arr = P.loss_curve(np.array([[0, 1.0], [10, 0.5]]))
    assert list(arr.data[0].x) == [0, 10]


@pytest.mark.parametrize("empty", [[], {}, {"total": []}, None])
def test_loss_curve_empty_input_says_no_steps_yet(empty):
    fig = P.loss_curve(empty)
    assert len(fig.data) == 0
    assert any("no steps yet" in a.text.lower() for a in fig.layout.annotations)
    assert_serialises(fig)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([(1, 0.5, 3)], "pair"),
        ([1, 2], "pair"),
        ([("a", 0.5)], "step"),
        ([(1, "x")], "loss"),
        ("loss", "list"),
        ({1: [(1, 0.5)]}, "series name"),
    ],
)
def test_loss_curve_validation(bad, message):
    with pytest.raises(ValueError, match=message):
        P.loss_curve(bad)


# ---------------------------------------------------------------------------
# Classwise ECE
# ---------------------------------------------------------------------------


def test_classwise_ece_bars(reports):
    classwise = {"coop": reports["coop"]["classwise_ece"], "calibprompt": reports["ls"]["classwise_ece"]}
    assert len(classwise["coop"]) == len(classwise["calibprompt"]) == 3
    fig = P.classwise_ece_bars(classwise, ["covid", "normal", "pneumonia"])
    assert fig.layout.barmode == "group"
    assert len(fig.data) == 2
    for trace, (name, vals) in zip(fig.data, classwise.items()):
        assert trace.name.startswith(name) and f"mean {100 * np.mean(vals):.1f} %" in trace.name
        assert list(trace.x) == ["covid", "normal", "pneumonia"]
        np.testing.assert_allclose(trace.y, vals)
        assert trace.marker.color == P.method_colour(name)
        assert f"{100 * vals[0]:.1f} %" in trace.hovertext[0]
    assert_serialises(fig)


def test_classwise_ece_validation():
    with pytest.raises(ValueError, match="2 values but there are 3"):
        P.classwise_ece_bars({"coop": [0.1, 0.2]}, ["a", "b", "c"])
    with pytest.raises(ValueError, match="unique"):
        P.classwise_ece_bars({"coop": [0.1, 0.2]}, ["a", "a"])
    with pytest.raises(ValueError, match="non-empty list"):
        P.classwise_ece_bars({"coop": []}, [])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        P.classwise_ece_bars({"coop": [5.0, 0.2]}, ["a", "b"])
    with pytest.raises(ValueError, match="list of str"):
        P.classwise_ece_bars({"coop": [0.1]}, "a")


# ---------------------------------------------------------------------------
# All figures
# ---------------------------------------------------------------------------


def all_figures(reports):
    p, y = random_probs(9)
    conf = p.max(axis=1)
    return [
        P.reliability_diagram(reports["coop"]["reliability"], ece=reports["coop"]["ece"]),
        P.reliability_grid(reports),
        P.reliability_overlay(reports),
        P.confidence_histogram({"coop": conf}),
        P.confidence_histogram({"coop": conf}, correct={"coop": p.argmax(1) == y}),
        P.loss_curve([(1, 0.3)]),
        P.loss_curve([]),
        P.classwise_ece_bars({"coop": [0.1, 0.2]}, ["a", "b"]),
    ]


def test_common_style_and_determinism(reports):
    first, second = all_figures(reports), all_figures(reports)
    for a, b in zip(first, second):
        assert isinstance(a, go.Figure)
        assert a.to_json() == b.to_json()  # deterministic
        assert a.layout.template == pio.templates["plotly_white"]
        assert 360 <= a.layout.height <= 420 or a is first[1]
        assert a.layout.font.size >= 12
        assert_serialises(a)


def test_inputs_are_not_modified(reports):
    rel = json.loads(json.dumps(reports["coop"]["reliability"]))
    conf = np.array([0.3, 0.8, 1.0])
    before = conf.copy()
    P.reliability_diagram(rel)
    P.confidence_histogram({"a": conf})
    assert rel == reports["coop"]["reliability"]
    np.testing.assert_array_equal(conf, before)


def test_module_does_not_import_gradio():
    tree = ast.parse(Path(P.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "gradio" not in imported


def test_png_render_if_kaleido_installed(reports):
    pytest.importorskip("kaleido")
    fig = P.reliability_diagram(reports["coop"], title="CoOp")
    try:
        png = fig.to_image(format="png", width=600, height=400)
    except Exception as exc:  # kaleido present but no browser to drive
        pytest.skip(f"kaleido cannot render here: {exc}")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------
# Bin counts, sparse bins
# ---------------------------------------------------------------------------


def test_counts_are_legible_and_sit_above_the_bars(reports):
    rel = reports["coop"]["reliability"]
    fig = P.reliability_diagram(rel)
    counts = only(fig, "Samples per bin (n)")
    idx, centres, _ = nonempty_bins(rel)
    tops = [max(rel["accuracy"][i], rel["confidence"][i]) for i in idx]
    assert counts.textfont.size >= 11
    assert counts.textposition == "top center"  # above the point, never inside the bar
    np.testing.assert_allclose(counts.y, tops)  # the top of the accuracy and gap bars
    # the axis leaves room above 100 % for the text of a full bar (>= 1.5 text heights)
    plot_height = P.FIGURE_HEIGHT - fig.layout.margin.t - fig.layout.margin.b
    assert (P.RELIABILITY_Y_TOP - 1.0) / P.RELIABILITY_Y_TOP * plot_height >= 1.5 * counts.textfont.size
    assert P._count_text(9999) == "9999" and P._count_text(12345) == "12k"


def test_bins_with_few_samples_are_veiled_and_named_in_the_hover():
    rel = {
        "edges": [0.0, 0.25, 0.5, 0.75, 1.0],
        "counts": [0, 3, 40, 12],
        "accuracy": [None, 1.0, 0.5, 0.75],
        "confidence": [None, 0.4, 0.6, 0.9],
    }
    fig = P.reliability_diagram(rel)  # default min_count = 10
    veil = only(fig, "n < 10: too few samples")
    assert veil.type == "bar" and list(veil.x) == [0.375] and list(veil.y) == [1.0] and list(veil.base) == [0.0]
    assert "rgba(255, 255, 255" in veil.marker.color and veil.marker.pattern.shape == "x"
    assert "Only 3 samples (fewer than 10)" in veil.hovertext[0]
    hover = only(fig, "Accuracy").hovertext
    assert "fewer than 10" in hover[0] and not any("fewer than" in h for h in hover[1:])
    names = [t.name for t in fig.data]
    assert names.index("n < 10: too few samples") < names.index("Samples per bin (n)")  # counts drawn on top

    fig = P.reliability_diagram(rel, min_count=20)
    assert list(only(fig, "n < 20: too few samples").x) == [0.375, 0.875]
    fig = P.reliability_diagram(rel, min_count=0)
    assert not any("too few" in t.name for t in fig.data)
    assert not any("fewer than" in h for h in only(fig, "Accuracy").hovertext)
    for bad in (-1, 2.5, "10"):
        with pytest.raises(ValueError, match="min_count"):
            P.reliability_diagram(rel, min_count=bad)
    assert_serialises(fig)


def test_few_sample_marking_in_grid_and_overlay(reports):
    fig = P.reliability_grid(reports, min_count=50)
    veils = [t for t in fig.data if t.name == "n < 50: too few samples"]
    assert veils and sum(t.showlegend is not False for t in veils) == 1  # one legend entry
    for t in veils:
        axis = t.xaxis
        name = list(reports)[0 if axis == "x" else int(axis[1:]) - 1]
        rel = reports[name]["reliability"]
        idx, centres, _ = nonempty_bins(rel)
        expected = [c for i, c in zip(idx, centres) if rel["counts"][i] < 50]
        np.testing.assert_allclose(t.x, expected)
    fig = P.reliability_overlay(reports, min_count=50)
    mark = fig.data[-1]
    assert mark.name == "n < 50: too few samples" and mark.mode == "markers"
    n_few = sum(1 for r in reports.values() for c in r["reliability"]["counts"] if 0 < c < 50)
    assert len(mark.x) == n_few and all("fewer than 50" in h for h in mark.hovertext)
    assert len(fig.data) == len(reports) + 2
    assert_serialises(fig)


# ---------------------------------------------------------------------------
# Grid rows: raw and temperature-scaled never mixed
# ---------------------------------------------------------------------------


def panel_of(fig: go.Figure, name: str) -> tuple[int, int]:
    """(row, col) of the panel whose title names ``name``."""
    grid = fig._get_subplot_rows_columns()
    titles = {a.text.split("</b>")[0][3:]: (a.x, a.y) for a in fig.layout.annotations}
    x, y = titles[name]
    for r in grid[0]:
        for c in grid[1]:
            sp = fig.get_subplot(r, c)
            if sp is not None and sp.xaxis.domain[0] <= x <= sp.xaxis.domain[1] and abs(y - sp.yaxis.domain[1]) < 1e-9:
                return r, c
    raise AssertionError(name)


def test_grid_puts_ts_methods_in_their_own_row_under_their_raw_ones(reports):
    five = {
        "zero-shot": reports["zero-shot"], "coop": reports["coop"], "calibprompt": reports["calibprompt"],
        "coop + TS": reports["coop"], "calibprompt + TS": reports["calibprompt"],
    }
    fig = P.reliability_grid(five)
    assert panel_of(fig, "zero-shot") == (1, 1)
    assert panel_of(fig, "coop") == (1, 2) and panel_of(fig, "coop + TS") == (2, 2)
    assert panel_of(fig, "calibprompt") == (1, 3) and panel_of(fig, "calibprompt + TS") == (2, 3)
    assert fig.get_subplot(2, 1) is None  # blank: zero-shot has no TS counterpart
    assert fig.layout.height == P._GRID_EXTRA_HEIGHT + 2 * P._GRID_ROW_HEIGHT
    # every panel draws its own method's bars on its own axes, square-anchored to them
    for name in five:
        r, c = panel_of(fig, name)
        sp = fig.get_subplot(r, c)
        axis = "x" + sp.xaxis.plotly_name[len("xaxis"):]
        (bars,) = [t for t in fig.data if t.xaxis == axis and t.name == "Accuracy"]
        assert bars.marker.color == P.method_colours(five)[name]
        assert sp.yaxis.scaleanchor == axis
    assert_serialises(fig)

    # an unmatched TS method gets its own column; the order of the input does not matter
    mixed = {"coop + TS": reports["coop"], "ls": reports["ls"], "mdca + TS": reports["coop"], "coop": reports["coop"]}
    fig = P.reliability_grid(mixed, n_cols=4)
    assert panel_of(fig, "ls") == (1, 1) and panel_of(fig, "coop") == (1, 2)
    assert panel_of(fig, "coop + TS") == (2, 2) and panel_of(fig, "mdca + TS") == (2, 3)
    assert fig.get_subplot(1, 3) is None and fig.get_subplot(2, 1) is None


def test_grid_wraps_pairs_of_rows_and_never_mixes_kinds(reports):
    raw = {f"m{i}": reports["coop"] for i in range(4)}
    both = {**raw, **{f"m{i} + TS": reports["coop"] for i in range(4)}}
    fig = P.reliability_grid(both, n_cols=3)
    rows: dict[int, set[bool]] = {}
    for name in both:
        r, c = panel_of(fig, name)
        rows.setdefault(r, set()).add(name.endswith(" + TS"))
        if not name.endswith(" + TS"):
            assert panel_of(fig, name + " + TS") == (r + 1, c)
    assert all(len(kinds) == 1 for kinds in rows.values())  # each row one kind
    assert sorted(rows) == [1, 2, 3, 4]
    assert fig.layout.height == P._GRID_EXTRA_HEIGHT + 4 * P._GRID_ROW_HEIGHT


def test_grid_explicit_rows(reports):
    fig = P.reliability_grid(reports, rows=[["coop", None, "ls"], ["zero-shot"], ["calibprompt"]])
    assert panel_of(fig, "coop") == (1, 1) and panel_of(fig, "ls") == (1, 3)
    assert panel_of(fig, "zero-shot") == (2, 1) and panel_of(fig, "calibprompt") == (3, 1)
    assert fig.get_subplot(1, 2) is None and fig.get_subplot(2, 2) is None
    for rows, message in (
        ([["coop", "nope"]], "not a method"),
        ([["coop", "coop"], ["ls", "zero-shot", "calibprompt"]], "more than once"),
        ([["coop", "ls"]], "leaves out"),
        ("coop", "list of rows"),
        ([[]], "non-empty list"),
    ):
        with pytest.raises(ValueError, match=message):
            P.reliability_grid(reports, rows=rows)


# ---------------------------------------------------------------------------
# Figures out: files and HTML
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Skip the export tests only when kaleido cannot start a browser here at all."""
    kaleido = pytest.importorskip("kaleido", reason="kaleido is not installed (it is a dependency: pip install kaleido)")
    path = P._browser_path(None)
    try:
        kaleido.calc_fig_sync(go.Figure(), opts=dict(format="svg", width=50, height=50), kopts={"path": path} if path else {})
    except Exception as exc:
        pytest.skip(f"kaleido cannot start a Chrome-family browser here (tried {path or 'its default search'}): {exc}")
    return path


def test_browser_path_prefers_argument_then_env_then_debian_chromium(monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/opt/chrome/chrome")
    assert P._browser_path("/x/chromium") == "/x/chromium"
    assert P._browser_path(None) == "/opt/chrome/chrome"
    monkeypatch.delenv("BROWSER_PATH")
    expected = P.DEBIAN_CHROMIUM if Path(P.DEBIAN_CHROMIUM).is_file() else None
    assert P._browser_path(None) == expected


def test_export_png_of_a_reliability_diagram(reports, browser, tmp_path):
    fig = P.reliability_diagram(reports["coop"], title="CoOp")
    out = P.export_figure(fig, tmp_path / "sub" / "coop.PNG")
    assert out == tmp_path / "sub" / "coop.PNG" and isinstance(out, Path)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1024
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (2 * 700, 2 * P.FIGURE_HEIGHT)  # scale 2 by default


def test_export_svg_and_pdf(reports, browser, tmp_path):
    fig = P.reliability_grid(reports)
    svg = P.export_figure(fig, tmp_path / "grid.svg").read_text()
    assert svg.lstrip().startswith("<svg") and "</svg>" in svg and "coop" in svg
    pdf = P.export_figure(fig, str(tmp_path / "grid.pdf"), width=900).read_bytes()
    assert pdf[:5] == b"%PDF-" and len(pdf) > 1024


def test_export_validation(reports, tmp_path):
    fig = P.reliability_diagram(reports["coop"])
    with pytest.raises(ValueError, match=r"\['.pdf', '.png', '.svg'\]"):
        P.export_figure(fig, tmp_path / "coop.jpg")
    with pytest.raises(ValueError, match="Figure"):
        P.export_figure({"data": []}, tmp_path / "coop.png")
    with pytest.raises(ValueError, match="width"):
        P.export_figure(fig, tmp_path / "coop.png", width=0)
    assert not list(tmp_path.iterdir())
    assert P._export_width(fig) == 700 and P._export_width(P.reliability_grid(reports)) == 3 * 380


def test_figure_html_is_self_contained(reports):
    import pandas as pd
    from plotly.offline import get_plotlyjs

    figs = {"Reliability <all>": P.reliability_grid(reports), "Overlay": P.reliability_overlay(reports)}
    table = pd.DataFrame({"method": list(reports), "ECE": [r["ece"] for r in reports.values()]})
    by_class = pd.DataFrame({"covid": [0.1], "normal": [0.2]}, index=pd.Index(["coop"], name="method"))
    html = P.figure_html(figs, title="Study & results", tables={"Metrics": table, "Per class": by_class})
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert html.count(get_plotlyjs()) == 1  # plotly.js inlined once
    assert html.count("plotly.js v") == 1
    assert html.count("<script") == 1 + len(figs)  # the bundle + one newPlot per figure
    assert 'src="http' not in html  # nothing fetched from a CDN
    assert html.count('class="plotly-graph-div"') == 2 and 'id="figure-0"' in html and 'id="figure-1"' in html
    assert "<title>Study &amp; results</title>" in html and "<h2>Reliability &lt;all&gt;</h2>" in html
    assert html.count('<table class="dataframe calibprompt-table"') == 2
    for name in reports:
        assert f"<td>{name}</td>" in html
    assert f"{reports['coop']['ece']:.6f}"[:6] in html
    assert "<th>method</th>" in html and "<th>covid</th>" in html  # named index kept, range index dropped
    assert ">0<" not in html.split("Metrics")[1].split("</table>")[0]
    assert html == P.figure_html(figs, title="Study & results", tables={"Metrics": table, "Per class": by_class})

    only_tables = P.figure_html({}, tables={"Metrics": table})
    assert "<script" not in only_tables and "<table" in only_tables
    with pytest.raises(ValueError, match="both empty"):
        P.figure_html({})
    with pytest.raises(ValueError, match="Figure"):
        P.figure_html({"a": {"data": []}})
    with pytest.raises(ValueError, match="DataFrame"):
        P.figure_html(figs, tables={"t": [[1, 2]]})
    with pytest.raises(ValueError, match="title"):
        P.figure_html(figs, title=None)


# ---------------------------------------------------------------------------
# Phones and dark mode: one shared layout (plots._base_layout)
# ---------------------------------------------------------------------------


def every_figure(reports):
    """Every kind of figure the module draws, the risk-coverage curves included."""
    from calibprompt.evaluation.selective import risk_coverage

    p, y = random_probs(9)
    curves = {name: risk_coverage(p, y) for name in ("coop", "calibprompt")}
    return all_figures(reports) + [P.risk_coverage_curves(curves, 0.8)]


def luminance(colour: str) -> float:
    """WCAG relative luminance of a #rrggbb colour."""
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def axes_of(fig: go.Figure) -> list:
    return [fig.layout[key] for key in fig.layout if key.startswith(("xaxis", "yaxis"))]


def test_figures_are_transparent_with_lines_and_text_legible_on_light_and_dark(reports):
    for fig in every_figure(reports):
        layout = fig.layout
        assert layout.paper_bgcolor == P.TRANSPARENT and layout.plot_bgcolor == P.TRANSPARENT
        assert layout.legend.bgcolor == P.TRANSPARENT and layout.modebar.bgcolor == P.TRANSPARENT
        assert layout.font.color == P.TEXT_COLOUR  # drawn light by the app's CSS in dark mode
        for axis in axes_of(fig):
            assert axis.gridcolor == P.GRID_COLOUR and axis.linecolor == P.AXIS_LINE_COLOUR
        for note in layout.annotations:  # no white box left behind a note
            assert note.bgcolor in (None, P.NOTE_BACKGROUND)
    assert contrast(P.TEXT_COLOUR, "#ffffff") >= 7
    dark_block, white = "#27272a", "#ffffff"  # Gradio's dark block background (zinc 800), and white
    for colour in (P.DIAGONAL_COLOUR,):  # lines drawn on the transparent background: 3:1 on both
        assert contrast(colour, white) >= 3 and contrast(colour, dark_block) >= 3
    for rgba in (P.GRID_COLOUR, P.AXIS_LINE_COLOUR, P.NOTE_BACKGROUND):
        r, g, b, a = (float(v) for v in rgba[5:-1].split(","))
        assert r == g == b == 128 and 0 < a < 1  # mid grey, translucent: neither white nor black


def test_legends_sit_below_the_plot_horizontally(reports):
    for fig in every_figure(reports):
        legend = fig.layout.legend
        assert legend.orientation == "h"
        assert (legend.yref, legend.y, legend.yanchor) == ("container", 0.0, "bottom")
        assert (legend.x, legend.xanchor) == (0.0, "left")
        assert fig.layout.margin.l <= 60 and fig.layout.margin.r <= 20
        for note in fig.layout.annotations:  # nothing placed right of the axes (it would squeeze a phone's plot)
            assert note.xref not in ("paper",) or note.x <= 1.0


def test_numeric_axes_have_at_most_six_ticks_and_class_names_are_all_kept(reports):
    for fig in every_figure(reports):
        for axis in axes_of(fig):
            if axis.type == "category":
                continue
            assert axis.dtick is None and axis.tickmode == "auto"
            assert 0 < axis.nticks <= P.MAX_TICKS == 6
    names = ["adipose tissue", "normal colon mucosa", "colorectal adenocarcinoma epithelium"]
    fig = P.classwise_ece_bars({"coop": [0.1, 0.2, 0.3]}, names)
    assert fig.layout.xaxis.type == "category" and fig.layout.xaxis.nticks is None  # never thinned out
    assert list(fig.data[0].x) == names
    longest = len(names[-1])  # room under the bars for the longest name, slanted or (on a phone) upright
    assert fig.layout.height >= P.FIGURE_HEIGHT + 4 * longest
    assert fig.layout.meta["responsive"]["narrow"]["height"] >= P.FIGURE_HEIGHT + 7 * longest


def test_untitled_figures_have_no_title_object(reports):
    """Gradio reserves 100 px above any figure whose layout has a title, even an empty one."""
    assert "title" not in json.loads(P.reliability_grid(reports).to_json())["layout"]
    assert json.loads(P.reliability_diagram(reports["coop"], title="CoOp").to_json())["layout"]["title"]["text"] == "CoOp"


def test_every_figure_carries_a_narrow_layout_that_its_wide_one_undoes(reports):
    for fig in every_figure(reports):
        responsive = fig.layout.meta["responsive"]
        assert responsive["below"] >= P.NARROW_WIDTH  # a phone's plot (about 310 px) is always narrow
        narrow, wide = responsive["narrow"], responsive["wide"]
        assert set(narrow) == set(wide) and "height" in narrow
        assert narrow["height"] > wide["height"] == fig.layout.height  # room for the legend's rows
        for key, value in wide.items():  # "wide" is the figure as drawn
            assert P._layout_value(fig, key) == value
        assert json.loads(json.dumps(responsive)) == responsive  # plain JSON for the page's script


def test_a_grid_stacks_its_panels_on_a_phone(reports):
    fig = P.reliability_grid(reports, n_cols=3)
    assert fig.layout.meta["responsive"]["below"] == 3 * 240  # panels narrower than 240 px are stacked
    narrow = fig.layout.meta["responsive"]["narrow"]
    n = len(reports)
    x_domains = [v for k, v in narrow.items() if k.startswith("xaxis") and k.endswith(".domain")]
    y_domains = [v for k, v in narrow.items() if k.startswith("yaxis") and k.endswith(".domain")]
    assert len(x_domains) == len(y_domains) == n
    assert all(d == [0.0, 1.0] for d in x_domains)  # one full-width column
    for upper, lower in zip(y_domains, y_domains[1:]):  # top to bottom, never overlapping
        assert lower[1] < upper[0]
    plot_height = narrow["height"] - 200  # less margins, titles and the legend's rows: still >= 250 px a panel
    assert all((top - bottom) * plot_height >= 250 for bottom, top in y_domains)
    for i, (bottom, top) in enumerate(y_domains):  # each panel's title moves with it
        assert narrow[f"annotations[{i}].y"] == top and narrow[f"annotations[{i}].x"] == 0.5
    assert all(narrow[k] == "Accuracy" for k in narrow if k.endswith(".title.text") and k.startswith("yaxis"))
    single = P.reliability_grid({"coop": reports["coop"]})  # one panel: nothing to stack
    assert not any(k.endswith(".domain") for k in single.layout.meta["responsive"]["narrow"])


def test_long_titles_break_into_lines_on_a_phone(reports):
    from calibprompt.evaluation.selective import risk_coverage

    p, y = random_probs(9)
    fig = P.risk_coverage_curves({"coop": risk_coverage(p, y)}, 0.8)
    narrow = fig.layout.meta["responsive"]["narrow"]
    for key, most in (("title.text", 30), ("xaxis.title.text", 34)):
        lines = narrow[key].split("<br>")
        assert len(lines) >= 2 and all(len(line) <= most for line in lines)
        assert " ".join(lines) == P._layout_value(fig, key)  # the same words
    assert "title.text" not in P.reliability_diagram(reports["coop"], title="CoOp").layout.meta["responsive"]["narrow"]


def test_the_ece_note_sits_inside_the_axes(reports):
    (note,) = P.reliability_diagram(reports["coop"]).layout.annotations
    assert (note.xref, note.yref) == ("x domain", "y domain") and 0 <= note.x <= 1 and 0 <= note.y <= 1


def test_exports_are_painted_white_and_the_figure_is_left_transparent(reports):
    fig = P.reliability_grid(reports)
    white = P.on_white(fig)
    assert white.layout.paper_bgcolor == white.layout.plot_bgcolor == P.EXPORT_BACKGROUND == "#ffffff"
    assert fig.layout.paper_bgcolor == P.TRANSPARENT  # the original is untouched
    assert white.layout.font.color == P.TEXT_COLOUR


def test_exported_png_is_dark_text_on_white(reports, browser, tmp_path):
    from PIL import Image

    out = P.export_figure(P.reliability_diagram(reports["coop"], title="CoOp"), tmp_path / "coop.png")
    image = Image.open(out).convert("RGBA")
    assert image.getpixel((3, 3)) == (255, 255, 255, 255)  # an opaque white corner
    title = np.asarray(image.crop((0, 0, 200, 60)))[..., :3].astype(int)  # where the title's text is
    darkest = int(title.sum(axis=-1).min())
    assert darkest < 3 * 80
