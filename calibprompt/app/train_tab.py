"""The Train tab: queue a few-shot prompt-tuning job, follow its progress (again after a reload: jobs belong
to the browser's identity, or to the logged-in user), cancel it, see the history."""
from __future__ import annotations

import html
import math

import gradio as gr
import pandas as pd

from calibprompt import defaults
from calibprompt.app.common import file_paths, handler, percent, prompt_update, session_for
from calibprompt.evaluation import plots

DEVICES = ["auto", "cuda", "mps", "cpu"]
ACTIVE = ("queued", "running")
# what a narrow screen shows first comes first: the status, the name and the results
HISTORY_COLUMNS = ["status", "name", "method", "accuracy", "ECE", "by", "run", "shots", "seed", "model", "task",
                   "created", "error"]


def _status_text(status: dict) -> str:
    step = status.get("step") or {}
    state = status.get("status", "")
    if state == "queued":
        position = status.get("position")
        return f"Queued: {position} job(s) ahead on this device." if position else "Queued: starting…"
    if step and state == "running":
        parts = ", ".join(f"{k} {v:.3f}" for k, v in step.get("parts", {}).items())
        return (f"running: epoch {step['epoch']}/{step['epochs']}, step {step['global_step']}/{step['total_steps']}, "
                f"loss {step['loss']:.3f} ({parts}), lr {step['lr']:.1e}, ETA {step['eta']:.0f} s")
    if state == "running":
        return "running: loading the model and the image features…"
    return {"interrupted": "interrupted (the server stopped while it ran)"}.get(state, state)  # done, cancelled, failed


def progress_html(status: dict, run_id: str = "") -> str:
    """The progress bar and a line of text; every value from a run (its id, its error) is escaped."""
    step = status.get("step") or {}
    done = status.get("status") == "done"
    fraction = 1.0 if done else step.get("global_step", 0) / max(step.get("total_steps", 1), 1)
    text = _status_text(status)
    if status.get("error"):
        text += f" — {status['error']}"
    label = f"Run {run_id}: " if run_id else ""
    return (f"<div class='cp-progress' role='progressbar' aria-valuemin='0' aria-valuemax='100' "
            f"aria-valuenow='{100 * fraction:.0f}'><div class='cp-progress-track' "
            f"style='background:#e5e7eb;border-radius:6px;height:14px'>"
            f"<div style='width:{100 * fraction:.1f}%;background:#2563eb;height:14px;border-radius:6px'></div></div>"
            f"<p>{html.escape(label + text)}</p></div>")


def history_frame(rows: list[dict]) -> pd.DataFrame:
    """The run history as shown: accuracy and ECE in % (one decimal), empty cells for what a run lacks."""
    shown = []
    for r in rows:
        shown.append({**{k: r.get(k, "") for k in HISTORY_COLUMNS},
                      "accuracy": "" if r.get("accuracy") is None else percent(r["accuracy"]),
                      "ECE": "" if r.get("ece") is None else percent(r["ece"])})
    return pd.DataFrame(shown, columns=HISTORY_COLUMNS)


def resume(core, state) -> tuple:
    """What a (re)loaded page shows of this owner's queued or running job: run id, progress, timer."""
    run_id = core.active_job(state)
    if run_id is None:
        return gr.update(), gr.update(), gr.update(active=False)
    return run_id, progress_html(core.job_status(run_id), run_id), gr.update(active=True)


def _settings(datasets, methods, params):
    dataset = gr.Dropdown(datasets, value=datasets[0] if datasets else None, label="Dataset", elem_id="train-dataset")
    upload = gr.File(label="…or upload a zip (a folder per class, or train/ and test/)", file_types=[".zip"], height=120,
                     elem_id="train-upload")
    upload_button = gr.Button("Use uploaded zip", elem_id="train-upload-use")
    name = gr.Textbox(label="Run name (optional, up to 80 characters)", max_length=80, elem_id="train-name",
                      placeholder="e.g. 16 shots, new alpha")
    method = gr.Dropdown(methods, value="calibprompt", label="Method", elem_id="train-method")
    with gr.Row():
        shots = gr.Number(defaults.SHOTS, label="Shots per class", precision=0, minimum=1)
        seed = gr.Number(defaults.SEED, label="Seed", precision=0, minimum=0)
        epochs = gr.Number(defaults.EPOCHS, label="Epochs (1–1000)", precision=0, minimum=1,
                           maximum=defaults.LIMITS["epochs"][1], elem_id="train-epochs")
    with gr.Row():
        alpha = gr.Number(params.get("alpha"), label="alpha (LS = SMAC), 0 ≤ α < 1")
        beta = gr.Number(params.get("beta"), label="beta (AS weight), 0–100")
        device = gr.Dropdown(DEVICES, value="auto", label="Device")
    return dataset, upload, upload_button, name, method, shots, seed, epochs, alpha, beta, device


def build(core, shared):
    datasets = core.dataset_choices(None)  # the page as built is everyone's: shared datasets only
    start_state = core.new_session()
    params = core.method_defaults(start_state, "calibprompt", core.model_family(start_state.model))
    with gr.Tab("Train"):
        with gr.Row():
            with gr.Column():
                dataset, upload, upload_button, name, method, shots, seed, epochs, alpha, beta, device = \
                    _settings(datasets, core.methods(), params)
                with gr.Row():
                    start = gr.Button("Start training", variant="primary", elem_id="train-start")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
            with gr.Column():
                run_id = gr.Textbox(label="Run (yours resumes here after a reload)", elem_id="train-run")
                progress = gr.HTML(elem_id="train-progress")
                loss_plot = gr.Plot(label="Loss")
                words_button = gr.Button("What the learned prompt says", elem_id="train-words-button")
                words = gr.Markdown(elem_id="train-interpretation")
        history = gr.Dataframe(history_frame([]), label="Run history (all users; 'you' marks your jobs; accuracy "
                               "and ECE in % on the run's test split)", elem_id="run-history")
        timer = gr.Timer(1.0, active=False)

    @handler
    def use_upload(state, zip_file, request: gr.Request):
        """Unpack the zip as this page's owner's own dataset (listed and opened for that owner only)."""
        state = session_for(core, state, request)
        choice = core.upload_dataset(file_paths(zip_file)[0] if zip_file else None, state.owner)
        return gr.update(choices=core.dataset_choices(state.owner), value=choice)

    @handler
    def method_defaults(state, method, request: gr.Request):
        state = session_for(core, state, request)
        values = core.method_defaults(state, method, core.model_family(state.model))
        return (gr.update(value=values.get("alpha"), interactive="alpha" in values),
                gr.update(value=values.get("beta"), interactive="beta" in values))

    @handler
    def start_job(state, dataset, run_name, method, shots, seed, epochs, alpha, beta, device, request: gr.Request):
        state = session_for(core, state, request)
        state, new_id = core.start_training(state, dataset, method=method, shots=_number(shots, "shots"),
                                            seed=_number(seed, "seed"), epochs=_number(epochs, "epochs"),
                                            alpha=alpha, beta=beta, device=device, name=run_name)
        return (state, new_id, progress_html(core.job_status(new_id), new_id), gr.update(active=True),
                history_frame(core.run_history(state)))

    @handler
    def poll_job(state, current, request: gr.Request):
        state = session_for(core, state, request)
        current = (current or "").strip()
        if not current:
            return gr.update(), gr.update(), gr.update(active=False), gr.update(), gr.update()
        status = core.job_status(current)
        over = status["status"] not in ACTIVE
        return (progress_html(status, current), plots.loss_curve(status.get("losses") or []), gr.update(active=not over),
                history_frame(core.run_history(state)) if over else gr.update(),
                prompt_update(core, state) if over else gr.update())

    @handler
    def cancel_job(state, current, request: gr.Request):
        state = session_for(core, state, request)
        current = (current or "").strip()
        if not current or not core.cancel(state, current):
            raise gr.Error("There is no queued or running job of yours to cancel.")
        return progress_html(core.job_status(current), current), history_frame(core.run_history(state))

    @handler
    def show_words(current):
        if not current:
            raise gr.Error("Start a job, or paste a finished run's id in the Run box, first.")
        return interpretation_markdown(core.interpret_run(current.strip()))

    words_button.click(show_words, [run_id], [words], api_visibility="private")
    uploaded = upload_button.click(use_upload, [shared.state, upload], [dataset], api_visibility="private")
    method.change(method_defaults, [shared.state, method], [alpha, beta], api_visibility="private")
    start.click(start_job, [shared.state, dataset, name, method, shots, seed, epochs, alpha, beta, device],
                [shared.state, run_id, progress, timer, history], api_visibility="private")
    timer.tick(poll_job, [shared.state, run_id], [progress, loss_plot, timer, history, shared.prompts],
               api_visibility="private")
    cancel.click(cancel_job, [shared.state, run_id], [progress, history], api_visibility="private")
    return {"datasets": [dataset], "history": history, "run": run_id, "progress": progress, "timer": timer,
            "upload": uploaded}


def interpretation_markdown(found: list[dict]) -> str:
    """The nearest vocabulary tokens of each learned context vector, as a Markdown table."""
    lines = ["Nearest vocabulary tokens of each learned context vector (Euclidean, as in CoOp); learned "
             "vectors need not be words, so distances far from 0 mean no word fits.", "",
             "| class | position | nearest tokens (distance) |", "|---|---|---|"]
    lines += [f"| {e['class'] or 'all'} | {e['position'] + 1} | "
              + ", ".join(f"`{t['token']}` ({t['distance']:.2f})" for t in e["tokens"]) + " |" for e in found]
    return "\n".join(lines)


def _number(value, name: str) -> int:
    if value is None or not math.isfinite(float(value)):
        raise ValueError(f"Enter a whole number for {name}.")
    if float(value) != int(value):
        raise ValueError(f"{name} must be a whole number, got {value}.")
    return int(value)
