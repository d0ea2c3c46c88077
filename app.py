"""CalibPrompt web app: can I trust this model's confidence?

    python app.py [--model auto|NAME] [--host 127.0.0.1] [--port 7860] [--share] [--data-dir DIR]

A thin layer over ``calibprompt``: :func:`build_demo` draws the widgets around a
:class:`calibprompt.workspace.Workspace` (model, task, prompts, jobs, calibration, review) and the app
launches only when run as a script.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from calibprompt import plots
from calibprompt.workspace import DEFAULT_HEADS, DISCLAIMER, Workspace, choose_backbone

logger = logging.getLogger("calibprompt.app")

MAX_UPLOAD = "25mb"
DEVICES = ["auto", "cuda", "mps", "cpu"]


def _errors(fn):
    """Run a handler; turn the core's ValueErrors into a message for the user (the server keeps serving)."""

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            raise gr.Error(str(exc)) from exc

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _paths(files) -> list[str]:
    if not files:
        return []
    files = files if isinstance(files, list) else [files]
    return [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files]


def _percent(p: float) -> str:
    return f"{100 * p:.1f} %"


def _progress_html(status: dict[str, Any]) -> str:
    step = status.get("step") or {}
    fraction = step.get("global_step", 0) / max(step.get("total_steps", 1), 1)
    state = status.get("status", "")
    if state == "queued":
        position = status.get("position")
        text = f"Queued: {position} job(s) ahead on this device." if position else "Queued."
    elif step:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in step.get("parts", {}).items())
        text = (f"{state}: epoch {step['epoch']}/{step['epochs']}, step {step['global_step']}/{step['total_steps']}, "
                f"loss {step['loss']:.3f} ({parts}), lr {step['lr']:.1e}, ETA {step['eta']:.0f} s")
    else:
        text = f"{state}…" if state in ("running",) else state
    if status.get("error"):
        text += f" — {status['error']}"
    return (f"<div class='cp-progress'><div style='background:#e5e7eb;border-radius:6px;height:14px'>"
            f"<div style='width:{100 * fraction:.1f}%;background:#2563eb;height:14px;border-radius:6px'></div></div>"
            f"<p>{text}</p></div>")


def build_demo(workspace: Workspace | None = None) -> gr.Blocks:
    """The interface: Compare, Train, Calibration and Review tabs over one :class:`Workspace`."""
    ws = workspace or Workspace()

    # ----------------------------------------------------------------- handlers
    @_errors
    def load_model(name, progress=gr.Progress()):
        progress(0.1, desc=f"Loading {name}…")
        banner = ws.switch_model(name)
        progress(1.0)
        return (gr.update(value=f"**{banner}**"), gr.update(value=ws.task.name),
                gr.update(choices=ws.prompt_choices(), value=[h for h in DEFAULT_HEADS if h in ws.engine.heads]))

    @_errors
    def change_task(task_name, typed):
        if typed and typed.strip():
            ws.set_task([c for c in typed.split(",") if c.strip()])
        else:
            ws.set_task(task_name)
        choices = ws.prompt_choices()
        return gr.update(choices=choices, value=[h for h in DEFAULT_HEADS if h in choices]), f"Task: **{ws.task.name}** — classes: {', '.join(ws.task.display_names)}"

    @_errors
    def run_compare(files, sample, heads):
        images = _paths(files) + ([sample] if sample else [])
        results = ws.compare(images, heads or ())
        rows, flags = [], []
        for path, result in zip(images, results):
            name = Path(path).name
            for head, probs in result.probs.items():
                top, p = result.top[head]
                rows.append({"image": name, "method": head, "prediction": top, "confidence": _percent(p),
                             **{c: round(v, 4) for c, v in probs.items()}})
            if result.flag:
                flags.append(f"⚠️ **{name}**: {result.flag}")
        first = results[0].probs
        labels = [gr.update(value=first.get(h), label=h if h in first else f"{h} (no prompt for this task)")
                  for h in DEFAULT_HEADS]
        summary = "\n\n".join(flags) or "No method is highly confident while the methods disagree."
        return (*labels, pd.DataFrame(rows), summary)

    def api_compare(image):
        """One image in; ``{method: {class: probability}}`` out for the zero-shot, CoOp and CalibPrompt heads."""
        try:
            return ws.compare_api(_paths(image)[0] if image else None)
        except (ValueError, IndexError) as exc:
            raise gr.Error(str(exc) or "Upload an image first.") from exc

    @_errors
    def use_upload(zip_file):
        choice = ws.upload_dataset(_paths(zip_file)[0] if zip_file else None)
        return gr.update(choices=ws.dataset_choices(), value=choice)

    @_errors
    def method_defaults(method):
        params = ws.method_defaults(method, ws.task, ws.backbone.family)
        return (gr.update(value=params.get("alpha"), interactive="alpha" in params),
                gr.update(value=params.get("beta"), interactive="beta" in params))

    @_errors
    def start_job(dataset, method, shots, seed, epochs, alpha, beta, device):
        run_id = ws.start_training(dataset, method=method, shots=int(shots), seed=int(seed), epochs=int(epochs),
                                   alpha=alpha, beta=beta, device=device)
        return run_id, _progress_html(ws.job_status(run_id)), gr.update(active=True), pd.DataFrame(ws.run_history())

    def poll_job(run_id):
        if not run_id:
            return gr.update(), gr.update(), gr.update(active=False), gr.update(), gr.update()
        status = ws.job_status(run_id)
        over = status["status"] not in ("queued", "running")
        # the store is read again only when the job ends, not on every tick
        history = pd.DataFrame(ws.run_history()) if over else gr.update()
        prompts = gr.update(choices=ws.prompt_choices()) if over else gr.update()
        return (_progress_html(status), plots.loss_curve(status.get("losses") or []), gr.update(active=not over),
                history, prompts)

    @_errors
    def cancel_job(run_id):
        if not run_id or not ws.cancel(run_id):
            raise gr.Error("There is no queued or running job to cancel.")
        return _progress_html(ws.job_status(run_id))

    @_errors
    def run_calibration(dataset, heads, n_bins, ts, layout):
        reports = ws.calibration(dataset, heads or (), n_bins=int(n_bins), temperature_scaling=bool(ts))
        shown = {k: v for k, v in reports.items() if bool(ts) or not k.endswith("+ TS")}
        diagram = plots.reliability_overlay(shown) if layout == "overlaid" else plots.reliability_grid(shown)
        ev = ws.evaluate(dataset, heads or ())
        confidences = {h: ev.probs[h].max(axis=1) for h in ev.probs if h in reports}
        rows = []
        for name, r in reports.items():
            iv = r.get("intervals") or {}
            row = {"method": name}
            for key in ("accuracy", "ece", "mce", "ace", "nll", "brier"):
                value = r[key]
                lo, hi = iv.get(key, (None, None)) if iv else (None, None)
                scale = 100 if key in ("accuracy", "ece", "mce", "ace") else 1
                row[key] = f"{scale * value:.2f}" + (f" [{scale * lo:.2f}, {scale * hi:.2f}]" if lo is not None else "")
            row["mean conf."] = f"{100 * r['mean_confidence']:.1f}"
            if "temperature" in r:
                row["T"] = f"{r['temperature']:.2f}"
            rows.append(row)
        classwise = plots.classwise_ece_bars({k: v["classwise_ece"] for k, v in shown.items()}, ws.task.display_names)
        return diagram, plots.confidence_histogram(confidences), pd.DataFrame(rows), classwise

    @_errors
    def load_cases(dataset, heads, true_class, method, min_conf):
        cases = ws.review_cases(dataset, heads or (), true_class=true_class or None, method=method or None,
                                min_confidence=float(min_conf))
        gallery = [(c["path"], f"true {c['true']} · " + " · ".join(f"{h}: {p} {_percent(q)}"
                                                                     for h, (p, q) in c["predictions"].items()))
                   for c in cases]
        note = f"{len(cases)} confidently wrong case(s), most confident first." if cases else "No case matches."
        return gallery, cases, note

    def select_case(cases, evt: gr.SelectData):
        case = cases[evt.index]
        lines = [f"**True class:** {case['true']}"] + [f"- {h}: {p} ({_percent(q)})" for h, (p, q) in case["predictions"].items()]
        return case["path"], "\n".join(lines), gr.update(value=case["verdict"] or None), case["note"]

    @_errors
    def save_review(path, verdict, note):
        if not verdict:
            raise gr.Error("Choose agree, disagree or unsure.")
        ws.review(path, verdict, note)
        return f"Saved: {verdict} for {Path(path).name}."

    @_errors
    def export_reviews():
        return str(ws.export_reviews())

    # ----------------------------------------------------------------- layout
    samples = ws.sample_images()
    datasets = ws.dataset_choices()
    default_dataset = ws.task.name if ws.task.name in datasets else (datasets[0] if datasets else None)
    default_heads = [h for h in DEFAULT_HEADS if h in ws.engine.heads]
    with gr.Blocks(title="CalibPrompt") as demo:
        gr.Markdown("# CalibPrompt — can I trust this confidence?")
        gr.Markdown(f"⚕️ {DISCLAIMER}")
        with gr.Row():
            banner = gr.Markdown(f"**{ws.banner}**", elem_id="model-banner")
            model = gr.Dropdown(ws.model_choices(), value=ws.backbone.name, label="Model", scale=0)
            load_button = gr.Button("Load model", scale=0)
        with gr.Row():
            task = gr.Dropdown(ws.task_choices(), value=ws.task.name, label="Task")
            typed = gr.Textbox(label="…or class names, comma-separated", placeholder="pneumonia, normal")
            prompts = gr.CheckboxGroup(ws.prompt_choices(), value=default_heads, label="Prompts to compare")
        task_info = gr.Markdown(f"Task: **{ws.task.name}** — classes: {', '.join(ws.task.display_names)}")

        with gr.Tab("Compare"):
            with gr.Row():
                with gr.Column(scale=1):
                    files = gr.File(label="Images (PNG, JPEG, TIFF, DICOM)", file_count="multiple",
                                    file_types=["image", ".dcm", ".dicom", ".tif", ".tiff"], elem_id="compare-files")
                    sample = gr.Dropdown([(f"{Path(p).name} ({c})", p) for p, c in samples], label="…or a sample image", value=None,
                                         elem_id="sample-picker")
                    gr.Gallery([(p, c) for p, c in samples], label="Sample images", columns=6, height=180,
                               allow_preview=False)
                    compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
                with gr.Column(scale=2):
                    flag = gr.Markdown(elem_id="compare-flags")
                    with gr.Row():
                        head_labels = [gr.Label(num_top_classes=3, label=h, elem_id=f"label-{h}") for h in DEFAULT_HEADS]
                    table = gr.Dataframe(label="Probabilities per image and method", elem_id="compare-table")
            api_image = gr.File(visible=False)
            api_out = gr.JSON(visible=False)
            api_button = gr.Button(visible=False)

        with gr.Tab("Train"):
            with gr.Row():
                with gr.Column():
                    dataset = gr.Dropdown(datasets, value=default_dataset, label="Dataset", allow_custom_value=False,
                                          elem_id="train-dataset")
                    upload = gr.File(label="…or upload a zip (a folder per class, or train/ and test/)", file_types=[".zip"])
                    upload_button = gr.Button("Use uploaded zip")
                    method = gr.Dropdown(ws.methods(), value="calibprompt", label="Method")
                    with gr.Row():
                        shots = gr.Number(8, label="Shots per class", precision=0, minimum=1)
                        seed = gr.Number(1, label="Seed", precision=0, minimum=0)
                        epochs = gr.Number(50, label="Epochs", precision=0, minimum=1, elem_id="train-epochs")
                    defaults = ws.method_defaults("calibprompt", ws.task, ws.backbone.family)
                    with gr.Row():
                        alpha = gr.Number(defaults.get("alpha"), label="alpha (LS = SMAC)")
                        beta = gr.Number(defaults.get("beta"), label="beta (AS weight)")
                        device = gr.Dropdown(DEVICES, value="auto", label="Device")
                    with gr.Row():
                        start = gr.Button("Start training", variant="primary", elem_id="train-start")
                        cancel = gr.Button("Cancel", variant="stop")
                with gr.Column():
                    run_id = gr.Textbox(label="Run", interactive=False, elem_id="train-run")
                    progress_html = gr.HTML(elem_id="train-progress")
                    loss_plot = gr.Plot(label="Loss")
            history = gr.Dataframe(pd.DataFrame(ws.run_history()), label="Run history", elem_id="run-history")
            timer = gr.Timer(1.0, active=False)

        with gr.Tab("Calibration"):
            with gr.Row():
                cal_dataset = gr.Dropdown(datasets, value=default_dataset, label="Test set")
                n_bins = gr.Slider(5, 20, value=10, step=1, label="Bins")
                ts = gr.Checkbox(True, label="Temperature scaling (post hoc)")
                layout = gr.Radio(["side by side", "overlaid"], value="side by side", label="Diagrams")
                cal_button = gr.Button("Show calibration", variant="primary", elem_id="calibration-button")
            reliability = gr.Plot(label="Reliability diagrams", elem_id="reliability-plot")
            with gr.Row():
                histogram = gr.Plot(label="Confidence")
                classwise = gr.Plot(label="Per-class ECE")
            metrics = gr.Dataframe(label="Metrics (%; 95 % bootstrap intervals)", elem_id="calibration-metrics")

        with gr.Tab("Review"):
            with gr.Row():
                rev_dataset = gr.Dropdown(datasets, value=default_dataset, label="Test set")
                rev_class = gr.Dropdown([""] + ws.task.class_ids, value="", label="True class")
                rev_method = gr.Dropdown([""] + list(DEFAULT_HEADS), value="", label="Wrong method")
                min_conf = gr.Slider(0, 1, value=0.5, step=0.05, label="Minimum confidence")
                rev_button = gr.Button("Find confidently wrong cases", variant="primary")
            rev_note = gr.Markdown()
            cases_state = gr.State([])
            gallery = gr.Gallery(label="Cases", columns=6, height=420, allow_preview=True, elem_id="review-gallery")
            with gr.Row():
                case_path = gr.Textbox(label="Case", interactive=False)
                case_info = gr.Markdown()
                verdict = gr.Radio(["agree", "disagree", "unsure"], label="Your verdict on the model's answer")
                note = gr.Textbox(label="Note")
            with gr.Row():
                save = gr.Button("Save verdict")
                export = gr.Button("Export reviews (CSV)")
            saved = gr.Markdown()
            export_file = gr.File(label="Reviews CSV")

        # ----------------------------------------------------------------- events
        load_button.click(load_model, [model], [banner, task, prompts], concurrency_limit=1)
        task.change(change_task, [task, typed], [prompts, task_info])
        typed.submit(change_task, [task, typed], [prompts, task_info])
        compare_button.click(run_compare, [files, sample, prompts], [*head_labels, table, flag], api_name="compare_ui")
        api_button.click(api_compare, [api_image], [api_out], api_name="compare")
        upload_button.click(use_upload, [upload], [dataset])
        method.change(method_defaults, [method], [alpha, beta])
        start.click(start_job, [dataset, method, shots, seed, epochs, alpha, beta, device],
                    [run_id, progress_html, timer, history])
        timer.tick(poll_job, [run_id], [progress_html, loss_plot, timer, history, prompts])
        cancel.click(cancel_job, [run_id], [progress_html])
        cal_button.click(run_calibration, [cal_dataset, prompts, n_bins, ts, layout],
                         [reliability, histogram, metrics, classwise])
        rev_button.click(load_cases, [rev_dataset, prompts, rev_class, rev_method, min_conf], [gallery, cases_state, rev_note])
        gallery.select(select_case, [cases_state], [case_path, case_info, verdict, note])
        save.click(save_review, [case_path, verdict, note], [saved])
        export.click(export_reviews, None, [export_file])
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="CalibPrompt web app")
    parser.add_argument("--model", default="auto", help="auto (BiomedCLIP if available, else the demo model) or a backbone")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--data-dir", default=os.environ.get("CALIBPROMPT_HOME"),
                        help="where runs, caches and datasets live (default $CALIBPROMPT_HOME or ~/.calibprompt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.data_dir:
        os.environ["CALIBPROMPT_HOME"] = str(Path(args.data_dir).expanduser().resolve())
    from calibprompt.demo.bundle import SAMPLE_IMAGES_DIR
    from calibprompt.paths import data_dir

    backbone, banner = choose_backbone(args.model)
    demo = build_demo(Workspace(backbone, banner))
    demo.queue(default_concurrency_limit=4, max_size=64).launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_UPLOAD,
        allowed_paths=[str(data_dir()), str(SAMPLE_IMAGES_DIR)])


if __name__ == "__main__":
    main()
