"""What every tab shares: turning errors into messages, the session's identity, small formatters."""
from __future__ import annotations

import functools
import logging
import sqlite3
from typing import Any

import gradio as gr

logger = logging.getLogger("calibprompt.app")

__all__ = ["handler", "file_paths", "percent", "username", "session_for"]


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


def file_paths(files) -> list[str]:
    if not files:
        return []
    files = files if isinstance(files, list) else [files]
    return [f if isinstance(f, str) else getattr(f, "name", None) or getattr(f, "path", str(f)) for f in files]


def percent(p: float) -> str:
    return f"{100 * p:.1f} %"


def username(request: gr.Request | None) -> str | None:
    """The logged-in user (``--auth``), or None without login."""
    return getattr(request, "username", None) or None if request is not None else None


def session_for(core, state, request: gr.Request | None = None):
    """This browser session's state, made on first use (owned by the logged-in user if any)."""
    if state is None:
        state = core.new_session(username(request))
    return state


def describe_task(state) -> str:
    task = state.task_object()
    return f"Task: **{task.name}** — classes: {', '.join(task.display_names)}"


def update_choices(values: list[str], current: Any = None, multiselect: bool = False) -> dict:
    if multiselect:
        keep = [v for v in (current or []) if v in values]
        return gr.update(choices=values, value=keep)
    return gr.update(choices=values, value=current if current in values else (values[0] if values else None))
