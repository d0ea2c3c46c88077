"""Review verdicts have an owner, and uploads can be shared with the team (issue 18).

A verdict is stored under its owner and under the key of the data it judges (an upload by its folder, so two
owners' uploads of one name never mix). A page sees its owner's verdicts; a logged-in user also sees the other
logged-in users' verdicts on data the team can open (team review). A logged-in user may share an upload with
the team: team mates list it as ``team/<user>/<name>``, open it and review it; nobody else does. Every test
shows the allowed case first, then the refusal. Service level, with the demo model.
"""
from __future__ import annotations

import csv
import json
import re
import sqlite3
from pathlib import Path

import pytest

from calibprompt.data.resolve import SHARE_MARKER, dataset_key, resolve_choice
from calibprompt.paths import owner_key, owner_uploads_dir
from calibprompt.service import reviews as service
from calibprompt.service.access import SHARING_NEEDS_LOGIN
from test_private_uploads import make_zip, refusal

BROWSER_A = "browser:" + "a" * 32
BROWSER_B = "browser:" + "b" * 32
BROWSER_X = "browser:" + "c" * 32
DEMO = "demo-binary"
HEADS = ["zero-shot"]


@pytest.fixture()
def session(core):
    """A demo-binary session: ``session(owner, reader)``, or ``session(user="alice")`` for a logged-in user."""
    base = core.set_task(core.new_session(), DEMO)

    def make(owner: str | None = None, reader: str = "", user: str | None = None):
        if user:
            return base.with_(owner=f"user:{user}", reader=user)
        return base.with_(owner=owner, reader=reader)

    return make


def _zip(folder: Path, name: str) -> Path:
    """A dataset zip with 8 test images per class (so that the demo model gets some wrong)."""
    folder.mkdir(parents=True, exist_ok=True)
    return make_zip(folder / name, test=8)


def _cases(core, state, dataset):
    found = service.find_cases(core, state, dataset, HEADS, min_confidence=0.0)
    assert len(found.wrong) >= 2, "the demo model should get a few cases wrong"
    return found


def _export(core, state, tmp_path, dataset=None) -> list[dict]:
    path = core.export_reviews(state, tmp_path / "exports", dataset=dataset)
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _verdicts(found, image) -> tuple[dict, dict]:
    case = next(c for c in found.wrong if c["image"] == image)
    return case["verdicts"], case["readers"]


# -- keys: the data, not its readable name -------------------------------------------------------------------
def test_same_named_uploads_of_two_owners_keep_separate_verdicts(core, session, tmp_path):
    a, b = session(BROWSER_A, "Dr. Same"), session(BROWSER_B, "Dr. Same")  # one reader name, two browsers
    choice = core.upload_dataset(str(_zip(tmp_path, "scans.zip")), BROWSER_A)
    assert core.upload_dataset(str(_zip(tmp_path / "b", "scans.zip")), BROWSER_B) == choice == "uploads/scans"
    assert dataset_key(choice, BROWSER_A) == f"uploads/{owner_key(BROWSER_A)}/scans"
    assert dataset_key(choice, BROWSER_B) == f"uploads/{owner_key(BROWSER_B)}/scans"

    found_a = _cases(core, a, choice)
    case = found_a.wrong[0]
    service.save_review(core, a, choice, case, "zero-shot", "disagree", "A's private note")
    assert _verdicts(_cases(core, a, choice), case["image"])[0] == {
        "zero-shot": {"verdict": "disagree", "note": "A's private note"}}  # A sees its own

    found_b = _cases(core, b, choice)  # the same image name in B's upload of the same name: not A's verdict
    assert _verdicts(found_b, case["image"]) == ({}, {})
    assert service.agreement(core, b, choice) == [] and service.disagreements(core, b, choice) == []
    service.save_review(core, b, choice, next(c for c in found_b.wrong if c["image"] == case["image"]), "zero-shot",
                        "agree")
    assert _verdicts(_cases(core, a, choice), case["image"])[0]["zero-shot"]["verdict"] == "disagree"  # unchanged
    rows = core.store.reviews(image=case["image"])
    assert sorted((r["owner"], r["dataset"]) for r in rows) == sorted(
        [(BROWSER_A, dataset_key(choice, BROWSER_A)), (BROWSER_B, dataset_key(choice, BROWSER_B))])
    assert [r["dataset"] for r in _export(core, b, tmp_path)] == ["uploads/scans"]  # B's own, named as B's menu


# -- who sees which verdicts on the shared demo data ---------------------------------------------------------
def test_a_browser_sees_none_of_another_browsers_verdicts_notes_or_agreement(core, session, tmp_path):
    ann, ann2 = session(BROWSER_A, "ann"), session(BROWSER_A, "ann's colleague")  # two readers on one browser
    found = _cases(core, ann, DEMO)
    first, second = found.wrong[:2]
    service.save_review(core, ann, DEMO, first, "zero-shot", "agree", "SECRET note of A")
    service.save_review(core, ann2, DEMO, first, "zero-shot", "disagree", "another SECRET")
    service.save_review(core, ann, DEMO, second, "zero-shot", "unsure")

    # A (either reader) sees both readers, their agreement and their disagreement
    again = _cases(core, ann, DEMO)
    assert set(_verdicts(again, first["image"])[1]) == {"ann", "ann's colleague"}
    assert [(p["reader_a"], p["reader_b"]) for p in service.agreement(core, ann, DEMO)] == [("ann", "ann's colleague")]
    assert len(service.disagreements(core, ann, DEMO)) == 1
    assert len(_export(core, ann, tmp_path)) == 3 and len(_export(core, ann2, tmp_path, DEMO)) == 3

    # B sees nothing of it: no verdicts, readers, notes, agreement, disagreements or exported rows
    bea = session(BROWSER_B, "ann")  # even under the same reader name
    seen = _cases(core, bea, DEMO)
    assert all(not c["verdicts"] and not c["readers"] for c in seen.wrong)
    assert service.progress(seen.wrong)["reviewed"] == 0
    assert service.agreement(core, bea, DEMO) == [] and service.disagreements(core, bea, DEMO) == []
    assert service.refresh_cases(core, bea, DEMO, seen.wrong, "disagreements") == []
    assert service.visible_reviews(core, bea) == []
    assert _export(core, bea, tmp_path) == [] and _export(core, bea, tmp_path, DEMO) == []
    service.save_review(core, bea, DEMO, seen.wrong[0], "zero-shot", "disagree", "B's own")
    exported = _export(core, bea, tmp_path)
    assert [(r["reader"], r["note"]) for r in exported] == [("ann", "B's own")]
    assert "SECRET" not in json.dumps(exported)
    assert _verdicts(_cases(core, ann, DEMO), first["image"])[0]["zero-shot"]["note"] == "SECRET note of A"


def test_logged_in_users_review_as_a_team_and_a_browser_sees_none_of_it(core, session, tmp_path):
    alice, bob, x = session(user="alice"), session(user="bob"), session(BROWSER_X, "alice")
    found = _cases(core, alice, DEMO)
    first, second = found.wrong[:2]
    service.save_review(core, alice, DEMO, first, "zero-shot", "agree", "alice's note")
    service.save_review(core, bob, DEMO, first, "zero-shot", "disagree", "bob's note")
    service.save_review(core, bob, DEMO, second, "zero-shot", "unsure")

    for me, other in ((alice, "bob"), (bob, "alice")):
        seen = _cases(core, me, DEMO)
        assert set(_verdicts(seen, first["image"])[1]) == {"alice", "bob"}, me.owner
        [pair] = service.agreement(core, me, DEMO)
        assert (pair["reader_a"], pair["reader_b"], pair["cases"], pair["agreed"]) == ("alice", "bob", 1, 0)
        [item] = service.disagreements(core, me, DEMO, found.root, found.wrong)
        assert [r["reader"] for r in item["readers"]] == ["alice", "bob"]
        assert {r["reader"] for r in _export(core, me, tmp_path)} == {"alice", "bob"}
    assert _verdicts(_cases(core, alice, DEMO), first["image"])[0]["zero-shot"]["note"] == "alice's note"  # hers

    # a browser without a login is nobody's team mate, whatever reader name it types
    seen = _cases(core, x, DEMO)
    assert all(not c["readers"] for c in seen.wrong)
    assert service.agreement(core, x, DEMO) == [] and service.disagreements(core, x, DEMO) == []
    assert _export(core, x, tmp_path) == []


# -- sharing an upload with the team -------------------------------------------------------------------------
def test_sharing_needs_a_login_and_ones_own_upload(core, session, tmp_path):
    a = session(BROWSER_A, "ann")
    choice = core.upload_dataset(str(_zip(tmp_path, "scans.zip")), BROWSER_A)
    assert Path(resolve_choice(choice, BROWSER_A)).is_dir()  # A's own upload, open to A
    for state in (a, session("session-0123456789abcdef", "ann")):
        with pytest.raises(ValueError, match=re.escape(SHARING_NEEDS_LOGIN)):
            core.share_dataset(state, choice)
    assert not (owner_uploads_dir(BROWSER_A) / "scans" / SHARE_MARKER).exists()

    alice, bob = session(user="alice"), session(user="bob")
    mine = core.upload_dataset(str(_zip(tmp_path / "a", "alicescans.zip")), alice.owner)
    with pytest.raises(ValueError, match=refusal(mine)):  # bob cannot share alice's upload: it is not there for him
        core.share_dataset(bob, mine)
    with pytest.raises(ValueError, match="Only your own uploads"):
        core.share_dataset(alice, DEMO)
    assert "Shared uploads/alicescans with the team" in core.share_dataset(alice, mine)


def test_a_shared_upload_is_listed_opened_and_reviewed_by_the_team_only(core, session, tmp_path):
    alice, bob, x = session(user="alice"), session(user="bob"), session(BROWSER_X, "bob")
    choice = core.upload_dataset(str(_zip(tmp_path, "scans.zip")), alice.owner)
    team_name = "team/alice/scans"
    found = _cases(core, alice, choice)
    case = found.wrong[0]
    service.save_review(core, alice, choice, case, "zero-shot", "agree", "alice on her upload")
    # not shared yet: bob neither lists nor opens it
    assert team_name not in core.dataset_choices(bob.owner)
    with pytest.raises(ValueError, match=refusal(team_name)):
        core.review_cases(bob, team_name, HEADS)

    message = core.share_dataset(alice, choice)
    assert team_name in message
    marker = json.loads((owner_uploads_dir(alice.owner) / "scans" / SHARE_MARKER).read_text())
    assert marker["owner"] == "user:alice"
    assert team_name in core.dataset_choices(bob.owner) and choice not in core.dataset_choices(bob.owner)
    assert team_name not in core.dataset_choices(alice.owner)  # hers stays uploads/scans
    assert dataset_key(team_name, bob.owner) == dataset_key(choice, alice.owner)
    seen = _cases(core, bob, team_name)
    assert _verdicts(seen, case["image"])[1] == {"alice": {"zero-shot": "agree"}}  # team review
    service.save_review(core, bob, team_name, next(c for c in seen.wrong if c["image"] == case["image"]),
                        "zero-shot", "disagree", "bob on alice's upload")
    [pair] = service.agreement(core, alice, choice)
    assert (pair["reader_a"], pair["reader_b"]) == ("alice", "bob")
    assert {r["dataset"] for r in _export(core, bob, tmp_path, team_name)} == {team_name}
    assert {r["dataset"] for r in _export(core, alice, tmp_path, choice)} == {choice}

    # a browser without a login: not listed, not opened, not shareable, even under bob's reader name
    assert not any(c.startswith("team/") for c in core.dataset_choices(BROWSER_X))
    for attempt in (lambda: core.review_cases(x, team_name, HEADS), lambda: resolve_choice(team_name, BROWSER_X),
                    lambda: service.save_review(core, x, team_name, case, "zero-shot", "agree"),
                    lambda: service.agreement(core, x, team_name),
                    lambda: core.export_reviews(x, tmp_path / "exports", dataset=team_name)):
        with pytest.raises(ValueError, match=refusal(team_name)):
            attempt()
    with pytest.raises(ValueError, match=refusal("team/alice/nothing")):
        resolve_choice("team/alice/nothing", bob.owner)


def test_stopping_sharing_hides_the_upload_and_the_team_verdicts_again(core, session, tmp_path):
    alice, bob = session(user="alice"), session(user="bob")
    choice = core.upload_dataset(str(_zip(tmp_path, "scans.zip")), alice.owner)
    core.share_dataset(alice, choice)
    team_name = "team/alice/scans"
    seen = _cases(core, bob, team_name)
    service.save_review(core, bob, team_name, seen.wrong[0], "zero-shot", "disagree", "bob's")
    assert [r["reader"] for r in service.visible_reviews(core, alice, choice)] == ["bob"]

    assert "no longer shared" in core.share_dataset(alice, choice, shared=False)
    assert team_name not in core.dataset_choices(bob.owner)
    with pytest.raises(ValueError, match=refusal(team_name)):
        core.review_cases(bob, team_name, HEADS)
    assert service.visible_reviews(core, alice, choice) == []  # bob's verdict is no longer shown to alice
    assert [r["note"] for r in _export(core, bob, tmp_path)] == ["bob's"]  # his own stays his
    assert len(core.store.reviews()) == 1  # kept


def test_a_share_marker_from_a_zip_or_a_forged_one_shares_nothing(core, session, tmp_path):
    import zipfile

    alice, bob = session(user="alice"), session(user="bob")
    archive = _zip(tmp_path, "scans.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(SHARE_MARKER, json.dumps({"owner": "user:alice"}))
    choice = core.upload_dataset(str(archive), alice.owner)
    assert Path(resolve_choice(choice, alice.owner)).is_dir()
    assert not (owner_uploads_dir(alice.owner) / "scans" / SHARE_MARKER).exists()  # a new upload starts private
    assert not any(c.startswith("team/") for c in core.dataset_choices(bob.owner))
    # a browser's own upload with a marker naming a logged-in user: not that user's folder, so not shared
    core.upload_dataset(str(_zip(tmp_path / "b", "other.zip")), BROWSER_A)
    (owner_uploads_dir(BROWSER_A) / "other" / SHARE_MARKER).write_text(json.dumps({"owner": "user:alice"}))
    assert not any(c.startswith("team/") for c in core.dataset_choices(bob.owner))


# -- user text in another user's page ------------------------------------------------------------------------
def test_a_team_mates_reader_name_and_note_render_as_text(core, session):
    from calibprompt.app import review_tab

    evil = "<img src=x onerror=alert(1)>"
    alice, bob = session(user="alice").with_(reader=evil), session(user="bob")
    found = _cases(core, alice, DEMO)
    service.save_review(core, alice, DEMO, found.wrong[0], "zero-shot", "agree", "<b>bold</b> note")
    service.save_review(core, bob, DEMO, found.wrong[0], "zero-shot", "disagree")
    pairs = service.agreement(core, bob, DEMO)
    assert {pairs[0]["reader_a"], pairs[0]["reader_b"]} == {evil, "bob"}
    for text in (review_tab.agreement_html(pairs),
                 review_tab.adjudication_html(service.disagreements(core, bob, DEMO, found.root, found.wrong))):
        assert "<img" not in text and "&lt;img src=x" in text and "<b>" not in text


# -- the store: schema version 3 -----------------------------------------------------------------------------
def test_a_version_2_store_is_upgraded_and_keeps_its_verdicts_as_the_operators(tmp_path):
    from calibprompt.runs import store as store_mod
    from calibprompt.runs.store import RunStore

    db = tmp_path / "v2.db"
    conn = sqlite3.connect(db)
    with conn:
        for version in (1, 2):
            for statement in store_mod._split_sql(store_mod._MIGRATIONS[version]):
                conn.execute(statement)
        conn.executemany(
            "INSERT INTO reviews (reader, dataset, image, method, verdict, note, reviewed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [("dr a", "demo", "TUM/1.png", "coop", "agree", "kept", "2026-01-01T00:00:00"),
             ("dr b", "demo", "TUM/1.png", "coop", "disagree", "", "2026-01-02T00:00:00")])
        conn.execute("PRAGMA user_version = 2")
    conn.close()

    store = RunStore(db)
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION == 3
    rows = store.reviews()
    assert sorted((r["owner"], r["reader"], r["note"]) for r in rows) == [("", "dr a", "kept"), ("", "dr b", "")]
    assert len(store.reviews(owner="local")) == 2 and store.reviews(owner=BROWSER_A) == []
    # the same reader, dataset, image and method under another owner is another verdict, not an overwrite
    store.set_review(reader="dr a", dataset="demo", image="TUM/1.png", method="coop", verdict="unsure", owner=BROWSER_A)
    store.set_review(reader="dr a", dataset="demo", image="TUM/1.png", method="coop", verdict="disagree", owner="local")
    again = RunStore(db)
    assert sorted((r["owner"], r["verdict"]) for r in again.reviews(reader="dr a")) == [
        ("", "disagree"), (BROWSER_A, "unsure")]
    assert [(p["reader_a"], p["reader_b"]) for p in again.reader_agreement()] == [
        ("dr a (browser:" + "a" * 32 + ")", "dr a (local)"), ("dr a (browser:" + "a" * 32 + ")", "dr b"),
        ("dr a (local)", "dr b")]


def test_the_share_buttons_act_for_the_requests_user_and_escape_their_answer(core, session, tmp_path):
    import collections
    from types import SimpleNamespace

    import gradio as gr

    from calibprompt.app.review_tab import ReviewTab

    tab = ReviewTab(core, SimpleNamespace(state=None, prompts=None), tmp_path / "exports",
                    collections.defaultdict(object))
    user = "<i>ally</i>"
    choice = core.upload_dataset(str(_zip(tmp_path, "scans.zip")), f"user:{user}")
    logged_in = SimpleNamespace(username=user, session_hash="page-1")
    answer = tab.share(None, choice, logged_in)  # the owner comes from the request's login, not the state
    assert "&lt;i&gt;ally&lt;/i&gt;" in answer and "<i>" not in answer
    assert f"team/{user}/scans" in core.dataset_choices("user:bob")
    assert "no longer shared" in tab.unshare(None, choice, logged_in)
    browser = SimpleNamespace(username=None, session_hash="page-2")
    core.upload_dataset(str(_zip(tmp_path / "b", "scans.zip")), BROWSER_A)
    with pytest.raises(gr.Error, match="Sharing needs logins"):
        tab.share(session(BROWSER_A, "ann"), choice, browser)
    assert ReviewTab.sharing_shown(logged_in)[0]["visible"] and not ReviewTab.sharing_shown(browser)[0]["visible"]
