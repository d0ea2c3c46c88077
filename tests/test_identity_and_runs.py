"""Jobs belong to a browser identity (or the logged-in user) and survive a reload; runs have names."""
from __future__ import annotations

import hashlib
import threading
from types import SimpleNamespace

import pytest

from calibprompt.app.common import (PENDING_TOKEN, format_p, identity, prompt_choice_pairs, prompt_label, run_label,
                                    session_for)
from calibprompt.app.train_tab import history_frame, progress_html
from calibprompt.runs.jobs import JobRunner, TrainJob, check_run_name
from calibprompt.runs.store import RunStore
from calibprompt.service.session import identify, is_provisional, new_token, owner_for, valid_token

TOKEN = "A" * 21 + "b_-" + "9" * 19  # 43 URL-safe characters, the shape of secrets.token_urlsafe(32)


def test_a_token_gives_a_stable_browser_owner_that_does_not_reveal_it():
    owner = owner_for(TOKEN)
    assert owner == "browser:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:32]
    assert owner == owner_for(TOKEN) and TOKEN not in owner
    other = new_token()
    assert valid_token(other) and len(other) == 43 and owner_for(other) != owner


def test_a_logged_in_user_owns_the_session_whatever_the_browser_sends():
    assert owner_for(TOKEN, "alice") == "user:alice"
    assert identify(TOKEN, "alice") == (TOKEN, "user:alice")
    assert identify("garbage", "alice")[1] == "user:alice"


@pytest.mark.parametrize("bad", [None, "", "short", "A" * 42, "A" * 44, "A" * 42 + "/", "A" * 42 + "=", 12345,
                                 {"token": TOKEN}, ["x"], "<script>alert(1)</script>" + "A" * 18])
def test_a_missing_or_malformed_token_is_replaced_by_a_fresh_one(bad):
    assert not valid_token(bad)
    token, owner = identify(bad)
    assert valid_token(token) and token != bad
    assert owner == owner_for(token)
    with pytest.raises(ValueError, match="43 URL-safe"):
        owner_for(bad)


def test_identity_on_page_load_and_session_for_take_the_username_from_the_request(core):
    anonymous = SimpleNamespace(username=None)
    state, token = identity(core, None, TOKEN, anonymous)
    assert token == TOKEN and state.owner == owner_for(TOKEN)
    again, _ = identity(core, None, TOKEN, anonymous)  # a reload: a new page state, the same token
    assert again.owner == state.owner
    replaced_state, replaced = identity(core, None, "not a token", anonymous)
    assert replaced != "not a token" and replaced_state.owner == owner_for(replaced)
    pending, unread = identity(core, None, PENDING_TOKEN, anonymous)  # stored, not read yet: keep it
    assert unread is None and is_provisional(pending.owner)
    alice = SimpleNamespace(username="alice")
    logged, _ = identity(core, state, TOKEN, alice)
    assert logged.owner == "user:alice" and logged.reader == "alice"
    forged = state.with_(owner="user:mallory")  # state a client sends is not proof of identity
    assert session_for(core, forged, alice).owner == "user:alice"
    assert session_for(core, None, alice).owner == "user:alice"
    assert session_for(core, state, anonymous).owner == state.owner


@pytest.mark.parametrize("p, n_boot, text", [
    (0.0, 2000, "p < 0.001"), (0.0, None, "p < 0.001"), (0.0004, None, "p < 0.001"), (0.0, 1000, "p < 0.002"),
    (0.001, 2000, "p = 0.001"), (0.0123, 2000, "p = 0.012"), (0.5, None, "p = 0.500"), (1.0, 2000, "p = 1.000"),
])
def test_p_values_are_written_one_way(p, n_boot, text):
    assert format_p(p, n_boot) == text


@pytest.mark.parametrize("bad", [None, -0.1, 1.5, float("nan")])
def test_a_p_value_outside_0_1_is_an_error(bad):
    with pytest.raises(ValueError, match="p-value"):
        format_p(bad)


def test_run_names_are_checked():
    assert check_run_name(None) == "" and check_run_name("  My run ") == "My run"
    assert check_run_name("x" * 80) == "x" * 80
    with pytest.raises(ValueError, match="at most 80 characters"):
        check_run_name("x" * 81)
    with pytest.raises(ValueError, match="one line"):
        check_run_name("two\nlines")
    with pytest.raises(ValueError, match="text"):
        check_run_name(42)


def test_prompt_labels_tell_a_bundled_prompt_from_a_run(core):
    run = {"value": "run:20261205-abc", "kind": "run", "id": "20261205-abc", "name": "My run",
           "method": "calibprompt", "seed": 1}
    assert prompt_label(run) == "My run (calibprompt, seed 1)"
    assert run_label({**run, "name": ""}) == "run 20261205-abc (calibprompt, seed 1)"
    options = core.prompt_options(core.new_session())
    assert [o["value"] for o in options] == core.prompt_choices(core.new_session())
    pairs = dict((value, label) for label, value in prompt_choice_pairs(options + [run]))
    assert pairs["zero-shot"] == "zero-shot" and pairs["coop"] == "coop (bundled)"
    assert pairs["run:20261205-abc"] == "My run (calibprompt, seed 1)"


def test_history_in_percent_and_progress_text_escaped():
    frame = history_frame([{"run": "r1", "name": "<b>mine</b>", "status": "done", "accuracy": 0.8456, "ece": 0.0681},
                           {"run": "r2", "status": "running", "accuracy": None, "ece": None}])
    assert frame.loc[0, "accuracy"] == "84.6 %" and frame.loc[0, "ECE"] == "6.8 %"
    assert frame.loc[1, "accuracy"] == "" and frame.loc[1, "status"] == "running"
    assert frame.loc[0, "name"] == "<b>mine</b>"  # a Dataframe cell shows it as text
    html = progress_html({"status": "failed", "error": "ValueError: <img src=x onerror=alert(1)>"}, "r1")
    assert "<img" not in html and "&lt;img src=x" in html


def _runner_that_loads_slowly(store, gate):
    def load(model, device):
        gate.wait(30)
        raise RuntimeError("stopped loading on purpose")

    return JobRunner(store, backbone_loader=load)


def test_a_job_is_running_while_its_model_loads_and_the_owner_finds_it_again(calibprompt_home):
    store = RunStore()
    gate = threading.Event()
    runner = _runner_that_loads_slowly(store, gate)
    run_id = runner.submit(TrainJob(model="demo", dataset="demo", task="demo", device="cpu"),
                           owner=owner_for(TOKEN), name="Slow one")
    for _ in range(100):
        if store.get_run(run_id).status == "running":
            break
        threading.Event().wait(0.05)
    assert store.get_run(run_id).status == "running"  # not "queued" once the worker took it
    assert store.get_run(run_id).params["name"] == "Slow one"
    assert runner.active_job(owner_for(TOKEN)) == run_id
    assert runner.active_job(owner_for(new_token())) is None
    with pytest.raises(PermissionError, match="Only the user"):
        runner.cancel(run_id, owner=owner_for(new_token()))
    assert runner.cancel(run_id, owner=owner_for(TOKEN))
    gate.set()
    runner.wait(run_id, timeout=30)
    assert runner.active_job(owner_for(TOKEN)) is None


def test_core_records_the_name_and_lists_the_history_as_data(core, monkeypatch):
    gate = threading.Event()
    monkeypatch.setattr(core.runner, "_run", lambda entry: gate.wait(30))
    state = core.new_session(owner=owner_for(TOKEN))
    assert core.active_job(state) is None
    state, run_id = core.start_training(state, "demo", method="coop", epochs=1, name="  Night run  ")
    with pytest.raises(ValueError, match="80 characters"):
        core.start_training(state, "demo", method="coop", epochs=1, name="n" * 81)
    reloaded = core.new_session(owner=owner_for(TOKEN))  # a reload: a fresh state, the same browser
    assert core.active_job(reloaded) == run_id
    row = next(r for r in core.run_history(reloaded) if r["run"] == run_id)
    assert row["name"] == "Night run" and row["by"] == "you" and row["accuracy"] is None
    assert run_id not in [r["run"] for r in core.run_history(core.new_session())]  # another browser's: hidden
    assert core.cancel(reloaded, run_id)
    gate.set()
    core.runner.wait(run_id, timeout=30)
    assert core.store.get_run(run_id).status == "cancelled"
