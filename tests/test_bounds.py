"""Bounds and faults of issue 18 (parts 4 and 5): the per-owner upload quota, uploads removed by age, a full
queue in plain words, the bounded Compare preview, a full or read-only disk in Compare, upload and at start,
paths shown relative to the data directory, and every train / compare number checked by its field. Each
test shows the live case passing before the refusal."""
from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import threading
import time
import zipfile

import gradio as gr
import httpx
import pytest
from PIL import Image

from calibprompt.app.common import handler
from calibprompt.cli import main
from calibprompt import archives
from calibprompt.data import uploads as uploads_module
from calibprompt.data.uploads import check_quota, clean_uploads, extract_upload, start_cleaner, usage
from calibprompt.paths import owner_uploads_dir, shown, uploads_dir
from calibprompt.runs.requests import check_number, check_train_request

OWNER = "browser:" + "c" * 32
OTHER = "browser:" + "d" * 32


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _dataset_zip(path, size: int = 1000):
    """A two-class zip whose files declare ``size`` bytes each (4 files)."""
    return _zip(path, {f"{c}/{i}.png": os.urandom(size) for c in ("a", "b") for i in range(2)})


# ------------------------------------------------------------------ 1. the per-owner upload quota
def test_uploads_within_the_quota_pass_and_one_past_it_is_refused_before_unpacking(tmp_path, calibprompt_home,
                                                                                     monkeypatch):
    monkeypatch.setenv("CALIBPROMPT_UPLOAD_QUOTA_BYTES", "10000")
    first = extract_upload(_dataset_zip(tmp_path / "one.zip", 1000), OWNER)  # live: 4 000 of 10 000 bytes
    assert first.is_dir() and usage(OWNER) == (4000, 1)
    extract_upload(_dataset_zip(tmp_path / "two.zip", 1000), OWNER)  # 8 000 bytes
    before = sorted(p.name for p in owner_uploads_dir(OWNER).iterdir())

    def never(*args, **kwargs):
        raise AssertionError("nothing is unpacked past the quota")

    monkeypatch.setattr(uploads_module, "extract_zip", never)
    with pytest.raises(ValueError) as caught:
        extract_upload(_dataset_zip(tmp_path / "three.zip", 1000), OWNER)  # 12 000 > 10 000
    message = str(caught.value)
    assert "unpacks to 3.9 KB" in message and "already take 7.8 KB of the 9.8 KB" in message  # incoming, used, quota
    assert "Delete uploads you no longer need" in message
    assert sorted(p.name for p in owner_uploads_dir(OWNER).iterdir()) == before  # nothing half-written
    check_quota(OTHER, 4000)  # another owner's quota is their own


def test_the_number_of_datasets_is_bounded(tmp_path, calibprompt_home, monkeypatch, core):
    monkeypatch.setenv("CALIBPROMPT_UPLOAD_QUOTA_DATASETS", "2")
    archive = _dataset_zip(tmp_path / "scans.zip", 10)
    assert core.upload_dataset(str(archive), OWNER) == "uploads/scans"  # live, through the service
    assert core.upload_dataset(str(archive), OWNER) == "uploads/scans-2"
    with pytest.raises(ValueError, match="You have 2 uploaded datasets, the most one user may keep is 2"):
        core.upload_dataset(str(archive), OWNER)
    assert usage(OWNER)[1] == 2


def test_a_quota_override_that_is_not_a_number_is_named(calibprompt_home, monkeypatch):
    monkeypatch.setenv("CALIBPROMPT_UPLOAD_QUOTA_BYTES", "lots")
    with pytest.raises(ValueError, match=r"\$CALIBPROMPT_UPLOAD_QUOTA_BYTES must be a whole number"):
        check_quota(OWNER, 1)


# ------------------------------------------------------------------ 2. uploads removed by age
def _age(path, days: float) -> None:
    when = time.time() - days * 86400
    os.utime(path, (when, when), follow_symlinks=False)


def test_old_uploads_are_removed_never_following_a_link(tmp_path, calibprompt_home, caplog):
    fresh = extract_upload(_dataset_zip(tmp_path / "fresh.zip", 10), OWNER)
    old = extract_upload(_dataset_zip(tmp_path / "old.zip", 10), OWNER)
    _age(old, 40)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("not an upload")
    link = owner_uploads_dir(OWNER) / "link"
    link.symlink_to(outside, target_is_directory=True)
    _age(link, 40)
    assert clean_uploads(0) == [] and old.exists()  # 0 days keeps everything
    assert clean_uploads(60) == [] and old.exists()  # live: nothing is older than 60 days
    with caplog.at_level("INFO", logger="calibprompt.data.uploads"):
        removed = clean_uploads(30)
    assert sorted(p.name for p in removed) == ["link", "old"]
    assert fresh.is_dir() and not old.exists() and not os.path.lexists(link)
    assert (outside / "keep.txt").read_text() == "not an upload"  # the link's target is untouched
    assert sum("Removed the upload" in r.getMessage() for r in caplog.records) == 2


def test_the_cleaner_thread_and_the_cli_remove_old_uploads(tmp_path, calibprompt_home, monkeypatch, capsys):
    monkeypatch.setenv("CALIBPROMPT_UPLOAD_DAYS", "30")
    old = extract_upload(_dataset_zip(tmp_path / "old.zip", 10), OWNER)
    _age(old, 31)
    start_cleaner(every_s=3600)  # cleans at once, then hourly (the app starts it at launch)
    deadline = time.time() + 10
    while old.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not old.exists() and not owner_uploads_dir(OWNER).exists()  # the emptied owner folder goes too
    kept = extract_upload(_dataset_zip(tmp_path / "kept.zip", 10), OWNER)
    _age(kept, 10)
    assert main(["store", "clean-uploads", "--days", "11"]) == 0 and kept.exists()  # live: younger than 11 days
    assert main(["store", "clean-uploads", "--days", "9"]) == 0 and not kept.exists()
    out = capsys.readouterr().out
    assert "Removed 0 upload(s) older than 11 days." in out and "Removed 1 upload(s) older than 9 days." in out
    assert main(["store", "clean-uploads", "--days", "-1"]) == 2
    assert "--days must be a whole number from 0" in capsys.readouterr().err


def test_gradio_cache_is_cleaned_by_age():
    import inspect

    from calibprompt.app import interface

    assert "delete_cache=(3600, 24 * 3600)" in inspect.getsource(interface.build_demo)


# ------------------------------------------------------------------ 3. a full queue in plain words
def test_a_full_queue_answers_busy_in_plain_words():
    from calibprompt.app.guards import BUSY, with_guards

    release = threading.Event()

    def block(text):
        release.wait(30)
        return text

    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        box.submit(block, box, out)
    demo.queue(default_concurrency_limit=1, max_size=1)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, app_kwargs=with_guards())
    fn_index = next(iter(demo.fns))
    try:
        def join(session: str) -> httpx.Response:
            return httpx.post(url + "gradio_api/queue/join", timeout=10, json={
                "data": ["x"], "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None})

        answers = [join(f"s{i}") for i in range(4)]
        assert answers[0].status_code == 200 and "event_id" in answers[0].json()  # live: the first is queued
        busy = [a for a in answers if a.status_code == 503]
        assert busy, [a.text for a in answers]
        assert all(a.json() == {"detail": BUSY} and a.headers["retry-after"] == "60" for a in busy)
        assert "Queue is full" not in "".join(a.text for a in answers)
    finally:
        release.set()
        demo.close()


def test_other_answers_pass_the_guard_untouched():
    from calibprompt.app.guards import PlainFaults

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b'{"detail": "Queue is stopped."}'})

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/gradio_api/queue/join"}
    asyncio.run(PlainFaults(app)(scope, None, send))
    assert sent[0]["status"] == 503 and sent[1]["body"] == b'{"detail": "Queue is stopped."}'


def test_events_by_name_answer_only_the_public_api():
    """Gradio runs any event by its name on run/api/call routes; behind the guards only the public names
    answer there (shown live first), a private event's name gets 404, and the page's queue route still runs it."""
    from calibprompt.app.guards import PUBLIC_API, with_guards

    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        box.submit(lambda t: t.upper(), box, out, api_name="compare")
        box.change(lambda t: "private " + t, box, out, api_name="secret", api_visibility="private")
    demo.queue()
    assert "compare" in PUBLIC_API and "secret" not in PUBLIC_API
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, app_kwargs=with_guards())
    try:
        live = httpx.post(url + "gradio_api/call/compare", json={"data": ["hi"]}, timeout=30)
        assert live.status_code == 200 and "event_id" in live.json()
        for route in ("run", "api", "call", "call/v2"):
            refused = httpx.post(url + f"gradio_api/{route}/secret", json={"data": ["hi"]}, timeout=30)
            assert refused.status_code == 404, (route, refused.text)
            assert refused.json()["detail"].startswith("No public endpoint named 'secret'")
        private = next(i for i, fn in demo.fns.items() if fn.api_name == "secret")
        joined = httpx.post(url + "gradio_api/queue/join", timeout=30, json={
            "data": ["hi"], "fn_index": private, "session_hash": "page1", "event_data": None, "trigger_id": None})
        assert joined.status_code == 200  # the page's own route: the app authorises the event itself
    finally:
        demo.close()


# ------------------------------------------------------------------ 4. the preview kept is bounded
def test_the_compare_preview_is_a_bounded_copy_while_the_model_sees_the_full_image(core, tmp_path, monkeypatch):
    from calibprompt.app.compare_tab import _assess

    big = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000), (120, 80, 160)).save(big)
    small = tmp_path / "small.png"
    Image.new("RGB", (300, 200), (120, 80, 160)).save(small)
    state = core.new_session()
    engine = core.loaded(state).engine
    seen = []
    original = engine.image_features

    def recording(images, *args, **kwargs):
        seen.extend(getattr(i, "size", None) for i in images)
        return original(images, *args, **kwargs)

    monkeypatch.setattr(engine, "image_features", recording)
    found = _assess(core, state, [str(small), str(big)], state.prompts, 90, None)
    assert seen == [(300, 200), (4000, 3000)]  # the model gets each image as before
    small_preview, big_preview = (im["preview"] for im in found["images"])
    assert small_preview.size == (300, 200)  # live: a small image is kept as it is
    assert big_preview.size == (1024, 768)  # the long side at most 1024 px, the aspect ratio kept
    assert all(max(im["preview"].size) <= 1024 for im in found["images"])


# ------------------------------------------------------------------ 5. a full or read-only disk
def test_compare_on_a_full_disk_gives_the_plain_message(core, calibprompt_home, monkeypatch):
    from calibprompt.app.compare_tab import _assess
    from calibprompt.paths import SAMPLE_IMAGES_DIR

    state = core.new_session()
    sample = str(next(SAMPLE_IMAGES_DIR.glob("*.png")))
    assert handler(_assess)(core, state, [sample], state.prompts, 90, None)["images"]  # live

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(calibprompt_home / "features" / "x.npy"))

    monkeypatch.setattr(type(core), "calibration_data", full)
    with pytest.raises(gr.Error) as caught:
        handler(_assess)(core, state, [sample], state.prompts, 90, None)
    message = caught.value.message
    assert "is full (features/x.npy); nothing was saved" in message and "Free some space" in message
    assert str(calibprompt_home / "features") not in message  # no server path


def test_compare_previews_written_on_a_full_disk_give_the_plain_message(core, calibprompt_home, monkeypatch):
    """Gradio would write the previews after the handler, failing with an empty error; they are written inside it."""
    import pathlib

    from calibprompt.app.compare_tab import _assess, _gallery
    from calibprompt.paths import SAMPLE_IMAGES_DIR

    state = core.new_session()
    found = _assess(core, state, [str(next(SAMPLE_IMAGES_DIR.glob("*.png")))], state.prompts, 90, None)
    cache = calibprompt_home / "tmp" / "gradio"
    (path, caption), = handler(_gallery)(found, str(cache))  # live: written to Gradio's cache
    assert pathlib.Path(path).is_file() and pathlib.Path(path).is_relative_to(cache) and " — " in caption

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(gr.Error) as caught:
        handler(_gallery)(found, str(cache))
    assert "is full (tmp/gradio/" in caught.value.message and "Free some space" in caught.value.message


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "is full"), (errno.EROFS, "read-only file system")])
def test_an_upload_on_a_full_or_read_only_disk_gives_the_plain_message_and_leaves_nothing(
        core, tmp_path, calibprompt_home, monkeypatch, code, words):
    archive = _dataset_zip(tmp_path / "scans.zip", 10)
    assert core.upload_dataset(str(archive), OTHER) == "uploads/scans"  # live
    real = archives._write_member
    calls = []

    def failing(zf, info, target, budget, max_bytes):
        calls.append(info.filename)
        if len(calls) == 2:  # after one member was written
            raise OSError(code, os.strerror(code), str(target))
        return real(zf, info, target, budget, max_bytes)

    monkeypatch.setattr(archives, "_write_member", failing)
    with pytest.raises(gr.Error) as caught:
        handler(core.upload_dataset)(str(archive), OWNER)
    message = caught.value.message
    assert words in message and "Traceback" not in message and str(calibprompt_home) + "/uploads" not in message
    folder = owner_uploads_dir(OWNER)
    assert not folder.exists() or not any(folder.iterdir())  # nothing half-written


def test_a_disk_fault_under_a_gradio_route_answers_plainly_not_500(calibprompt_home):
    from calibprompt.app.guards import PlainFaults

    async def upload_route(scope, receive, send):
        if scope["path"].endswith("/ok"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"[]"})
            return
        raise OSError(errno.ENOSPC, "No space left on device", str(calibprompt_home / "tmp" / "gradio" / "f"))

    def call(path):
        sent = []

        async def send(message):
            sent.append(message)

        asyncio.run(PlainFaults(upload_route)({"type": "http", "method": "POST", "path": path}, None, send))
        return sent

    assert call("/gradio_api/upload/ok")[0]["status"] == 200  # live
    start, body = call("/gradio_api/upload")
    assert start["status"] == 507
    detail = json.loads(body["body"])["detail"]
    assert "is full (tmp/gradio/f)" in detail and "Free some space" in detail


def test_starting_on_a_read_only_data_directory_prints_one_plain_line(calibprompt_home, monkeypatch):
    from calibprompt.app import launch
    from calibprompt.service import startup

    assert startup.check_data_dir() == calibprompt_home.resolve()  # live: writable, nothing left behind
    assert [p.name for p in calibprompt_home.iterdir()] == []

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(dir, ".write-check-x"))

    monkeypatch.setattr(startup.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(launch.gc, "disable", lambda: None)  # the test process keeps its collector
    with pytest.raises(SystemExit) as caught:
        launch.main(["--data-dir", str(calibprompt_home)])
    line = str(caught.value.code)
    assert line.startswith("calibprompt: the app cannot start: The data directory ")
    assert "read-only file system: could not write .write-check-x" in line and "\n" not in line


# ------------------------------------------------------------------ 6. paths relative to the data directory
def test_shown_paths_are_relative_to_the_data_directory(calibprompt_home, tmp_path):
    assert shown(calibprompt_home / "runs" / "r1" / "prompt.json") == "runs/r1/prompt.json"
    assert shown(tmp_path / "elsewhere" / "scan.png") == "scan.png"  # outside: the file name only
    assert shown(calibprompt_home) == "the data directory"
    # an upload as its owner names it in the menus, without the owner's folder key
    assert shown(calibprompt_home / "uploads" / "0123456789abcdef" / "scans" / "a.png") == "uploads/scans/a.png"
    with pytest.raises(ValueError) as caught:
        archives.extract_zip(calibprompt_home / "tmp" / "gone.zip", uploads_dir())
    assert "Archive not found: tmp/gone.zip." in str(caught.value) and str(calibprompt_home) not in str(caught.value)


# ------------------------------------------------------------------ 7. numbers checked by their field
@pytest.mark.parametrize("field, value, words", [
    ("shots", 8.5, "Shots (training images per class) must be a whole number"),
    ("shots", "abc", "got 'abc'"),
    ("shots", math.nan, "Shots"),
    ("shots", None, "got nothing"),
    ("epochs", "abc", "Epochs must be a whole number from 1 to 1000"),
    ("n_bins", math.nan, "The number of calibration bins must be a whole number from 2 to 100"),
    ("n_views", 100000, "Views (cached augmented views per training image) must be a whole number from 1 to 100"),
    ("batch_size", 0, "The batch size (training images per step) must be a whole number from 1 to 4096"),
    ("alpha", "abc", "Alpha (the smoothing weight)"),
])
def test_every_number_is_checked_by_its_field(field, value, words):
    live = {"shots": 8, "epochs": 50, "n_bins": 10, "n_views": 10, "batch_size": 16, "alpha": 0.1}[field]
    assert check_number(field, live) == live and check_number(field, float(live)) == live
    with pytest.raises(ValueError) as caught:
        check_number(field, value)
    assert words in str(caught.value)


@pytest.mark.parametrize("command, option, value, words", [
    ("train", "--shots", "8.5", "Shots (training images per class) must be a whole number of at least 1; got 8.5, "
                                "which is not a whole number"),
    ("train", "--shots", "abc", "Shots (training images per class) must be a whole number of at least 1; got 'abc'"),
    ("train", "--shots", "nan", "Shots (training images per class)"),
    ("train", "--epochs", "abc", "Epochs must be a whole number from 1 to 1000; got 'abc'"),
    ("train", "--bins", "nan", "The number of calibration bins must be a whole number from 2 to 100"),
    ("train", "--views", "100000", "Views (cached augmented views per training image) must be a whole number"),
    ("train", "--views", "0", "Views (cached augmented views per training image)"),
    ("compare", "--bins", "1000", "The number of calibration bins"),
    ("compare", "--shots", "2.5", "not a whole number"),
    ("compare", "--alpha", "abc", "Alpha (the smoothing weight)"),
])
def test_the_cli_refuses_numbers_by_the_check_function_exit_2(command, option, value, words, tmp_path,
                                                              calibprompt_home, capsys):
    from calibprompt.cli import build_parser

    args = build_parser().parse_args([command, "--model", "m", "--dataset", "d", option, value])
    with pytest.raises(ValueError):  # argparse lets it through; the check function names the field
        check_train_request(shots=args.shots, epochs=args.epochs, seed=getattr(args, "seed", 1), alpha=args.alpha,
                            beta=args.beta, n_bins=args.bins, n_views=getattr(args, "views", None))
    live = build_parser().parse_args([command, "--model", "m", "--dataset", "d"])
    check_train_request(shots=live.shots, epochs=live.epochs, seed=1, n_bins=live.bins,
                        n_views=getattr(live, "views", None))  # live: the defaults pass
    argv = [command, "--model", "tiny-random", "--dataset", str(tmp_path / "nowhere"), option, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"calibprompt {command}: error: " in err and words in err
    assert not (calibprompt_home / "runs.db").exists()


@pytest.mark.parametrize("change, words", [
    ({"shots": 8.5}, "not a whole number"),
    ({"shots": "abc"}, "got 'abc'"),
    ({"shots": math.nan}, "Shots"),
    ({"epochs": None}, "Epochs must be a whole number from 1 to 1000; got nothing"),
])
def test_the_app_refuses_training_numbers_by_the_check_function(core, change, words, monkeypatch):
    state = core.set_task(core.new_session(), "demo")
    queued = []
    monkeypatch.setattr(type(core), "runner", property(lambda self: type("R", (), {
        "submit": lambda _, job, **kw: queued.append(job) or "run-1"})()))
    request = {"shots": 2, "seed": 1, "epochs": 1}
    assert core.start_training(state, "demo", **{**request, "shots": 2.0})[1] == "run-1"  # live: 2.0 is whole
    assert queued[0].shots == 2
    with pytest.raises(ValueError) as caught:
        core.start_training(state, "demo", **{**request, **change})
    assert words in str(caught.value) and len(queued) == 1  # nothing more queued


def test_calibration_bins_are_checked_by_their_field(core):
    from calibprompt.service import evaluation

    state = core.new_session()
    for bins in (math.nan, 8.5, "abc"):
        with pytest.raises(ValueError, match="The number of calibration bins must be a whole number from 2 to 100"):
            evaluation.calibration(core, state, "demo", ["zero-shot"], bins, False)
