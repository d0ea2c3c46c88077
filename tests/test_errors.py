"""OS and database errors become plain messages; failed atomic writes leave nothing half-written."""
from __future__ import annotations

import errno
import logging
import os
import re
import sqlite3
import stat
from pathlib import Path

import pytest

from calibprompt import fileio
from calibprompt.errors import report_internal_error, user_message
from calibprompt.fileio import atomic_write, atomic_write_json, atomic_write_text


def _half_write_then(code: int, monkeypatch):
    """Make ``Path.write_text`` write half the text, then fail like a full (or other) disk."""
    def write_text(self, data, encoding=None, errors=None, newline=None):
        with open(self, "w", encoding=encoding) as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "write_text", write_text)


# ------------------------------------------------------------------ a full disk
def test_full_disk_is_a_plain_message_and_leaves_nothing_half_written(tmp_path, monkeypatch, calibprompt_home):
    target = calibprompt_home / "report.json"
    atomic_write_json(target, {"version": 1})
    before = target.read_bytes()
    _half_write_then(errno.ENOSPC, monkeypatch)
    with pytest.raises(OSError) as info:
        atomic_write_text(target, '{"version": 2, "long": "' + "x" * 10_000 + '"}')
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(target)  # the file asked for, not the temporary one
    assert target.read_bytes() == before  # the target is unchanged
    assert sorted(p.name for p in calibprompt_home.iterdir()) == ["report.json"]  # no temporary file remains
    message = user_message(info.value)
    assert "The disk holding the data directory" in message and "is full" in message
    assert "free some space" in message.lower() and "CALIBPROMPT_HOME" in message
    assert str(calibprompt_home) in message


def test_a_failed_first_write_creates_no_file(tmp_path):
    target = tmp_path / "new.txt"

    def fail(tmp):
        Path(tmp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", tmp)

    with pytest.raises(OSError):
        atomic_write(target, fail)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_cleanup_does_not_hide_the_real_error(tmp_path, monkeypatch):
    real_unlink = os.unlink

    def unlink(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", path)

    def fail(tmp):
        raise OSError(errno.ENOSPC, "No space left on device", tmp)

    monkeypatch.setattr(fileio.os, "unlink", unlink)
    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "x.txt", fail)
    assert info.value.errno == errno.ENOSPC  # not the cleanup's EROFS
    monkeypatch.setattr(fileio.os, "unlink", real_unlink)


def test_quota_exceeded():
    if not hasattr(errno, "EDQUOT"):
        pytest.skip("no EDQUOT on this platform")
    message = user_message(OSError(errno.EDQUOT, "Disk quota exceeded", "/data/x"))
    assert "quota" in message and "CALIBPROMPT_HOME" in message


# ------------------------------------------------------------------ a read-only data directory
@pytest.mark.parametrize("code, words", [
    (errno.EROFS, "is on a read-only file system"),
    (errno.EACCES, "is not writable (permission denied)"),
    (errno.EPERM, "is not writable (permission denied)"),
])
def test_read_only_data_directory(code, words, monkeypatch, calibprompt_home):
    target = calibprompt_home / "runs" / "r1" / "prompt.json"

    def mkstemp(*args, dir=None, **kwargs):
        raise OSError(code, os.strerror(code), str(Path(dir) / ".prompt.json.abc.tmp"))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)
    with pytest.raises(OSError) as info:
        atomic_write_json(target, {"a": 1})
    message = user_message(info.value)
    assert message.startswith(f"The data directory {calibprompt_home} {words}")
    assert "could not write runs/r1/prompt.json." in message and "CALIBPROMPT_HOME" in message  # relative
    assert not target.exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root ignores folder permissions, so chmod cannot make a folder read-only")
def test_read_only_folder_by_chmod(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("CALIBPROMPT_HOME", str(home))
    home.chmod(0o500)
    try:
        with pytest.raises(OSError) as info:
            atomic_write_text(home / "x.txt", "hello")
    finally:
        home.chmod(stat.S_IRWXU)
    assert "not writable" in user_message(info.value)
    assert list(home.iterdir()) == []


def test_a_file_outside_the_data_directory_is_named(tmp_path, calibprompt_home):
    elsewhere = tmp_path / "out" / "rows.csv"
    message = user_message(OSError(errno.EACCES, "Permission denied", str(elsewhere)))
    assert message == (f"Cannot write or open {elsewhere}: permission denied. "
                       "Choose another location or fix its permissions.")


def test_other_os_errors_are_plain_and_name_the_file(calibprompt_home):
    message = user_message(OSError(errno.EIO, "Input/output error", "/mnt/disk/image.png"))
    assert message.startswith("A file operation failed on /mnt/disk/image.png: Input/output error.")
    message = user_message(OSError(errno.EIO, "Input/output error"))
    assert "Input/output error" in message and "Traceback" not in message
    assert "file" in user_message(FileNotFoundError(errno.ENOENT, "No such file or directory", "a.png"))


# ------------------------------------------------------------------ the run database
def test_read_only_database(tmp_path, calibprompt_home):
    db = tmp_path / "runs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE runs (id TEXT)")
    conn.close()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)  # root ignores chmod; a read-only open does not
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            conn.execute("INSERT INTO runs VALUES ('x')")
    finally:
        conn.close()
    message = user_message(info.value)
    assert "The run database" in message and "is read-only" in message and "CALIBPROMPT_HOME" in message


def test_locked_database(tmp_path):
    db = tmp_path / "runs.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE runs (id TEXT)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(db, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            other.execute("INSERT INTO runs VALUES ('x')")
    finally:
        other.close()
        holder.execute("ROLLBACK")
        holder.close()
    message = user_message(info.value)
    assert "is busy" in message and "try again" in message


def test_damaged_database(tmp_path):
    db = tmp_path / "runs.db"
    db.write_bytes(b"this is not a database, just some bytes" * 200)
    conn = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.DatabaseError) as info:
            conn.execute("SELECT * FROM runs")
    finally:
        conn.close()
    message = user_message(info.value)
    assert "The run database" in message and "is damaged" in message and "Move it aside" in message


@pytest.mark.parametrize("text, words", [
    ("disk I/O error", "disk I/O error"),
    ("database or disk is full", "is full"),
    ("attempt to write a readonly database", "is read-only"),
    ("database is locked", "is busy"),
    ("unable to open database file", "cannot be opened"),
])
def test_database_messages_by_text(text, words):
    assert words in user_message(sqlite3.OperationalError(text))


@pytest.mark.parametrize("exc", [
    ValueError("bad"), KeyError("k"), RuntimeError("x"), ZeroDivisionError(),
    sqlite3.IntegrityError("UNIQUE constraint failed: runs.id"),
    sqlite3.ProgrammingError("Cannot operate on a closed database."),
    sqlite3.OperationalError("no such table: runz"),
])
def test_anything_else_is_not_a_user_error(exc):
    assert user_message(exc) is None


# ------------------------------------------------------------------ internal errors
def test_internal_errors_are_logged_with_an_id(caplog):
    logger = logging.getLogger("calibprompt.test")
    try:
        raise RuntimeError("secret internals")
    except RuntimeError as caught:
        exc = caught
        with caplog.at_level(logging.ERROR, logger="calibprompt.test"):
            message = report_internal_error(exc, logger)
    match = re.search(r"error id ([0-9a-f]{8})\)", message)
    assert match and message.startswith("Something went wrong on the server (error id ")
    assert "secret internals" not in message and "Traceback" not in message
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and match.group(1) in record.getMessage()
    assert record.exc_info and record.exc_info[1] is exc
    assert "Traceback" in caplog.text and "secret internals" in caplog.text
    again = report_internal_error(exc, logger)
    assert re.search(r"error id ([0-9a-f]{8})", again).group(1) != match.group(1)


# ------------------------------------------------------------------ the CLI
def test_cli_turns_os_errors_into_the_message(monkeypatch, capsys, calibprompt_home):
    from calibprompt import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(calibprompt_home / "runs.db"))

    monkeypatch.setattr(cli, "cmd_runs", full)
    assert cli.main(["runs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("calibprompt runs: error: The disk holding the data directory") and "Traceback" not in err

    def bug(args):
        raise sqlite3.OperationalError("no such table: runz")

    monkeypatch.setattr(cli, "cmd_runs", bug)
    with pytest.raises(sqlite3.OperationalError):  # a bug keeps its traceback
        cli.main(["runs"])
