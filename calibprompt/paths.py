"""Where CalibPrompt keeps its data: ``$CALIBPROMPT_HOME`` (default ``~/.calibprompt``).

Everything the app or the CLI writes (the run store, prompt checkpoints, feature caches, generated
and uploaded datasets) lives below this folder, and a user's own task files sit in its ``prompts/``.
What ships with CalibPrompt (the task files, the sample images) is found by :func:`bundled_dir`.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = ["data_dir", "runs_dir", "features_dir", "datasets_dir", "uploads_dir", "owner_key", "owner_uploads_dir",
           "inside", "shown", "bundled_dir", "user_prompts_dir", "BUNDLED_FOLDERS", "SAMPLE_IMAGES_DIR"]

#: The data folders shipped with CalibPrompt: the task files (with the demo's prompt checkpoints in
#: ``prompts/demo``) and the sample images. Their one copy sits at the repository's top level.
BUNDLED_FOLDERS = ("prompts", "sample_images")
_PACKAGE = Path(__file__).resolve().parent


def _home(override: str | os.PathLike | None = None) -> Path:
    """The configured data directory, neither created nor resolved."""
    return Path(override or os.environ.get("CALIBPROMPT_HOME") or Path.home() / ".calibprompt").expanduser()


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data directory (created if missing)."""
    root = _home(override)
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
            return "the data directory" if relative == "." else _upload_name(Path(relative).as_posix())
    except (TypeError, ValueError, OSError):
        pass
    return Path(text).name or text


def _upload_name(relative: str) -> str:
    """An upload's path as its owner names it (``uploads/<owner key>/scans/x.png`` -> ``uploads/scans/x.png``,
    the dataset choice the menus show); any other path as it is."""
    parts = relative.split("/")
    if len(parts) > 2 and parts[0] == "uploads" and re.fullmatch(r"[0-9a-f]{16}", parts[1]):
        return "/".join(["uploads", *parts[2:]])
    return relative


def bundled_dir(name: str) -> Path:
    """Where a shipped data folder (one of :data:`BUNDLED_FOLDERS`) is, in a checkout or an install.

    In a source checkout, and with ``pip install -e .``, it is the repository's top-level folder
    (``<repo>/prompts``), found beside ``pyproject.toml`` next to the package. An installed wheel carries
    it inside the package (``site-packages/calibprompt/prompts``: the build maps the top-level folder
    there, see ``[tool.setuptools.package-dir]`` in pyproject.toml). The checkout is looked at first, so
    a stray leftover folder inside the package never shadows the canonical copy. Nothing is created.
    """
    if name not in BUNDLED_FOLDERS:
        raise ValueError(f"Unknown bundled folder {name!r}; choose one of: {', '.join(BUNDLED_FOLDERS)}.")
    checkout = _PACKAGE.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
        return checkout / name
    return _PACKAGE / name


def user_prompts_dir(override: str | os.PathLike | None = None) -> Path:
    """A user's own task files: ``$CALIBPROMPT_HOME/prompts`` (not created; see
    :func:`calibprompt.prompting.tasks.list_tasks` for how they sit beside the bundled ones)."""
    return _home(override) / "prompts"


#: The bundled sample images, the only shipped folder a hosted app serves.
SAMPLE_IMAGES_DIR = bundled_dir("sample_images")
