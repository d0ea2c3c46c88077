"""The page as a contract: every element id the browser tests and the issues name is on the page once, every
event but the two public endpoints is private, and the tabs' HTML carries classes whose look is the theme's
CSS (no inline styles but a progress bar's width)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "calibprompt" / "app"

#: every element id on the page (header, then the Compare, Train, Calibration and Review tabs)
ELEMENT_IDS = {
    "identity", "app-title", "model-banner", "model", "load-model", "task", "typed-classes", "prompts", "task-info",
    "main-tabs",
    "compare-files", "sample-picker", "sample-gallery", "compare-coverage", "answer-with", "compare-test-time",
    "compare-button",
    "compare-preview", "compare-frame", "compare-advice", "compare-errors",
    "train-dataset", "train-upload", "train-upload-use", "train-name", "train-learner", "train-method",
    "train-epochs", "train-start",
    "train-cancel", "train-run", "train-progress", "train-words-button", "train-interpretation", "run-share-box",
    "run-share-id", "run-share", "run-unshare", "run-share-result", "run-history",
    "calibration-dataset", "calibration-bins", "calibration-ts", "calibration-calibrators", "calibration-layout",
    "calibration-button",
    "calibration-note", "reliability-plot", "confidence-plot", "classwise-plot", "calibration-metrics",
    "calibration-estimators", "calibration-compare-a", "calibration-compare-b", "calibration-significance",
    "threshold", "risk-coverage-plot", "threshold-table", "calibration-report", "calibration-export",
    "calibration-files",
    "reader", "review-dataset", "review-true-class", "review-wrong-method", "review-min-confidence", "review-filter",
    "review-referred", "review-blinded", "review-find", "review-summary", "review-page", "review-prev-page",
    "review-next-page", "review-gallery", "review-keys", "review-image", "review-case", "review-method",
    "review-verdict", "review-note", "review-agree", "review-disagree", "review-unsure", "review-prev", "review-next",
    "review-save", "review-saved", "review-progress", "review-agreement", "review-export", "dataset-share",
    "dataset-unshare", "dataset-share-result", "review-file", "review-adjudicate", "review-adjudication",
    "review-adjudication-gallery",
}


@pytest.fixture(scope="module")
def demo(demo_backbone, tmp_path_factory):
    import os

    from calibprompt.app import build_demo
    from calibprompt.service.core import Core

    previous = os.environ.get("CALIBPROMPT_HOME")
    os.environ["CALIBPROMPT_HOME"] = str(tmp_path_factory.mktemp("layout-home"))
    try:
        yield build_demo(Core(demo_backbone, "test banner"))
    finally:
        if previous is None:
            os.environ.pop("CALIBPROMPT_HOME", None)
        else:
            os.environ["CALIBPROMPT_HOME"] = previous


def test_every_element_id_is_on_the_page_once(demo):
    ids = [b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)]
    assert sorted(i for i in set(ids) if ids.count(i) > 1) == []
    assert set(ids) == ELEMENT_IDS


def test_only_compare_and_assess_are_public_events(demo):
    public = sorted(f.api_name for f in demo.fns.values() if f.api_visibility == "public")
    assert public == ["assess", "compare"]
    # the Compare tab's results are drawn by one gr.render, which Gradio registers as an event of its own
    rendered = [f for f in demo.fns.values() if f.api_name == "apply"]
    assert len(rendered) == 1 and rendered[0].api_visibility == "undocumented"
    rest = [f for f in demo.fns.values() if f.api_visibility != "public" and f not in rendered]
    assert len(rest) == len(demo.fns) - 3 and {f.api_visibility for f in rest} == {"private"}


def test_the_tabs_write_classes_not_inline_styles():
    found = {p.name: re.findall(r"style=|<style", p.read_text()) for p in APP.glob("*.py") if p.name != "theme.py"}
    # the one inline style left: a progress bar's width, which is the job's progress
    assert {k: v for k, v in found.items() if v} == {"train_tab.py": ["style="]}
    assert "cp-progress-fill' style='width:" in (APP / "train_tab.py").read_text()


def test_the_theme_styles_the_classes_the_tabs_write():
    from calibprompt.app.compare_view import VERDICT_TEXT, badge, placeholder_html
    from calibprompt.app.review_tab import KEYS_SCRIPT
    from calibprompt.app.theme import CSS, launch_kwargs
    from calibprompt.app.train_tab import progress_html

    for rule in (".cp-advice { min-height: 9em; }", "ul.cp-checks { list-style: none; padding-left: 0; }",
                 ".cp-badge { color: #ffffff;", ".cp-progress-track { background: #e5e7eb;",
                 ".cp-progress-fill { background: #2563eb;", "#review-image img {", ".cp-scroll {",
                 "#review-gallery .grid-container {"):
        assert rule in CSS
    for verdict, (_, colour) in VERDICT_TEXT.items():
        assert f'.cp-badge[data-verdict="{verdict}"] {{ background: {colour}; }}' in CSS
        assert badge(verdict) == f"<span class='cp-badge' data-verdict='{verdict}'>{VERDICT_TEXT[verdict][0]}</span>"
    assert "<div class='cp-advice'>" in placeholder_html() and "style" not in placeholder_html()
    assert "<style" not in KEYS_SCRIPT and launch_kwargs()["css"] == CSS
    bar = progress_html({"status": "running", "step": {"global_step": 1, "total_steps": 4, "epoch": 1, "epochs": 1,
                                                       "loss": 0.5, "lr": 1e-3, "eta": 3, "parts": {}}})
    assert "<div class='cp-progress-fill' style='width:25.0%'></div>" in bar and bar.count("style=") == 1
