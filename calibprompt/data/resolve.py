"""Where a job's data comes from, resolved in one place: a dataset name or folder, and its task.

:func:`open_dataset` is what the CLI, the job pipeline and the service layer call; :func:`dataset_choices`
and :func:`resolve_choice` are the app's view of the same thing, confined to the data directory (a
hosted app never reads a folder a user names) and to the requesting owner's own uploads: an upload is
unpacked under ``uploads/<owner_key(owner)>/`` and shown as ``uploads/<name>``, which resolves against
the owner of the request, never against anything the client sent.

A logged-in owner may share an upload with the team (:func:`set_upload_shared`: a marker file in the upload's
folder); other logged-in users then list and open it as ``team/<user name>/<name>`` (:func:`team_uploads`),
nobody else. :func:`dataset_key` names the data a choice opens, the same for every owner that may open it:
what review verdicts are stored under.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from calibprompt.data.layouts import Dataset, load_dataset
from calibprompt.data.sources import get_registered_dataset, list_registered_datasets
from calibprompt.fileio import atomic_write
from calibprompt.owners import LOCAL, can_see, is_provisional, is_team_member
from calibprompt.paths import data_dir, datasets_dir, inside, owner_key, owner_uploads_dir, shown, uploads_dir
from calibprompt.prompting.tasks import Task, TaskClass, list_tasks, load_task

__all__ = ["open_dataset", "task_from_dataset", "dataset_choices", "upload_choices", "resolve_choice", "upload_root",
           "LOCAL_OWNER", "dataset_key", "team_uploads", "set_upload_shared", "upload_shared_by", "team_can_open",
           "SHARE_MARKER", "TEAM_CHOICE_PREFIX"]

#: who owns uploads made without a web request (the CLI, scripts, the library's own callers): its own owner,
#: which no request's owner (``user:<name>``, ``browser:<hash>``, a provisional ``session-...``) ever equals
LOCAL_OWNER = LOCAL
#: the file in an upload's folder that says its owner shared it with the team (JSON: owner, shared_at)
SHARE_MARKER = ".calibprompt-shared.json"
#: how a team mate's shared upload is named in the menus: ``team/<user name>/<name>``
TEAM_CHOICE_PREFIX = "team/"


def task_from_dataset(dataset: Dataset) -> Task:
    """A task whose classes are the dataset's own (for folders that follow no task file)."""
    classes = tuple(TaskClass(i, n, n) for i, n in zip(dataset.class_ids, dataset.classnames))
    return Task(name=dataset.name, classes=classes)


def open_dataset(dataset: str | os.PathLike, task: str | Task | None = None) -> tuple[Task, Dataset]:
    """The task and dataset a job names.

    ``dataset`` is a folder or CSV file in any layout :func:`calibprompt.data.layouts.load_dataset`
    reads, a registered dataset name (:mod:`calibprompt.data.sources`, e.g. the demo's), or a task name
    whose data lives in ``$CALIBPROMPT_HOME/datasets/<name>``. ``task`` (a :class:`Task`, a name or a
    file) supplies class names and templates; without it, a registered dataset uses its task, a folder
    named like a task uses that task, and any other folder gets its class names from its folders.
    """
    task_obj = task if isinstance(task, Task) else (load_task(task) if task is not None else None)
    name = str(dataset)
    path = Path(dataset).expanduser()
    source = get_registered_dataset(name) if not path.exists() else None
    if source is not None:
        task_obj = task_obj or load_task(source.task)
        path = source.folder()
    elif not path.exists() and name in list_tasks():
        task_obj = task_obj or load_task(name)
        path = datasets_dir() / name
        if not path.exists():
            raise ValueError(
                f"No data for the task {name!r} in the data directory's {shown(path)}. Put the dataset there (any supported layout, e.g. the "
                "paper's images/train|test/<class>/ + classnames.txt), or name a dataset folder instead."
            )
    if not path.exists():
        known = list(dict.fromkeys(list_registered_datasets() + list_tasks()))
        raise ValueError(f"The dataset {name!r} is neither a folder/CSV file nor a dataset or task name "
                         f"({', '.join(known)}).")
    if task_obj is None and path.name in list_tasks():
        task_obj = load_task(path.name)
    # an uploaded archive may carry a manifest pointing anywhere: keep it to its own folder
    ds = load_dataset(path, task=task_obj, confine_to_root=inside(path, uploads_dir()))
    return (task_obj or task_from_dataset(ds)), ds


def upload_root(folder: Path) -> Path:
    """An unpacked upload's dataset folder: its single top-level folder, if that is all it holds."""
    entries = [e for e in folder.iterdir() if not e.name.startswith(".") and e.name != "__MACOSX"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def _owns_uploads(owner: str | None) -> bool:
    """Whether ``owner`` may have uploads: a provisional page owner (before its browser identity is read) or
    no owner at all owns nothing."""
    return bool(owner) and not is_provisional(owner)


def upload_choices(owner: str | None) -> list[str]:
    """``owner``'s own unpacked uploads, as the readable choices ``uploads/<name>`` (nobody else's)."""
    if not _owns_uploads(owner):
        return []
    base = owner_uploads_dir(owner)
    if not base.is_dir():
        return []
    return sorted(f"uploads/{upload_root(p).relative_to(base).as_posix()}"
                  for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def dataset_choices(owner: str | None = LOCAL_OWNER) -> list[str]:
    """What ``owner`` may pick: registered datasets and folders under ``datasets/`` (shared by everyone),
    ``owner``'s own unpacked uploads (``uploads/<name>``) and, for a logged-in owner, the uploads other logged-in
    users shared with the team (``team/<user>/<name>``, :func:`team_uploads`). Without an argument the owner is
    :data:`LOCAL_OWNER` (the CLI, scripts); ``None`` or a provisional page owner lists the shared ones only."""
    root = datasets_dir()
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and "-standard-" not in p.name) if root.is_dir() else []
    registered = list_registered_datasets()
    shared = registered + [f for f in folders if f not in registered]
    return shared + upload_choices(owner) + sorted(team_uploads(owner))


def resolve_choice(choice: str, owner: str | None = LOCAL_OWNER) -> str:
    """A dataset choice as a registered name or a path, for ``owner``: a shared dataset, one of ``owner``'s
    own uploads (``uploads/<name>`` is looked up in ``owner``'s folder only), or a team mate's upload shared with
    the team when ``owner`` is logged in (``team/<user>/<name>``). Anything else (another owner's
    upload, a path outside the data directory, a name that does not exist) gets the same refusal, so it never
    tells whether someone else's upload exists."""
    choice = (choice or "").strip()
    if not choice:
        raise ValueError("Pick a dataset: a demo set, an uploaded zip or a folder under the data directory.")
    if get_registered_dataset(choice) is not None:
        return choice
    refusal = ValueError(f"No dataset named {choice!r}; choose one from the list.")
    if ".." in Path(choice).parts:
        raise refusal
    if choice.startswith(TEAM_CHOICE_PREFIX):
        shared = team_uploads(owner).get(choice)
        if shared is None:
            raise refusal
        return str(shared)
    if choice.startswith("uploads/"):
        if not _owns_uploads(owner):
            raise refusal
        base = owner_uploads_dir(owner)
        path = base / choice[len("uploads/"):]
    else:
        base = data_dir()
        path = datasets_dir() / choice
    if not inside(path, base) or path.resolve() in (base.resolve(), datasets_dir().resolve()) or not path.exists():
        raise refusal
    return str(path)


def dataset_key(choice: str, owner: str | None = LOCAL_OWNER) -> str:
    """The key of the data a choice opens for ``owner`` (what verdicts on it are stored under): a registered
    dataset's name, a folder under ``datasets/`` by its path there (``kather``), an upload by its folder in the
    data directory (``uploads/<owner key>/<name>``: the same for its owner's ``uploads/<name>`` and a team
    mate's ``team/<user>/<name>``, and different for two owners' uploads of one name). Refused like
    :func:`resolve_choice` when ``owner`` may not open it."""
    source = resolve_choice(choice, owner)
    if get_registered_dataset(choice.strip()) is not None:
        return source
    path = Path(os.path.normpath(source))
    for base, prefix in ((uploads_dir(), "uploads/"), (datasets_dir(), "")):
        base = Path(os.path.normpath(base))
        if path.is_relative_to(base):
            return prefix + path.relative_to(base).as_posix()
    raise ValueError(f"No dataset named {choice!r}; choose one from the list.")  # not reached: resolved inside


def _upload_folder(owner: str, name: str) -> Path:
    """The folder an upload named ``uploads/<name>`` was unpacked into (its top-level folder, which holds the
    share marker even when the dataset root is a folder inside it)."""
    return owner_uploads_dir(owner) / Path(name).parts[0]


def upload_shared_by(folder: Path) -> str | None:
    """Who shared the upload unpacked in ``folder`` (``uploads/<owner key>/<name>``) with the team: the owner its
    marker records, when that is a logged-in user whose folder it is; else None (not shared, an unreadable
    marker, or one that names someone else)."""
    try:
        recorded = json.loads((folder / SHARE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    owner = recorded.get("owner") if isinstance(recorded, dict) else None
    if not isinstance(owner, str) or not is_team_member(owner) or owner_key(owner) != folder.parent.name:
        return None
    return owner


def team_uploads(owner: str | None) -> dict[str, Path]:
    """The uploads other logged-in users shared with the team that ``owner`` may open (``owner`` must be logged in
    too): ``{"team/<user>/<name>": dataset folder}``. Two uploads that would get one name are both left out."""
    if not is_team_member(owner):
        return {}
    found: dict[str, Path] = {}
    clashes: set[str] = set()
    for marker in sorted(uploads_dir().glob(f"*/*/{SHARE_MARKER}")):
        folder = marker.parent
        sharer = upload_shared_by(folder)
        if sharer is None or sharer == owner or not can_see(owner, sharer, shared=True) or not folder.is_dir():
            continue
        root = upload_root(folder)
        name = f"{TEAM_CHOICE_PREFIX}{sharer.split(':', 1)[1]}/{root.relative_to(folder.parent).as_posix()}"
        if name in found:
            clashes.add(name)
        found[name] = root
    return {name: root for name, root in found.items() if name not in clashes}


def team_can_open(key: str) -> bool:
    """Whether the team may open the data of a :func:`dataset_key`: a shared dataset (not an upload), or an upload
    its logged-in owner shares with the team now."""
    if not key.startswith("uploads/"):
        return True
    parts = Path(key).parts
    if len(parts) < 3 or ".." in parts:
        return False
    return upload_shared_by(uploads_dir() / parts[1] / parts[2]) is not None


def set_upload_shared(choice: str, owner: str, shared: bool = True) -> str:
    """Share ``owner``'s own upload ``uploads/<name>`` with the team (``shared``) or stop sharing it; returns the
    name team mates see it under (``team/<user>/<name>``). The marker is written atomically and records
    ``owner``. Refused (``ValueError``) for anything but ``owner``'s own upload, like :func:`resolve_choice`."""
    choice = (choice or "").strip()
    root = Path(resolve_choice(choice, owner))  # refuses another owner's upload like a made-up name
    if not choice.startswith("uploads/"):
        raise ValueError(f"Only your own uploads (listed as uploads/<name>) can be shared with the team; "
                         f"{choice!r} is not one. Upload a zip in the Train tab, then share it.")
    folder = _upload_folder(owner, choice[len("uploads/"):])
    marker = folder / SHARE_MARKER
    if shared:
        record = {"owner": owner, "shared_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write(marker, lambda tmp: Path(tmp).write_text(json.dumps(record) + "\n", encoding="utf-8"))
    else:
        marker.unlink(missing_ok=True)
    return f"{TEAM_CHOICE_PREFIX}{owner.split(':', 1)[-1]}/{root.relative_to(folder.parent).as_posix()}"
