"""Prompt heads: which prompts a session can pick, and each one's text features for its model and task.

A *head* (:class:`~calibprompt.prompting.engine.Head`) is a prompt encoded once per backbone: the
task's zero-shot templates, the model's bundled CoOp or CalibPrompt prompt, or a finished run's
prompt or learner (any learner of :mod:`calibprompt.training.learners`: a run of a learner other than
``coop`` is offered as ``learner/method``, e.g. ``"linear-probe/calibprompt"``, and loads from its
``calibprompt-learner/1`` checkpoint through :func:`calibprompt.training.learners.load_learner`). Heads
are cached in the core's content-keyed ``heads`` cache (backbone fingerprint and the task's or
checkpoint's content). Runs are offered only to an owner who may see them
(:func:`calibprompt.service.access.sees_run`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from calibprompt.prompting.checkpoint import LEARNER_FORMAT, checkpoint_format, checkpoint_paths, load_prompt
from calibprompt.prompting.engine import Head, learner_head
from calibprompt.prompting.library import bundled_prompt_for
from calibprompt.prompting.tasks import Task
from calibprompt.service.access import sees_run, shown_owner, visible_run
from calibprompt.service.pool import LoadedBackbone, file_digest, task_key

if TYPE_CHECKING:
    from calibprompt.service.core import Core
    from calibprompt.service.session import SessionState

__all__ = ["LEARNED", "finished_runs", "default_prompt", "prompt_options", "prompt_choices", "zero_shot_head",
           "prompt_head", "resolve_heads", "checkpoint_for", "split_head_name", "head_name",
           "PLAIN_LEARNER"]

#: the learned methods whose default prompt a session can pick by name
LEARNED = ("coop", "calibprompt")
#: the learner of today's runs (and of runs that record none): its heads keep their plain names
PLAIN_LEARNER = "coop"


def split_head_name(name: str) -> tuple[str, str]:
    """``"linear-probe/calibprompt"`` -> ``("linear-probe", "calibprompt")``; a plain method name
    (``"coop"``, ``"calibprompt"``) -> ``("coop", name)``."""
    learner, sep, method = str(name).partition("/")
    return (learner, method) if sep else (PLAIN_LEARNER, str(name))


def head_name(learner: str | None, method: str | None) -> str:
    """The menu name of the newest run of ``learner`` with ``method``: the method alone for plain CoOp,
    else ``learner/method``."""
    learner = learner or PLAIN_LEARNER
    return str(method) if learner == PLAIN_LEARNER else f"{learner}/{method}"


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
        rows.append({"id": run.id, "learner": run.params.get("learner") or PLAIN_LEARNER,
                     "method": run.params.get("method"), "seed": run.params.get("seed"),
                     "name": run.params.get("name") or "", "checkpoint": run.checkpoint,
                     "by": shown_owner(state.owner, run.params.get("owner"))})
    return rows


def default_prompt(core: Core, state: SessionState, method: str, task: Task | None = None) -> str | None:
    """The checkpoint used as ``method``'s prompt: the model's bundled one for the task, else the newest
    finished run of this model, task and method that this session's owner may use (its own or one shared
    with it: never another owner's private run); None for typed classes or when there is none.
    ``method`` may name a learner too, ``learner/method`` (:func:`split_head_name`): then only that
    learner's runs count (bundled prompts are CoOp's)."""
    task = task or state.task_object()
    if state.classes:
        return None
    learner, method = split_head_name(method)
    bundled = bundled_prompt_for(state.model, task.name, method) if learner == PLAIN_LEARNER else None
    if bundled is not None:
        return str(bundled)
    return next((r["checkpoint"] for r in core.finished_runs(state, task)
                 if r["method"] == method and r.get("learner", PLAIN_LEARNER) == learner), None)


def prompt_options(core: Core, state: SessionState) -> list[dict[str, Any]]:
    """The heads this session can pick, described: ``{"value", "kind"}`` with ``kind`` ``"zero-shot"``,
    ``"bundled"`` (the model's bundled prompt for the task), ``"newest run"`` (a learned default taken from
    the newest finished run; for a learner other than CoOp named ``learner/method``, with ``"learner"`` and
    ``"method"``) or ``"run"`` (with the run's ``"id"``, ``"name"``, ``"learner"``, ``"method"``, ``"seed"``
    and ``"by"``); runs of other owners only where shared with this session's owner."""
    options = [{"value": "zero-shot", "kind": "zero-shot"}]
    if state.classes:
        return options
    task = state.task_object()
    for method in LEARNED:
        if core.default_prompt(state, method, task):
            bundled = bundled_prompt_for(state.model, task.name, method)
            options.append({"value": method, "kind": "bundled" if bundled is not None else "newest run"})
    runs = core.finished_runs(state, task)
    for run in runs:  # the newest run of each other learner and method, by its learner/method name
        learner = run.get("learner", PLAIN_LEARNER)
        value = head_name(learner, run["method"])
        if learner != PLAIN_LEARNER and value not in [o["value"] for o in options]:
            options.append({"value": value, "kind": "newest run", "learner": learner, "method": run["method"]})
    for run in runs:
        options.append({"value": f"run:{run['id']}", "kind": "run", "id": run["id"], "name": run["name"],
                        "learner": run.get("learner", PLAIN_LEARNER), "method": run["method"],
                        "seed": run["seed"], "by": run["by"]})
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
    (cached by backbone and the checkpoint files' content). A learner checkpoint
    (``calibprompt-learner/1``: CoCoOp, the adapters and linear probes) gives a learner head
    (:func:`calibprompt.prompting.engine.learner_head`)."""
    weights, meta = checkpoint_paths(checkpoint)
    key = ("prompt", model.backbone.fingerprint, file_digest(weights, meta))

    def compute() -> Head:
        if checkpoint_format(checkpoint) == LEARNER_FORMAT:
            return _learner_checkpoint_head(model, checkpoint)
        learner, metadata = load_prompt(checkpoint, model.backbone)
        with torch.no_grad():
            text = learner.encode_text(normalize=True).float().cpu()
        return Head("prompt", list(learner.classnames), text, kind="prompt", metadata=metadata)

    return core.heads.get_or_compute(key, compute)


def _learner_checkpoint_head(model: LoadedBackbone, checkpoint: str) -> Head:
    """The head of a ``calibprompt-learner/1`` checkpoint on ``model``."""
    from calibprompt.training.learners import load_learner

    learner, metadata = load_learner(checkpoint, model.backbone)  # a feature learner stays on the CPU
    return learner_head("prompt", learner, metadata)


def checkpoint_for(core: Core, state: SessionState, name: str, task: Task) -> str:
    """The checkpoint behind a learned head's name (``coop``, ``calibprompt``, ``learner/method`` or
    ``run:<id>``)."""
    if name in LEARNED or "/" in name:
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
    raise ValueError(f"Unknown prompt {name!r}; choose zero-shot, coop, calibprompt, a learner's newest run "
                     "(learner/method, e.g. linear-probe/calibprompt) or a finished run.")


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
        head = prompt_head(core, model, checkpoint_for(core, state, name, task))
        if head.classnames != task.classnames:
            raise ValueError(f"The prompt {name} was trained for the classes {head.classnames}, not for the task "
                             f"{task.name!r} ({task.classnames}).")
        heads[name] = head
    return heads

