"""The interface over a shared :class:`calibprompt.service.core.Core`: the header every tab shares
(model, task, prompts) and the tabs, one module each (``compare_tab``, ``train_tab``,
``calibration_tab``, ``review_tab``); one :class:`~calibprompt.service.session.SessionState` per
browser session lives in a ``gr.State``.
"""
from __future__ import annotations

import html
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from calibprompt.app import calibration_tab, compare_tab, review_tab, train_tab
from calibprompt.app.common import (READ_IDENTITY_JS, describe_task, handler, identity, page_owner,
                                    prompt_choice_pairs, prompt_update, session_for, update_choices, username)
from calibprompt.paths import data_dir
from calibprompt.service.session import IDENTITY_KEY, is_provisional, valid_token
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
    """The interface over a shared :class:`Core`; every user gets a session state of their own: the header
    (:func:`_header`), the tabs (one module each), then the header's events (:func:`_wire_header`)."""
    # Gradio reads its upload folder from the process environment; the app's entry point sets it to the data
    # directory's (calibprompt.app.launch); a second app in the same process keeps the first one's.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(upload_dir()))
    start = core.new_session()
    with gr.Blocks(title="CalibPrompt", delete_cache=(3600, 24 * 3600)) as demo:
        ui = _header(demo, core, start)
        shared = Shared(ui["state"], ui["prompts"])
        with gr.Tabs(overflow_behavior="wrap", elem_id="main-tabs"):  # a phone's tab bar hides no tab in a "…" menu
            compare_tab.build(core, shared)
            tabs = {"train": train_tab.build(core, shared),
                    "calibration": calibration_tab.build(core, shared, upload_dir() / "exports"),
                    "review": review_tab.build(core, shared, upload_dir() / "exports")}
        _wire_header(demo, core, ui, tabs)
    return demo


def _header(demo: gr.Blocks, core, start) -> dict:
    """The page's header by name: the session's state, the browser's identity token, the title and the
    disclaimer, the model (banner, menu, button), the task (menu, typed class names), the prompts and the
    task line. ``start``: a new session, for the starting values."""
    ui = {"state": gr.State(None),
          # a random token in this browser's local storage: its jobs stay its own across reloads (common.identity)
          "browser_id": gr.BrowserState("", storage_key=IDENTITY_KEY)}
    signed_in_line(demo)
    gr.Markdown("# CalibPrompt — can I trust this confidence?", elem_id="app-title")
    gr.Markdown(f"⚕️ {DISCLAIMER}")
    with gr.Row():
        ui["banner"] = gr.Markdown(f"**{core.banner}**", elem_id="model-banner")
        ui["model"] = gr.Dropdown(core.model_choices(), value=core.default_model, label="Model", scale=0,
                                  elem_id="model")
        ui["load_button"] = gr.Button("Load model", scale=0, elem_id="load-model")
    with gr.Row():
        ui["task"] = gr.Dropdown(core.task_choices(), value=start.task, label="Task", elem_id="task")
        ui["typed"] = gr.Textbox(label="…or class names, comma-separated", placeholder="pneumonia, normal",
                                 elem_id="typed-classes")
        ui["prompts"] = gr.CheckboxGroup(prompt_choice_pairs(core.prompt_options(start)), value=list(start.prompts),
                                         label="Prompts to compare", elem_id="prompts")
    ui["task_info"] = gr.Markdown(describe_task(start), elem_id="task-info")
    return ui


def _wire_header(demo: gr.Blocks, core, ui: dict, tabs: dict) -> None:
    """The header's events, every one private: the page load (identity, banner, header, the Train tab's job,
    the dataset menus, the reader), the identity read later, an upload listed in every dataset menu, and
    loading a model, choosing a task or typed classes, choosing prompts. ``tabs``: what the Train,
    Calibration and Review tabs' ``build`` return."""
    state, browser_id, train, review = ui["state"], ui["browser_id"], tabs["train"], tabs["review"]
    dataset_menus = train["datasets"] + tabs["calibration"]["datasets"] + review["datasets"]
    on_load, load_model, change_task, choose_prompts = _header_handlers(core, dataset_menus)
    header = [ui[k] for k in ("model", "task", "prompts", "task_info")]
    loaded = demo.load(on_load, [state, browser_id],
                       [browser_id, ui["banner"], *header, train["history"], train["run"], train["progress"],
                        train["timer"], *dataset_menus, review["reader"]], api_visibility="private",
                       js=READ_IDENTITY_JS.replace("{key}", IDENTITY_KEY))
    _follow_identity(core, state, browser_id, train, loaded, dataset_menus)
    others = tabs["calibration"]["datasets"] + review["datasets"]  # the Train menu is the upload's own output

    @handler
    def after_upload(state, request: gr.Request):
        """The other dataset menus once an upload is unpacked: they list it too (for its owner only)."""
        return dataset_menu_updates(core, session_for(core, state, request).owner, len(others))

    train["upload"].success(after_upload, [state], others, api_visibility="private")
    ui["load_button"].click(load_model, [state, ui["model"]], [state, ui["banner"], *header],
                            concurrency_limit=1, api_visibility="private")
    ui["task"].input(change_task, [state, ui["task"], gr.State("")], [state, ui["prompts"], ui["task_info"]],
                     api_visibility="private")
    ui["typed"].submit(change_task, [state, ui["task"], ui["typed"]], [state, ui["prompts"], ui["task_info"]],
                       api_visibility="private")
    ui["prompts"].input(choose_prompts, [state, ui["prompts"]], [state], api_visibility="private")


def _header_handlers(core, dataset_menus: list) -> tuple:
    """The handlers of the page load (``on_load``, filling ``dataset_menus`` with the owner's choices), of
    loading a model, of a chosen task or typed classes, and of chosen prompts."""

    def header(state):
        return (gr.update(value=state.model), gr.update(value=None if state.classes else state.task),
                prompt_update(core, state), describe_task(state))

    @handler
    def on_load(state, token, request: gr.Request):
        state, token = identity(core, state, token, request)
        datasets = core.dataset_choices(state.owner)  # the shared datasets and this owner's own uploads
        menus = [update_choices(datasets) for _ in dataset_menus]
        # without a login the Reader field keeps whatever the user may already have typed
        reader = gr.update(value=state.reader, interactive=False) if username(request) else gr.update()
        # the state itself is not sent back: the owner lives on the server (PAGE_OWNERS), so this load never
        # overwrites a task or prompts chosen meanwhile
        return (token or gr.update(), f"**{core.banner_for(state)}**", *header(state),
                import_history(core, state), *train_tab.resume(core, state), *menus, reader)

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

    return on_load, load_model, change_task, choose_prompts


#: Gradio's sign-out route, relative to the page; ``all_session=false``: this browser only, not the same
#: account's other browsers (a shared team account stays signed in elsewhere).
SIGN_OUT_URL = "logout?all_session=false"


def signed_in_line(demo: gr.Blocks) -> gr.HTML:
    """The header's line "Signed in as <name> · Sign out" (``#identity``), filled when the page loads."""
    line = gr.HTML("", elem_id="identity")
    demo.load(signed_in_html, None, [line], api_visibility="private")
    return line


def signed_in_html(request: gr.Request) -> str:
    """The header's "Signed in as <name>" (escaped) and a sign-out link; without a login, that the
    work on this page belongs to this browser rather than to a person."""
    name = username(request)
    if not name:
        return '<span class="cp-identity">Not signed in: your work is tied to this browser.</span>'
    return (f'<span class="cp-identity"><span>Signed in as <strong>{html.escape(name)}</strong></span>'
            f'<a href="{SIGN_OUT_URL}">Sign out</a></span>')


def dataset_menu_updates(core, owner: str | None, count: int) -> list[dict]:
    """``count`` dataset menus listing what ``owner`` may pick (shared datasets and ``owner``'s own uploads);
    each menu keeps its value."""
    datasets = core.dataset_choices(owner)
    return [gr.update(choices=datasets) for _ in range(count)]


def _follow_identity(core, state, browser_id, train, loaded, menus) -> None:
    """Gradio's BrowserState reads local storage as it mounts, which can come after the page's load event:
    when the stored token arrives later (its change event), the session takes that browser's identity, the
    Train tab follows its job again and the dataset ``menus`` list that browser's uploads; once the load is
    over, a page still without a usable token (none could be read, e.g. one stored under another server's
    secret) gets a new one."""

    @handler
    def follow(state, token, request: gr.Request):
        nothing = (gr.update(),) * (5 + len(menus))
        before = page_owner(request)
        if valid_token(token):
            state, _ = identity(core, state, token, request)
            if state.owner == before:
                return nothing
            return (gr.update(), *train_tab.resume(core, state), import_history(core, state),
                    *dataset_menu_updates(core, state.owner, len(menus)))
        if username(request) or not is_provisional(before):
            return nothing  # logged in, or this page already has its identity
        state, token = identity(core, state, None, request)  # a fresh token, stored in this browser
        return (token, *nothing[1:])

    # the page's state is not an output: the owner lives on the server (PAGE_OWNERS)
    outputs = [browser_id, train["run"], train["progress"], train["timer"], train["history"], *menus]
    browser_id.change(follow, [state, browser_id], outputs, api_visibility="private")
    loaded.then(follow, [state, browser_id], outputs, api_visibility="private")


def import_history(core, state):
    return train_tab.history_frame(core.run_history(state))
