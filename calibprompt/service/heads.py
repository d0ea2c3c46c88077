"""Prompt heads: which prompts a session can pick, and each one's text features for its model and task.

A *head* (:class:`~calibprompt.prompting.engine.Head`) is a prompt encoded once per backbone: the
task's zero-shot templates, the model's bundled CoOp or CalibPrompt prompt, or a finished run's
prompt. Heads are cached in the core's content-keyed ``heads`` cache (backbone fingerprint and the task's
or checkpoint's content). Runs are offered only to an owner who may see them
(:func:`calibprompt.service.access.sees_run`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from calibprompt.prompting.checkpoint import checkpoint_paths, load_prompt
from calibprompt.prompting.engine import Head
from calibprompt.prompting.library import bundled_prompt_for
from calibprompt.prompting.tasks import Task
from calibprompt.service.access import sees_run, shown_owner, visible_run
from calibprompt.service.pool import LoadedBackbone, file_digest, task_key

if TYPE_CHECKING:
    from calibprompt.service.core import Core
    from calibprompt.service.session import SessionState

__all__ = ["LEARNED", "finished_runs", "default_prompt", "prompt_options", "prompt_choices", "zero_shot_head",
           "prompt_head", "resolve_heads"]

#: the learned methods whose default prompt a session can pick by name
LEARNED = ("coop", "calibprompt")


def finished_runs(core: Core, state: SessionState, task: Task | None = None) -> list[dict[str, Any]]:
    """Done training runs of this session's model on its task that this session's owner may use: its own
    and those shared with it, newest first: ``{"id", "method", "seed", "name", "checkpoint", "by"}`` with
    ``by`` as :func:`calibprompt.service.access.shown_owner` gives it."""
    task = task or state.task_object()
    rows = []
    for run in core.store.list_runs(status="done", kind="train"):
        if run.params.get("model") != state.model or not run.checkpoint or not sees_run(state.owner, run):
            continue
        if (run.metrics or {}).get("task") != task.name:
            continue
        rows.append({"id": run.id, "method": run.params.get("method"), "seed": run.params.get("seed"),
                     "name": run.params.get("name") or "", "checkpoint": run.checkpoint,
                     "by": shown_owner(state.owner, run.params.get("owner"))})
    return rows


def default_prompt(core: Core, state: SessionState, method: str, task: Task | None = None) -> str | None:
    """The checkpoint used as ``method``'s prompt: the model's bundled one for the task, else the newest
    finished run of this model, task and method that this session's owner may use (its own or one shared
    with it: never another owner's private run); None for typed classes or when there is none."""
    task = task or state.task_object()
    if state.classes:
        return None
    bundled = bundled_prompt_for(state.model, task.name, method)
    if bundled is not None:
        return str(bundled)
    return next((r["checkpoint"] for r in core.finished_runs(state, task) if r["method"] == method), None)


def prompt_options(core: Core, state: SessionState) -> list[dict[str, Any]]:
    """The heads this session can pick, described: ``{"value", "kind"}`` with ``kind`` ``"zero-shot"``,
    ``"bundled"`` (the model's bundled prompt for the task), ``"newest run"`` (a learned default taken from
    the newest finished run) or ``"run"`` (with the run's ``"id"``, ``"name"``, ``"method"``, ``"seed"`` and
    ``"by"``); runs of other owners only where shared with this session's owner."""
    options = [{"value": "zero-shot", "kind": "zero-shot"}]
    if state.classes:
        return options
    task = state.task_object()
    for method in LEARNED:
        if core.default_prompt(state, method, task):
            bundled = bundled_prompt_for(state.model, task.name, method)
            options.append({"value": method, "kind": "bundled" if bundled is not None else "newest run"})
    for run in core.finished_runs(state, task):
        options.append({"value": f"run:{run['id']}", "kind": "run", "id": run["id"], "name": run["name"],
                        "method": run["method"], "seed": run["seed"], "by": run["by"]})
    return options


def prompt_choices(core: Core, state: SessionState) -> list[str]:
    """The values of :func:`prompt_options`: zero-shot, the learned defaults that exist, every finished run."""
    return [option["value"] for option in core.prompt_options(state)]


def zero_shot_head(core: Core, model: LoadedBackbone, task: Task) -> Head:
    """The task's zero-shot head on ``model`` (cached by backbone and task content)."""
    key = ("zero-shot", model.backbone.fingerprint, task_key(task))

    def compute() -> Head:
        from calibprompt.prompting.engine import Engine

        return Engine(model.backbone).add_zero_shot("zero-shot", task)

    return core.heads.get_or_compute(key, compute)


def prompt_head(core: Core, model: LoadedBackbone, checkpoint: str) -> Head:
    """A learned prompt's head on ``model``: its text features (K, D), normalised, float32 on the CPU
    (cached by backbone and the checkpoint files' content)."""
    weights, meta = checkpoint_paths(checkpoint)
    key = ("prompt", model.backbone.fingerprint, file_digest(weights, meta))

    def compute() -> Head:
        learner, metadata = load_prompt(checkpoint, model.backbone)
        with torch.no_grad():
            text = learner.encode_text(normalize=True).float().cpu()
        return Head("prompt", list(learner.classnames), text, kind="prompt", metadata=metadata)

    return core.heads.get_or_compute(key, compute)


def _checkpoint_for(core: Core, state: SessionState, name: str, task: Task) -> str:
    """The checkpoint behind a learned head's name (``coop``, ``calibprompt`` or ``run:<id>``)."""
    if name in LEARNED:
        source = core.default_prompt(state, name, task)
        if source is None:
            raise ValueError(f"There is no {name} prompt for the task {task.name!r} on {state.model} yet; "
                             "train one first, or compare zero-shot only.")
        return source
    if name.startswith("run:"):
        record = visible_run(core.store, state.owner, name[4:])  # another owner's private run: as if unknown
        if record.status != "done" or not record.checkpoint:
            raise ValueError(f"Run {record.id} is {record.status}; only finished runs can be used.")
        if record.params.get("model") != state.model:
            raise ValueError(f"Run {record.id} was trained on {record.params.get('model')}, not on "
                             f"{state.model}; switch the model to use it.")
        return record.checkpoint
    raise ValueError(f"Unknown prompt {name!r}; choose zero-shot, coop, calibprompt or a finished run.")


def resolve_heads(core: Core, state: SessionState, names: Sequence[str] = ()) -> dict[str, Head]:
    """The named heads for this session's model and task (default: the session's chosen prompts), in order."""
    task = state.task_object()
    model = core.loaded(state)
    names = list(dict.fromkeys(names or state.prompts)) or ["zero-shot"]
    heads: dict[str, Head] = {}
    for name in names:
        if name == "zero-shot":
            heads[name] = zero_shot_head(core, model, task)
            continue
        head = prompt_head(core, model, _checkpoint_for(core, state, name, task))
        if head.classnames != task.classnames:
            raise ValueError(f"The prompt {name} was trained for the classes {head.classnames}, not for the task "
                             f"{task.name!r} ({task.classnames}).")
        heads[name] = head
    return heads

