"""What one user of a shared server has chosen: the per-session state.

A :class:`SessionState` is plain data (strings and tuples), so a UI can keep one per browser session
(Gradio's ``gr.State``) and copy it freely. It never holds a model or a cache: those are shared by
:class:`calibprompt.service.core.Core`, keyed by content, and every action of the core takes the
session's state as an argument.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace

from calibprompt.defaults import DEFAULT_HEADS
from calibprompt.prompting.tasks import Task, load_task

__all__ = ["SessionState", "new_session"]


@dataclass
class SessionState:
    """One user's choices.

    Attributes:
        model: the backbone name this session predicts with.
        task: a task name (a file in ``prompts/``); ignored when ``classes`` is set.
        classes: class names the user typed instead of a task (zero-shot only).
        prompts: the heads to compare (``zero-shot``, ``coop``, ``calibprompt``, ``run:<id>``).
        owner: who owns this session's jobs: the logged-in user, or a random token per session.
        reader: the name recorded with this session's review verdicts.
        jobs: run ids of the jobs this session started (newest last).
        calibration_dataset: the labelled dataset whose test images calibrate the advice (prediction sets,
            accuracy at a confidence, the out-of-distribution reference); empty: the task's own dataset.
    """

    model: str
    task: str
    classes: tuple[str, ...] = ()
    prompts: tuple[str, ...] = DEFAULT_HEADS
    owner: str = field(default_factory=lambda: f"session-{secrets.token_hex(8)}")
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


def new_session(model: str, task: str, *, username: str | None = None) -> SessionState:
    """A fresh session on ``model`` and ``task``; a logged-in ``username`` owns its jobs and reads its cases."""
    if username:
        return SessionState(model=model, task=task, owner=f"user:{username}", reader=username)
    return SessionState(model=model, task=task)
