"""Who may see what: the ownership rules every service applies to uploads, datasets, runs, jobs, verdicts
and exports. Pure functions over owner strings, so every rule is written once and tested directly.

Owners (see :mod:`calibprompt.service.session`):

- ``user:<name>``: a logged-in user (``--auth``); logged-in users together form the *team*;
- ``browser:<hash>``: one browser without a login (its random token, held server-side);
- ``session-...``: a page whose identity is not read yet (provisional: it owns nothing);
- ``local``: the operator at the command line (:data:`calibprompt.data.resolve.LOCAL_OWNER`); records
  written before owners were kept count as the operator's.

The rules:

1. An owner sees what it owns.
2. Something its owner marked *shared* is seen by the team when the owner is a logged-in user (only other
   logged-in users: a browser without a login is nobody's team mate), and by everyone when the owner is the
   operator (``local``): the operator publishes, as the bundled prompts are published.
3. Nothing else. A provisional page sees only what is shared with everyone.
"""
from __future__ import annotations

__all__ = ["LOCAL", "TEAM_PREFIX", "record_owner", "is_team_member", "can_see", "can_share", "SHARING_NEEDS_LOGIN"]

#: the operator at the command line (the same value as calibprompt.data.resolve.LOCAL_OWNER)
LOCAL = "local"
TEAM_PREFIX = "user:"
SHARING_NEEDS_LOGIN = ("Sharing needs logins: start the app with --auth or --auth-file so that a team exists; "
                       "without a login, what you make stays yours alone.")


def record_owner(owner: object) -> str:
    """A stored record's owner, with records written before owners were kept (no owner, ``""``) counted as
    the operator's (:data:`LOCAL`)."""
    return owner if isinstance(owner, str) and owner else LOCAL


def is_team_member(owner: str | None) -> bool:
    """Whether ``owner`` is a logged-in user (only they share with, and see what is shared with, the team)."""
    return bool(owner) and owner.startswith(TEAM_PREFIX) and len(owner) > len(TEAM_PREFIX)


def can_see(requester: str | None, owner: object, shared: bool = False) -> bool:
    """Whether ``requester`` may see (list, open, use) a record of ``owner`` that is ``shared`` or not."""
    owner = record_owner(owner)
    if requester and requester == owner:
        return True
    if not shared:
        return False
    if owner == LOCAL:
        return True
    return is_team_member(owner) and is_team_member(requester)


def can_share(requester: str | None) -> bool:
    """Whether ``requester`` may share what it owns: a logged-in user (with the team), or the operator
    (with everyone). A browser without a login has no team."""
    return requester == LOCAL or is_team_member(requester)
