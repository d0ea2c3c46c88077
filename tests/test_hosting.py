"""Hosting for several users: what the server serves and refuses, and many clients at once."""
from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from calibprompt.paths import SAMPLE_IMAGES_DIR

SAMPLE = SAMPLE_IMAGES_DIR / "demo-norm-0048.png"


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _routes(base: str, path: Path) -> list[str]:
    base = base.rstrip("/")
    return [f"{base}/gradio_api/file={path}", f"{base}/gradio_api/file/{path}", f"{base}/file={path}"]


@pytest.fixture(scope="module")
def home(app_url):
    return Path(os.environ["CALIBPROMPT_HOME"])


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_the_run_store_uploads_datasets_and_exports_are_refused_on_every_file_route(app_url, home, tmp_path):
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
            path.write_bytes(b"secret")
    assert (home / "runs.db").stat().st_size > 6  # the real store
    for what, path in private.items():
        for url in _routes(app_url, path):
            assert _status(url) in (403, 404), f"{what} served at {url}"


def test_sample_images_are_served(app_url):
    assert _status(_routes(app_url, SAMPLE)[0]) == 200


def test_uploads_land_inside_the_data_directory(client, home):
    from gradio_client import handle_file

    client.predict(handle_file(str(SAMPLE)), "", api_name="/compare")
    cached = list((home / "tmp" / "gradio").rglob("demo-norm-0048.png"))
    assert cached, "the upload was not kept in the data directory's upload folder"


def test_the_public_api_is_only_compare_and_assess(client):
    info = client.view_api(print_info=False, return_format="dict")
    assert sorted(info["named_endpoints"]) == ["/assess", "/compare"]
    assert not info["unnamed_endpoints"]


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
