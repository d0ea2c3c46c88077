"""The Calibration tab: reliability diagrams, confidence histograms, metrics with intervals, per-class and
classwise ECE, post-hoc temperature scaling, a paired significance test between any two evaluated prompts,
and what referring below a confidence threshold gives, on the images none of the chosen prompts trained on.
The HTML report is made from what the tab shows at the moment (the current threshold and pair of prompts)."""
from __future__ import annotations

from datetime import datetime, timezone

import gradio as gr
import pandas as pd

from calibprompt import defaults
from calibprompt.app.common import escape_markdown, format_p, handler, percent, prompt_label, session_for
from calibprompt.evaluation import plots
from calibprompt.service.evaluation import SELECTIVE_COVERAGES, significance_pair

PERCENT_KEYS = ("accuracy", "ece", "mce", "ace")
PER_CLASS = "per-class ECE (top-label within true class, authors')"
CLASSWISE = "classwise ECE (Kull)"
METRICS_LABEL = ("Metrics in % (95 % bootstrap intervals; NLL and Brier score as they are; T: the fitted temperature; "
                 "fitted on: the labelled images each post-hoc map was fitted on)")
ESTIMATORS_LABEL = ("Other ECE estimates, in %: KDE-ECE as the authors compute it; smECE (Błasiok & Nakkiran); debiased "
                    f"ECE (Kumar et al.); {PER_CLASS}: the top-label ECE within each true class, averaged; {CLASSWISE}: "
                    "each class's probability against how often it is the true class, one-vs-rest, averaged (the "
                    "panel above shows it class by class)")
DISPLAY = {"calibprompt": "CalibPrompt", "coop": "CoOp", "zero-shot": "Zero-shot"}
#: the Calibration tab's other post-hoc calibrators: (label, registry name); DAC needs novel classes, TS has its box
POST_HOC = [("vector scaling", "vector"), ("Dirichlet (ODIR)", "dirichlet"), ("histogram binning", "histogram"),
            ("isotonic", "isotonic")]


def grid_rows(heads: list[str], reports: dict) -> list[list[str | None]]:
    """The reliability grid's layout: one column per prompt, one row per map (raw first, then each
    post-hoc calibrator in the order computed), a blank where a map was not computed."""
    suffixes = list(dict.fromkeys([""] + [name[len(h):] for name in reports for h in heads
                                          if name != h and name.startswith(h + " + ")]))
    rows = [[h + suffix if h + suffix in reports else None for h in heads] for suffix in suffixes]
    return [row for row in rows if any(cell is not None for cell in row)]


def metrics_table(reports: dict) -> pd.DataFrame:
    """Accuracy, ECE, MCE, ACE (in %), NLL and Brier with their bootstrap intervals, per method."""
    rows = []
    for name, r in reports.items():
        intervals = r.get("intervals") or {}
        row = {"method": name}
        for key in ("accuracy", "ece", "mce", "ace", "nll", "brier"):
            scale = 100 if key in PERCENT_KEYS else 1
            lo, hi = intervals.get(key, (None, None))
            row[key] = f"{scale * r[key]:.2f}" + (f" [{scale * lo:.2f}, {scale * hi:.2f}]" if lo is not None else "")
        row["mean conf."] = f"{100 * r['mean_confidence']:.1f}"
        row["T"] = f"{r['temperature']:.2f}" if "temperature" in r else ""
        row["fitted on"] = f"{r['fitted_on']} images" if "fitted_on" in r else ""
        rows.append(row)
    return pd.DataFrame(rows)


def estimators_table(reports: dict) -> pd.DataFrame:
    """The other ECE estimates (in %), each column named by its definition; "—" where not computed."""
    rows = []
    for name, r in reports.items():
        card = r.get("card") or {}
        row = {"method": name}
        for key, label in (("kde_ece", "KDE-ECE"), ("smooth_ece", "smECE"), ("debiased_ece", "debiased ECE"),
                           ("per_class_ece_true", PER_CLASS)):
            row[label] = f"{100 * card[key]:.2f}" if key in card else "—"
        classwise = card.get("classwise_ece", r.get("classwise_ece_mean"))
        row[CLASSWISE] = f"{100 * classwise:.2f}" if classwise is not None else "—"
        rows.append(row)
    return pd.DataFrame(rows)


def threshold_table(rows: list[dict]) -> pd.DataFrame:
    """What refusing to answer below the threshold gives, per method (rows of ``Core.selective``), in %."""
    at = " / ".join(f"{100 * c:.0f} %" for c in SELECTIVE_COVERAGES)
    return pd.DataFrame([{
        "method": r["method"], "refer below": percent(r["threshold"], 0),
        "answered": f"{percent(r['answered'])} ({r['n_answered']} of {r['n']})",
        "accuracy when answering": percent(r["accuracy"]), "AURC": percent(r["aurc"], 2),
        f"accuracy at {at} coverage": " / ".join(percent(r["accuracy_at"][c]) for c in SELECTIVE_COVERAGES),
    } for r in rows])


def display_name(head: str, labels: dict[str, str] | None = None) -> str:
    """How a head is named in prose: CalibPrompt, CoOp, Zero-shot, or a run's label."""
    return DISPLAY.get(head) or (labels or {}).get(head) or head


def significance_rows(found: dict, a: str, b: str, labels: dict[str, str] | None = None) -> pd.DataFrame:
    """The paired test as a table (for the report): one row per metric."""
    rows = []
    for metric, label in (("ece", "ECE"), ("accuracy", "accuracy")):
        r = found[metric]
        lo, hi = r["interval"]
        rows.append({"metric": label, "A": display_name(a, labels), "B": display_name(b, labels),
                     "A (%)": f"{100 * r['value_a']:.2f}", "B (%)": f"{100 * r['value_b']:.2f}",
                     "A minus B (points)": f"{100 * r['difference']:+.2f}",
                     "95 % interval": f"[{100 * lo:+.2f}, {100 * hi:+.2f}]", "p": format_p(r["p_value"], r["n_boot"]),
                     "verdict": "a real difference" if r["significant"] else "not distinguishable from no difference"})
    return pd.DataFrame(rows)


def significance_sentence(found: dict, name_a: str, name_b: str, bold: bool = False) -> str:
    """One sentence of the paired test's results; ``bold`` puts Markdown emphasis on the names (which the
    caller has escaped)."""
    parts = []
    for metric, label in (("ece", "ECE"), ("accuracy", "accuracy")):
        r = found[metric]
        lo, hi = r["interval"]
        verdict = "a real difference" if r["significant"] else "not distinguishable from no difference"
        parts.append(f"{label} {100 * r['difference']:+.2f} points [{100 * lo:+.2f}, {100 * hi:+.2f}], "
                     f"{format_p(r['p_value'], r['n_boot'])}: {verdict}")
    subject = f"{name_a} minus {name_b}"
    return (f"{f'**{subject}**' if bold else subject} on the same images (paired bootstrap, "
            f"{found['ece']['n_boot']} resamples, 95 % interval): " + "; ".join(parts) + ".")


def significance_text(found: dict | None, a: str | None, b: str | None, labels: dict[str, str] | None = None) -> str:
    """Whether the difference between prompts ``a`` and ``b`` on these images is real (paired bootstrap),
    as Markdown (run names escaped)."""
    if found is None or not a or not b:
        return "Choose two evaluated prompts to test whether their difference on these images is real."
    return significance_sentence(found, *(escape_markdown(display_name(h, labels)) for h in (a, b)), bold=True)


def report_details(kept: dict, ev, threshold: float, pair: tuple[str | None, str | None], found: dict | None,
                   now: datetime | None = None) -> dict[str, str]:
    """What a report records about itself: model, task, dataset, images, prompts and their run ids, the
    settings, the significance result, the date and the package version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("calibprompt")
    except PackageNotFoundError:
        package = "unknown (not installed as a package)"
    labels = kept.get("labels") or {}
    settings = kept["settings"]
    runs = ", ".join(f"{display_name(h, labels)}: {ev.run_ids[h]}" for h in ev.probs if h in ev.run_ids)
    a, b = pair
    details = {
        "Model": settings["model"], "Task": ev.task.name, "Dataset": ev.dataset,
        "Images": f"{len(ev.paths)} test images" + (f" ({ev.excluded} left out: a chosen prompt trained on them)"
                                                     if ev.excluded else ""),
        "Prompts": ", ".join(display_name(h, labels) for h in ev.probs),
        "Run ids": runs or "none recorded",
        "Settings": (f"{settings['bins']} bins; temperature scaling {'on' if settings['scaling'] else 'off'}; "
                     + (f"post-hoc calibrators: {', '.join(settings['calibrators'])} (cross-fitted); "
                        if settings.get("calibrators") else "") +
                     f"refer below {percent(threshold, 0)} confidence; selective accuracy at "
                     + ", ".join(f"{100 * c:.0f} %" for c in SELECTIVE_COVERAGES) + " coverage; "
                     f"intervals: 95 % bootstrap ({defaults.N_BOOT_INTERACTIVE} resamples)"),
        "Significance": (significance_sentence(found, display_name(a, labels), display_name(b, labels))
                         if found is not None else "not computed (choose two different prompts)"),
        "Date": (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
        "CalibPrompt version": package,
    }
    return details


def report_html(kept: dict, ev, threshold: float, pair: tuple[str | None, str | None], found: dict | None,
                curves: dict, rows: list[dict], now: datetime | None = None) -> str:
    """The calibration report of the current view: the figures and tables shown, at ``threshold``."""
    figures = {**kept["figures"], "Risk-coverage": plots.risk_coverage_curves(curves, float(threshold))}
    tables = {"Metrics (%)": kept["metrics"], "Other ECE estimates (%)": kept["estimators"],
              f"Refer below {percent(threshold, 0)}": threshold_table(rows)}
    if found is not None:
        tables["Significance (paired bootstrap)"] = significance_rows(found, *pair, kept.get("labels"))
    return plots.figure_html(figures, "CalibPrompt calibration report", tables,
                             details=report_details(kept, ev, threshold, pair, found, now))


def _fraction(cut) -> float:
    """The threshold slider's percentage as a fraction (a clear error for an empty or odd value)."""
    try:
        value = float(cut)
    except (TypeError, ValueError):
        raise ValueError(f"The threshold must be a percentage from 0 to 100, got {cut!r}.") from None
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"The threshold must be a percentage from 0 to 100, got {cut}.")
    return value / 100.0


def _export_folder(root):
    import secrets

    folder = root / secrets.token_urlsafe(16)  # unguessable: served to this user only
    folder.mkdir(parents=True)
    return folder


def build(core, shared, export_dir):
    """The Calibration tab: its layout (:func:`_layout`), then its events (:func:`_wire`); exports go to fresh
    folders under ``export_dir``. Returns its dataset menu, which the page load fills for the owner."""
    with gr.Tab("Calibration"):
        ui = _layout(core.dataset_choices(None))  # shared datasets only; the page load adds the owner's uploads
    _wire(core, shared, ui, export_dir)
    return {"datasets": [ui["dataset"]]}


def _layout(datasets: list[str]) -> dict:
    """The tab's components by name, top to bottom: the settings row, the figures and tables, the paired
    test, the threshold and what it gives, the exports; and the states of the last evaluation
    (``evaluation``) and of what is shown (``figures``)."""
    ui = {}
    with gr.Row():
        ui["dataset"] = gr.Dropdown(datasets, value=datasets[0] if datasets else None, label="Test set",
                                    elem_id="calibration-dataset")
        ui["n_bins"] = gr.Slider(5, 20, value=defaults.N_BINS, step=1, label="Bins", elem_id="calibration-bins")
        ui["ts"] = gr.Checkbox(True, label="Temperature scaling (post hoc)", elem_id="calibration-ts")
        ui["calibrators"] = gr.CheckboxGroup(
            POST_HOC, value=[], label="More post-hoc calibrators", elem_id="calibration-calibrators",
            info="Each is fitted on one half of these labelled images and applied to the other, both ways.")
        ui["layout"] = gr.Radio(["side by side", "overlaid"], value="side by side", label="Diagrams",
                                elem_id="calibration-layout")
        ui["button"] = gr.Button("Show calibration", variant="primary", elem_id="calibration-button")
    ui["note"] = gr.Markdown(elem_id="calibration-note")
    ui["reliability"] = gr.Plot(label="Reliability diagrams", elem_id="reliability-plot")
    with gr.Row():
        ui["histogram"] = gr.Plot(label="Confidence", elem_id="confidence-plot")
        ui["classwise"] = gr.Plot(label="Classwise ECE (Kull)", elem_id="classwise-plot")
    ui["metrics"] = gr.Dataframe(label=METRICS_LABEL, elem_id="calibration-metrics")
    ui["estimators"] = gr.Dataframe(label=ESTIMATORS_LABEL, elem_id="calibration-estimators")
    with gr.Row():
        ui["first"] = gr.Dropdown([], label="Significance: prompt A", elem_id="calibration-compare-a")
        ui["second"] = gr.Dropdown([], label="minus prompt B", elem_id="calibration-compare-b")
    ui["significance"] = gr.Markdown(elem_id="calibration-significance")
    ui["threshold"] = gr.Slider(0, 100, value=round(100 * defaults.HIGH_CONFIDENCE), step=1, elem_id="threshold",
                                label="Refer below this confidence, in % (answer at or above it)")
    ui["risk"] = gr.Plot(label="Risk-coverage", elem_id="risk-coverage-plot")
    ui["selective"] = gr.Dataframe(label="What this threshold gives on these images (%)", elem_id="threshold-table")
    with gr.Row():
        ui["export_report"] = gr.Button("Report of this view (HTML: tables, interactive figures, settings)",
                                        elem_id="calibration-report")
        ui["export_images"] = gr.Button("Reliability diagram as PNG, SVG and PDF", elem_id="calibration-export")
    ui["exported"] = gr.File(label="Exported files", file_count="multiple", elem_id="calibration-files")
    ui["evaluation"] = gr.State(None)
    ui["figures"] = gr.State(None)
    return ui


def _wire(core, shared, ui: dict, export_dir) -> None:
    """The tab's events over its components (``ui``, from :func:`_layout`), every one private: show the
    calibration, test a pair of prompts, move the threshold, export."""
    run, compare_pair, move_threshold = _handlers(core)
    evaluation, figures, first, second, threshold = (ui[k] for k in ("evaluation", "figures", "first", "second",
                                                                    "threshold"))
    ui["button"].click(run, [shared.state, ui["dataset"], shared.prompts, ui["n_bins"], ui["ts"], ui["calibrators"],
                             ui["layout"], threshold],
                       [shared.state, evaluation, figures, ui["note"], ui["reliability"], ui["histogram"],
                        ui["metrics"], ui["estimators"], ui["classwise"], ui["risk"], ui["selective"], first, second,
                        ui["significance"]], api_visibility="private")
    for picker in (first, second):
        picker.input(compare_pair, [evaluation, figures, first, second], [ui["significance"]],
                     api_visibility="private")
    # .change: every new value, by dragging, clicking or the arrow keys (a slider's .release is the pointer only)
    threshold.change(move_threshold, [evaluation, threshold], [ui["risk"], ui["selective"]], api_visibility="private",
                     trigger_mode="always_last", show_progress="hidden")
    write_report, write_images = _export_handlers(core, export_dir)
    ui["export_report"].click(write_report, [evaluation, figures, threshold, first, second], [ui["exported"]],
                              api_visibility="private")
    ui["export_images"].click(write_images, [figures], [ui["exported"]], api_visibility="private")


def _handlers(core):
    """The handlers of showing the calibration (``run``), of the paired test between the chosen prompts
    (``compare_pair``) and of the threshold (``move_threshold``)."""

    @handler
    def run(state, dataset, heads, bins, scaling, calibrators, layout_choice, cut, request: gr.Request):
        state = session_for(core, state, request)
        reports, ev = core.calibration(state, dataset, heads or state.prompts, n_bins=bins,
                                       temperature_scaling=bool(scaling), calibrators=list(calibrators or []))
        shown = reports
        diagram = (plots.reliability_overlay(shown) if layout_choice == "overlaid"
                   else plots.reliability_grid(shown, rows=grid_rows(list(ev.probs), shown)))
        bars = plots.classwise_ece_bars({k: v["classwise_ece"] for k, v in shown.items()}, ev.task.display_names)
        text = f"Evaluated on {ev.describe()}"
        mapped = [r for r in reports.values() if "calibrator" in r]
        if mapped:
            text += (f" Post-hoc calibrators ({', '.join(dict.fromkeys(r['calibrator'] for r in mapped))}): each fitted "
                     f"on one half of these images (at least {min(r['fitted_on'] for r in mapped)}) and applied to the "
                     "other, both ways; they need labelled images like these.")
            changed = sorted({r["calibrator"] for r in mapped if r["argmax_changed"] > 0})
            if changed:
                text += f" {', '.join(changed)} changed some predicted classes, not only the confidence."
        elif scaling or calibrators:
            text += (f" No post-hoc calibrator was fitted: they need at least 4 labelled images (one half to fit, "
                     f"the other to measure), and these are {len(ev.labels)}.")
        text += " Advice on new images in Compare is now calibrated on this dataset."
        curves, rows = core.selective(ev, _fraction(cut))
        state = state.with_(calibration_dataset=dataset)
        histogram_fig = plots.confidence_histogram({h: ev.probs[h].max(axis=1) for h in ev.probs})
        table, others = metrics_table(reports), estimators_table(reports)
        labels = {o["value"]: prompt_label(o) for o in core.prompt_options(state)}
        kept = {"figures": {"Reliability diagrams": diagram, "Confidence": histogram_fig,
                            "Classwise ECE (Kull) per class": bars},
                "metrics": table, "estimators": others, "labels": labels, "title": text,
                "settings": {"model": state.model, "bins": int(bins), "scaling": bool(scaling),
                             "calibrators": list(calibrators or [])}}
        a, b = significance_pair(list(ev.probs))
        pairs = [(labels.get(h, h), h) for h in ev.probs]
        return (state, ev, kept, text, diagram, histogram_fig, table, others, bars,
                plots.risk_coverage_curves(curves, _fraction(cut)), threshold_table(rows),
                gr.update(choices=pairs, value=a), gr.update(choices=pairs, value=b),
                significance_text(core.significance(ev, a, b) if a and b else None, a, b, labels))

    @handler
    def compare_pair(ev, kept, a, b):
        if ev is None or not a or not b:
            return gr.update()
        if a == b:
            return "Choose two different prompts to compare."
        return significance_text(core.significance(ev, a, b), a, b, (kept or {}).get("labels"))

    @handler
    def move_threshold(ev, cut):
        if ev is None or cut is None:
            return gr.update(), gr.update()
        curves, rows = core.selective(ev, _fraction(cut))
        return plots.risk_coverage_curves(curves, _fraction(cut)), threshold_table(rows)

    return run, compare_pair, move_threshold


def _export_handlers(core, export_dir):
    """The report of the current view and the reliability diagram's image files, each in a fresh folder."""

    @handler
    def write_report(ev, kept, cut, a, b):
        if not kept or ev is None:
            raise gr.Error("Show the calibration first.")
        curves, rows = core.selective(ev, _fraction(cut))
        found = core.significance(ev, a, b) if a and b and a != b else None
        path = _export_folder(export_dir) / "calibration-report.html"
        path.write_text(report_html(kept, ev, _fraction(cut), (a, b), found, curves, rows), encoding="utf-8")
        return [str(path)]

    @handler
    def write_images(kept):
        if not kept:
            raise gr.Error("Show the calibration first.")
        folder = _export_folder(export_dir)
        return [str(plots.export_figure(kept["figures"]["Reliability diagrams"], folder / f"reliability.{kind}"))
                for kind in ("png", "svg", "pdf")]

    return write_report, write_images

