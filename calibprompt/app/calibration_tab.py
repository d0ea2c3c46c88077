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
        card = r.get("card") or {}
        for key, label in (("kde_ece", "KDE-ECE"), ("smooth_ece", "smECE"), ("debiased_ece", "debiased ECE"),
                           ("per_class_ece_true", "per-class ECE")):
            if key in card:
                row[label] = f"{100 * card[key]:.2f}"
        if "temperature" in r:
            row["T"] = f"{r['temperature']:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def significance_text(core, ev) -> str:
    """Whether CalibPrompt's difference from CoOp on these images is real (paired bootstrap)."""
    found = core.significance(ev)
    if found is None:
        return "Choose both coop and calibprompt to test whether their difference is real."
    parts = []
    for metric, label in (("ece", "ECE"), ("accuracy", "accuracy")):
        r = found[metric]
        lo, hi = r["interval"]
        verdict = "a real difference" if r["significant"] else "not distinguishable from no difference"
        parts.append(f"{label} {100 * r['difference']:+.2f} points [{100 * lo:+.2f}, {100 * hi:+.2f}], "
                     f"p = {r['p_value']:.3f}: {verdict}")
    return ("**CalibPrompt minus CoOp** on the same images (paired bootstrap, 1000 resamples, 95 % interval): "
            + "; ".join(parts) + ".")


def _export_folder(root):
    import secrets

    folder = root / secrets.token_urlsafe(16)  # unguessable: served to this user only
    folder.mkdir(parents=True)
    return folder


def build(core, shared, export_dir):
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
        metrics = gr.Dataframe(label="Metrics (%; 95 % bootstrap intervals). KDE-ECE as the authors compute it, smECE (Blasiok & Nakkiran), debiased ECE (Kumar et al.), per-class ECE = mean top-label ECE within each true class", elem_id="calibration-metrics")
        significance = gr.Markdown(elem_id="calibration-significance")
        with gr.Row():
            threshold = gr.Slider(0, 1, value=defaults.HIGH_CONFIDENCE, step=0.01, elem_id="threshold",
                                  label="Refer below this confidence (answer at or above it)")
        risk = gr.Plot(label="Risk-coverage", elem_id="risk-coverage-plot")
        selective = gr.Dataframe(label="What this threshold gives on these images", elem_id="threshold-table")
        evaluation = gr.State(None)
        figures = gr.State(None)
        with gr.Row():
            export_report = gr.Button("Report (HTML: tables and interactive figures)", elem_id="calibration-report")
            export_images = gr.Button("Reliability diagram as PNG, SVG and PDF", elem_id="calibration-export")
        exported = gr.File(label="Exported files", file_count="multiple", elem_id="calibration-files")

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
        histogram_fig = plots.confidence_histogram(confidences)
        risk_fig = plots.risk_coverage_curves(curves, float(cut))
        table = metrics_table(reports)
        kept = {"figures": {"Reliability diagrams": diagram, "Confidence": histogram_fig, "Per-class ECE": bars,
                            "Risk-coverage": risk_fig},
                "tables": {"Metrics": table, "Refer threshold": pd.DataFrame(rows)}, "title": text}
        return (state, ev, kept, text, diagram, histogram_fig, table, bars, risk_fig, pd.DataFrame(rows),
                significance_text(core, ev))

    @handler
    def move_threshold(ev, cut):
        if ev is None:
            return gr.update(), gr.update()
        curves, rows = core.selective(ev, float(cut))
        return plots.risk_coverage_curves(curves, float(cut)), pd.DataFrame(rows)

    button.click(run, [shared.state, dataset, shared.prompts, n_bins, ts, layout, threshold],
                 [shared.state, evaluation, figures, note, reliability, histogram, metrics, classwise, risk, selective,
                  significance],
                 api_visibility="private")
    @handler
    def write_report(kept):
        if not kept:
            raise gr.Error("Show the calibration first.")
        folder = _export_folder(export_dir)
        path = folder / "calibration-report.html"
        path.write_text(plots.figure_html(kept["figures"], "CalibPrompt calibration report", kept["tables"]),
                        encoding="utf-8")
        return [str(path)]

    @handler
    def write_images(kept):
        if not kept:
            raise gr.Error("Show the calibration first.")
        folder = _export_folder(export_dir)
        return [str(plots.export_figure(kept["figures"]["Reliability diagrams"], folder / f"reliability.{kind}"))
                for kind in ("png", "svg", "pdf")]

    export_report.click(write_report, [figures], [exported], api_visibility="private")
    export_images.click(write_images, [figures], [exported], api_visibility="private")
    threshold.release(move_threshold, [evaluation, threshold], [risk, selective], api_visibility="private")
    return {"datasets": [dataset]}
