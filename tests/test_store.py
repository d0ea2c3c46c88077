"""The run store: life cycle, persistence, atomic finish, crash recovery, concurrency (reviews: test_reviews.py)."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from calibprompt.runs import store as store_mod
from calibprompt.paths import shown
from calibprompt.runs.store import INTERRUPTED_ERROR, STATUSES, RunRecord, RunStore


def make_checkpoint(folder: Path, stem: str = "prompt") -> Path:
    """The two files of a checkpoint (contents do not matter to the store); returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.safetensors").write_bytes(b"\0" * 8)
    meta = folder / f"{stem}.json"
    meta.write_text(json.dumps({"format": "calibprompt-prompt/1"}), encoding="utf-8")
    return meta


def predictions_for(n: int) -> list[dict]:
    return [{"path": f"img/{i}.png", "label": i % 2, "predicted": (i + 1) % 2, "confidence": 0.5 + i / 100,
             "probs": [0.5 - i / 100, 0.5 + i / 100]} for i in range(n)]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def set_owner(db: Path, run_id: str, **values) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                     (*values.values(), run_id))
    conn.close()


@pytest.fixture()
def db(tmp_path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture()
def store(db) -> RunStore:
    return RunStore(db)


def test_life_cycle_and_fields(store, tmp_path):
    run_id = store.create_run("train", {"method": "coop", "seed": 1, "lr": 0.002, "shots": [1, 2]}, slug="CoOp s1")
    assert re.fullmatch(r"\d{8}-\d{6}-coop-s1-[0-9a-f]{4}", run_id)
    rec = store.get_run(run_id)
    assert isinstance(rec, RunRecord)
    assert (rec.kind, rec.status, rec.params) == ("train", "queued", {"method": "coop", "seed": 1, "lr": 0.002,
                                                                        "shots": [1, 2]})
    assert rec.started_at is None and rec.finished_at is None and rec.metrics is None and rec.checkpoint is None
    assert rec.pid == os.getpid() and rec.host == socket.gethostname()  # the creator owns a queued run
    assert rec.duration_seconds is None

    store.start_run(run_id, device="cpu")
    store.update_progress(run_id, {"step": 5, "loss": 0.7})
    store.update_progress(run_id, {"step": 10, "loss": 0.5})
    rec = store.get_run(run_id)
    assert rec.status == "running" and rec.device == "cpu" and rec.started_at
    assert rec.progress == {"step": 10, "loss": 0.5}
    assert rec.pid == os.getpid() and rec.host == socket.gethostname()

    meta = make_checkpoint(tmp_path / "ckpt")
    store.finish_run(run_id, {"accuracy": 0.9, "ece": 0.04}, str(meta.with_suffix("")), predictions_for(3))
    rec = store.get_run(run_id)
    assert rec.status == "done" and rec.metrics == {"accuracy": 0.9, "ece": 0.04}
    assert rec.checkpoint == str(meta.absolute())  # stored as the JSON file, absolute
    assert rec.error is None and rec.finished_at >= rec.started_at >= rec.created_at
    assert rec.duration_seconds is not None and rec.duration_seconds >= 0
    data = rec.to_dict()
    assert json.loads(json.dumps(data)) == data and data["duration_seconds"] == rec.duration_seconds
    preds = store.predictions(run_id)
    assert [p["idx"] for p in preds] == [0, 1, 2]
    assert preds[2] == {"idx": 2, "path": "img/2.png", "label": 0, "predicted": 1, "confidence": 0.52,
                        "probs": [0.48, 0.52]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.status = "queued"


def test_persistence_across_restart(db, tmp_path):
    first = RunStore(db)
    run_id = first.create_run("train", {"seed": 3}, slug="persist")
    first.start_run(run_id, "cuda:0")
    meta = make_checkpoint(tmp_path / "c")
    first.finish_run(run_id, {"ece": 0.1}, meta, predictions_for(4))
    del first

    again = RunStore(db)  # as after an app restart
    rec = again.get_run(run_id)
    assert rec.status == "done" and rec.metrics == {"ece": 0.1} and rec.checkpoint == str(meta.absolute())
    assert rec.device == "cuda:0"
    assert len(again.predictions(run_id)) == 4
    assert again.list_runs(status="done") == [rec]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_path_is_in_the_data_dir(calibprompt_home):
    s = RunStore()
    assert s.path == (calibprompt_home / "runs.db").resolve()
    assert s.path.is_file()


def test_evaluate_run_without_checkpoint(store):
    run_id = store.create_run("evaluate", {"task": "covid"})
    store.start_run(run_id, "cpu")
    store.finish_run(run_id, {"accuracy": float("nan"), "n": 2}, None, predictions_for(2))
    rec = store.get_run(run_id)
    assert rec.status == "done" and rec.checkpoint is None
    assert rec.metrics == {"accuracy": None, "n": 2}  # non-finite floats are stored as null (strict JSON)


@pytest.mark.parametrize("path", [["done", "running"], ["done", "failed"], ["cancelled", "done"],
                                  ["cancelled", "running"], ["failed", "running"], ["interrupted", "running"]])
def test_invalid_transitions(store, tmp_path, path):
    final, target = path
    run_id = store.create_run("evaluate", {})
    if final == "done":
        store.start_run(run_id, "cpu")
        store.finish_run(run_id, {}, None)
    elif final == "cancelled":
        store.cancel_run(run_id)
    elif final == "failed":
        store.fail_run(run_id, "boom")
    else:
        store.mark_interrupted(run_id)
    actions = {"running": lambda: store.start_run(run_id, "cpu"), "done": lambda: store.finish_run(run_id, {}, None),
               "failed": lambda: store.fail_run(run_id, "x")}
    with pytest.raises(ValueError, match=rf"{final}.*{target}"):
        actions[target]()
    assert store.get_run(run_id).status == final


def test_queued_run_cannot_finish_or_report_progress(store):
    run_id = store.create_run("evaluate", {})
    with pytest.raises(ValueError, match="queued and cannot become done"):
        store.finish_run(run_id, {}, None)
    with pytest.raises(ValueError, match="only be reported while it is running"):
        store.update_progress(run_id, {"step": 1})
    store.start_run(run_id, "cpu")
    with pytest.raises(ValueError, match="running and cannot become running"):
        store.start_run(run_id, "cpu")


def test_cancel_fail_interrupt(store):
    a, b, c, d = (store.create_run("evaluate", {}) for _ in range(4))
    store.cancel_run(a)
    store.start_run(b, "cpu")
    store.cancel_run(b)
    store.fail_run(c, "Out of memory")
    store.start_run(d, "cpu")
    store.mark_interrupted(d)
    assert [store.get_run(x).status for x in (a, b, c, d)] == ["cancelled", "cancelled", "failed", "interrupted"]
    assert store.get_run(c).error == "Out of memory" and store.get_run(d).error == INTERRUPTED_ERROR
    assert store.get_run(a).duration_seconds is None and store.get_run(b).duration_seconds is not None


def test_unknown_ids_and_bad_arguments(store):
    message = f"No run 'nope' in the store {shown(store.path)}"  # no server path in a message
    for call in (lambda: store.get_run("nope"), lambda: store.start_run("nope", "cpu"),
                 lambda: store.update_progress("nope", {}), lambda: store.finish_run("nope", {}, None),
                 lambda: store.fail_run("nope", "x"), lambda: store.cancel_run("nope"),
                 lambda: store.mark_interrupted("nope"), lambda: store.delete_run("nope"),
                 lambda: store.predictions("nope"),
                 lambda: store.set_review(reader="dr a", dataset="d", image="a.png", method="coop", verdict="agree",
                                          run_id="nope")):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == message
    with pytest.raises(ValueError, match="Unknown run kind 'fit'"):
        store.create_run("fit", {})
    with pytest.raises(ValueError, match=r"params\['model'\] is not JSON-serialisable"):
        store.create_run("train", {"seed": 1, "model": object()})
    with pytest.raises(ValueError, match=r"params\['opt'\]\['betas'\]\[1\] is not JSON-serialisable"):
        store.create_run("train", {"opt": {"betas": [0.9, {1, 2}]}})
    with pytest.raises(ValueError, match="params must be a dict"):
        store.create_run("train", [1, 2])
    with pytest.raises(ValueError, match="Unknown run status"):
        store.list_runs(status="finished")
    with pytest.raises(ValueError, match="limit"):
        store.list_runs(limit=0)
    assert store.list_runs() == []  # nothing was created by the failed calls


def test_params_accept_numpy_and_paths(store, tmp_path):
    np = pytest.importorskip("numpy")
    run_id = store.create_run("train", {"lr": np.float32(0.5), "n": np.int64(3), "ws": np.arange(3),
                                        "root": tmp_path, "pair": (1, 2)})
    assert store.get_run(run_id).params == {"lr": 0.5, "n": 3, "ws": [0, 1, 2], "root": str(tmp_path),
                                            "pair": [1, 2]}


def test_train_run_needs_an_existing_checkpoint(store, tmp_path):
    run_id = store.create_run("train", {})
    store.start_run(run_id, "cpu")
    with pytest.raises(ValueError, match="without a checkpoint"):
        store.finish_run(run_id, {"ece": 0.1}, None, predictions_for(2))
    with pytest.raises(ValueError, match="checkpoint is incomplete"):
        store.finish_run(run_id, {"ece": 0.1}, tmp_path / "missing.json", predictions_for(2))
    half = tmp_path / "half"
    half.mkdir()
    (half / "p.json").write_text("{}")  # JSON without weights
    with pytest.raises(ValueError, match=r"p\.safetensors"):
        store.finish_run(run_id, {"ece": 0.1}, half / "p.json", predictions_for(2))
    rec = store.get_run(run_id)
    assert rec.status == "running" and rec.metrics is None and rec.checkpoint is None
    assert store.predictions(run_id) == []


def test_bad_prediction_mid_finish_rolls_back(store, db):
    run_id = store.create_run("evaluate", {})
    store.start_run(run_id, "cpu")
    rows = predictions_for(5)
    rows[3]["probs"] = [0.5, object()]  # not serialisable, found after rows 0..2 were inserted
    with pytest.raises(ValueError, match=r"predictions\[3\]\['probs'\]\[1\]"):
        store.finish_run(run_id, {"accuracy": 1.0}, None, rows)
    assert store.get_run(run_id).status == "running" and store.get_run(run_id).metrics is None
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 0
    rows = predictions_for(3)
    del rows[1]["confidence"]
    with pytest.raises(ValueError, match=r"predictions\[1\] lacks confidence"):
        store.finish_run(run_id, {}, None, rows)
    assert store.predictions(run_id) == []
    store.finish_run(run_id, {}, None, predictions_for(2))  # a good retry works
    assert len(store.predictions(run_id)) == 2


def test_failure_after_inserts_rolls_back(store, db, monkeypatch):
    run_id = store.create_run("evaluate", {})
    store.start_run(run_id, "cpu")
    inserted = []

    def exploding_now():
        with sqlite3.connect(db, timeout=0) as conn:  # WAL: readers are not blocked by the writer
            inserted.append(conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store_mod, "_now", exploding_now)  # called after the inserts, for finished_at
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.finish_run(run_id, {"accuracy": 1.0}, None, predictions_for(4))
    monkeypatch.undo()
    assert inserted == [0]  # other connections never saw the uncommitted rows
    rec = store.get_run(run_id)
    assert rec.status == "running" and rec.metrics is None and rec.finished_at is None
    assert store.predictions(run_id) == []


def test_recover_interrupted(db):
    s = RunStore(db)
    dead_running = s.create_run("train", {}, slug="dead")
    s.start_run(dead_running, "cpu")
    dead_queued = s.create_run("train", {}, slug="dead-queued")
    live = s.create_run("train", {}, slug="live")
    s.start_run(live, "cpu")
    live_queued = s.create_run("evaluate", {}, slug="live-queued")
    elsewhere = s.create_run("train", {}, slug="elsewhere")
    s.start_run(elsewhere, "cpu")
    reused = s.create_run("train", {}, slug="reused")
    s.start_run(reused, "cpu")
    finished = s.create_run("evaluate", {}, slug="finished")
    s.start_run(finished, "cpu")
    s.finish_run(finished, {}, None)

    pid = dead_pid()
    set_owner(db, dead_running, pid=pid)
    set_owner(db, dead_queued, pid=pid)
    set_owner(db, elsewhere, pid=pid, host="some-other-host")
    set_owner(db, finished, pid=pid)
    if store_mod._process_start(os.getpid()) is not None:  # Linux: a pid reused by a later process
        set_owner(db, reused, pid_start="1")

    reopened = RunStore(db)  # the app or the CLI starting
    status = {rec.id: rec.status for rec in reopened.list_runs()}
    assert status[dead_running] == status[dead_queued] == "interrupted"
    assert reopened.get_run(dead_running).error == INTERRUPTED_ERROR
    assert reopened.get_run(dead_running).finished_at is not None
    assert status[live] == "running" and status[live_queued] == "queued"
    assert status[elsewhere] == "running"
    assert status[finished] == "done"
    if store_mod._process_start(os.getpid()) is not None:
        assert status[reused] == "interrupted"
    assert reopened.recover_interrupted() == []  # nothing left to recover
    # the recovered runs are final
    with pytest.raises(ValueError, match="interrupted"):
        reopened.start_run(dead_queued, "cpu")


def test_recover_returns_ids_and_can_be_disabled(db):
    s = RunStore(db)
    run_id = s.create_run("evaluate", {})
    set_owner(db, run_id, pid=dead_pid())
    assert RunStore(db, recover=False).get_run(run_id).status == "queued"
    assert s.recover_interrupted() == [run_id]
    assert s.get_run(run_id).status == "interrupted"


def test_owner_liveness_uses_psutil_start_times(db):
    import psutil

    me = os.getpid()
    started = psutil.Process(me).create_time()
    marker = store_mod._process_start(me)
    assert marker == f"{started:.2f}"  # psutil's creation time, seconds since the epoch
    assert store_mod._owner_alive(me, marker)
    assert store_mod._owner_alive(me, f"{started + 0.5:.2f}")  # a wall-clock step of under a second
    assert not store_mod._owner_alive(me, f"{started - 60:.2f}")  # the pid now belongs to a later process
    assert not store_mod._owner_alive(dead_pid(), marker)
    assert store_mod._owner_alive(me, None) and store_mod._owner_alive(me, "not a time")  # unknown: alive
    assert store_mod._owner_alive(0, None) and store_mod._owner_alive(-1, marker)  # never a real owner
    assert store_mod._process_start(dead_pid()) is None

    s = RunStore(db)
    live, reused = s.create_run("train", {}, slug="live"), s.create_run("train", {}, slug="reused")
    set_owner(db, reused, pid_start=f"{started - 3600:.2f}")
    status = {rec.id: rec.status for rec in RunStore(db).list_runs()}
    assert status == {live: "queued", reused: "interrupted"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="stores before psutil wrote /proc clock ticks")
def test_owner_markers_written_before_psutil_still_count(db):
    me = os.getpid()
    stat = Path(f"/proc/{me}/stat").read_text()
    ticks = stat[stat.rindex(")") + 2:].split()[19]  # the old marker: starttime, clock ticks since boot
    assert store_mod._owner_alive(me, ticks)
    assert not store_mod._owner_alive(me, "1")  # started one tick after boot: some earlier process
    s = RunStore(db)
    kept, reused = s.create_run("train", {}, slug="kept"), s.create_run("train", {}, slug="reused")
    set_owner(db, kept, pid_start=ticks)
    set_owner(db, reused, pid_start="1")
    status = {rec.id: rec.status for rec in RunStore(db).list_runs()}
    assert status == {kept: "queued", reused: "interrupted"}


def test_owner_liveness_when_psutil_cannot_tell(monkeypatch):
    import psutil

    def denied(*_args, **_kwargs):
        raise psutil.AccessDenied(os.getpid())

    me = os.getpid()
    marker = store_mod._process_start(me)
    monkeypatch.setattr(psutil, "Process", denied)
    assert store_mod._process_start(me) is None
    assert store_mod._owner_alive(me, marker)  # the start time is unknown: never interrupt a live pid
    monkeypatch.setattr(psutil, "pid_exists", denied)
    assert store_mod._owner_alive(me, marker)
    monkeypatch.setattr(psutil, "pid_exists", lambda pid: False)  # e.g. Windows, the process gone
    assert not store_mod._owner_alive(me, marker)


def test_concurrent_threads(store, tmp_path):
    meta = make_checkpoint(tmp_path / "shared")
    errors: list[BaseException] = []
    ids: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(10):
                run_id = store.create_run("train", {"worker": n, "i": i}, slug=f"w{n}")
                store.start_run(run_id, "cpu")
                store.update_progress(run_id, {"step": 1})
                store.finish_run(run_id, {"i": i}, meta, predictions_for(3))
                with lock:
                    ids.append(run_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(set(ids)) == 40
    done = store.list_runs(status="done")
    assert len(done) == 40 and {r.id for r in done} == set(ids)
    assert all(len(store.predictions(r.id)) == 3 for r in done[:5])


def test_second_process_sees_and_writes(db):
    s = RunStore(db)
    run_id = s.create_run("evaluate", {"from": "app"})
    code = (
        "import sys; from calibprompt.runs.store import RunStore\n"
        "s = RunStore(sys.argv[1])\n"
        "assert s.get_run(sys.argv[2]).status == 'queued'\n"
        "s.cancel_run(sys.argv[2])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db), run_id], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[1])
    assert s.get_run(run_id).status == "cancelled"


def test_list_runs_filters_and_order(store):
    ids = []
    for i, kind in enumerate(["train", "evaluate", "train", "evaluate", "train"]):
        ids.append(store.create_run(kind, {"i": i}))
    store.start_run(ids[0], "cpu")
    store.cancel_run(ids[1])
    store.fail_run(ids[2], "bad")
    newest_first = list(reversed(ids))
    assert [r.id for r in store.list_runs()] == newest_first
    assert [r.id for r in store.list_runs(limit=2)] == newest_first[:2]
    assert [r.id for r in store.list_runs(kind="train")] == [ids[4], ids[2], ids[0]]
    assert [r.id for r in store.list_runs(status="queued")] == [ids[4], ids[3]]
    assert [r.id for r in store.list_runs(status=["running", "failed"])] == [ids[2], ids[0]]
    assert [r.id for r in store.list_runs(status=("queued",), kind="evaluate")] == [ids[3]]
    assert store.list_runs(status="done") == []
    assert set(STATUSES) >= {r.status for r in store.list_runs()}


def test_delete_run_cascades_but_keeps_checkpoint_and_reviews(store, db, tmp_path):
    meta = make_checkpoint(tmp_path / "keep")
    run_id = store.create_run("train", {})
    other = store.create_run("evaluate", {})
    store.start_run(run_id, "cpu")
    with pytest.raises(ValueError, match="cancel it before deleting"):
        store.delete_run(run_id)
    store.finish_run(run_id, {}, meta, predictions_for(3))
    store.set_review(reader="dr a", dataset="d", image="img/0.png", method="coop", verdict="agree", run_id=run_id)
    store.set_review(reader="dr a", dataset="d", image="img/0.png", method="zero-shot", verdict="unsure",
                     run_id=other)
    store.delete_run(run_id)
    with pytest.raises(ValueError, match="No run"):
        store.get_run(run_id)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 0
    # a reader's verdict outlives the run that made the prediction; only the link is dropped
    assert {r["method"]: r["run_id"] for r in store.reviews()} == {"coop": None, "zero-shot": other}
    assert meta.is_file() and meta.with_suffix(".safetensors").is_file()
    store.delete_run(other, force=True)  # a queued run with force
    assert store.list_runs() == []


def test_ids_are_unique_within_a_second(store, monkeypatch):
    draws = iter(["aaaa", "aaaa", "bbbb"])
    moment = store_mod._now()
    monkeypatch.setattr(store_mod, "_now", lambda: moment)  # both in the same second
    monkeypatch.setattr(store_mod.secrets, "token_hex", lambda n: next(draws))
    first = store.create_run("evaluate", {}, slug="same")
    second = store.create_run("evaluate", {}, slug="same")  # same first draw -> redrawn
    assert first.endswith("-aaaa") and second.endswith("-bbbb")
    assert first[:15] == second[:15] == f"{moment:%Y%m%d-%H%M%S}"
    monkeypatch.undo()
    assert store.create_run("evaluate", {}, slug="  ÄÖ weird/slug!! ").split("-")[2:4] == ["weird", "slug"]


def test_refuses_newer_schema_and_non_databases(tmp_path):
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {store_mod.SCHEMA_VERSION + 1}")
    with pytest.raises(ValueError, match="newer than this CalibPrompt"):
        RunStore(newer)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="Cannot open the run store"):
        RunStore(junk)
    with pytest.raises(ValueError, match="folder"):
        RunStore(tmp_path)
