"""Shared fixtures: tiny random-weight backbones (built once per test session, offline)."""
from __future__ import annotations

import os
import shutil

import pytest

#: Debian's Chromium, driven by Playwright in the browser tests (playwright cannot download browsers here)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync"]

# Tests never reach the Hugging Face Hub: an empty, private cache and no telemetry.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session", autouse=True)
def demo_registered():
    """The demo world's datasets and prompts, registered as the entry points do."""
    import calibprompt.demo

    calibprompt.demo.register()


@pytest.fixture(scope="session")
def tiny_native():
    from calibprompt.backbones import load_backbone

    return load_backbone("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def tiny_hf():
    from calibprompt.backbones import load_backbone

    return load_backbone("tiny-random-hf", device="cpu")


@pytest.fixture(scope="session", params=["tiny-random", "tiny-random-hf"])
def tiny_backbone(request, tiny_native, tiny_hf):
    return tiny_native if request.param == "tiny-random" else tiny_hf


@pytest.fixture(scope="session")
def demo_backbone():
    """The bundled demo model (offline), loaded once."""
    from calibprompt.backbones import load_backbone

    return load_backbone("demo", device="cpu")


@pytest.fixture()
def calibprompt_home(tmp_path, monkeypatch):
    """A private data directory for tests that write runs, caches or checkpoints."""
    home = tmp_path / "calibprompt-home"
    monkeypatch.setenv("CALIBPROMPT_HOME", str(home))
    return home


@pytest.fixture()
def core(demo_backbone, calibprompt_home):
    """A service core over the demo model, with a private data directory (each test its own store)."""
    from calibprompt.service.core import Core

    return Core(demo_backbone, "test banner")


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    """The app (build_demo over the demo model) served on localhost for the API and browser tests."""
    previous = os.environ.get("CALIBPROMPT_HOME")
    os.environ["CALIBPROMPT_HOME"] = str(tmp_path_factory.mktemp("app-home"))
    import calibprompt.demo
    from calibprompt.app import build_demo
    from calibprompt.app.launch import private_paths
    from calibprompt.app.theme import launch_kwargs
    from calibprompt.backbones import load_backbone
    from calibprompt.paths import SAMPLE_IMAGES_DIR
    from calibprompt.service.core import Core

    calibprompt.demo.register()
    core = Core(load_backbone("demo"), "Model: the bundled demo model (test server).",
                models=["demo", "tiny-random"])  # a second model that loads offline, for switching
    demo = build_demo(core)
    demo.queue(default_concurrency_limit=4)
    from calibprompt.app.guards import with_guards

    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, allowed_paths=[str(SAMPLE_IMAGES_DIR)],
                            blocked_paths=private_paths(), app_kwargs=with_guards(), run_history=False,
                            **launch_kwargs())  # the middleware and settings `python app.py` serves with
    yield url
    demo.close()
    if previous is None:
        os.environ.pop("CALIBPROMPT_HOME", None)
    else:
        os.environ["CALIBPROMPT_HOME"] = previous


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (each test opens its own contexts and pages)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield launched
        launched.close()
