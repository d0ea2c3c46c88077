"""Owners: the strings that say who made a record, and who else may see it. Pure functions over owner
strings at the foundation layer, so that every layer (``data`` for uploads, ``runs`` for runs, ``service``
for everything a request touches) applies the same rules without importing a layer above it.

Owners:

- ``user:<name>``: a logged-in user (``--auth``); logged-in users together form the *team*;
- ``browser:<hash>``: one browser without a login (its random token, held server-side);
- ``session-...``: a page whose identity is not read yet (provisional: it owns nothing);
- ``local``: the operator at the command line; records written before owners were kept count as the
  operator's.

The rules (:func:`can_see`):

1. An owner sees what it owns.
2. Something its owner marked *shared* is seen by the team when the owner is a logged-in user (only other
   logged-in users: a browser without a login is nobody's team mate), and by everyone when the owner is the
   operator (``local``): the operator publishes, as the bundled prompts are published.
3. Nothing else. A provisional page sees only what is shared with everyone.

:mod:`calibprompt.service.access` and :mod:`calibprompt.service.session` build on these (runs, refusals,
identities).
"""
from __future__ import annotations

__all__ = ["LOCAL", "TEAM_PREFIX", "PROVISIONAL_PREFIX", "record_owner", "is_team_member", "is_provisional",
           "can_see"]

#: the operator at the command line, the CLI and scripts (``calibprompt.data.resolve.LOCAL_OWNER``)
LOCAL = "local"
#: a logged-in user's owner string starts with this
TEAM_PREFIX = "user:"
#: the owner of a page without a browser identity or login (this page only) starts with this
PROVISIONAL_PREFIX = "session-"


def record_owner(owner: object) -> str:
    """A stored record's owner, with records written before owners were kept (no owner, ``""``) counted as
    the operator's (:data:`LOCAL`)."""
    return owner if isinstance(owner, str) and owner else LOCAL


def is_team_member(owner: str | None) -> bool:
    """Whether ``owner`` is a logged-in user (only they share with, and see what is shared with, the team)."""
    return bool(owner) and owner.startswith(TEAM_PREFIX) and len(owner) > len(TEAM_PREFIX)


def is_provisional(owner: str | None) -> bool:
    """Whether ``owner`` belongs to one page only (no browser identity, no login yet): it owns nothing."""
    return not owner or owner.startswith(PROVISIONAL_PREFIX)


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
