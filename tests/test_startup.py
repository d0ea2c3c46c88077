"""Start-up: the page is built and served before the default model loads; the model then loads once,
in the background, while requests for it wait; and the start-up benchmark keeps its contract."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_images" / "demo-norm-0048.png"


def _core(tmp_path, loader, **kwargs):
    from calibprompt.runs.store import RunStore
    from calibprompt.service.core import Core
    from calibprompt.service.pool import BackbonePool

    return Core("demo", "test banner", store=RunStore(tmp_path / "runs.db"), pool=BackbonePool(loader=loader),
                device="cpu", **kwargs)


class GatedLoader:
    """Loads the real demo backbone once ``release`` is set; counts its calls; fails the first ``fail`` calls."""

    def __init__(self, fail: int = 0):
        self.release = threading.Event()
        self.calls = 0
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, name, device):
        from calibprompt.backbones import load_backbone

        with self._lock:
            self.calls += 1
            failing = self.calls <= self.fail
        assert self.release.wait(120), "the test never released the loader"
        if failing:
            raise OSError(f"cannot read the weights of {name} (test)")
        return load_backbone(name, device=device)


def test_auto_picks_the_demo_without_loading_it(monkeypatch, tmp_path):
    from huggingface_hub import constants

    import calibprompt.service.startup as startup

    def no_load(*args, **kwargs):
        raise AssertionError("choose_model loaded a model")

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(startup, "hub_reachable", lambda timeout=3.0: (False, "no route"))
    monkeypatch.setattr(startup, "load_backbone", no_load)
    choice = startup.choose_model("auto")
    assert choice.name == "demo" and choice.backbone is None and "unreachable" in choice.banner
    explicit = startup.choose_model("demo")  # a bundled model named on the command line loads later too
    assert explicit.name == "demo" and explicit.backbone is None and explicit.banner.startswith("Model: demo.")
    with pytest.raises(AssertionError, match="loaded a model"):  # any other named model loads now, to fail fast
        startup.choose_model("tiny-random")


def test_a_core_on_a_model_name_knows_its_defaults_before_loading(tmp_path):
    loader = GatedLoader()
    core = _core(tmp_path, loader)
    state = core.new_session()
    assert (core.default_model, core.default_task, core.default_device) == ("demo", "demo", "cpu")
    assert core.model_family("demo") == "demo" and core.model_family("tiny-random") == "tiny"
    assert core.banner_for(state) == "test banner"
    assert core.prompt_choices(state)[:3] == ["zero-shot", "coop", "calibprompt"]
    assert loader.calls == 0
    with pytest.raises(ValueError, match="Unknown backbone 'no-such-model'"):
        type(core)("no-such-model")  # refused before a store is opened


def test_the_interface_is_built_before_the_model_and_requests_wait_for_one_background_load(tmp_path, monkeypatch):
    from calibprompt.app import build_demo

    monkeypatch.setenv("CALIBPROMPT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "home" / "tmp" / "gradio"))  # restored afterwards
    loader = GatedLoader()
    core = _core(tmp_path, loader)
    build_demo(core)  # would block here if building the page needed the model
    assert loader.calls == 0
    ready = core.preload()
    assert core.preload() is ready
    answers, errors = [], []

    def ask():
        try:
            answers.append(core.compare_api(str(SAMPLE)))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    users = [threading.Thread(target=ask) for _ in range(4)]
    for user in users:
        user.start()
    assert not ready.done() and not answers  # everyone waits for the load
    loader.release.set()
    for user in users:
        user.join(120)
    assert not errors and len(answers) == 4
    assert all(set(a) == {"zero-shot", "coop", "calibprompt"} and a == answers[0] for a in answers)
    entry = ready.result(120)
    assert loader.calls == 1 and entry.name == "demo" and core.pool.loaded() == [("demo", "cpu")]
    assert len(core.heads) == 3  # warmed up (or computed by the first request): each head once


def test_a_failed_background_load_is_reported_and_the_next_request_tries_again(tmp_path, caplog):
    loader = GatedLoader(fail=1)
    loader.release.set()
    core = _core(tmp_path, loader)
    with caplog.at_level("ERROR", logger="calibprompt.service.core"):
        ready = core.preload()
        with pytest.raises(OSError, match="cannot read the weights of demo"):
            ready.result(120)
    assert "Loading the app's model demo failed" in caplog.text
    assert set(core.compare_api(str(SAMPLE))) == {"zero-shot", "coop", "calibprompt"}
    assert loader.calls == 2


def test_the_default_model_stays_pinned_before_and_after_it_loads(tmp_path):
    from calibprompt.backbones import load_backbone

    core = _core(tmp_path, lambda name, device: load_backbone(name, device=device))
    core.pool.max_loaded = 1
    core.pool.get("tiny-random", "cpu")  # the pool is full; the default is not loaded yet
    core.preload(warm=False).result(120)
    core.pool.get("tiny-random-hf", "cpu")
    assert ("demo", "cpu") in core.pool.loaded()


@pytest.mark.parametrize("outcome", ["ready", "failed", "still loading"])
def test_the_launcher_preloads_once_serving_and_always_turns_the_collector_back_on(outcome, caplog):
    import gc
    from concurrent.futures import Future
    from types import SimpleNamespace

    from calibprompt.app.launch import preload_when_serving

    future = Future()
    if outcome == "ready":
        future.set_result("entry")
    elif outcome == "failed":
        future.set_exception(OSError("no weights (test)"))
    demo, calls = SimpleNamespace(is_running=False), []
    core = SimpleNamespace(preload=lambda: calls.append(1) or future)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with caplog.at_level("WARNING", logger="calibprompt.app"):
            watcher = preload_when_serving(demo, core, poll=0.005, timeout=0.05)
            watcher.join(0.1)
            assert watcher.is_alive() and not calls and not gc.isenabled()  # waits for the server
            demo.is_running = True
            watcher.join(30)
        assert not watcher.is_alive() and calls == [1] and gc.isenabled()
        assert ("not ready after" in caplog.text) == (outcome == "still loading")
    finally:
        gc.unfreeze()
        (gc.enable if was_enabled else gc.disable)()


def test_the_page_needs_neither_the_model_stack_nor_gradio_for_help(tmp_path):
    code = """
import sys
import calibprompt.app.launch
assert 'gradio' not in sys.modules, 'importing the launcher imported Gradio'
import calibprompt.demo
from calibprompt.service.core import Core
from calibprompt.app import build_demo
calibprompt.demo.register()
build_demo(Core('demo', 'test'))
print(sorted(m for m in ('open_clip', 'torchvision', 'transformers', 'calibprompt.runs.jobs') if m in sys.modules))
"""
    env = dict(os.environ, CALIBPROMPT_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _benchmark():
    spec = importlib.util.spec_from_file_location("app_startup", ROOT / "benchmarks" / "app_startup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_startup_benchmark_writes_its_contract(tmp_path, monkeypatch):
    """The figures' plumbing (medians, JSON keys) with the app's start faked; ``python app.py`` itself is
    started in tests/test_app_api.py."""
    bench = _benchmark()
    assert 0 <= bench.import_seconds() < 60
    assert bench.cpu_seconds(os.getpid()) is None or bench.cpu_seconds(os.getpid()) > 0
    starts = iter([(3.0, 6.0, 0.2), (1.0, 4.0, 0.4), (2.0, 5.0, 0.3)])

    def fake_start(model, timeout, image, hub_endpoint):
        assert model == "demo" and image == bench.SAMPLE and hub_endpoint == bench.CLOSED_HUB
        page, first, second = next(starts)
        return {"page_seconds": page, "first_answer_seconds": first, "second_answer_seconds": second,
                "page_cpu_seconds": None, "first_answer_cpu_seconds": None}

    monkeypatch.setattr(bench, "start_once", fake_start)
    monkeypatch.setattr(bench, "app_device", lambda: "cpu")
    out = tmp_path / "startup.json"
    assert bench.main(["--runs", "3", "--model", "demo", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"import_seconds", "page_seconds", "first_answer_seconds", "second_answer_seconds", "device"} <= set(result)
    assert (result["page_seconds"], result["first_answer_seconds"], result["second_answer_seconds"]) == (2.0, 5.0, 0.3)
    assert result["device"] == "cpu" and result["runs"] == 3 and len(result["per_run"]) == 3
    with pytest.raises(SystemExit):
        bench.main(["--runs", "0"])
