"""Operating-system and database errors as plain messages for the person using the app or the CLI.

:func:`user_message` turns the errors a user can do something about (a full disk, a read-only data
directory, a locked or damaged run database) into a sentence that says what happened and what to do;
it returns None for anything else. :func:`report_internal_error` is for the rest: it logs the
traceback under a short random error id and returns a message that quotes the id, so a report from
a user can be matched with the server log without showing them the traceback.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import shlex
import sqlite3

__all__ = ["user_message", "report_internal_error", "damaged_store_notice"]

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF; Python >= 3.11)
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR = 5, 6, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26

_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
_EDQUOT = getattr(errno, "EDQUOT", None)


def _data_dir_text() -> str:
    """The data directory, as configured (never created or resolved here: the disk may be the problem)."""
    return os.environ.get("CALIBPROMPT_HOME") or os.path.join("~", ".calibprompt")


def _in_data_dir(filename) -> bool:
    if not filename:
        return True  # nothing names another place: assume the data directory
    try:
        root = os.path.realpath(os.path.expanduser(_data_dir_text()))
        path = os.path.realpath(os.path.expanduser(os.fsdecode(filename)))
        return os.path.commonpath([root, path]) == root
    except (TypeError, ValueError, OSError):
        return False


def _named(filename) -> str:
    """A file as a message names it: relative to the data directory when inside it (no server path shown),
    else as given (a file the user named, e.g. on the command line)."""
    from calibprompt.paths import shown

    text = os.fsdecode(filename)
    return shown(text) if _in_data_dir(text) else text


def _file_part(exc: OSError) -> str:
    return f" ({_named(exc.filename)})" if exc.filename else ""


def _os_message(exc: OSError) -> str:
    code = exc.errno
    where = _file_part(exc)
    home = _data_dir_text()
    if code == errno.ENOSPC:
        return (f"The disk holding the data directory {home} is full{where}; nothing was saved. "
                "Free some space on it, or set CALIBPROMPT_HOME to a folder on another disk, then try again.")
    if _EDQUOT is not None and code == _EDQUOT:
        return (f"The disk quota for the data directory {home} is used up{where}; nothing was saved. "
                "Free some space within your quota, or set CALIBPROMPT_HOME to another disk, then try again.")
    if code in _READ_ONLY:
        filename = os.fsdecode(exc.filename) if exc.filename else None
        state = "is on a read-only file system" if code == errno.EROFS else "is not writable (permission denied)"
        if _in_data_dir(filename):
            detail = f": could not write {_named(filename)}" if filename else ""
            return (f"The data directory {home} {state}{detail}. Make it writable, or set CALIBPROMPT_HOME "
                    "to a writable folder, then try again.")
        reason = "the file system is read-only" if code == errno.EROFS else "permission denied"
        return f"Cannot write or open {filename}: {reason}. Choose another location or fix its permissions."
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename:
        return (f"A file operation failed on {_named(exc.filename)}: {reason}. "
                "Check that it exists and is accessible.")
    return f"A file operation failed: {reason}. Check the disk and the data directory {home}, then try again."


def _sqlite_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _sqlite_message(exc: sqlite3.Error) -> str | None:
    db = os.path.join(_data_dir_text(), "runs.db")
    text = str(exc).lower()
    code = _sqlite_code(exc)
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text or "busy" in text:
        return (f"The run database {db} is busy: another calibprompt process is writing to it. Wait a moment "
                "and try again; if it stays busy, stop the other calibprompt processes that use it.")
    if code == _SQLITE_READONLY or "readonly" in text or "read-only" in text:
        return (f"The run database {db} is read-only, so the run could not be recorded. Make it and its folder "
                "writable, or set CALIBPROMPT_HOME to a writable folder, then try again.")
    if code == _SQLITE_FULL or "disk is full" in text:
        return (f"The disk holding the run database {db} is full; nothing was saved. Free some space on it, "
                "or set CALIBPROMPT_HOME to a folder on another disk, then try again.")
    if code == _SQLITE_IOERR or "disk i/o error" in text:
        return (f"The run database {db} could not be read or written (disk I/O error). Check that the disk "
                "holding it is present, has free space and is healthy, then try again.")
    if code == _SQLITE_CANTOPEN or "unable to open database" in text:
        return (f"The run database {db} cannot be opened. Check that its folder exists and is writable, or set "
                "CALIBPROMPT_HOME to a writable folder, then try again.")
    if (code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text or "not a database" in text
            or type(exc) is sqlite3.DatabaseError):
        return (f"The run database {db} is damaged ({exc}). Move it aside or restore it from a backup; or "
                "restart calibprompt, which keeps the damaged file as runs.db.damaged-<time> and starts a new, "
                "empty one. 'calibprompt store check' shows the damage; 'calibprompt store recover FILE' "
                "copies what can still be read into a new file.")
    return None


def damaged_store_notice(path, kept, reason: str) -> str:
    """The notice (one line) shown when the run database ``path`` was found damaged (SQLite's ``reason``),
    kept as ``kept`` and replaced by a new, empty one: which file, where it is, what to do."""
    path, kept = os.fsdecode(path), os.fsdecode(kept)
    reason = " ".join(str(reason).split())  # one line, for the log and the banner
    return (f"The run database {path} was damaged ({reason}), so it was kept as {kept} and a new, empty run "
            f"database was started in its place; earlier runs are not listed until recovered. To copy what can "
            f"still be read into a new file, run: calibprompt store recover {shlex.quote(kept)} "
            f"(it never overwrites a file); "
            f"then stop the app and put the recovered file in place of {path}, or restore a backup.")


def user_message(exc: BaseException) -> str | None:
    """A plain message for an OS or database error a user can act on, or None for anything else.

    Handled: :class:`OSError` (a full disk, an exhausted quota, a read-only or permission-denied data
    directory, and other file errors, naming the file), :class:`sqlite3.OperationalError` (a locked or
    busy, read-only, full, unreadable or unopenable run database) and a damaged database
    (:class:`sqlite3.DatabaseError` itself, "malformed" / "not a database"). Programming errors of the
    database layer (``IntegrityError``, ``ProgrammingError``, an unknown ``OperationalError`` such as a
    missing table) return None: they are bugs for :func:`report_internal_error`.
    """
    if isinstance(exc, OSError):
        return _os_message(exc)
    if isinstance(exc, sqlite3.OperationalError):
        return _sqlite_message(exc)
    if isinstance(exc, sqlite3.DatabaseError) and type(exc) is sqlite3.DatabaseError:
        return _sqlite_message(exc)
    return None


def report_internal_error(exc: BaseException, logger: logging.Logger) -> str:
    """Log ``exc`` with its traceback under a new error id (8 hex digits) at ERROR level; return the
    message to show the user, which quotes the id (never the traceback)."""
    error_id = secrets.token_hex(4)
    logger.error("Internal error %s: %s: %s", error_id, type(exc).__name__, exc,
                 exc_info=(type(exc), exc, exc.__traceback__))
    return (f"Something went wrong on the server (error id {error_id}). Try again; if it happens again, "
            "report the error id to whoever runs this server.")
