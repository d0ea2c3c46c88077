"""The ownership rules of :mod:`calibprompt.service.access` (issue 18), checked against a table worked out by
hand from the rules in the module's docstring: an owner sees what it owns; what a logged-in user shares is
seen by the other logged-in users only; what the operator shares is seen by everyone; nothing else."""
from __future__ import annotations

import pytest

from calibprompt.service.access import LOCAL, SHARING_NEEDS_LOGIN, can_see, can_share, is_team_member, record_owner

ALICE, BOB = "user:alice", "user:bob"
BROWSER_X, BROWSER_Y = "browser:" + "x" * 32, "browser:" + "y" * 32
PAGE = "session-0123456789abcdef"  # a page whose identity is not read yet


@pytest.mark.parametrize("requester, owner, shared, seen", [
    # 1. an owner sees what it owns, shared or not
    (ALICE, ALICE, False, True), (BROWSER_X, BROWSER_X, False, True), (LOCAL, LOCAL, False, True),
    (PAGE, PAGE, False, True), (ALICE, ALICE, True, True),
    # records from before owners were kept are the operator's
    (LOCAL, "", False, True), (LOCAL, None, False, True), (BROWSER_X, "", False, False),
    # nothing unshared of another owner
    (BOB, ALICE, False, False), (BROWSER_Y, BROWSER_X, False, False), (BROWSER_X, ALICE, False, False),
    (ALICE, BROWSER_X, False, False), (ALICE, LOCAL, False, False), (LOCAL, ALICE, False, False),
    (PAGE, LOCAL, False, False), (None, LOCAL, False, False), (None, None, False, False), ("", "", False, False),
    # 2. a logged-in user's shared record: the other logged-in users only
    (BOB, ALICE, True, True), (BROWSER_X, ALICE, True, False), (PAGE, ALICE, True, False),
    (None, ALICE, True, False), (LOCAL, ALICE, True, False), ("user:", ALICE, True, False),
    # a browser without a login has no team: its "shared" records stay its own
    (BROWSER_Y, BROWSER_X, True, False), (ALICE, BROWSER_X, True, False), (LOCAL, BROWSER_X, True, False),
    # "user:" with no name is nobody, not a team mate
    (BOB, "user:", True, False),
    # 2. the operator's shared record (or an old one, shared): everyone, a provisional page included
    (BOB, LOCAL, True, True), (BROWSER_X, LOCAL, True, True), (PAGE, LOCAL, True, True), (None, LOCAL, True, True),
    (BROWSER_X, "", True, True), (BROWSER_X, None, True, True),
])
def test_who_sees_what(requester, owner, shared, seen):
    assert can_see(requester, owner, shared) is seen


@pytest.mark.parametrize("owner, stored", [
    ("", LOCAL), (None, LOCAL), (5, LOCAL), (LOCAL, LOCAL), (ALICE, ALICE), (BROWSER_X, BROWSER_X),
])
def test_a_record_without_an_owner_is_the_operators(owner, stored):
    assert record_owner(owner) == stored


@pytest.mark.parametrize("owner, member", [
    (ALICE, True), ("user:a", True), ("user:", False), ("User:alice", False), (BROWSER_X, False), (LOCAL, False),
    (PAGE, False), ("", False), (None, False),
])
def test_only_logged_in_users_are_the_team(owner, member):
    assert is_team_member(owner) is member


@pytest.mark.parametrize("requester, allowed", [
    (ALICE, True), (LOCAL, True), (BROWSER_X, False), (PAGE, False), ("user:", False), ("", False), (None, False),
])
def test_only_a_logged_in_user_or_the_operator_can_share(requester, allowed):
    assert can_share(requester) is allowed


def test_the_sharing_refusal_says_what_to_do():
    assert "--auth" in SHARING_NEEDS_LOGIN and "yours" in SHARING_NEEDS_LOGIN
