"""Training: prompt-tuning jobs and the runs they leave, each action checked against its owner.

Every action that names a run goes through :func:`calibprompt.service.access.visible_run` (seeing:
status, interpretation) or :func:`calibprompt.service.access.own_run` (changing: cancel, share), so an
unknown id and another owner's private run get the same refusal. Jobs run on the core's background
:class:`~calibprompt.runs.jobs.JobRunner`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from calibprompt import defaults
from calibprompt.service.access import (LOCAL, SHARING_NEEDS_LOGIN, can_share, own_run, sees_run, shown_owner,
                                        visible_run)
from calibprompt.training.losses import build_objective, get_method, list_methods

if TYPE_CHECKING:
    from calibprompt.service.core import Core
    from calibprompt.service.session import SessionState

__all__ = ["method_defaults", "methods", "learners", "start_training", "active_job", "job_status", "cancel",
           "run_history",
           "share_run", "interpret_run"]


def method_defaults(state: SessionState | None, method: str, family: str | None = None) -> dict[str, float]:
    """``method``'s loss parameters for a backbone ``family`` and this session's task (its file's paper values)."""
    task = state.task_object() if state is not None and not state.classes else None
    return build_objective(method, backbone_family=family, task=task).params


def methods() -> list[str]:
    """The training methods (losses) a job may use."""
    return list_methods()


def learners() -> list[dict[str, Any]]:
    """The few-shot learners a job may train, in the registry's order, each as
    :func:`calibprompt.training.learners.learner_info` gives it (``name``, ``title``, ``kind``,
    ``description``...)."""
    from calibprompt.training.learners import learner_info, list_learners

    return [learner_info(name) for name in list_learners()]


def _job_learner(learner: str | None) -> dict[str, str]:
    """``{"learner": name}`` for :class:`~calibprompt.runs.jobs.TrainJob` (the registry's spelling), or ``{}``
    for plain CoOp where jobs do not take a learner yet.

    Raises:
        ValueError: an unknown learner (naming the allowed ones), or another learner than CoOp where jobs
            cannot train it yet.
    """
    import dataclasses

    from calibprompt.runs.jobs import TrainJob
    from calibprompt.training.learners import get_learner

    name = get_learner(learner or "coop").name
    if "learner" in {f.name for f in dataclasses.fields(TrainJob)}:
        return {"learner": name}
    if name != "coop":
        raise ValueError(f"This installation's training jobs train the learner 'coop' only, not {name!r}; "
                         "choose coop.")
    return {}


def start_training(core: Core, state: SessionState, dataset: str, *, method: str = "calibprompt",
                   shots: int = defaults.SHOTS, seed: int = defaults.SEED, epochs: int = defaults.EPOCHS,
                   alpha: float | None = None, beta: float | None = None,
                   device: str = "auto", name: str | None = None,
                   learner: str = "coop") -> tuple[SessionState, str]:
    """Queue a few-shot job of ``learner`` (a name of :func:`learners`, default CoOp) trained with
    ``method`` on this session's model and task, owned by this session's owner, with an optional ``name``
    (at most 80 characters, see :func:`calibprompt.runs.jobs.check_run_name`); returns the new state (with
    the job) and the run id. Every bound is checked before anything is queued (a learner that cannot take
    the method is refused by the job, naming what works)."""
    from calibprompt.runs.jobs import TrainJob, check_run_name
    from calibprompt.runs.requests import check_train_request, class_counts_for_split

    if state.classes:
        raise ValueError("Training needs a task file (its classes and templates); choose a task instead of "
                         "typed class names.")
    name = check_run_name(name)
    learner_arg = _job_learner(learner)
    spec = get_method(method)
    params = {k: v for k, v in (("alpha", alpha), ("beta", beta)) if v is not None and k in spec.params}
    source, task, ds = core._open(state, dataset)
    check_train_request(shots=shots, epochs=epochs, seed=seed, alpha=params.get("alpha"), beta=params.get("beta"),
                        method=spec.name, class_counts=class_counts_for_split(ds))
    job = TrainJob(model=state.model, dataset=source, task=task.name, shots=int(shots), seed=int(seed),
                   method=spec.name, epochs=int(epochs), loss_params=params, device=device, **learner_arg)
    run_id = core.runner.submit(job, owner=state.owner, name=name)
    return state.with_(jobs=state.jobs + (run_id,)), run_id


def active_job(core: Core, state: SessionState) -> str | None:
    """The newest queued or running job of this session's owner on this server (so a reloaded page, or
    another tab of the same browser or user, follows it again), or None."""
    runner = core.started_runner
    if runner is None:  # no job was ever started here (and the job pipeline stays unimported)
        return None
    return runner.active_job(state.owner)


def job_status(core: Core, state: SessionState, run_id: str) -> dict[str, Any]:
    """A run's progress (see :meth:`calibprompt.runs.jobs.JobRunner.progress`), for a run this session's
    owner may see; any other id is refused as unknown."""
    record = visible_run(core.store, state.owner, run_id)
    return core.runner.progress(record.id)


def cancel(core: Core, state: SessionState, run_id: str) -> bool:
    """Cancel a queued or running job this session's owner started; False when it is already over (or ran
    in another process). Another owner's job is refused exactly as an unknown run id is."""
    record = own_run(core.store, state.owner, run_id, "cancel it")
    runner = core.started_runner
    if runner is None:  # no job was ever started here: it is not running in this process
        return False
    return runner.cancel(record.id)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def run_history(core: Core, state: SessionState, limit: int = 200) -> list[dict[str, Any]]:
    """The training runs this session's owner may see (its own and those shared with it), newest first, as
    data: ``learner`` the few-shot learner (``"coop"`` for a run that records none), ``accuracy`` and ``ece``
    are fractions (None before a run is done), ``name`` the name its owner gave it, ``by`` "you" for this
    session's owner, a logged-in user's name, or "operator" (the command
    line's runs), ``shared`` whether its owner shares it."""
    rows = []
    for run in core.store.list_runs(kind="train"):
        if len(rows) >= limit:
            break
        if not sees_run(state.owner, run):
            continue
        m = run.metrics or {}
        rows.append({
            "run": run.id, "name": run.params.get("name") or "", "status": run.status,
            "learner": run.params.get("learner") or "coop",
            "method": run.params.get("method", ""), "model": run.params.get("model", ""),
            "task": m.get("task", run.params.get("task") or ""),
            "shots": run.params.get("shots", ""), "seed": run.params.get("seed", ""),
            "accuracy": _number(m.get("accuracy")), "ece": _number(m.get("ece")),
            "by": shown_owner(state.owner, run.params.get("owner")), "shared": run.params.get("shared") is True,
            "created": run.created_at, "error": run.error or "",
        })
    return rows


def share_run(core: Core, state: SessionState, run_id: str, shared: bool = True) -> dict[str, Any]:
    """Share a finished run of this session's owner, or stop sharing it (``shared=False``). A logged-in
    user's run is then seen by the team (the other logged-in users), the operator's by everyone: in their
    prompt menus and run history (:func:`calibprompt.service.access.can_see`). Only the run's owner may,
    and only a logged-in user or the operator (:func:`~calibprompt.service.access.can_share`; else
    :data:`~calibprompt.service.access.SHARING_NEEDS_LOGIN`). Returns ``{"run", "name", "shared",
    "message"}`` with ``message`` in plain words (user text: escape it where it is shown)."""
    if not can_share(state.owner):
        raise ValueError(SHARING_NEEDS_LOGIN)
    record = own_run(core.store, state.owner, run_id, "change who sees it")
    record = core.store.set_shared(record.id, bool(shared))
    name = record.params.get("name") or f"Run {record.id}"
    if shared:
        who = "every user of the app" if state.owner == LOCAL else "the team (every logged-in user)"
        message = f"{name} is now shared with {who}: it is in their prompt menus and run history."
    else:
        message = f"{name} is no longer shared: only you see it now."
    return {"run": record.id, "name": record.params.get("name") or "", "shared": bool(shared), "message": message}


def interpret_run(core: Core, state: SessionState, run_id: str, top_k: int = 3) -> list[dict[str, Any]]:
    """The nearest vocabulary tokens of a finished run's context vectors (CoOp's interpretation), for a run
    this session's owner may see; any other id is refused as unknown."""
    from calibprompt.prompting.interpret import interpret_prompt

    record = visible_run(core.store, state.owner, run_id)
    if record.status != "done" or not record.checkpoint:
        raise ValueError(f"Run {record.id} is {record.status}; only a finished run has a prompt to read.")
    from calibprompt.prompting.checkpoint import LEARNER_FORMAT, checkpoint_format

    if checkpoint_format(record.checkpoint) == LEARNER_FORMAT:  # CoCoOp's meta-net, an adapter's weights
        learner = record.params.get("learner") or "this learner"
        raise ValueError(f"Run {record.id} trained {learner!r}, whose checkpoint is no plain prompt: only the "
                         "runs of coop, kgcoop and prograd have context vectors to read as words.")
    backbone = core.pool.get(record.params["model"], core.default_device).backbone
    return interpret_prompt(record.checkpoint, top_k=top_k, backbone=backbone)
