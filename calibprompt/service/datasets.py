"""Datasets: the bundled sample images, the datasets an owner may pick, uploads, sharing an upload, and
opening a dataset for a session (its classes checked against the session's task).

Who may list and open what is decided by :mod:`calibprompt.data.resolve` (an upload of another owner is
refused as if it did not exist) and :mod:`calibprompt.service.access` (who may share).
"""
from __future__ import annotations

import csv
from typing import TYPE_CHECKING

from calibprompt.data.layouts import Dataset
from calibprompt.data.resolve import LOCAL_OWNER, dataset_choices as _dataset_choices, open_dataset, resolve_choice
from calibprompt.data.resolve import set_upload_shared
from calibprompt.paths import SAMPLE_IMAGES_DIR, owner_uploads_dir
from calibprompt.prompting.tasks import Task
from calibprompt.service.access import SHARING_NEEDS_LOGIN, can_share, is_team_member
from calibprompt.service.session import is_provisional

if TYPE_CHECKING:
    from calibprompt.service.session import SessionState

__all__ = ["sample_images", "dataset_choices", "upload_dataset", "share_dataset", "open_for"]


def sample_images() -> list[tuple[str, str]]:
    """``(path, caption)`` of the bundled sample images (none when their listing is missing)."""
    listing = SAMPLE_IMAGES_DIR / "labels.csv"
    if not listing.is_file():
        return []
    with open(listing, newline="") as handle:
        return [(str(SAMPLE_IMAGES_DIR / r["file"]), f"{r['task']}: {r['true_class']}") for r in csv.DictReader(handle)]


def dataset_choices(owner: str | None = LOCAL_OWNER) -> list[str]:
    """The datasets ``owner`` may pick (a session's ``state.owner``): the shared ones, ``owner``'s own
    uploads and, logged in, the team's shared uploads (``team/<user>/<name>``); see
    :func:`calibprompt.data.resolve.dataset_choices` (no argument: the CLI's own uploads)."""
    return _dataset_choices(owner)


def upload_dataset(zip_path: str | None, owner: str | None = LOCAL_OWNER) -> str:
    """Unpack an uploaded zip into ``owner``'s own folder of the data directory
    (``uploads/<owner_key(owner)>/<name>``), within the owner's quota (checked before unpacking); returns its
    dataset choice name, ``uploads/<name>``, which only ``owner`` can list or open. A provisional owner (no
    browser identity yet) cannot upload."""
    if not zip_path:
        raise ValueError("Choose a .zip file with one folder of images per class (or train/ and test/ folders).")
    if not owner or is_provisional(owner):
        raise ValueError("This page does not know who you are yet, so an upload could not be kept yours. "
                         "Reload the page, then upload the zip again.")
    from calibprompt.data.uploads import extract_upload  # within the owner's quota, checked before unpacking

    base = owner_uploads_dir(owner)
    root = extract_upload(zip_path, owner)
    choice = f"uploads/{root.relative_to(base).as_posix()}"
    set_upload_shared(choice, owner, shared=False)  # a new upload starts private, whatever its zip held
    return choice


def share_dataset(state: SessionState, choice: str, shared: bool = True) -> str:
    """Share this session's owner's own upload ``choice`` (``uploads/<name>``) with the team, or stop sharing
    it (``shared=False``); returns what happened, in plain words. Logged-in users only (else
    ``ValueError(SHARING_NEEDS_LOGIN)``); anything but the owner's own upload is refused (another owner's
    like a made-up name). Team mates then list and open it as ``team/<user>/<name>`` and see each other's
    verdicts on it; see :func:`calibprompt.data.resolve.set_upload_shared`."""
    owner = state.owner
    if not can_share(owner):
        raise ValueError(SHARING_NEEDS_LOGIN)
    if not is_team_member(owner):  # the operator publishes by folder, not by marker
        raise ValueError("To share a dataset with everyone as the operator, put its folder in the data "
                         "directory's datasets/ folder; sharing an upload is for logged-in users.")
    team_name = set_upload_shared(choice, owner, shared)
    if shared:
        return (f"Shared {choice.strip()} with the team: other logged-in users now find it as {team_name} in "
                "their dataset menus (after a reload) and see each other's verdicts on it. Press 'Stop "
                "sharing' to make it yours alone again.")
    return (f"{choice.strip()} is no longer shared: only you can list and open it, and team mates' verdicts "
            "on it are no longer shown. Your own verdicts are kept.")


def open_for(state: SessionState, dataset: str) -> tuple[str, Task, Dataset]:
    """A dataset choice opened against this session's task (classes must match), for this session's owner
    (an upload of another owner is refused as if it did not exist): ``(source, task, dataset)``."""
    source = resolve_choice(dataset, state.owner)
    task = state.task_object()
    task_file = None if state.classes else task
    opened_task, ds = open_dataset(source, task_file)
    if list(ds.class_ids) != list(task.class_ids):
        raise ValueError(f"The dataset {dataset!r} has the classes {', '.join(ds.class_ids)}, not those of the "
                         f"task {task.name!r} ({', '.join(task.class_ids)}); pick the task that matches it.")
    return source, opened_task, ds
