"""Demo datasets: folders of generated patches for the two demo tasks.

``write_demo_dataset`` writes ``<out>/train/<class>/*.png`` and ``<out>/test/<class>/*.png`` (class
folders named by the task's class ids), readable by every dataset loader. The *standard split* of a
task (what ``--dataset demo`` and ``--dataset demo-binary`` mean) is generated once into the data
directory on first use and reused afterwards. Generation holds a file lock next to the target folder
and writes into a hidden temporary sibling that is renamed into place when complete, so concurrent
callers (threads or processes) generate it once and a killed generator leaves nothing half-written
where the dataset belongs (its ``.<name>.partial-*`` folder is removed by the next call).
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import secrets
import shutil
from pathlib import Path

from filelock import FileLock
from PIL import Image

from calibprompt.paths import datasets_dir
from calibprompt.demo import world

logger = logging.getLogger(__name__)

__all__ = ["DEMO_TASKS", "STANDARD_SPLITS", "SHIFTED_SPLITS", "write_demo_dataset", "standard_split", "is_demo_task"]

DEMO_TASKS: dict[str, tuple[str, ...]] = {
    "demo": world.CLASS_IDS,
    "demo-binary": ("NORM", "TUM"),
}
#: Parameters of each task's standard split (change the version when changing them).
STANDARD_SPLITS: dict[str, dict] = {
    "demo": {"seed": 0, "train_per_class": 32, "test_per_class": 100, "shift": 1.25, "version": 1},
    "demo-binary": {"seed": 0, "train_per_class": 64, "test_per_class": 300, "shift": 1.25, "version": 1},
}
#: Other domains of a task's world, for cross-domain evaluation (``compare --eval-dataset demo-shifted``):
#: the same classes, another world seed and a stronger stain/blur/noise shift.
SHIFTED_SPLITS: dict[str, dict] = {
    "demo-shifted": {"task": "demo", "seed": 7, "train_per_class": 16, "test_per_class": 100, "shift": 1.75,
                     "version": 1},
}
TEST_INDEX_OFFSET = 1_000_000  # test images use other indices than training images: no overlap


def is_demo_task(name: str) -> bool:
    return str(name) in DEMO_TASKS


def _write_class(args: tuple[str, str, int, int, int, float, int, str]) -> int:
    split, cls, start, count, seed, shift, size, folder = args
    target = Path(folder) / split / cls
    target.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, _ = world.generate_patch(cls, start + i, seed, shift=shift, size=size)
        Image.fromarray(image).save(target / f"{cls}_{split}_{i:04d}.png", optimize=False, compress_level=1)
    return count


def _lock_for(out: Path) -> FileLock:
    """The lock that serialises generating ``out``: a hidden file next to it (kept after use)."""
    return FileLock(str(out.parent / f".{out.name}.lock"))


def _remove_stale_partials(out: Path) -> None:
    """Remove ``.{name}.partial-*`` folders a killed generator left next to ``out`` (call under the lock:
    then no live generator owns one)."""
    prefix = f".{out.name}.partial-"
    try:
        entries = list(out.parent.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(prefix) and entry.is_dir() and not entry.is_symlink():
            logger.info("Removing the unfinished demo dataset %s left by an interrupted run", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _check_params(task: str, train_per_class: int, test_per_class: int, shift: float) -> None:
    if task not in DEMO_TASKS:
        raise ValueError(f"Unknown demo task {task!r}; choose one of: {', '.join(DEMO_TASKS)}.")
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError("train_per_class and test_per_class must be at least 1.")
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}.")


def _new_partial_folder(out: Path) -> Path:
    """A new hidden ``.{name}.partial-<8 hex digits>`` sibling of ``out``, with the usual permissions (umask), not
    the owner-only ones of :func:`tempfile.mkdtemp`, since it becomes the dataset folder."""
    while True:
        tmp = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:  # pragma: no cover - a 1 in 4 billion collision
            continue


def _generate(task: str, out: Path, *, seed: int, train_per_class: int, test_per_class: int, shift: float,
              size: int, workers: int) -> Path:
    """Write the dataset into a hidden temporary sibling of ``out``, then rename it into place (the caller
    holds the lock and has checked that ``out`` is missing or empty)."""
    tmp = _new_partial_folder(out)
    try:
        jobs = [(split, cls, offset, n, seed, shift, size, str(tmp))
                for split, offset, n in (("train", 0, train_per_class), ("test", TEST_INDEX_OFFSET, test_per_class))
                for cls in DEMO_TASKS[task]]
        if workers > 1:
            with mp.get_context("spawn").Pool(workers) as pool:
                pool.map(_write_class, jobs)
        else:
            for job in jobs:
                _write_class(job)
        (tmp / "demo_dataset.json").write_text(json.dumps({
            "task": task, "seed": seed, "train_per_class": train_per_class, "test_per_class": test_per_class,
            "shift": shift, "size": size, "world_version": world.WORLD_VERSION,
        }, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_demo_dataset(task: str, out: str | os.PathLike, *, seed: int = 0, train_per_class: int = 32,
                       test_per_class: int = 100, shift: float = 1.0, size: int = 64, workers: int = 2) -> Path:
    """Generate a demo dataset for ``task`` ("demo" or "demo-binary") into ``out`` (which must not
    exist or be empty).

    Generation holds a file lock next to ``out`` (``.<name>.lock``), writes into a hidden temporary
    sibling folder and renames it into place at the end, so ``out`` is either absent or complete; an
    unfinished ``.<name>.partial-*`` folder left by a killed process is removed first."""
    _check_params(task, train_per_class, test_per_class, shift)
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock_for(out):
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"{out} already exists and is not empty; choose a new folder.")
        _remove_stale_partials(out)
        return _generate(task, out, seed=seed, train_per_class=train_per_class, test_per_class=test_per_class,
                         shift=shift, size=size, workers=workers)


def _finished(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(folder.iterdir())
    except OSError:
        return False


def standard_split(task: str) -> Path:
    """The folder of ``task``'s standard split (or of a shifted domain of :data:`SHIFTED_SPLITS`), generated
    on first use.

    Safe to call from several threads or processes at once: one generates it (under the file lock of
    :func:`write_demo_dataset`), the others wait and get the finished folder."""
    splits = {**STANDARD_SPLITS, **SHIFTED_SPLITS}
    if task not in splits:
        raise ValueError(f"Unknown demo dataset {task!r}; choose one of: {', '.join(splits)}.")
    params = dict(splits[task])
    version = params.pop("version")
    name, task = task, params.pop("task", task)
    folder = datasets_dir() / f"{name}-{'standard-' if name in STANDARD_SPLITS else ''}v{version}-w{world.WORLD_VERSION}"
    if _finished(folder):  # it only ever appears by the rename of a finished folder
        return folder
    with _lock_for(folder):
        if _finished(folder):  # another thread or process finished it while this one waited
            return folder
        _remove_stale_partials(folder)
        logger.info("Generating the split %s of the %s world into %s (once)", name, task, folder)
        base = {"seed": 0, "train_per_class": 32, "test_per_class": 100, "shift": 1.0, "size": 64, "workers": 2}
        params = {**base, **params}
        _check_params(task, params["train_per_class"], params["test_per_class"], params["shift"])
        return _generate(task, folder, **params)
