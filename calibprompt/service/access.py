"""Who may see what, as the services apply it: the ownership rules of :mod:`calibprompt.owners` (one place,
at the foundation layer, with the list of owners and the three rules), plus what sharing needs and the rules
applied to a stored run with the refusal that never tells whether someone else's run exists.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from calibprompt.owners import LOCAL, TEAM_PREFIX, can_see, is_team_member, record_owner

if TYPE_CHECKING:
    from calibprompt.runs.store import RunRecord, RunStore

__all__ = ["LOCAL", "TEAM_PREFIX", "record_owner", "is_team_member", "can_see", "can_share", "SHARING_NEEDS_LOGIN",
           "sees_run", "shown_owner", "no_such_run", "visible_run", "own_run"]

SHARING_NEEDS_LOGIN = ("Sharing needs logins: start the app with --auth or --auth-file so that a team exists; "
                       "without a login, what you make stays yours alone.")


def can_share(requester: str | None) -> bool:
    """Whether ``requester`` may share what it owns: a logged-in user (with the team), or the operator
    (with everyone). A browser without a login has no team."""
    return requester == LOCAL or is_team_member(requester)


# -- runs: the same rules applied to a stored run ------------------------------------------------------
def sees_run(requester: str | None, run: RunRecord) -> bool:
    """Whether ``requester`` may see (list, use, follow) ``run``: its own, or shared with it."""
    params = run.params or {}
    return can_see(requester, params.get("owner"), params.get("shared") is True)


def shown_owner(requester: str | None, owner: object) -> str:
    """Who a record is by, as the run history shows it: "you", a logged-in user's name, "operator" (the
    command line's runs, and those from before owners were kept), or "" (another browser)."""
    owner = record_owner(owner)
    if owner == requester:
        return "you"
    if owner == LOCAL:
        return "operator"
    return owner[len(TEAM_PREFIX):] if is_team_member(owner) else ""


def no_such_run(run_id: str) -> str:
    """The one refusal for a run id that does not exist or is another owner's and not shared with the
    requester: the same words for both, so a refusal never tells whether a run exists."""
    shown = run_id if len(run_id) <= 80 else f"{run_id[:80]}…"
    return (f"There is no run {shown!r} of yours or shared with you; pick a run from the run history in the "
            "Train tab (it lists every run you can use).")


def visible_run(store: RunStore, requester: str | None, run_id: Any) -> RunRecord:
    """The run ``run_id`` (as sent by a client: checked here) if ``requester`` may see it. An unknown id
    and another owner's unshared run are refused with the same words (:func:`no_such_run`)."""
    run_id = run_id.strip() if isinstance(run_id, str) else ""
    if not run_id:
        raise ValueError("Choose a run first: start a job, or paste a run id from the run history.")
    try:
        record = store.get_run(run_id)
    except ValueError:  # no such run (the store's own words name its file: not for users)
        record = None
    if record is None or not sees_run(requester, record):
        raise ValueError(no_such_run(run_id))
    return record


def own_run(store: RunStore, requester: str | None, run_id: Any, action: str) -> RunRecord:
    """The run ``run_id`` if ``requester`` started it; one shared with it is refused, naming who shared it
    and that only its owner can do ``action`` (e.g. "cancel it")."""
    record = visible_run(store, requester, run_id)
    owner = record_owner(record.params.get("owner"))
    if owner != requester:
        raise ValueError(f"Run {record.id} was shared with you by {shown_owner(requester, owner) or 'its owner'}; "
                         f"only the user who started it can {action}.")
    return record
