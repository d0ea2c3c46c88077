"""The interface over a shared :class:`calibprompt.service.core.Core`: the header every tab shares
(model, task, prompts) and the tabs, one module each (``compare_tab``, ``train_tab``,
``calibration_tab``, ``review_tab``); one :class:`~calibprompt.service.session.SessionState` per
browser session lives in a ``gr.State``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from calibprompt.app import calibration_tab, compare_tab, review_tab, train_tab
from calibprompt.app.common import describe_task, handler, session_for, update_choices, username
from calibprompt.paths import data_dir
from calibprompt.service.startup import DISCLAIMER

logger = logging.getLogger("calibprompt.app")

__all__ = ["build_demo", "Shared", "upload_dir"]


@dataclass
class Shared:
    """The widgets every tab reads: this session's state and its chosen prompts."""

    state: gr.State
    prompts: gr.CheckboxGroup


def upload_dir() -> Path:
    """Where Gradio keeps uploads and the files it serves to a user: inside the data directory, so
    patient images never land in a shared system folder, and cleaned by ``delete_cache``."""
    folder = data_dir() / "tmp" / "gradio"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def build_demo(core) -> gr.Blocks:
    """The interface over a shared :class:`Core`; every user gets a session state of their own."""
    # Gradio reads its upload folder from the process environment; the app's entry point sets it to the data
    # directory's (calibprompt.app.launch); a second app in the same process keeps the first one's.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(upload_dir()))
    start = core.new_session()
    with gr.Blocks(title="CalibPrompt", delete_cache=(3600, 24 * 3600)) as demo:
        state = gr.State(None)
        gr.Markdown("# CalibPrompt — can I trust this confidence?")
        gr.Markdown(f"⚕️ {DISCLAIMER}")
        with gr.Row():
            banner = gr.Markdown(f"**{core.banner}**", elem_id="model-banner")
            model = gr.Dropdown(core.model_choices(), value=core.default_model, label="Model", scale=0,
                                elem_id="model")
            load_button = gr.Button("Load model", scale=0, elem_id="load-model")
        with gr.Row():
            task = gr.Dropdown(core.task_choices(), value=start.task, label="Task", elem_id="task")
            typed = gr.Textbox(label="…or class names, comma-separated", placeholder="pneumonia, normal",
                               elem_id="typed-classes")
            prompts = gr.CheckboxGroup(core.prompt_choices(start), value=list(start.prompts), label="Prompts to compare",
                                       elem_id="prompts")
        task_info = gr.Markdown(describe_task(start), elem_id="task-info")
        shared = Shared(state, prompts)

        compare_tab.build(core, shared)
        train = train_tab.build(core, shared)
        calibration = calibration_tab.build(core, shared, upload_dir() / "exports")
        review = review_tab.build(core, shared, upload_dir() / "exports")
        dataset_menus = train["datasets"] + calibration["datasets"] + review["datasets"]

        def header(state):
            choices = core.prompt_choices(state)
            return (gr.update(value=state.model), gr.update(value=None if state.classes else state.task),
                    gr.update(choices=choices, value=[p for p in state.prompts if p in choices]), describe_task(state))

        @handler
        def on_load(state, request: gr.Request):
            state = session_for(core, state, request)
            datasets = core.dataset_choices()
            menus = [update_choices(datasets) for _ in dataset_menus]
            reader = gr.update(value=state.reader, interactive=not username(request))
            return (state, f"**{core.banner_for(state)}**", *header(state),
                    import_history(core, state), *menus, reader)

        @handler
        def load_model(state, name, request: gr.Request, progress=gr.Progress()):
            state = session_for(core, state, request)
            progress(0.1, desc=f"Loading {name}…")
            state = core.switch_model(state, name)
            progress(1.0)
            return (state, f"**{core.banner_for(state)}**", *header(state))

        @handler
        def change_task(state, task_name, classes, request: gr.Request):
            state = session_for(core, state, request)
            state = core.set_task(state, task_name, classes)
            return (state, *header(state)[2:])

        @handler
        def choose_prompts(state, chosen, request: gr.Request):
            state = session_for(core, state, request)
            return state.with_(prompts=tuple(chosen or ()))

        demo.load(on_load, [state], [state, banner, model, task, prompts, task_info, train["history"],
                                     *dataset_menus, review["reader"]], api_visibility="private")
        load_button.click(load_model, [state, model], [state, banner, model, task, prompts, task_info],
                          concurrency_limit=1, api_visibility="private")
        task.input(change_task, [state, task, gr.State("")], [state, prompts, task_info], api_visibility="private")
        typed.submit(change_task, [state, task, typed], [state, prompts, task_info], api_visibility="private")
        prompts.input(choose_prompts, [state, prompts], [state], api_visibility="private")
    return demo


def import_history(core, state):
    import pandas as pd

    return pd.DataFrame(core.run_history(state))
