"""The Train tab: queue a few-shot prompt-tuning job, follow its progress (again after a reload: jobs belong
to the browser's identity, or to the logged-in user), cancel it, see the history."""
from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from calibprompt import defaults
from calibprompt.app.common import alert_html, file_paths, handler, percent, prompt_update, run_label, session_for, username
from calibprompt.evaluation import plots

DEVICES = ["auto", "cuda", "mps", "cpu"]
ACTIVE = ("queued", "running")
# what a narrow screen shows first comes first: the status, the name and the results
HISTORY_COLUMNS = ["status", "name", "method", "accuracy", "ECE", "by", "shared", "run", "shots", "seed", "model",
                   "task", "created", "error"]


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
    """The progress bar and a line of text; every value from a run (its id, its error) is escaped. The bar's
    look is the theme's (``.cp-progress-track``, ``.cp-progress-fill``); only its width, the progress, is set here."""
    step = status.get("step") or {}
    done = status.get("status") == "done"
    fraction = 1.0 if done else step.get("global_step", 0) / max(step.get("total_steps", 1), 1)
    text = _status_text(status)
    if status.get("error"):
        text += f" — {status['error']}"
    label = f"Run {run_id}: " if run_id else ""
    return (f"<div class='cp-progress' role='progressbar' aria-valuemin='0' aria-valuemax='100' "
            f"aria-valuenow='{100 * fraction:.0f}'><div class='cp-progress-track'>"
            f"<div class='cp-progress-fill' style='width:{100 * fraction:.1f}%'></div></div>"
            f"<p>{html.escape(label + text)}</p></div>")


def history_frame(rows: list[dict]) -> pd.DataFrame:
    """The run history as shown: accuracy and ECE in % (one decimal), "yes" for a shared run, empty cells for
    what a run lacks."""
    shown = []
    for r in rows:
        shown.append({**{k: r.get(k, "") for k in HISTORY_COLUMNS},
                      "shared": "yes" if r.get("shared") else "",
                      "accuracy": "" if r.get("accuracy") is None else percent(r["accuracy"]),
                      "ECE": "" if r.get("ece") is None else percent(r["ece"])})
    return pd.DataFrame(shown, columns=HISTORY_COLUMNS)


def resume(core, state) -> tuple:
    """What a (re)loaded page shows of this owner's queued or running job: run id, progress, timer."""
    run_id = core.active_job(state)
    if run_id is None:
        return gr.update(), gr.update(), gr.update(active=False)
    return run_id, progress_html(core.job_status(state, run_id), run_id), gr.update(active=True)


def own_done_runs(rows: list[dict]) -> list[tuple[str, str]]:
    """``(label, run id)`` of this owner's finished runs in the history ``rows`` (those it can share); a shared
    one is marked as such. Labels are shown as text by the dropdown."""
    return [(run_label({"id": r["run"], "name": r.get("name"), "method": r.get("method"), "seed": r.get("seed")})
             + (" — shared" if r.get("shared") else ""), r["run"])
            for r in rows if r.get("by") == "you" and r.get("status") == "done"]


def share_box_update(core, state, request, current=None) -> tuple:
    """The sharing controls: shown to a logged-in user only (sharing needs a team), listing their finished runs."""
    if not username(request):
        return gr.update(visible=False), gr.update(choices=[], value=None)
    choices = own_done_runs(core.run_history(state))
    ids = [value for _, value in choices]
    return gr.update(visible=True), gr.update(choices=choices, value=current if current in ids else None)


def share_result_html(message: str) -> str:
    """The sharing result line; the message names the run as its owner typed it, so it is escaped."""
    return f"<p class='cp-share-result'>{html.escape(message)}</p>"


def build(core, shared):
    """The Train tab: its layout (:func:`_layout`), then its events (:func:`_wire`). Returns what the page's
    header wires: the dataset menu, the history, the run box, the progress, the timer and the upload event."""
    datasets = core.dataset_choices(None)  # the page as built is everyone's: shared datasets only
    start_state = core.new_session()
    params = core.method_defaults(start_state, "calibprompt", core.model_family(start_state.model))
    with gr.Tab("Train") as tab:
        ui = _layout(datasets, core.methods(), params, core.learners())
    return _wire(core, shared, tab, ui)


def _layout(datasets: list[str], methods: list[str], params: dict, learners: list[dict] = ()) -> dict:
    """The tab's components by name: the job's settings and its buttons on the left, the run, its progress,
    its loss, its words and the sharing controls on the right, the history below, and the progress timer.
    ``params``: the starting method's alpha and beta; ``learners``: the learners' descriptions
    (:func:`calibprompt.service.training.learners`)."""
    ui = {}
    with gr.Row():
        with gr.Column():
            ui.update(_settings(datasets, methods, params, learners))
            with gr.Row():
                ui["start"] = gr.Button("Start training", variant="primary", elem_id="train-start")
                ui["cancel"] = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
        with gr.Column():
            ui["run_id"] = gr.Textbox(label="Run (yours resumes here after a reload)", elem_id="train-run")
            ui["progress"] = gr.HTML(elem_id="train-progress")
            ui["loss_plot"] = gr.Plot(label="Loss")
            ui["words_button"] = gr.Button("What the learned prompt says", elem_id="train-words-button")
            ui["words"] = gr.Markdown(elem_id="train-interpretation")
            ui.update(_share_section())
    ui["history"] = gr.Dataframe(history_frame([]), elem_id="run-history",
                                 label="Run history (your runs and those shared with you; 'you' marks your jobs; "
                                       "accuracy and ECE in % on the run's test split)")
    ui["timer"] = gr.Timer(1.0, active=False)
    return ui


def _share_section() -> dict:
    """The "Share with team" controls (hidden until a logged-in user opens the tab)."""
    ui = {}
    with gr.Group(visible=False, elem_id="run-share-box") as ui["share_box"]:
        ui["share_id"] = gr.Dropdown([], value=None, label="Your finished run", elem_id="run-share-id")
        with gr.Row():
            ui["share"] = gr.Button("Share with team", elem_id="run-share")
            ui["unshare"] = gr.Button("Stop sharing", elem_id="run-unshare")
        ui["share_result"] = gr.HTML(elem_id="run-share-result")
    return ui


def learner_choices(learners: list[dict]) -> list[tuple[str, str]]:
    """The learner menu's ``(label, name)`` pairs: each learner's title and its one-line description."""
    return [(f"{info['title']}: {info['description']}" if info.get("description") else info["title"],
             info["name"]) for info in learners]


def _settings(datasets: list[str], methods: list[str], params: dict, learners: list[dict] = ()) -> dict:
    """The job's settings by name: dataset (or an uploaded zip), run name, learner, method, shots, seed,
    epochs, alpha, beta, device."""
    ui = {}
    ui["dataset"] = gr.Dropdown(datasets, value=datasets[0] if datasets else None, label="Dataset",
                                elem_id="train-dataset")
    ui["upload"] = gr.File(label="…or upload a zip (a folder per class, or train/ and test/)", file_types=[".zip"],
                           height=120, elem_id="train-upload")
    ui["upload_button"] = gr.Button("Use uploaded zip", elem_id="train-upload-use")
    ui["name"] = gr.Textbox(label=f"Run name (optional, up to {defaults.RUN_NAME_CHARS} characters)",
                            max_length=defaults.RUN_NAME_CHARS, elem_id="train-name",
                            placeholder="e.g. 16 shots, new alpha")
    choices = learner_choices(list(learners)) or [("CoOp", "coop")]
    ui["learner"] = gr.Dropdown(choices, value="coop", label="Learner", elem_id="train-learner",
                                info="What learns: prompts on the text side, or an adapter on image features")
    ui["method"] = gr.Dropdown(methods, value="calibprompt", label="Method", elem_id="train-method")
    with gr.Row():
        # no precision or bounds here: Gradio would round 8.5 to 8 and refuse text without a message; the values
        # go as sent to check_train_request, which refuses them naming the field
        ui["shots"] = gr.Number(defaults.SHOTS, label="Shots per class")
        ui["seed"] = gr.Number(defaults.SEED, label="Seed")
        ui["epochs"] = gr.Number(defaults.EPOCHS, label="Epochs ({}–{})".format(*defaults.LIMITS["epochs"]),
                                  elem_id="train-epochs")
    with gr.Row():
        ui["alpha"] = gr.Number(params.get("alpha"), label="alpha (LS = SMAC), {:g} ≤ α < {:g}".format(*defaults.LIMITS["alpha"]))
        ui["beta"] = gr.Number(params.get("beta"), label="beta (AS weight), {:g}–{:g}".format(*defaults.LIMITS["beta"]))
        ui["device"] = gr.Dropdown(DEVICES, value="auto", label="Device")
    return ui


def _wire(core, shared, tab, ui: dict) -> dict:
    """The tab's events over its components (``ui``, from :func:`_layout`), every one private; returns what
    the page's header wires (see :func:`build`)."""
    use_upload, method_defaults = _dataset_handlers(core)
    start_job, poll_job, cancel_job, show_words = _job_handlers(core)
    settings = [ui[k] for k in ("dataset", "name", "method", "shots", "seed", "epochs", "alpha", "beta", "device",
                                "learner")]
    ui["words_button"].click(show_words, [shared.state, ui["run_id"]], [ui["words"]], api_visibility="private")
    _wire_sharing(core, shared, tab, ui)
    uploaded = ui["upload_button"].click(use_upload, [shared.state, ui["upload"]], [ui["dataset"]],
                                         api_visibility="private")
    ui["method"].change(method_defaults, [shared.state, ui["method"]], [ui["alpha"], ui["beta"]],
                        api_visibility="private")
    ui["start"].click(start_job, [shared.state, *settings],
                      [shared.state, ui["run_id"], ui["progress"], ui["timer"], ui["history"]], api_visibility="private")
    ui["timer"].tick(poll_job, [shared.state, ui["run_id"]],
                     [ui["progress"], ui["loss_plot"], ui["timer"], ui["history"], shared.prompts, ui["share_id"]],
                     api_visibility="private")
    ui["cancel"].click(cancel_job, [shared.state, ui["run_id"]], [ui["progress"], ui["history"]],
                       api_visibility="private")
    return {"datasets": [ui["dataset"]], "history": ui["history"], "run": ui["run_id"], "progress": ui["progress"],
            "timer": ui["timer"], "upload": uploaded}


def _dataset_handlers(core):
    """The handlers of an uploaded zip (``use_upload``) and of a chosen method (``method_defaults``: its alpha
    and beta)."""

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

    return use_upload, method_defaults


def _job_handlers(core):
    """The handlers of a job: start it, poll its progress, cancel it, and show what its learned prompt says."""

    @handler
    def start_job(state, dataset, run_name, method, shots, seed, epochs, alpha, beta, device, learner="coop",
                  request: gr.Request = None):
        """Queue the job of ``learner`` (the menu's name; CoOp by default); a refusal (shots above the data, a
        bad number, a learner that cannot take the method, a full disk) is shown in the progress box, the
        rest of the tab left as it was."""
        state = session_for(core, state, request)
        try:
            state, new_id = handler(core.start_training)(state, dataset, method=method, shots=shots, seed=seed,
                                                         epochs=epochs, alpha=alpha, beta=beta, device=device,
                                                         name=run_name, learner=learner or "coop")
        except gr.Error as exc:
            return state, gr.update(), alert_html(exc.message), gr.update(), gr.update()
        return (state, new_id, progress_html(core.job_status(state, new_id), new_id), gr.update(active=True),
                history_frame(core.run_history(state)))

    @handler
    def poll_job(state, current, request: gr.Request):
        """The progress of the run in the Run box, for a run this page's owner may see (checked by the core)."""
        state = session_for(core, state, request)
        current = (current or "").strip()
        if not current:
            return gr.update(), gr.update(), gr.update(active=False), gr.update(), gr.update(), gr.update()
        try:
            status = core.job_status(state, current)
        except ValueError as exc:  # not a run of this owner's: say so once, and stop polling
            return (f"<p>{html.escape(str(exc))}</p>", gr.update(), gr.update(active=False), gr.update(), gr.update(),
                    gr.update())
        over = status["status"] not in ACTIVE
        return (progress_html(status, current), plots.loss_curve(status.get("losses") or []), gr.update(active=not over),
                history_frame(core.run_history(state)) if over else gr.update(),
                prompt_update(core, state) if over else gr.update(),
                share_box_update(core, state, request)[1] if over else gr.update())

    @handler
    def cancel_job(state, current, request: gr.Request):
        state = session_for(core, state, request)
        current = (current or "").strip()
        if not current or not core.cancel(state, current):
            raise gr.Error("There is no queued or running job of yours to cancel.")
        return progress_html(core.job_status(state, current), current), history_frame(core.run_history(state))

    @handler
    def show_words(state, current, request: gr.Request):
        if not current or not current.strip():
            raise gr.Error("Start a job, or paste a finished run's id in the Run box, first.")
        state = session_for(core, state, request)
        return interpretation_markdown(core.interpret_run(state, current.strip()))

    return start_job, poll_job, cancel_job, show_words


def _wire_sharing(core, shared, tab, ui: dict) -> None:
    """The sharing controls' events: opening the tab shows them to a logged-in user (with their finished runs);
    each button shares or stops sharing the chosen run, then the history and the Prompts menu follow."""
    box, chosen, result, history = ui["share_box"], ui["share_id"], ui["share_result"], ui["history"]

    @handler
    def open_tab(state, current, request: gr.Request):
        return share_box_update(core, session_for(core, state, request), request, current)

    tab.select(open_tab, [shared.state, chosen], [box, chosen], api_visibility="private")
    for button, flag in ((ui["share"], True), (ui["unshare"], False)):
        button.click(_share_handler(core, flag), [shared.state, chosen], [result, chosen, history, shared.prompts],
                     api_visibility="private")


def _share_handler(core, shared: bool):
    """The click of "Share with team" (``shared``) or "Stop sharing": the core checks the owner and the login;
    the result, or the refusal, is shown escaped below the buttons."""

    @handler
    def share_event(state, chosen, request: gr.Request):
        state = session_for(core, state, request)
        try:
            message = core.share_run(state, chosen, shared)["message"]
        except ValueError as exc:
            return share_result_html(str(exc)), gr.update(), gr.update(), gr.update()
        return (share_result_html(message), share_box_update(core, state, request, chosen)[1],
                history_frame(core.run_history(state)), prompt_update(core, state))

    return share_event


def interpretation_markdown(found: list[dict]) -> str:
    """The nearest vocabulary tokens of each learned context vector, as a Markdown table."""
    lines = ["Nearest vocabulary tokens of each learned context vector (Euclidean, as in CoOp); learned "
             "vectors need not be words, so distances far from 0 mean no word fits.", "",
             "| class | position | nearest tokens (distance) |", "|---|---|---|"]
    lines += [f"| {e['class'] or 'all'} | {e['position'] + 1} | "
              + ", ".join(f"`{t['token']}` ({t['distance']:.2f})" for t in e["tokens"]) + " |" for e in found]
    return "\n".join(lines)
