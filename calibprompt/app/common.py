"""What every tab shares: turning errors into messages, the session's identity, small formatters."""
from __future__ import annotations

import functools
import logging
import sqlite3
import threading
from collections import OrderedDict
from typing import Any

import gradio as gr

logger = logging.getLogger("calibprompt.app")

__all__ = ["handler", "alert_html", "file_paths", "percent", "format_p", "username", "session_for", "identity",
           "prompt_label", "prompt_choice_pairs", "prompt_update", "run_label", "escape_markdown"]


def _message(exc: BaseException) -> str:
    """What the user reads: our own refusals as they are, OS and database errors in plain words, and
    anything else as a short message with an error id whose traceback is in the server log."""
    from calibprompt.backbones import BackboneUnavailableError
    from calibprompt.errors import report_internal_error, user_message

    if isinstance(exc, OSError) and exc.errno is None and str(exc):  # raised by our code, with a message
        logger.info("Refused a request: %s", exc)
        return str(exc)
    plain = user_message(exc)
    if plain is not None:
        logger.warning("Request failed: %s", exc)
        return plain
    if isinstance(exc, (ValueError, BackboneUnavailableError)) and str(exc):
        logger.info("Refused a request: %s", exc)
        return str(exc)
    return report_internal_error(exc, logger)


def handler(fn):
    """Run a UI handler; a user error becomes its message in the page (one log line), an OS or
    database error a plain message, a bug a short message with an error id (traceback in the log).
    ``functools.wraps`` keeps the signature, so Gradio still sees ``gr.Progress`` and ``gr.Request``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (Exception, sqlite3.Error) as exc:  # noqa: BLE001 - every error becomes a message
            raise gr.Error(_message(exc)) from exc

    return wrapper


def alert_html(message: str) -> str:
    """A refusal shown in the page, as text (``role=alert``), in place of Gradio's error state, which leaves
    a red "Error" pill on every output of the event."""
    import html

    return f"<div class='cp-errors' role='alert'><p>{html.escape(message)}</p></div>"


def file_paths(files) -> list[str]:
    if not files:
        return []
    files = files if isinstance(files, list) else [files]
    return [f if isinstance(f, str) else getattr(f, "name", None) or getattr(f, "path", str(f)) for f in files]


def percent(p: float | None, digits: int = 1) -> str:
    """A fraction as a percentage ("12.3 %"); "—" for a missing value."""
    return "—" if p is None else f"{100 * p:.{digits}f} %"


def format_p(p: float, n_boot: int | None = None) -> str:
    """A p-value as written in the app and its reports: "p < 0.001" below 0.001, else "p = 0.012" (three
    decimals). With ``n_boot`` (a bootstrap p-value, resolution 2 / n_boot), a p-value of 0 is written as
    below the resolution when that is coarser than 0.001 ("p < 0.002" for 1000 resamples)."""
    if p is None or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"A p-value is a number from 0 to 1, got {p!r}.")
    p = float(p)
    floor = max(0.001, 2.0 / n_boot) if n_boot else 0.001
    if p == 0.0 and floor > 0.001:
        return f"p < {floor:.3g}"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}"


def username(request: gr.Request | None) -> str | None:
    """The logged-in user (``--auth``), or None without login."""
    return getattr(request, "username", None) or None if request is not None else None


class PageOwners:
    """Who owns each open page, held on the server: page session id -> owner (``browser:<hash>``), set
    when the page's browser identity is read. Handlers take the owner from here rather than from the
    page's state, so the identity events never rewrite the state that other events are changing (a
    task typed while the page loads is kept). Bounded: the oldest pages are forgotten first."""

    def __init__(self, size: int = 50_000):
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._size = int(size)
        self._lock = threading.Lock()

    def get(self, page: str | None) -> str | None:
        with self._lock:
            return self._owners.get(page) if page else None

    def set(self, page: str | None, owner: str) -> None:
        if not page:
            return
        with self._lock:
            self._owners[page] = owner
            self._owners.move_to_end(page)
            while len(self._owners) > self._size:
                self._owners.popitem(last=False)


#: the pages of every app in this process (page session ids are random, so apps never collide)
PAGE_OWNERS = PageOwners()


def page_owner(request: gr.Request | None) -> str | None:
    """The owner of the request's page: the logged-in user, else the browser identity read for it."""
    user = username(request)
    if user:
        return f"user:{user}"
    return PAGE_OWNERS.get(getattr(request, "session_hash", None))


def session_for(core, state, request: gr.Request | None = None):
    """This browser session's state, made on first use, owned by whoever the request says: with
    ``--auth`` login always the logged-in user (``user:<name>``, whatever the page's state says), else the
    page's browser identity once it is known (:data:`PAGE_OWNERS`)."""
    user = username(request)
    if state is None:
        state = core.new_session(user)
    owner = page_owner(request)
    if owner and state.owner != owner:
        state = state.with_(owner=owner, reader=user) if user else state.with_(owner=owner)
    return state


#: what a page sends for its identity when its browser has a stored token that the page has not read yet
#: (Gradio's BrowserState reads local storage when it mounts, which can come after the page's load event)
PENDING_TOKEN = "stored"
#: the load event's browser-side step: the BrowserState's value, or PENDING_TOKEN when one is stored unread
READ_IDENTITY_JS = ("(state, token) => [state, token ? token : (window.localStorage && "
                    "window.localStorage.getItem('{key}') ? '" + PENDING_TOKEN + "' : '')]")


def identity(core, state, token, request: gr.Request | None = None):
    """A page load's identity: ``(state, token)`` with the browser's token kept when well formed, else a
    new one (to store back in the browser), and the session owned by ``browser:<hash of the token>`` or,
    logged in, by ``user:<name>``. A reload with the same token gets the same owner, so its jobs again.
    With :data:`PENDING_TOKEN` the token is ``None`` (keep what the browser stores; its change event brings it)."""
    from calibprompt.service.session import identify

    user = username(request)
    if token == PENDING_TOKEN:
        return session_for(core, state, request), None
    token, owner = identify(token, user)
    if not user:
        PAGE_OWNERS.set(getattr(request, "session_hash", None), owner)
    state = session_for(core, state, request)
    if state.owner != owner:
        state = state.with_(owner=owner)
    return state, token


def run_label(option: dict) -> str:
    """How a run is named to the user: "My run (calibprompt, seed 1)", or "run <id> (...)" without a name; a run
    shared by another user or the operator adds who it is by ("..., by alice")."""
    name = option.get("name") or f"run {option.get('id', '')}"
    by = option.get("by")
    learner, method = option.get("learner"), option.get("method")
    method = f"{learner}/{method}" if learner and learner != "coop" and method else method  # as in the menus
    details = ", ".join(str(v) for v in (method, f"seed {option['seed']}" if option.get("seed") is not None else None,
                                         f"by {by}" if by and by != "you" else None) if v)
    return f"{name} ({details})" if details else name


def prompt_label(option: dict) -> str:
    """A prompt's label in the Prompts checkbox and the method pickers (an option of ``Core.prompt_options``)."""
    kind = option.get("kind")
    if kind == "run":
        return run_label(option)
    if kind == "bundled":
        return f"{option['value']} (bundled)"
    if kind == "newest run":
        return f"{option['value']} (newest run)"
    return option["value"]


def prompt_choice_pairs(options: list[dict]) -> list[tuple[str, str]]:
    """``(label, value)`` pairs for a Gradio choice component; the value stays ``zero-shot``, ``coop`` or ``run:<id>``."""
    return [(prompt_label(o), o["value"]) for o in options]


def describe_task(state) -> str:
    """The header's task line (Markdown); typed class names are user text, shown as typed."""
    task = state.task_object()
    names = ", ".join(escape_markdown(n) for n in task.display_names)
    return f"Task: **{escape_markdown(task.name)}** — classes: {names}"


def update_choices(values: list[str], current: Any = None, multiselect: bool = False) -> dict:
    if multiselect:
        keep = [v for v in (current or []) if v in values]
        return gr.update(choices=values, value=keep)
    return gr.update(choices=values, value=current if current in values else (values[0] if values else None))


def prompt_update(core, state) -> dict:
    """The Prompts checkbox for this session: labelled choices, and the session's prompts that still exist."""
    options = core.prompt_options(state)
    values = {o["value"] for o in options}
    return gr.update(choices=prompt_choice_pairs(options), value=[p for p in state.prompts if p in values])


_MARKDOWN_SPECIAL = set("\\`*_{}[]()#+-.!|~>")


def escape_markdown(text: str) -> str:
    """User text (a run's name) for a Markdown component: shown as typed, never as markup or HTML."""
    import html

    return "".join(f"\\{ch}" if ch in _MARKDOWN_SPECIAL else ch for ch in html.escape(str(text), quote=False))
