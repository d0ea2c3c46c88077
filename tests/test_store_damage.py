"""A damaged run database (garbage, truncated, a corrupt page) is kept aside and replaced, never deleted;
``calibprompt store check`` and ``calibprompt store recover`` (issue 18, item 5)."""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from calibprompt.cli import main
from calibprompt.runs.store import RunStore, check_store, recover_store, store_damage

N_RUNS = 100


def _good_store(path: Path) -> dict[str, dict]:
    """A store at ``path`` with :data:`N_RUNS` runs big enough to fill several pages; their params by id."""
    store = RunStore(path, set_aside_damaged=True)
    runs = {}
    for i in range(N_RUNS):
        params = {"model": "demo", "seed": i, "note": "x" * 500}
        runs[store.create_run("train", params, slug=f"r{i}")] = params
    return runs


def _corrupt_a_leaf(path: Path) -> None:
    """Overwrite the header of a leaf page in the middle of the ``runs`` table (its root is an interior page)."""
    conn = sqlite3.connect(path)
    try:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    data = bytearray(path.read_bytes())
    start = (root - 1) * page_size
    assert data[start] == 0x05, "the runs table should span several pages"
    cells = int.from_bytes(data[start + 3:start + 5], "big")
    pointers = [int.from_bytes(data[start + 12 + 2 * i:start + 14 + 2 * i], "big") for i in range(cells)]
    leaves = [int.from_bytes(data[start + p:start + p + 4], "big") for p in pointers]
    leaf = leaves[len(leaves) // 2]
    data[(leaf - 1) * page_size:(leaf - 1) * page_size + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database, just some bytes\n" * 300)
    Path(f"{path}-wal").write_bytes(b"an old write-ahead log" * 10)


def _truncated(path: Path) -> None:
    _good_store(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2 + 123])


def _corrupt_page(path: Path) -> None:
    _good_store(path)
    _corrupt_a_leaf(path)


@pytest.mark.parametrize("damage", [_garbage, _truncated, _corrupt_page], ids=["garbage", "truncated", "page"])
def test_a_damaged_store_is_kept_and_replaced(tmp_path, caplog, damage):
    path = tmp_path / "runs.db"
    damage(path)
    original = path.read_bytes()
    wal = Path(f"{path}-wal").read_bytes() if Path(f"{path}-wal").exists() else None
    assert store_damage(path) is not None
    with caplog.at_level(logging.WARNING, logger="calibprompt.runs.store"):
        store = RunStore(path, set_aside_damaged=True)
    kept = store.damaged_copy
    assert kept is not None and kept.parent == tmp_path and kept.name.startswith("runs.db.damaged-")
    assert kept.read_bytes() == original  # byte for byte
    if wal is not None:
        assert Path(f"{kept}-wal").read_bytes() == wal
    assert store.list_runs() == [] and store_damage(path) is None  # a new, working store in its place
    store.create_run("train", {"model": "demo"})
    assert str(path) in store.notice and str(kept) in store.notice
    assert f"calibprompt store recover {kept}" in store.notice and "\n" not in store.notice
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [store.notice]
    again = RunStore(path, set_aside_damaged=True)  # the new store is sound: nothing else is set aside
    assert again.notice is None and len(list(tmp_path.glob("runs.db.damaged-*[0-9Z]"))) == 1


def test_an_empty_or_missing_store_is_just_created(tmp_path, caplog):
    empty = tmp_path / "runs.db"
    empty.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="calibprompt.runs.store"):
        store = RunStore(empty, set_aside_damaged=True)
        missing = RunStore(tmp_path / "other" / "runs.db", set_aside_damaged=True)
    assert store.notice is None and store.damaged_copy is None and missing.notice is None
    assert store.list_runs() == [] and not list(tmp_path.glob("*.damaged-*"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_second_damage_in_the_same_second_gets_its_own_name(tmp_path):
    path = tmp_path / "runs.db"
    _garbage(path)
    first = RunStore(path, set_aside_damaged=True).damaged_copy
    _garbage(path)
    second = RunStore(path, set_aside_damaged=True).damaged_copy
    assert first != second and first.exists() and second.exists()


def test_a_plain_opening_refuses_a_damaged_store_and_changes_nothing(tmp_path):
    path = tmp_path / "runs.db"
    _corrupt_page(path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="Cannot open the run store") as info:
        RunStore(path)
    assert "is damaged" in str(info.value) and "calibprompt store check" in str(info.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["runs.db"]


def test_the_app_starts_with_the_notice_in_its_banner(tmp_path, monkeypatch, caplog):
    from calibprompt.service.core import Core

    monkeypatch.setenv("CALIBPROMPT_HOME", str(tmp_path))
    path = tmp_path / "runs.db"
    _garbage(path)
    with caplog.at_level(logging.WARNING):
        core = Core("tiny-random", "Model: tiny-random (test).", device="cpu")  # opens the data directory's store
    assert core.store.path == path and core.store.damaged_copy.exists()
    assert len([r for r in caplog.records if "was damaged" in r.getMessage()]) == 1
    assert core.banner.startswith("Model: tiny-random (test).")
    assert core.store.notice in core.banner and str(core.store.damaged_copy) in core.banner


def test_store_check(tmp_path, capsys):
    good, bad = tmp_path / "good", tmp_path / "bad"
    _good_store(good / "runs.db")
    assert main(["store", "check", "--data-dir", str(good)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {good / 'runs.db'}")
    bad.mkdir()
    _corrupt_page(bad / "runs.db")
    before = (bad / "runs.db").read_bytes()
    assert main(["store", "check", "--data-dir", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "is damaged" in out and "integrity check reports" in out and "calibprompt store recover" in out
    assert (bad / "runs.db").read_bytes() == before  # check reads only
    assert check_store(bad / "runs.db") and main(["store", "check", "--data-dir", str(tmp_path / "none")]) == 1
    assert "There is no run database" in capsys.readouterr().out


def test_store_check_names_kept_damaged_files(tmp_path, capsys):
    _garbage(tmp_path / "runs.db")
    kept = RunStore(tmp_path / "runs.db", set_aside_damaged=True).damaged_copy
    assert main(["store", "check", "--data-dir", str(tmp_path)]) == 0
    assert f"calibprompt store recover {kept}" in capsys.readouterr().out


@pytest.mark.parametrize("cli", [True, False], ids=["sqlite3-if-installed", "python-fallback"])
def test_store_recover_copies_the_readable_runs(tmp_path, capsys, monkeypatch, cli):
    damaged = tmp_path / "runs.db"
    runs = _good_store(damaged)
    _corrupt_a_leaf(damaged)
    before = damaged.read_bytes()
    if not cli:
        monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    out = tmp_path / "recovered.db"
    assert main(["store", "recover", str(damaged), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    if not cli:
        assert "apt-get install sqlite3" in printed
    recovered = RunStore(out, recover=False)
    assert recovered.notice is None and check_store(out) == []
    records = recovered.list_runs()
    assert f"Recovered {len(records)} run(s) into {out}" in printed
    assert N_RUNS // 2 < len(records) <= N_RUNS  # all but the runs on the damaged page, at least
    for record in records:
        assert record.params == runs[record.id]
    assert damaged.read_bytes() == before  # the damaged file is only read


def test_store_recover_never_overwrites(tmp_path, capsys):
    damaged = tmp_path / "runs.db.damaged-20261205T000000Z"
    _corrupt_page(damaged)
    out = tmp_path / "taken.db"
    out.write_bytes(b"someone's file")
    assert main(["store", "recover", str(damaged), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"someone's file"
    first = recover_store(damaged)  # the default name, next to the damaged file
    assert first.path == Path(f"{damaged}.recovered.db") and first.runs > 0
    with pytest.raises(ValueError, match="never overwrites"):
        recover_store(damaged)
    assert not list(tmp_path.glob(".*partial*"))


FAKE_SQLITE3 = """#!{python}
import sqlite3, sys
# a stand-in for the sqlite3 command line: `sqlite3 DB .recover` dumps DB, `sqlite3 DB` runs SQL from stdin
if sys.argv[2:] == [".recover"]:
    open(sys.argv[0] + ".calls", "a").write(sys.argv[1] + "\\n")
    conn = sqlite3.connect(sys.argv[1])
    rows = conn.execute("SELECT * FROM runs WHERE rowid < 10").fetchall()
    schema = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
    print("BEGIN;" + schema + ";")
    for row in rows:
        print("INSERT INTO runs VALUES(" + ",".join("NULL" if v is None else repr(v) for v in row) + ");")
    print("COMMIT;")
else:
    sqlite3.connect(sys.argv[1]).executescript(sys.stdin.read())
"""


def test_store_recover_uses_the_sqlite3_command_line_on_a_copy(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "sqlite3"
    fake.parent.mkdir()
    fake.write_text(FAKE_SQLITE3.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    damaged = tmp_path / "data" / "runs.db.damaged-20261205T000000Z"
    damaged.parent.mkdir()
    _corrupt_page(damaged)
    before = damaged.read_bytes()
    result = recover_store(damaged, tmp_path / "new.db")
    assert result.method == "sqlite3 .recover" and result.runs == 9 and result.notes == ()
    called = Path(f"{fake}.calls").read_text().split()
    assert len(called) == 1 and Path(called[0]).parent != damaged.parent  # it read a copy, since removed
    assert damaged.read_bytes() == before and sorted(p.name for p in damaged.parent.iterdir()) == [damaged.name]
    assert len(RunStore(result.path).list_runs()) == 9
