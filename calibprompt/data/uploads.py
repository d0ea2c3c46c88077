"""Bounds on what uploads may take: a quota per owner, and removal by age.

Each owner's uploaded zips unpack into ``uploads/<owner_key(owner)>/<name>`` (see
:func:`calibprompt.paths.owner_uploads_dir`). :func:`extract_upload` keeps one owner's uploads within
:func:`quota` (total bytes and number of datasets, from :data:`calibprompt.defaults.LIMITS`, overridable
by ``$CALIBPROMPT_UPLOAD_QUOTA_BYTES`` and ``$CALIBPROMPT_UPLOAD_QUOTA_DATASETS``): the archive's declared
uncompressed size is read from its central directory and an upload that would pass the quota is refused
before anything is written. :func:`clean_uploads` removes uploads older than :func:`upload_days` days
(``$CALIBPROMPT_UPLOAD_DAYS``, default :data:`calibprompt.defaults.UPLOAD_DAYS`; 0 keeps them forever),
only inside the uploads folder and never following a symbolic link; :func:`start_cleaner` repeats that
in a daemon thread.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import threading
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

from calibprompt import defaults
from calibprompt.archives import extract_zip
from calibprompt.fileio import format_bytes
from calibprompt.paths import owner_uploads_dir, uploads_dir

__all__ = ["Quota", "quota", "usage", "declared_size", "check_quota", "extract_upload", "upload_days",
           "clean_uploads", "start_cleaner", "CLEAN_EVERY_S"]

logger = logging.getLogger(__name__)

CLEAN_EVERY_S = 3600.0  #: how often the app's cleaner looks for old uploads
_OWNER_FOLDER = re.compile(r"^[0-9a-f]{16}$")  # paths.owner_key
_PARTIAL_GRACE_S = 24 * 3600.0  # an unfinished extraction older than this was interrupted
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class Quota(NamedTuple):
    """What one owner's uploads may take in all: bytes unpacked and datasets."""

    max_bytes: int
    max_datasets: int


def _env_int(name: str, default: int) -> int:
    """A whole number from the environment variable ``name`` (``default`` when unset); a value that is not a
    whole number of at least 0 stops with a message naming the variable."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"${name} must be a whole number of at least 0; it is {text!r}. Fix or unset it.")
    return value


def quota() -> Quota:
    """The per-owner upload quota: ``LIMITS["upload_quota_bytes"]`` and ``LIMITS["upload_quota_datasets"]``
    (their upper bounds), or the environment's overrides."""
    return Quota(_env_int("CALIBPROMPT_UPLOAD_QUOTA_BYTES", defaults.LIMITS["upload_quota_bytes"][1]),
                 _env_int("CALIBPROMPT_UPLOAD_QUOTA_DATASETS", defaults.LIMITS["upload_quota_datasets"][1]))


def _tree_bytes(folder: Path) -> int:
    """Bytes of the regular files below ``folder``, never following a symbolic link."""
    total = 0
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            try:
                info = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def usage(owner: str) -> tuple[int, int]:
    """``(bytes, datasets)`` that ``owner``'s uploads take now (unfinished extractions count in bytes)."""
    base = owner_uploads_dir(owner)
    if not base.is_dir():
        return 0, 0
    datasets = sum(1 for p in base.iterdir() if not p.name.startswith("."))
    return _tree_bytes(base), datasets


def declared_size(zip_path: str | os.PathLike) -> int | None:
    """The uncompressed bytes a zip declares for its files (its central directory), or None when it cannot
    be read as a zip (:func:`~calibprompt.archives.extract_zip` then says why)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return sum(i.file_size for i in zf.infolist() if not i.filename.replace("\\", "/").endswith("/"))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError):
        return None


def check_quota(owner: str, incoming: int) -> None:
    """Refuse (ValueError) an upload of ``incoming`` bytes that would take ``owner`` past :func:`quota`,
    saying how much is used and what to do."""
    limit = quota()
    used, count = usage(owner)
    days = upload_days()
    advice = ("Delete uploads you no longer need (they are in the data directory's uploads/ folder; whoever runs "
              "this server can remove old ones with 'calibprompt store clean-uploads --days N'), or upload a smaller "
              "dataset." + (f" Uploads are removed {days} days after they were made." if days else ""))
    if count + 1 > limit.max_datasets:
        raise ValueError(f"You have {count} uploaded datasets, the most one user may keep is {limit.max_datasets}, "
                         f"so this upload was refused. {advice}")
    if used + incoming > limit.max_bytes:
        raise ValueError(f"This upload unpacks to {format_bytes(incoming)} and your uploads already take {format_bytes(used)} of "
                         f"the {format_bytes(limit.max_bytes)} one user may keep, so it was refused. {advice}")


def _owner_lock(owner: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(owner, threading.Lock())


def extract_upload(zip_path: str | os.PathLike, owner: str) -> Path:
    """Unpack ``zip_path`` into ``owner``'s uploads folder within the quota (checked before anything is
    written, one upload of an owner at a time) and return the dataset root (see
    :func:`~calibprompt.archives.extract_zip`, whose checks and clean-up on error apply too)."""
    with _owner_lock(owner):
        incoming = declared_size(zip_path)
        if incoming is not None:
            check_quota(owner, incoming)
        return extract_zip(zip_path, owner_uploads_dir(owner))


def upload_days() -> int:
    """Days an upload is kept: ``$CALIBPROMPT_UPLOAD_DAYS`` or :data:`calibprompt.defaults.UPLOAD_DAYS` (0: forever)."""
    return _env_int("CALIBPROMPT_UPLOAD_DAYS", defaults.UPLOAD_DAYS)


def _remove(entry: Path, base: Path) -> bool:
    """Remove ``entry`` (a symbolic link itself, never what it points to), which must sit inside ``base``."""
    if not entry.parent.resolve().is_relative_to(base.resolve()):
        return False
    if entry.is_symlink() or not entry.is_dir():
        entry.unlink()
    else:
        shutil.rmtree(entry)
    return True


def _old_entries(folder: Path, cutoff: float):
    """Entries of ``folder`` (not followed if links) last changed before ``cutoff``; unfinished extractions
    (``.partial-*``) only after a day's grace."""
    for entry in sorted(folder.iterdir()):
        mtime = entry.lstat().st_mtime
        if entry.name.startswith(".partial-"):
            if mtime < min(cutoff, time.time() - _PARTIAL_GRACE_S):
                yield entry
        elif mtime < cutoff:
            yield entry


def clean_uploads(days: int | None = None, *, now: float | None = None) -> list[Path]:
    """Remove the uploaded datasets older than ``days`` (default :func:`upload_days`; 0 or less: none), with
    a log line each, and the owner folders they leave empty; returns what was removed. Only entries inside
    the uploads folder are touched, and symbolic links are removed, never followed."""
    days = upload_days() if days is None else int(days)
    if days <= 0:
        return []
    base = uploads_dir()
    cutoff = (time.time() if now is None else now) - days * 86400.0
    removed: list[Path] = []
    for top in sorted(base.iterdir()):
        is_owner = _OWNER_FOLDER.match(top.name) and top.is_dir() and not top.is_symlink()
        for entry in (_old_entries(top, cutoff) if is_owner else _old_entries_of(top, cutoff)):
            try:
                if _remove(entry, base):
                    removed.append(entry)
                    logger.info("Removed the upload %s: older than %d days.", entry.relative_to(base), days)
            except OSError as exc:
                logger.warning("Could not remove the old upload %s: %s", entry.relative_to(base), exc)
        if is_owner and not any(top.iterdir()):
            top.rmdir()
    return removed


def _old_entries_of(entry: Path, cutoff: float):
    """An entry directly in the uploads folder (an upload of the layout before owners), if old."""
    if not entry.name.startswith(".") and entry.lstat().st_mtime < cutoff:
        yield entry


def start_cleaner(every_s: float = CLEAN_EVERY_S) -> threading.Thread:
    """Clean old uploads now and then every ``every_s`` seconds, in a daemon thread (errors are logged, never
    raised: cleaning must not stop the app)."""

    def loop() -> None:
        while True:
            try:
                clean_uploads()
            except Exception as exc:  # noqa: BLE001 - a failed clean is retried on the next round
                logger.warning("Cleaning old uploads failed: %s", exc)
            time.sleep(every_s)

    thread = threading.Thread(target=loop, name="calibprompt-upload-cleaner", daemon=True)
    thread.start()
    return thread
