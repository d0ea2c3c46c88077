"""What one user of a shared server has chosen: the per-session state.

A :class:`SessionState` is plain data (strings and tuples), so a UI can keep one per browser session
(Gradio's ``gr.State``) and copy it freely. It never holds a model or a cache: those are shared by
:class:`calibprompt.service.core.Core`, keyed by content, and every action of the core takes the
session's state as an argument.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field, replace

from calibprompt import defaults
from calibprompt.defaults import DEFAULT_HEADS
from calibprompt.owners import PROVISIONAL_PREFIX, is_provisional
from calibprompt.prompting.tasks import Task, load_task

__all__ = ["SessionState", "new_session", "IDENTITY_KEY", "new_token", "valid_token", "owner_for", "identify",
           "is_provisional", "typed_classes", "set_task"]

#: the browser's local-storage key of its identity token (``gr.BrowserState``)
IDENTITY_KEY = "calibprompt-identity"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32): 32 random bytes, base64url, no padding


def new_token() -> str:
    """A fresh browser identity token: 32 random bytes (256 bits), URL-safe."""
    return secrets.token_urlsafe(32)


def valid_token(token: object) -> bool:
    """Whether ``token`` has the shape :func:`new_token` makes (anything else is replaced, never trusted)."""
    return isinstance(token, str) and _TOKEN.fullmatch(token) is not None


def owner_for(token: str | None = None, username: str | None = None) -> str:
    """Who owns a session's jobs: ``user:<name>`` for a logged-in user (whatever the browser sends), else
    ``browser:<first 32 hex digits of the token's SHA-256>``; the raw token is never stored or shown."""
    if username:
        return f"user:{username}"
    if not valid_token(token):
        raise ValueError("A browser identity token is 43 URL-safe characters (secrets.token_urlsafe(32)).")
    return "browser:" + hashlib.sha256(token.encode("ascii")).hexdigest()[:32]


def identify(token: object, username: str | None = None) -> tuple[str, str]:
    """``(token, owner)`` for a page load: the browser's token when it is well formed, else a new one
    (a missing, damaged or forged-looking value is replaced), and the owner it gives (see :func:`owner_for`)."""
    token = token if valid_token(token) else new_token()
    return token, owner_for(token, username)


@dataclass
class SessionState:
    """One user's choices.

    Attributes:
        model: the backbone name this session predicts with.
        task: a task name (a file in ``prompts/``); ignored when ``classes`` is set.
        classes: class names the user typed instead of a task (zero-shot only).
        prompts: the heads to compare (``zero-shot``, ``coop``, ``calibprompt``, ``run:<id>``).
        owner: who owns this session's jobs: ``user:<name>`` when logged in, ``browser:<hash>`` for a browser's
            identity token (kept across reloads), or a random value for this session only.
        reader: the name recorded with this session's review verdicts.
        jobs: run ids of the jobs this session started (newest last).
        calibration_dataset: the labelled dataset whose test images calibrate the advice (prediction sets,
            accuracy at a confidence, the out-of-distribution reference); empty: the task's own dataset.
    """

    model: str
    task: str
    classes: tuple[str, ...] = ()
    prompts: tuple[str, ...] = DEFAULT_HEADS
    owner: str = field(default_factory=lambda: f"{PROVISIONAL_PREFIX}{secrets.token_hex(8)}")
    reader: str = ""
    jobs: tuple[str, ...] = ()
    calibration_dataset: str = ""

    def task_object(self) -> Task:
        """The session's task: typed class names, or the named task file."""
        if self.classes:
            return Task.from_classnames(list(self.classes))
        return load_task(self.task)

    @property
    def task_label(self) -> str:
        return ", ".join(self.classes) if self.classes else self.task

    def with_(self, **changes) -> "SessionState":
        """A copy with ``changes`` (states are treated as values)."""
        return replace(self, **changes)


def new_session(model: str, task: str, *, username: str | None = None, owner: str | None = None) -> SessionState:
    """A fresh session on ``model`` and ``task``; a logged-in ``username`` owns its jobs and reads its cases,
    else ``owner`` (a browser's identity, :func:`owner_for`), else a random owner for this session only."""
    if username:
        return SessionState(model=model, task=task, owner=f"user:{username}", reader=username)
    if owner:
        return SessionState(model=model, task=task, owner=owner)
    return SessionState(model=model, task=task)


# -- task choice ----------------------------------------------------------------------------------------
def typed_classes(typed: str) -> tuple[str, ...]:
    """Class names typed comma-separated, each within bounds (a long name costs every compare its CPU)."""
    classes = tuple(dict.fromkeys(c.strip() for c in typed.split(",") if c.strip()))
    fewest, most = defaults.LIMITS["typed_classes"]
    longest = defaults.LIMITS["class_name_chars"][1]
    if len(classes) < fewest:
        raise ValueError("Type at least two class names, separated by commas (e.g. 'pneumonia, normal').")
    if len(classes) > most:
        raise ValueError(f"Type at most {most:,} class names; you typed {len(classes):,}.")
    too_long = next((c for c in classes if len(c) > longest), None)
    if too_long is not None:
        raise ValueError(f"A class name may have at most {longest} characters; one has {len(too_long):,} "
                         f"(it starts '{too_long[:30]}'). Shorten it.")
    return classes


def set_task(state: SessionState, task: str | None = None, typed: str | None = None) -> SessionState:
    """``state`` on a task: a task name, or class names typed comma-separated (zero-shot only)."""
    if typed and typed.strip():
        return state.with_(classes=typed_classes(typed), prompts=("zero-shot",))
    if not task:
        raise ValueError("Choose a task.")
    load_task(task)  # a clear error for an unknown task
    return state.with_(task=task, classes=(), prompts=DEFAULT_HEADS)
