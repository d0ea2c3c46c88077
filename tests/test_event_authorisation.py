"""Every event checks its owner from the request (issue 18, items 1 and 6), over HTTP as any client can call
it: the raw queue route, by function index, with the page's state held by the server.

Two apps over the demo model, each with its own data directory: one with logins (alice and bob) and one
without (two browser identities, their tokens sent as the page's ``gr.BrowserState`` would). In each, the
first user owns a private upload, a finished run, a verdict with a note and a job; then the second user
calls **every** event of the app, in their own page, with every input naming the first user's things, and
never reads any of them back, nor changes them. With logins, bob cannot act in alice's page by sending her
session hash (the page is bound to her sign-in).
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from tests.test_private_uploads import make_zip

SECRET_RUN = "alices-secret-run"
SECRET_NOTE = "alices-secret-note"
#: what only alice's upload can produce (its 14 test images, make_zip's test=7 per class; bob's demo sets have
#: other sizes), its image file names (make_zip: "<class>-<split>-<i>.png"), her run's name and her note
SECRETS = ("14 test images", "norm-test-", "tum-test-", "norm-train-", SECRET_RUN, SECRET_NOTE)
PASSWORDS = {"alice": "alice-pass-1", "bob": "bob-pass-2"}


class Client:
    """One user's HTTP client of the app: signed in (with logins) and one page session of their own."""

    def __init__(self, url: str, config: dict, user: str | None = None, token: str | None = None):
        import httpx

        self.http = httpx.Client(base_url=url, timeout=180)
        if user:
            signed = self.http.post("login", data={"username": user, "password": PASSWORDS[user]})
            assert signed.status_code == 200, signed.text
        self.config = config or self.http.get("config").json()
        self.elem = {c["id"]: c.get("props", {}).get("elem_id") for c in self.config["components"]}
        self.session = secrets.token_hex(6)
        self.token = token

    def deps(self) -> list[dict]:
        return self.config["dependencies"]

    def dep(self, fn_name_or_target: str) -> dict:
        for d in self.deps():
            if any(self.elem.get(i) == fn_name_or_target for i, _ in d["targets"]):
                return d
        raise KeyError(fn_name_or_target)

    def join(self, dep: dict, data: list, session: str | None = None):
        trigger = dep["targets"][0][0] if dep["targets"] else None
        return self.http.post("gradio_api/queue/join", json={
            "data": data, "fn_index": dep["id"], "trigger_id": trigger,
            "session_hash": session or self.session, "event_data": None})

    def call(self, dep: dict, data: list, session: str | None = None) -> dict:
        """Run one event and return the queue's completion message."""
        joined = self.join(dep, data, session)
        assert joined.status_code == 200, joined.text
        with self.http.stream("GET", "gradio_api/queue/data", params={"session_hash": session or self.session}) as s:
            for line in s.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed":
                    return message
        raise AssertionError(f"event {dep['id']} never completed")

    def load(self) -> dict:
        """The page's load event (its identity read): ``[state, browser token]``."""
        load = next(d for d in self.deps() if d["targets"] and d["targets"][0][1] == "load" and len(d["inputs"]) == 2)
        return self.call(load, [None, self.token])


def _serve(home: Path, auth: bool):
    import calibprompt.demo
    from calibprompt.app import build_demo
    from calibprompt.app.launch import private_paths
    from calibprompt.app.login import guarded_launch_kwargs
    from calibprompt.app.theme import launch_kwargs
    from calibprompt.backbones import load_backbone
    from calibprompt.service.core import Core

    calibprompt.demo.register()
    core = Core(load_backbone("demo"), "Model: the bundled demo model (authorisation tests).")
    demo = build_demo(core)
    demo.queue(default_concurrency_limit=4)
    extra = guarded_launch_kwargs(list(PASSWORDS.items())) if auth else {}
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, blocked_paths=private_paths(),
                            **launch_kwargs(), **extra)
    return demo, core, url


@pytest.fixture(scope="module", params=["logins", "browsers"])
def world(request, tmp_path_factory, demo_backbone):
    """``(core, alice, bob, alice's things)`` on a fresh app with (or without) logins."""
    previous = {k: os.environ.get(k) for k in ("CALIBPROMPT_HOME", "GRADIO_TEMP_DIR")}
    home = tmp_path_factory.mktemp(f"authz-{request.param}")
    os.environ["CALIBPROMPT_HOME"] = str(home)
    os.environ.pop("GRADIO_TEMP_DIR", None)  # build_demo sets it to this app's data directory
    auth = request.param == "logins"
    demo, core, url = _serve(home, auth)
    try:
        import httpx

        alice = Client(url, None, "alice" if auth else None, None if auth else secrets.token_urlsafe(32))
        bob = Client(url, alice.config, "bob" if auth else None, None if auth else secrets.token_urlsafe(32))
        things = _alices_things(core, alice, home, auth)
        for client in (alice, bob):  # the pages open once alice's things exist (her menus then list them)
            assert client.load().get("success")
            task = next(d for d in client.deps() if any(client.elem.get(i) == "task" and e == "input"
                                                        for i, e in d["targets"]))
            assert client.call(task, [None, "demo-binary", None]).get("success")  # alice's run's task
        yield core, alice, bob, things
    finally:
        demo.close()
        for key, value in previous.items():  # the other apps of this test session keep their own folders
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _owner(client: Client, auth: bool) -> str:
    from calibprompt.service.session import owner_for

    return owner_for(client.token, "alice" if auth else None)


def _alices_things(core, alice: Client, home: Path, auth: bool) -> dict:
    """Alice's private upload, finished run, verdict (with a note) and queued job, made through the core."""
    from calibprompt.runs.store import RunStore

    owner = _owner(alice, auth)
    state = core.set_task(core.new_session(owner=owner), "demo-binary").with_(owner=owner, reader="Alice")
    choice = core.upload_dataset(str(make_zip(home / "alicescans.zip", test=7)), owner)
    store = RunStore()
    run = store.create_run("train", {"model": "demo", "task": "demo-binary", "method": "coop", "seed": 1,
                                     "owner": owner, "name": SECRET_RUN})
    store.start_run(run, "cpu")
    store.finish_run(run, {"task": "demo-binary", "accuracy": 0.5, "ece": 0.1}, _checkpoint_copy(home / run))
    cases, _ = core.review_cases(state, choice, ["zero-shot"], min_confidence=0.0)
    verdict = core.save_review(state, choice, cases[0], "zero-shot", "disagree", SECRET_NOTE) if cases else None
    return {"owner": owner, "state": state, "upload": choice, "run": run, "verdict": verdict,
            "files": [p.name for p in Path(home).rglob("*.png")]}


def _checkpoint_copy(folder: Path) -> Path:
    """A copy of the bundled demo-binary CoOp prompt, as a finished run's own checkpoint."""
    import shutil

    from calibprompt.demo.bundle import bundled_prompt
    from calibprompt.prompting.checkpoint import checkpoint_paths

    folder.mkdir(parents=True)
    for source in checkpoint_paths(bundled_prompt("demo-binary", "coop")):
        shutil.copy(source, folder / source.name)
    return folder / Path(bundled_prompt("demo-binary", "coop")).name


def _inputs(client: Client, dep: dict, things: dict) -> list:
    """An event's inputs as an attacker fills them: every field that names a thing names alice's."""
    by_elem = {"train-run": things["run"], "run-share-id": things["run"],
               "prompts": ["zero-shot", f"run:{things['run']}"], "reader": "Alice",
               "review-note": "bob was here", "review-verdict": "agree"}
    data = []
    for i in dep["inputs"]:
        comp = next(c for c in client.config["components"] if c["id"] == i)
        elem, kind = comp.get("props", {}).get("elem_id") or "", comp["type"]
        if elem in by_elem:
            data.append(by_elem[elem])
        elif kind == "dropdown" and "dataset" in elem:
            data.append(things["upload"])
        elif kind == "browserstate":
            data.append(client.token)
        else:
            data.append(comp.get("props", {}).get("value"))
    return data


def test_bob_calls_every_event_with_alices_things_and_reads_or_changes_none(world):
    core, alice, bob, things = world
    secrets_ = SECRETS  # what only alice's things hold (bob's own inputs, echoed in a refusal, are no leak)
    for dep in bob.deps():
        if not dep["targets"] or dep["targets"][0][1] in ("load",):
            continue
        message = bob.call(dep, _inputs(bob, dep, things))
        text = json.dumps(message)
        leaked = [s for s in secrets_ if s in text]
        assert not leaked, (dep["id"], leaked, text[:500])
    state = things["state"]
    assert any(r["run"] == things["run"] for r in core.run_history(state))  # still alice's, unchanged
    assert core.store.get_run(things["run"]).status == "done"


def _trigger(client: Client, kind: str) -> dict:
    return next(d for d in client.deps() if d["targets"] and d["targets"][0][1] == kind)


def test_alice_reads_her_own_things_through_the_same_events(world):
    """The live case of the test above: the same events, filled the same way, in alice's page show her things
    (so the battery's silence is the authorisation, not a broken call)."""
    core, alice, bob, things = world
    shown = ""
    for dep in (_trigger(alice, "tick"), alice.dep("review-find"), alice.dep("calibration-button")):
        message = alice.call(dep, _inputs(alice, dep, things))
        assert message.get("success"), message
        shown += json.dumps(message)
    found = [s for s in SECRETS if s in shown]
    assert SECRET_RUN in found and "14 test images" in found, found


def _sample(client: Client) -> str:
    picker = next(c for c in client.config["components"] if c.get("props", {}).get("elem_id") == "sample-picker")
    return picker["props"]["choices"][0][1]


@pytest.mark.parametrize("world", ["logins"], indirect=True)  # without logins a page's session hash is its only handle
def test_with_logins_bob_cannot_use_alices_page(world):
    core, alice, bob, things = world
    from calibprompt.app.page_binding import REFUSAL

    compare = alice.dep("compare-button")
    data = [None, None, _sample(alice), ["zero-shot"], 90, "auto", "off"]  # ..., answer with, test-time tuning
    assert alice.call(compare, data).get("success")  # alice's page is live
    refused = bob.join(compare, data, session=alice.session)
    assert refused.status_code == 403 and refused.json()["detail"] == REFUSAL
    stream = bob.http.get("gradio_api/queue/data", params={"session_hash": alice.session})
    assert stream.status_code == 403
    assert bob.http.get(f"gradio_api/heartbeat/{alice.session}").status_code == 403
    assert bob.call(compare, data).get("success")  # bob's own page works
