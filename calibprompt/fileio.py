"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename over the target.

A reader never sees a half-written file; a failed write (a full disk, say) removes its temporary file
and leaves the target as it was, and only a crash can leave a stray ``.<name>.*.tmp`` behind.
:func:`file_sha256` is the one file hasher (feature-cache keys, content-keyed caches).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "file_sha256", "format_bytes"]

logger = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then move it onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file the caller asked for, not a random temporary name
        exc.filename = str(path)
        raise
    try:
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) == tmp:
            exc.filename = str(path)
        # never leave a half-written temporary file; a failure to remove it must not hide the real error
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError as cleanup:  # pragma: no cover - e.g. the disk went read-only meanwhile
            logger.warning("Could not remove the temporary file %s: %s", tmp, cleanup)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


_HASH_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as 64 hex digits, read in 1 MiB blocks (never whole into memory).

    ``hashlib.file_digest`` (Python >= 3.11) does the reading; on Python 3.10 the same loop is written
    out here. Raises ``OSError`` (``FileNotFoundError``, ``IsADirectoryError``, ...) as ``open`` does.
    """
    with open(path, "rb") as handle:
        if hasattr(hashlib, "file_digest"):
            return hashlib.file_digest(handle, "sha256").hexdigest()
        digest = hashlib.sha256()  # pragma: no cover - Python 3.10
        for block in iter(lambda: handle.read(_HASH_CHUNK), b""):  # pragma: no cover
            digest.update(block)
        return digest.hexdigest()  # pragma: no cover


def format_bytes(n: int) -> str:
    """A size as a message says it: "512 bytes", "1.5 KB", "2.0 GB" (binary units, one decimal)."""
    value = float(n)
    for unit in ("bytes", "KB", "MB"):
        if value < 1024:
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
