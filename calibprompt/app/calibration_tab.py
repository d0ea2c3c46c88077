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

    @handler
    def run(state, dataset, heads, bins, scaling, layout_choice, request: gr.Request):
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
        return text, diagram, plots.confidence_histogram(confidences), metrics_table(reports), bars

    button.click(run, [shared.state, dataset, shared.prompts, n_bins, ts, layout],
                 [note, reliability, histogram, metrics, classwise], api_visibility="private")
    return {"datasets": [dataset]}
