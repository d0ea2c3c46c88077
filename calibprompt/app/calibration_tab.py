"""The Calibration tab: reliability diagrams, confidence histograms, metrics with intervals, per-class
ECE and post-hoc temperature scaling, on the images none of the chosen prompts trained on."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from calibprompt import defaults
from calibprompt.app.common import handler, session_for
from calibprompt.evaluation import plots

PERCENT_KEYS = ("accuracy", "ece", "mce", "ace")


def metrics_table(reports: dict) -> pd.DataFrame:
    rows = []
    for name, r in reports.items():
        intervals = r.get("intervals") or {}
        row = {"method": name}
        for key in ("accuracy", "ece", "mce", "ace", "nll", "brier"):
            scale = 100 if key in PERCENT_KEYS else 1
            lo, hi = intervals.get(key, (None, None))
            row[key] = f"{scale * r[key]:.2f}" + (f" [{scale * lo:.2f}, {scale * hi:.2f}]" if lo is not None else "")
        row["mean conf."] = f"{100 * r['mean_confidence']:.1f}"
        if "temperature" in r:
            row["T"] = f"{r['temperature']:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def build(core, shared):
    datasets = core.dataset_choices()
    with gr.Tab("Calibration"):
        with gr.Row():
            dataset = gr.Dropdown(datasets, value=datasets[0] if datasets else None, label="Test set")
            n_bins = gr.Slider(5, 20, value=defaults.N_BINS, step=1, label="Bins")
            ts = gr.Checkbox(True, label="Temperature scaling (post hoc)")
            layout = gr.Radio(["side by side", "overlaid"], value="side by side", label="Diagrams")
            button = gr.Button("Show calibration", variant="primary", elem_id="calibration-button")
        note = gr.Markdown(elem_id="calibration-note")
        reliability = gr.Plot(label="Reliability diagrams", elem_id="reliability-plot")
        with gr.Row():
            histogram = gr.Plot(label="Confidence")
            classwise = gr.Plot(label="Per-class ECE")
        metrics = gr.Dataframe(label="Metrics (%; 95 % bootstrap intervals)", elem_id="calibration-metrics")
        with gr.Row():
            threshold = gr.Slider(0, 1, value=defaults.HIGH_CONFIDENCE, step=0.01, elem_id="threshold",
                                  label="Refer below this confidence (answer at or above it)")
        risk = gr.Plot(label="Risk-coverage", elem_id="risk-coverage-plot")
        selective = gr.Dataframe(label="What this threshold gives on these images", elem_id="threshold-table")
        evaluation = gr.State(None)

    @handler
    def run(state, dataset, heads, bins, scaling, layout_choice, cut, request: gr.Request):
        state = session_for(core, state, request)
        reports, ev = core.calibration(state, dataset, heads or state.prompts, n_bins=int(bins),
                                       temperature_scaling=bool(scaling))
        shown = {k: v for k, v in reports.items() if bool(scaling) or not k.endswith("+ TS")}
        diagram = plots.reliability_overlay(shown) if layout_choice == "overlaid" else plots.reliability_grid(shown)
        confidences = {h: ev.probs[h].max(axis=1) for h in ev.probs}
        bars = plots.classwise_ece_bars({k: v["classwise_ece"] for k, v in shown.items()}, ev.task.display_names)
        text = f"Evaluated on {ev.describe()}"
        if bool(scaling):
            text += " Temperature scaling: T fitted on one half of these images and applied to the other, both ways."
        text += " Advice on new images in Compare is now calibrated on this dataset."
        curves, rows = core.selective(ev, float(cut))
        state = state.with_(calibration_dataset=dataset)
        return (state, ev, text, diagram, plots.confidence_histogram(confidences), metrics_table(reports), bars,
                plots.risk_coverage_curves(curves, float(cut)), pd.DataFrame(rows))

    @handler
    def move_threshold(ev, cut):
        if ev is None:
            return gr.update(), gr.update()
        curves, rows = core.selective(ev, float(cut))
        return plots.risk_coverage_curves(curves, float(cut)), pd.DataFrame(rows)

    button.click(run, [shared.state, dataset, shared.prompts, n_bins, ts, layout, threshold],
                 [shared.state, evaluation, note, reliability, histogram, metrics, classwise, risk, selective],
                 api_visibility="private")
    threshold.release(move_threshold, [evaluation, threshold], [risk, selective], api_visibility="private")
    return {"datasets": [dataset]}
