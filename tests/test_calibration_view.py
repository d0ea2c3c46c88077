"""The Calibration tab's numbers as shown: the threshold table, the significance between any two prompts and
the HTML report of the current view (no model: hand-made predictions)."""
from __future__ import annotations

import html
import re
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from calibprompt.app import calibration_tab as tab
from calibprompt.evaluation import plots
from calibprompt.evaluation.metrics import calibration_report
from calibprompt.prompting.tasks import Task
from calibprompt.service import evaluation

# five images, two classes; "sure" is right on the first four, "unsure" on images 0, 2 and 4
LABELS = np.array([0, 1, 0, 1, 0])
SURE = np.array([[0.95, 0.05], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
UNSURE = np.array([[0.6, 0.4], [0.55, 0.45], [0.7, 0.3], [0.52, 0.48], [0.85, 0.15]])


def _ev(n_repeat: int = 1) -> evaluation.EvaluationSet:
    labels = np.tile(LABELS, n_repeat)
    n = len(labels)
    ev = evaluation.EvaluationSet("demo-binary", Path("/data"), Task.from_classnames(["normal", "tumour"]),
                                  [f"/data/{i}.png" for i in range(n)], [f"{i}.png" for i in range(n)], labels,
                                  excluded=2)
    ev.probs = {"calibprompt": np.tile(SURE, (n_repeat, 1)), "run:20261205-abc": np.tile(UNSURE, (n_repeat, 1))}
    ev.run_ids = {"calibprompt": "bundled-run-7", "run:20261205-abc": "20261205-abc"}
    return ev


def test_the_threshold_table_for_two_thresholds():
    ev = _ev()
    _, rows = evaluation.selective(ev, 0.5)
    table = tab.threshold_table(rows)
    sure = table[table["method"] == "calibprompt"].iloc[0]
    assert sure["refer below"] == "50 %" and sure["answered"] == "100.0 % (5 of 5)"
    assert sure["accuracy when answering"] == "80.0 %"
    _, rows = evaluation.selective(ev, 0.85)
    table = tab.threshold_table(rows)
    sure, unsure = table.iloc[0], table.iloc[1]
    assert sure["refer below"] == "85 %" and sure["answered"] == "40.0 % (2 of 5)"  # 0.95 and 0.9
    assert sure["accuracy when answering"] == "100.0 %"
    assert unsure["answered"] == "20.0 % (1 of 5)" and unsure["accuracy when answering"] == "100.0 %"  # only 0.85
    _, rows = evaluation.selective(ev, 0.99)
    assert tab.threshold_table(rows).iloc[0]["accuracy when answering"] == "—"  # nothing answered
    with pytest.raises(ValueError, match="from 0 to 1"):
        evaluation.selective(ev, 1.5)


def test_significance_between_any_two_prompts_and_the_default_pair():
    ev = _ev(40)
    assert evaluation.significance_pair(["zero-shot", "coop", "calibprompt"]) == ("calibprompt", "coop")
    assert evaluation.significance_pair(["zero-shot", "run:x"]) == ("zero-shot", "run:x")
    assert evaluation.significance_pair(["zero-shot"]) == ("zero-shot", None)
    found = evaluation.significance(ev, "calibprompt", "run:20261205-abc")
    assert found["accuracy"]["difference"] == pytest.approx(0.8 - 0.6)
    assert found["accuracy"]["n_boot"] == evaluation.SIGNIFICANCE_BOOT
    assert evaluation.significance(ev, "calibprompt", "coop") is None  # coop was not evaluated
    with pytest.raises(ValueError, match="two different"):
        evaluation.significance(ev, "calibprompt", "calibprompt")
    labels = {"run:20261205-abc": "<img src=x> *mine* (coop, seed 1)"}
    text = tab.significance_text(found, "calibprompt", "run:20261205-abc", labels)
    assert text.startswith("**CalibPrompt minus &lt;img src=x&gt; \\*mine\\*")  # a run's name is text, not markup
    assert "p < 0.001" in text or re.search(r"p = \d\.\d{3}", text)


def _kept(ev):
    reports = {h: calibration_report(p, ev.labels, n_bins=10) for h, p in ev.probs.items()}
    return {"figures": {"Reliability diagrams": plots.reliability_grid(reports)},
            "metrics": tab.metrics_table(reports), "estimators": tab.estimators_table(reports), "title": "t",
            "labels": {"run:20261205-abc": "Night <run> (coop, seed 1)"},
            "settings": {"model": "demo", "bins": 10, "scaling": True}}


def test_the_report_records_what_it_shows():
    ev = _ev(40)
    kept = _kept(ev)
    pair = ("calibprompt", "run:20261205-abc")
    found = evaluation.significance(ev, *pair)
    curves, rows = evaluation.selective(ev, 0.73)
    when = datetime(2026, 12, 5, 13, 30, tzinfo=timezone.utc)
    page = tab.report_html(kept, ev, 0.73, pair, found, curves, rows, now=when)
    details = re.search(r'<dl class="calibprompt-details">(.*?)</dl>', page, re.S).group(1)
    for expected in ("<dt>Model</dt><dd>demo</dd>", "<dd>demo-binary</dd>", "200 test images (2 left out",
                     "bundled-run-7", "20261205-abc", "2026-12-05 13:30 UTC", version("calibprompt"),
                     "10 bins", "refer below 73 % confidence", "80 %, 90 % coverage", "Night &lt;run&gt; (coop, seed 1)"):
        assert expected in details, expected
    difference = f"{100 * found['accuracy']['difference']:+.2f} points"
    p_text = html.escape(tab.format_p(found["accuracy"]["p_value"], found["accuracy"]["n_boot"]))
    assert difference in details and p_text in details  # "p &lt; 0.001" in the HTML source
    assert "<h2>Refer below 73 %</h2>" in page and "<h2>Significance (paired bootstrap)</h2>" in page
    assert "Night <run>" not in page  # escaped everywhere
    assert tab.PER_CLASS in page and tab.CLASSWISE in page
    later = tab.report_html(kept, ev, 0.9, pair, found, *evaluation.selective(ev, 0.9), now=when)
    assert "<h2>Refer below 90 %</h2>" in later and "refer below 90 % confidence" in later


def test_the_metrics_table_names_both_per_class_definitions():
    ev = _ev()
    report = calibration_report(ev.probs["calibprompt"], ev.labels, n_bins=10)
    report["card"] = {"per_class_ece_true": 0.123, "classwise_ece": 0.045}
    table = tab.estimators_table({"calibprompt": report, "calibprompt + TS": {"classwise_ece_mean": 0.02}})
    assert table.loc[0, tab.PER_CLASS] == "12.30" and table.loc[0, tab.CLASSWISE] == "4.50"
    assert table.loc[1, tab.PER_CLASS] == "—" and table.loc[1, tab.CLASSWISE] == "2.00"
    assert tab.PER_CLASS in tab.ESTIMATORS_LABEL and tab.CLASSWISE in tab.ESTIMATORS_LABEL


def test_figure_html_details_are_checked_and_escaped():
    import pandas as pd

    page = plots.figure_html({}, "t", {"x": pd.DataFrame({"a": [1]})}, details={"Run <b>": "x & <i>y</i>"})
    assert "<dt>Run &lt;b&gt;</dt><dd>x &amp; &lt;i&gt;y&lt;/i&gt;</dd>" in page
    with pytest.raises(ValueError, match="details"):
        plots.figure_html({}, "t", {"x": pd.DataFrame({"a": [1]})}, details={"n": 3})
