"""Training runs and jobs belong to their owner (issue 18, item 1): a run is listed, used as a prompt, followed,
read and cancelled by its owner only, unless the owner shares it (a logged-in user with the team, the operator
with everyone). Every refusal of another owner's run uses the words of an id that does not exist, so it never
tells whether a run exists. Checked on the service layer, the Train tab's helpers and the command line."""
from __future__ import annotations

import re
import shutil
import threading
from types import SimpleNamespace

import pytest

from calibprompt.prompting.library import bundled_prompt_for
from calibprompt.service.access import SHARING_NEEDS_LOGIN

ALICE, BOB = "user:alice", "user:bob"
BROWSER = "browser:" + "x" * 32
FAKE = "20261205-120000-coop-s1-dead"  # an id of the same shape that no run has


@pytest.fixture()
def people(core):
    """Sessions on the demo-binary task: alice and bob (logged in), a browser, a provisional page, the operator."""
    base = core.set_task(core.new_session(), "demo-binary")
    return SimpleNamespace(alice=base.with_(owner=ALICE), bob=base.with_(owner=BOB), browser=base.with_(owner=BROWSER),
                           page=base, local=base.with_(owner="local"))


def done_run(core, folder, owner: str | None, name: str, method: str = "coop") -> str:
    """A finished demo-binary training run of ``owner`` (None: a run from before owners were kept), with a
    checkpoint of its own (a copy of the demo's bundled prompt), without training."""
    source = bundled_prompt_for("demo", "demo-binary", method)
    folder.mkdir(parents=True)
    for suffix in (".json", ".safetensors"):
        shutil.copy(source.with_suffix(suffix), folder / f"prompt{suffix}")
    params = {"model": "demo", "task": "demo-binary", "method": method, "seed": 1, "shots": 8, "name": name}
    if owner is not None:
        params["owner"] = owner
    run_id = core.store.create_run("train", params, slug=f"{method}-s1")
    core.store.start_run(run_id, "cpu")
    core.store.finish_run(run_id, {"task": "demo-binary", "accuracy": 0.8, "ece": 0.05}, str(folder / "prompt.json"))
    return run_id


def history_ids(core, state) -> list[str]:
    return [r["run"] for r in core.run_history(state)]


def refused_like_an_unknown_id(call, run_id: str) -> str:
    """``call(run_id)`` and ``call(FAKE)`` both refuse, with the same words but for the id; returns them."""
    with pytest.raises(ValueError) as real:
        call(run_id)
    with pytest.raises(ValueError) as fake:
        call(FAKE)
    assert str(real.value).replace(run_id, "ID") == str(fake.value).replace(FAKE, "ID")
    assert str(real.value).startswith("There is no run")
    return str(real.value)


def test_alices_run_is_in_her_history_and_prompts_and_in_nobody_elses(core, people, tmp_path):
    run = done_run(core, tmp_path / "a", ALICE, "Alice's night run")
    row = next(r for r in core.run_history(people.alice) if r["run"] == run)
    assert row["by"] == "you" and row["shared"] is False and row["name"] == "Alice's night run"
    assert f"run:{run}" in core.prompt_choices(people.alice)
    assert [r["id"] for r in core.finished_runs(people.alice)] == [run]
    assert set(core.resolve_heads(people.alice, [f"run:{run}"])) == {f"run:{run}"}
    for other in (people.bob, people.browser, people.page, people.local):
        assert run not in history_ids(core, other), other.owner
        assert f"run:{run}" not in core.prompt_choices(other) and core.finished_runs(other) == []
        refused_like_an_unknown_id(lambda rid: core.resolve_heads(other, [f"run:{rid}"]), run)


def test_bob_cannot_follow_read_or_use_alices_run(core, people, tmp_path):
    run = done_run(core, tmp_path / "a", ALICE, "mine")
    assert core.job_status(people.alice, run)["status"] == "done"
    assert core.interpret_run(people.alice, run)  # the live case: alice reads her prompt's words
    refused_like_an_unknown_id(lambda rid: core.job_status(people.bob, rid), run)
    refused_like_an_unknown_id(lambda rid: core.interpret_run(people.bob, rid), run)
    refused_like_an_unknown_id(lambda rid: core.resolve_heads(people.bob, ["zero-shot", f"run:{rid}"]), run)
    refused_like_an_unknown_id(lambda rid: core.cancel(people.bob, rid), run)
    assert core.cancel(people.alice, run) is False  # hers, but over: nothing to cancel


def test_bob_cannot_cancel_alices_job_and_is_told_nothing_about_it(core, people, monkeypatch):
    from calibprompt.runs.jobs import TrainJob

    gate = threading.Event()
    monkeypatch.setattr(core.runner, "_run", lambda entry: gate.wait(30))
    job = core.runner.submit(TrainJob(model="demo", dataset="demo", task="demo", device="cpu"), owner=ALICE)
    try:
        assert core.active_job(people.alice) == job and core.active_job(people.bob) is None
        assert core.job_status(people.alice, job)["status"] == "queued"
        refused_like_an_unknown_id(lambda rid: core.job_status(people.bob, rid), job)
        refused_like_an_unknown_id(lambda rid: core.cancel(people.bob, rid), job)
        refused_like_an_unknown_id(lambda rid: core.cancel(people.browser, rid), job)
        assert core.store.get_run(job).status == "queued"  # bob's tries changed nothing
        assert core.cancel(people.alice, job)
        assert core.store.get_run(job).status == "cancelled"
    finally:
        gate.set()
        core.runner.wait(job, timeout=30)


def test_sharing_needs_a_login_and_the_runs_owner(core, people, tmp_path):
    mine = done_run(core, tmp_path / "b", BROWSER, "browser run")
    assert mine in history_ids(core, people.browser)  # the live case: the browser's own run
    for who in (people.browser, people.page):
        with pytest.raises(ValueError, match=re.escape(SHARING_NEEDS_LOGIN)):
            core.share_run(who, mine)
    assert "shared" not in core.store.get_run(mine).params
    alices = done_run(core, tmp_path / "a", ALICE, "alice's")
    refused_like_an_unknown_id(lambda rid: core.share_run(people.bob, rid), alices)
    refused_like_an_unknown_id(lambda rid: core.share_run(people.bob, rid, shared=False), alices)
    assert "shared" not in core.store.get_run(alices).params


def test_a_run_is_shared_once_it_is_done(core, people, monkeypatch):
    from calibprompt.runs.jobs import TrainJob

    gate = threading.Event()
    monkeypatch.setattr(core.runner, "_run", lambda entry: gate.wait(30))
    job = core.runner.submit(TrainJob(model="demo", dataset="demo", task="demo", device="cpu"), owner=ALICE)
    try:
        with pytest.raises(ValueError, match="only a finished run can be shared"):
            core.share_run(people.alice, job)
        assert core.share_run(people.alice, job, shared=False)["shared"] is False  # stopping is always allowed
    finally:
        gate.set()
        core.runner.wait(job, timeout=30)


def test_alice_shares_with_the_team_and_stops_sharing(core, people, tmp_path):
    run = done_run(core, tmp_path / "a", ALICE, "team prompt")
    assert run not in history_ids(core, people.bob)
    result = core.share_run(people.alice, run)
    assert result["shared"] is True and result["run"] == run and "team" in result["message"]
    assert core.store.get_run(run).params["shared"] is True
    row = next(r for r in core.run_history(people.bob) if r["run"] == run)
    assert row["by"] == "alice" and row["shared"] is True
    option = next(o for o in core.prompt_options(people.bob) if o["value"] == f"run:{run}")
    assert option["by"] == "alice"
    assert set(core.resolve_heads(people.bob, [f"run:{run}"])) == {f"run:{run}"}
    assert core.job_status(people.bob, run)["status"] == "done" and core.interpret_run(people.bob, run)
    with pytest.raises(ValueError, match="only the user who started it"):
        core.share_run(people.bob, run, shared=False)  # bob sees it, but it is not his to change
    with pytest.raises(ValueError, match="only the user who started it can cancel"):
        core.cancel(people.bob, run)
    for outsider in (people.browser, people.page, people.local):  # the team is the logged-in users
        assert run not in history_ids(core, outsider), outsider.owner
        refused_like_an_unknown_id(lambda rid: core.resolve_heads(outsider, [f"run:{rid}"]), run)
    assert core.share_run(people.alice, run, shared=False)["shared"] is False
    assert run not in history_ids(core, people.bob) and f"run:{run}" not in core.prompt_choices(people.bob)
    refused_like_an_unknown_id(lambda rid: core.resolve_heads(people.bob, [f"run:{rid}"]), run)
    assert run in history_ids(core, people.alice)


def test_the_operators_shared_run_is_everyones(core, people, tmp_path):
    run = done_run(core, tmp_path / "o", "local", "operator prompt")
    assert next(r for r in core.run_history(people.local) if r["run"] == run)["by"] == "you"
    everyone = (people.alice, people.bob, people.browser, people.page)
    assert all(run not in history_ids(core, who) for who in everyone)
    assert "every user" in core.share_run(people.local, run)["message"]
    for who in everyone:
        assert next(r for r in core.run_history(who) if r["run"] == run)["by"] == "operator", who.owner
        assert f"run:{run}" in core.prompt_choices(who)
    core.share_run(people.local, run, shared=False)
    assert all(run not in history_ids(core, who) for who in everyone)


def test_a_run_from_before_owners_were_kept_is_the_operators(core, people, tmp_path, capsys):
    from calibprompt.cli import main

    legacy = done_run(core, tmp_path / "l", None, "old run")
    assert legacy in history_ids(core, people.local)
    for who in (people.alice, people.browser, people.page):
        assert legacy not in history_ids(core, who)
        refused_like_an_unknown_id(lambda rid: core.job_status(who, rid), legacy)
    assert main(["runs", "share", legacy]) == 0
    assert "shared with every user" in capsys.readouterr().out
    assert next(r for r in core.run_history(people.browser) if r["run"] == legacy)["by"] == "operator"
    assert main(["runs", "share", legacy, "--unshare"]) == 0
    assert legacy not in history_ids(core, people.browser)
    alices = done_run(core, tmp_path / "a", ALICE, "alice's")
    assert main(["runs", "share", alices]) == 2  # the operator publishes the operator's runs only
    assert "only its owner can share it" in capsys.readouterr().err
    assert "shared" not in core.store.get_run(alices).params


def test_the_learned_default_falls_back_to_a_run_this_owner_may_use(core, people, tmp_path, monkeypatch):
    import calibprompt.service.heads as heads_module

    monkeypatch.setattr(heads_module, "bundled_prompt_for", lambda *args: None)  # no bundled prompt: runs only
    bobs = done_run(core, tmp_path / "b", BOB, "bob's")
    alices = done_run(core, tmp_path / "a", ALICE, "alice's")  # the newest run of all
    assert core.default_prompt(people.alice, "coop") == core.store.get_run(alices).checkpoint
    assert core.default_prompt(people.bob, "coop") == core.store.get_run(bobs).checkpoint
    assert core.default_prompt(people.browser, "coop") is None
    assert {"value": "coop", "kind": "newest run"} in core.prompt_options(people.alice)
    assert "coop" not in core.prompt_choices(people.browser)
    with pytest.raises(ValueError, match="There is no coop prompt"):
        core.resolve_heads(people.browser, ["coop"])


def test_the_train_tab_shows_sharing_to_a_logged_in_user_and_escapes_the_result(core, people, tmp_path):
    from calibprompt.app.train_tab import _share_handler, history_frame, share_box_update

    run = done_run(core, tmp_path / "a", ALICE, "<img src=x onerror=alert(1)>")
    alice = SimpleNamespace(username="alice", session_hash="page-a")
    anonymous = SimpleNamespace(username=None, session_hash="page-x")
    box, menu = share_box_update(core, people.alice, alice)
    assert box["visible"] is True and [value for _, value in menu["choices"]] == [run]
    assert share_box_update(core, people.browser, anonymous)[0]["visible"] is False
    result, menu, frame, _ = _share_handler(core, True)(None, run, alice)  # the owner comes from the request
    assert "&lt;img src=x" in result and "<img" not in result
    assert menu["choices"][0][0].endswith("— shared") and frame.loc[0, "shared"] == "yes"
    assert core.store.get_run(run).params["shared"] is True
    bob = SimpleNamespace(username="bob", session_hash="page-b")
    result, *_ = _share_handler(core, False)(people.alice, run, bob)  # alice's state sent with bob's sign-in
    assert result.startswith("<p") and "only the user who started it" in result
    assert core.store.get_run(run).params["shared"] is True
    assert history_frame(core.run_history(people.bob)).loc[0, "by"] == "alice"


def test_a_refused_start_is_said_in_the_progress_box_and_leaves_the_tab_as_it_was(core, people):
    """The Train tab's start shows a refusal in the page (no red "Error" on every output of the event), and
    the same handler queues a job when the request is sound (the live case)."""
    from calibprompt.app.train_tab import _job_handlers

    start_job = _job_handlers(core)[0]
    alice = SimpleNamespace(username="alice", session_hash="page-start")
    settings = dict(dataset="demo-binary", run_name="", method="coop", seed=1, epochs=1, alpha=0.0, beta=0.0,
                    device="cpu")
    state, run_id, progress, timer, _ = start_job(people.alice, shots=8.5, request=alice, **settings)
    assert "cp-errors" in progress and "whole number" in progress
    assert run_id == {"__type__": "update"} and timer == {"__type__": "update"}
    state, run_id, progress, timer, _ = start_job(people.alice, shots=1, request=alice, **settings)
    assert run_id and "cp-errors" not in progress and timer["active"] is True
    core.cancel(state, run_id)
