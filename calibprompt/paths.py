"""Where CalibPrompt keeps its data: ``$CALIBPROMPT_HOME`` (default ``~/.calibprompt``).

Everything the app or the CLI writes (the run store, prompt checkpoints, feature caches, generated
and uploaded datasets) lives below this folder.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["data_dir", "runs_dir", "features_dir", "datasets_dir", "uploads_dir", "owner_key", "owner_uploads_dir",
           "inside", "shown", "SAMPLE_IMAGES_DIR"]


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data directory (created if missing)."""
    root = Path(override or os.environ.get("CALIBPROMPT_HOME") or Path.home() / ".calibprompt").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def _sub(name: str, override: str | os.PathLike | None) -> Path:
    path = data_dir(override) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir(override: str | os.PathLike | None = None) -> Path:
    return _sub("runs", override)


def features_dir(override: str | os.PathLike | None = None) -> Path:
    return _sub("features", override)


def datasets_dir(override: str | os.PathLike | None = None) -> Path:
    return _sub("datasets", override)


def uploads_dir(override: str | os.PathLike | None = None) -> Path:
    return _sub("uploads", override)


def owner_key(owner: str) -> str:
    """An owner's folder name: the first 16 hex digits of the SHA-256 of the owner (``user:<name>``,
    ``browser:<hash>``), so no user text ever becomes a path."""
    if not owner:
        raise ValueError("An upload needs an owner.")
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:16]


def owner_uploads_dir(owner: str, override: str | os.PathLike | None = None) -> Path:
    """Where one owner's uploads are unpacked: ``uploads/<owner_key(owner)>`` (not created here)."""
    return uploads_dir(override) / owner_key(owner)


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` resolves to a location inside ``folder`` (symlinks resolved)."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def shown(path: str | os.PathLike) -> str:
    """``path`` as a message shows it: relative to the data directory when inside it (``runs/r1/prompt.json``),
    else only its file name, so no message reveals where the server keeps its files. The data directory is
    neither created nor required to exist (the disk may be what failed)."""
    text = os.fsdecode(path)
    configured = os.environ.get("CALIBPROMPT_HOME") or os.path.join("~", ".calibprompt")
    try:
        root = os.path.realpath(os.path.expanduser(configured))
        full = os.path.realpath(os.path.expanduser(text))
        if os.path.commonpath([root, full]) == root:
            relative = os.path.relpath(full, root)
            return "the data directory" if relative == "." else Path(relative).as_posix()
    except (TypeError, ValueError, OSError):
        pass
    return Path(text).name or text


#: The bundled sample images (package data), the only folder of the package a hosted app serves.
SAMPLE_IMAGES_DIR = Path(__file__).resolve().parent / "sample_images"
