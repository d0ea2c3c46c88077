"""Hosting for several users: what the server serves and refuses over HTTP, and many clients at once.

What a caller reaches, route by route (Gradio 6.31, the app of ``conftest.app_url``):

* **The public API** is ``/compare`` and ``/assess``: named, documented, callable by anyone who reaches the page.
* **Every other event** is ``api_visibility="private"`` (or, for the ``gr.render`` of the compare tab,
  ``"undocumented"``). ``gradio_client`` refuses a private ``fn_index`` before it sends anything. The HTTP
  routes do not: ``POST gradio_api/queue/join`` with the ``fn_index``, then ``GET gradio_api/queue/data``, is
  how the page itself runs every event, so it stays open by Gradio's design, and Gradio also runs a private
  event by its name on ``POST gradio_api/call/<name>`` and ``POST gradio_api/run/<name>``. What protects the
  data there is the event itself: it takes its owner from the request and answers nothing of another
  owner's. The tests below call every event on each of those routes as a stranger and show that; the full
  battery (two users, each input naming the other's upload, run, verdict and job, with and without logins)
  is ``tests/test_event_authorisation.py``.
* **Files** are served on ``gradio_api/file=<path>`` and ``gradio_api/file/<path>``: the sample images and
  what the app made in its upload folder, never the run store, uploads, datasets, checkpoints or exports.
"""
from __future__ import annotations

import json
import os
import secrets
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from calibprompt.paths import SAMPLE_IMAGES_DIR

SAMPLE = SAMPLE_IMAGES_DIR / "demo-norm-0048.png"
PUBLIC = ("/assess", "/compare")
#: what only the other owner's things hold: their run's name and their verdict's note
SECRET_RUN = "malloryssecretrun"
SECRET_NOTE = "mallorys-secret-note"
OTHER_OWNER = "user:mallory"
#: the file-route forms Gradio 6.31 serves (the unprefixed ``file=`` form of Gradio 4 is no route any more)
LIVE_FORMS = ("{base}/gradio_api/file={path}", "{base}/gradio_api/file/{path}")
DEAD_FORMS = ("{base}/file={path}", "{base}/file/{path}")


def _get(url: str) -> tuple[int, bytes]:
    """``(status, body)`` of a GET, error answers included."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _status(url: str) -> int:
    return _get(url)[0]


def _url(form: str, base: str, path: Path) -> str:
    return form.format(base=base.rstrip("/"), path=path)


@pytest.fixture(scope="module")
def home(app_url):
    return Path(os.environ["CALIBPROMPT_HOME"])


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def http(app_url):
    import httpx

    with httpx.Client(base_url=app_url, timeout=180) as session:
        yield session


@pytest.fixture(scope="module")
def config(http):
    return http.get("config").json()


@pytest.fixture(scope="module")
def others(home):
    """Another owner's finished run and verdict (with a note) in the app's store; the run goes afterwards."""
    from calibprompt.runs.store import RunStore

    store = RunStore()
    run = store.create_run("train", {"model": "demo", "task": "demo-binary", "method": "coop", "seed": 1,
                                     "owner": OTHER_OWNER, "name": SECRET_RUN})
    store.start_run(run, "cpu")
    store.finish_run(run, {"task": "demo-binary", "accuracy": 0.5, "ece": 0.1}, _checkpoint_copy(home / "runs" / run))
    store.set_review(reader="Mallory", dataset="mallorys-set", image="mallory/secret.png", method="coop",
                     verdict="disagree", note=SECRET_NOTE, owner=OTHER_OWNER)
    # the run's id is what the stranger sends, so an answer that echoes it back leaks nothing
    yield {"run": run, "secrets": (SECRET_RUN, SECRET_NOTE, "mallorys-set", "mallory/secret.png")}
    store.delete_run(run, force=True)


def _checkpoint_copy(folder: Path) -> Path:
    """A copy of the bundled demo-binary CoOp prompt, as a finished run's own checkpoint."""
    import shutil

    from calibprompt.demo.bundle import bundled_prompt
    from calibprompt.prompting.checkpoint import checkpoint_paths

    folder.mkdir(parents=True)
    for source in checkpoint_paths(bundled_prompt("demo-binary", "coop")):
        shutil.copy(source, folder / source.name)
    return folder / Path(bundled_prompt("demo-binary", "coop")).name


def _private_events(config: dict) -> list[dict]:
    """Every event with a server function that is not one of the public endpoints."""
    return [d for d in config["dependencies"] if d.get("backend_fn") and "/" + str(d.get("api_name")) not in PUBLIC]


def _inputs(config: dict, dep: dict, run: str, token: str | None = None) -> list:
    """What a stranger's page sends: each component's own value, its browser token where the page sends its
    ``gr.BrowserState``, and the other owner's run id in the free-text Run box (menus take only their listed
    choices: Gradio refuses any other value before the event runs)."""
    components = {c["id"]: c for c in config["components"]}
    data = []
    for i in dep["inputs"]:
        component = components.get(i, {})
        props = component.get("props", {})
        if props.get("elem_id") == "train-run":
            data.append(run)
        elif component.get("type") == "browserstate":
            data.append(token)
        else:
            data.append(props.get("value"))
    return data


def _queue_call(http, dep: dict, data: list, session: str) -> tuple[int, dict]:
    """``POST gradio_api/queue/join`` then ``GET gradio_api/queue/data``: the join's status and the
    completion message (``{}`` when the join was refused)."""
    trigger = dep["targets"][0][0] if dep["targets"] else None
    joined = http.post("gradio_api/queue/join", json={"data": data, "fn_index": dep["id"], "trigger_id": trigger,
                                                      "session_hash": session, "event_data": None})
    if joined.status_code != 200:
        return joined.status_code, {}
    with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed" and message.get("event_id") == joined.json()["event_id"]:
                return 200, message
    raise AssertionError(f"event {dep['id']} ({dep.get('api_name')}) joined but never completed")


def _named_call(http, dep: dict, data: list) -> tuple[int, str]:
    """``POST gradio_api/call/<name>`` then ``GET gradio_api/call/<name>/<event_id>``: the status and all
    that came back."""
    name = dep["api_name"]
    posted = http.post(f"gradio_api/call/{name}", json={"data": data})
    if posted.status_code != 200:
        return posted.status_code, posted.text
    answer = http.get(f"gradio_api/call/{name}/{posted.json()['event_id']}")
    return answer.status_code, answer.text


def _leaked(text: str, others: dict) -> list[str]:
    return [s for s in others["secrets"] if s in text]


# -- the public API ---------------------------------------------------------------------------------------


def test_the_public_api_is_compare_and_assess_and_both_answer_live(client):
    info = client.view_api(print_info=False, return_format="dict")
    assert sorted(info["named_endpoints"]) == list(PUBLIC)
    assert not info["unnamed_endpoints"]
    from gradio_client import handle_file

    compared = client.predict(handle_file(str(SAMPLE)), "", api_name="/compare")
    assert set(compared) == {"zero-shot", "coop", "calibprompt"}
    assert all(abs(sum(p.values()) - 1) < 1e-6 for p in compared.values())
    assessed = client.predict(handle_file(str(SAMPLE)), "", api_name="/assess")
    assert assessed["task"] == "demo" and assessed["verdict"] in ("answer", "refer")
    assert assessed["refer"] == (assessed["verdict"] != "answer")


def test_every_other_event_is_private_or_the_compare_tabs_render(config):
    events = _private_events(config)
    assert len(events) >= 40  # every tab's events: a layout change that drops them shows here
    undocumented = [d for d in events if d.get("api_visibility") != "private"]
    assert all(d["api_visibility"] == "undocumented" and d.get("render_id") is not None for d in undocumented)
    assert len(undocumented) <= 1, undocumented  # gr.render's own trigger (Gradio makes it "undocumented")


# -- every private event over HTTP ------------------------------------------------------------------------


def test_gradio_client_refuses_every_private_fn_index_before_sending_it(client, config):
    private = [d for d in _private_events(config) if d["api_visibility"] == "private"]
    for dep in private:
        with pytest.raises(ValueError, match=f"Invalid function index: {dep['id']}"):
            client.predict(fn_index=dep["id"])
        with pytest.raises(ValueError, match=f"Invalid function index: {dep['id']}"):
            client.submit(fn_index=dep["id"])
    from gradio_client import handle_file

    compare = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "compare")
    out = client.predict(handle_file(str(SAMPLE)), "", fn_index=compare)  # an index the client does send
    assert set(out) == {"zero-shot", "coop", "calibprompt"}


@pytest.mark.slow
def test_the_queue_runs_every_private_event_for_a_stranger_and_it_answers_nothing_of_another_owners(
        http, config, others):
    """The queue routes stay open (the page runs every event through them): a stranger's page session,
    which never loaded the page, joins each event by ``fn_index`` and gets an answer or a plain error, never
    the other owner's run or verdict. See tests/test_event_authorisation.py for the two-user battery."""
    session, token, answered, started = secrets.token_hex(6), secrets.token_urlsafe(32), 0, []
    load = next(d for d in _private_events(config) if d["targets"] and d["targets"][0][1] == "load"
                and len(d["inputs"]) == 2)
    assert _queue_call(http, load, [None, token], session)[1].get("success")  # a fresh browser opens the page
    for dep in _private_events(config):
        status, message = _queue_call(http, dep, _inputs(config, dep, others["run"], token), session)
        assert status == 200, (dep["api_name"], status)  # open by Gradio's design: the page needs it
        text = json.dumps(message)
        assert "Traceback" not in text and not _leaked(text, others), (dep["api_name"], _leaked(text, others))
        answered += bool(message.get("success"))
        if dep["api_name"] == "start_job" and message.get("success"):
            started.append((dep, message["output"]["data"][1]))  # the stranger's own job: cancelled below
    assert answered >= len(_private_events(config)) // 3  # the handlers ran, not only Gradio's input checks
    for dep, run in started:
        cancel = next(d for d in _private_events(config) if d["api_name"] == "cancel_job")
        cancelled = _queue_call(http, cancel, [None, run], session)[1]
        assert cancelled.get("success") or "no queued or running job" in json.dumps(cancelled)  # or it ended


@pytest.mark.slow
def test_private_events_called_by_name_answer_nothing_of_another_owners(http, config, others):
    """Gradio 6.31 also runs a private event by its name on ``gradio_api/call/<name>`` and
    ``gradio_api/run/<name>`` (no page uses those for them). Whatever each route answers, refused or run,
    nothing of the other owner's is in it."""
    for dep in _private_events(config):
        data = _inputs(config, dep, others["run"])
        status, text = _named_call(http, dep, data)
        assert status in (200, 400, 403, 404, 422, 500), (dep["api_name"], status)
        assert not _leaked(text, others), (dep["api_name"], "call", _leaked(text, others))
        ran = http.post(f"gradio_api/run/{dep['api_name']}", json={"data": data})
        assert not _leaked(ran.text, others), (dep["api_name"], "run", _leaked(ran.text, others))


# -- files ------------------------------------------------------------------------------------------------


def _app_made_files(client, http, config, home: Path) -> dict[str, Path]:
    """A file the app made from an upload (``/compare``'s copy of the sample) and one it wrote itself (a
    stranger's review export), both in its upload folder."""
    from gradio_client import handle_file

    client.predict(handle_file(str(SAMPLE)), "", api_name="/compare")
    cached = sorted((home / "tmp" / "gradio").rglob(SAMPLE.name))
    export = next(d for d in _private_events(config) if d["api_name"] == "export_csv")
    status, message = _queue_call(http, export, _inputs(config, export, ""), secrets.token_hex(6))
    assert status == 200 and message.get("success"), message
    written = Path(next(v["value"]["path"] for v in message["output"]["data"] if isinstance(v, dict)
                        and isinstance(v.get("value"), dict) and "path" in v["value"]))
    assert cached and written.is_file()
    return {"the upload's copy": cached[0], "an export the app wrote": written}


def test_each_file_route_serves_the_samples_and_what_the_app_made(app_url, client, http, config, home, others):
    served = {"a sample image": SAMPLE, **_app_made_files(client, http, config, home)}
    for form in LIVE_FORMS:
        for what, path in served.items():
            status, body = _get(_url(form, app_url, path))
            assert status == 200 and body == path.read_bytes(), f"{what} not served at {form}"
    exported = served["an export the app wrote"].read_text()
    assert SECRET_NOTE not in exported  # a stranger's export holds their own verdicts only
    for form in DEAD_FORMS:  # no route at all: even the sample is not found there
        assert _status(_url(form, app_url, SAMPLE)) == 404


def test_the_same_routes_refuse_the_run_store_uploads_datasets_checkpoints_and_exports(app_url, home):
    private = {
        "runs.db": home / "runs.db",
        "an export": home / "exports" / "reviews.csv",
        "an unpacked upload": home / "uploads" / "scans" / "a" / "x.png",
        "a dataset image": home / "datasets" / "mine" / "a" / "x.png",
        "a checkpoint": home / "runs" / "r1" / "prompt.json",
    }
    for path in private.values():
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"secret-bytes-" + secrets.token_hex(8).encode())
    assert (home / "runs.db").stat().st_size > 6  # the real store
    for form in LIVE_FORMS:
        assert _status(_url(form, app_url, SAMPLE)) == 200  # the route is live: a refusal below is the route's
        for what, path in private.items():
            status, body = _get(_url(form, app_url, path))
            content = path.read_bytes()
            assert status in (403, 404), f"{what} served at {form}"
            assert content[:64] not in body and b"SQLite format" not in body, f"{what} leaked at {form}"


def test_uploads_land_inside_the_data_directory(client, home):
    from gradio_client import handle_file

    client.predict(handle_file(str(SAMPLE)), "", api_name="/compare")
    cached = list((home / "tmp" / "gradio").rglob("demo-norm-0048.png"))
    assert cached, "the upload was not kept in the data directory's upload folder"


def test_compare_takes_an_optional_task_and_is_stateless(client):
    from gradio_client import handle_file

    default = client.predict(handle_file(str(SAMPLE)), "", api_name="/compare")
    binary = client.predict(handle_file(str(SAMPLE)), "demo-binary", api_name="/compare")
    assert set(default) == set(binary) == {"zero-shot", "coop", "calibprompt"}
    assert len(default["coop"]) == 9 and len(binary["coop"]) == 2
    with pytest.raises(Exception, match="Unknown task"):
        client.predict(handle_file(str(SAMPLE)), "no-such-task", api_name="/compare")


def test_twenty_concurrent_compares_all_succeed(app_url):
    from gradio_client import Client, handle_file

    results, errors = [], []

    def call(task):
        try:
            out = Client(app_url, verbose=False).predict(handle_file(str(SAMPLE)), task, api_name="/compare")
            results.append((task, len(out["coop"])))
        except Exception as exc:  # noqa: BLE001 - collected and reported
            errors.append(repr(exc))

    threads = [threading.Thread(target=call, args=("demo-binary" if i % 2 else "",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors
    assert len(results) == 20
    assert all(n == (2 if task else 9) for task, n in results)  # every answer on the task it asked for


def test_auth_values_are_parsed_and_malformed_ones_refused():
    from calibprompt.app.launch import parse_auth

    assert parse_auth(None) is None
    assert parse_auth(["alice:pw1", "bob:p:w2"]) == [("alice", "pw1"), ("bob", "p:w2")]
    for bad in ("alice", ":pw", "alice:"):
        with pytest.raises(SystemExit, match="USER:PASSWORD"):
            parse_auth([bad])


def test_with_login_the_api_needs_the_password_and_the_user_owns_the_session(calibprompt_home):
    from gradio_client import Client, handle_file

    from calibprompt.app import build_demo
    from calibprompt.backbones import load_backbone
    from calibprompt.service.core import Core

    core = Core(load_backbone("demo"), "test")
    demo = build_demo(core).queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, auth=[("alice", "pw1")])
    try:
        assert _status(url + "gradio_api/info") in (401, 403)
        out = Client(url, auth=("alice", "pw1"), verbose=False).predict(handle_file(str(SAMPLE)), "",
                                                                        api_name="/compare")
        assert set(out) == {"zero-shot", "coop", "calibprompt"}
        with pytest.raises(Exception):
            Client(url, auth=("alice", "wrong"), verbose=False)
    finally:
        demo.close()
    state = core.new_session("alice")
    assert state.reader == "alice" and state.owner == "user:alice"
