"""The app as a server: the /compare API through gradio_client, bad files refused, and a cold start
of `python app.py` with the Hugging Face Hub unreachable."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_images" / "demo-norm-0048.png"


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_compare_endpoint_returns_the_three_methods(client):
    from gradio_client import handle_file

    result = client.predict(handle_file(str(SAMPLE)), api_name="/compare")
    assert set(result) == {"zero-shot", "coop", "calibprompt"}
    for probs in result.values():
        assert len(probs) == 9 and abs(sum(probs.values()) - 1) < 1e-6


def test_corrupt_and_empty_files_are_refused_and_the_server_keeps_serving(client, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    with pytest.raises(Exception) as info:
        client.predict(handle_file(str(bad)), api_name="/compare")
    assert "image" in str(info.value).lower()
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(Exception, match="empty"):
        client.predict(handle_file(str(empty)), api_name="/compare")
    result = client.predict(handle_file(str(SAMPLE)), api_name="/compare")
    assert set(result) == {"zero-shot", "coop", "calibprompt"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_app_py_answers_compare_within_a_minute_with_the_hub_unreachable(tmp_path):
    from gradio_client import Client, handle_file

    port = _free_port()
    env = dict(os.environ, CALIBPROMPT_HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"),
               HF_ENDPOINT="http://127.0.0.1:9", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False")
    env.pop("HF_HUB_OFFLINE", None)
    start = time.time()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        result = None
        while time.time() - start < 60 and proc.poll() is None:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                result = client.predict(handle_file(str(SAMPLE)), api_name="/compare")
                break
            except Exception:  # not up yet
                time.sleep(1)
        elapsed = time.time() - start
        assert result is not None, proc.stdout.read() if proc.poll() is not None else "no answer within 60 s"
        assert set(result) == {"zero-shot", "coop", "calibprompt"} and elapsed < 60
    finally:
        proc.terminate()
        proc.wait(30)
