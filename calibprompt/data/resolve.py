"""Where a job's data comes from, resolved in one place: a dataset name or folder, and its task.

:func:`open_dataset` is what the CLI, the job pipeline and the service layer call; :func:`dataset_choices`
and :func:`resolve_choice` are the app's view of the same thing, confined to the data directory (a
hosted app never reads a folder a user names) and to the requesting owner's own uploads: an upload is
unpacked under ``uploads/<owner_key(owner)>/`` and shown as ``uploads/<name>``, which resolves against
the owner of the request, never against anything the client sent.
"""
from __future__ import annotations

import os
from pathlib import Path

from calibprompt.data.layouts import Dataset, load_dataset
from calibprompt.data.sources import get_registered_dataset, list_registered_datasets
from calibprompt.paths import data_dir, datasets_dir, inside, owner_uploads_dir, uploads_dir
from calibprompt.prompting.tasks import Task, TaskClass, list_tasks, load_task

__all__ = ["open_dataset", "task_from_dataset", "dataset_choices", "upload_choices", "resolve_choice", "upload_root",
           "LOCAL_OWNER"]

#: who owns uploads made without a web request (the CLI, scripts, the library's own callers): its own owner,
#: which no request's owner (``user:<name>``, ``browser:<hash>``, a provisional ``session-...``) ever equals
LOCAL_OWNER = "local"


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
                f"No data for the task {name!r} in {path}. Put the dataset there (any supported layout, e.g. the "
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
    from calibprompt.service.session import is_provisional

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
    """What ``owner`` may pick: registered datasets and folders under ``datasets/`` (shared by everyone), and
    ``owner``'s own unpacked uploads (``uploads/<name>``). Without an argument the owner is
    :data:`LOCAL_OWNER` (the CLI, scripts); ``None`` or a provisional page owner lists the shared ones only."""
    root = datasets_dir()
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and "-standard-" not in p.name) if root.is_dir() else []
    registered = list_registered_datasets()
    return registered + [f for f in folders if f not in registered] + upload_choices(owner)


def resolve_choice(choice: str, owner: str | None = LOCAL_OWNER) -> str:
    """A dataset choice as a registered name or a path, for ``owner``: a shared dataset, or one of ``owner``'s
    own uploads (``uploads/<name>`` is looked up in ``owner``'s folder only). Anything else (another owner's
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
