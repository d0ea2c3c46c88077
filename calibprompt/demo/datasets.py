"""Demo datasets: folders of generated patches for the two demo tasks.

``write_demo_dataset`` writes ``<out>/train/<class>/*.png`` and ``<out>/test/<class>/*.png`` (class
folders named by the task's class ids), readable by every dataset loader. The *standard split* of a
task (what ``--dataset demo`` and ``--dataset demo-binary`` mean) is generated once into the data
directory on first use and reused afterwards.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from ..paths import datasets_dir
from . import world

logger = logging.getLogger(__name__)

__all__ = ["DEMO_TASKS", "STANDARD_SPLITS", "write_demo_dataset", "standard_split", "is_demo_task"]

DEMO_TASKS: dict[str, tuple[str, ...]] = {
    "demo": world.CLASS_IDS,
    "demo-binary": ("NORM", "TUM"),
}
#: Parameters of each task's standard split (change the version when changing them).
STANDARD_SPLITS: dict[str, dict] = {
    "demo": {"seed": 0, "train_per_class": 32, "test_per_class": 100, "shift": 1.25, "version": 1},
    "demo-binary": {"seed": 0, "train_per_class": 64, "test_per_class": 300, "shift": 1.25, "version": 1},
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


def write_demo_dataset(task: str, out: str | os.PathLike, *, seed: int = 0, train_per_class: int = 32,
                       test_per_class: int = 100, shift: float = 1.0, size: int = 64, workers: int = 2) -> Path:
    """Generate a demo dataset for ``task`` ("demo" or "demo-binary") into ``out`` (which must not
    exist or be empty). Written into a temporary folder first, then moved into place."""
    if task not in DEMO_TASKS:
        raise ValueError(f"Unknown demo task {task!r}; choose one of: {', '.join(DEMO_TASKS)}.")
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError("train_per_class and test_per_class must be at least 1.")
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}.")
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} already exists and is not empty; choose a new folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
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


def standard_split(task: str) -> Path:
    """The folder of ``task``'s standard split, generated on first use."""
    if task not in DEMO_TASKS:
        raise ValueError(f"Unknown demo task {task!r}; choose one of: {', '.join(DEMO_TASKS)}.")
    params = dict(STANDARD_SPLITS[task])
    version = params.pop("version")
    folder = datasets_dir() / f"{task}-standard-v{version}-w{world.WORLD_VERSION}"
    if not folder.exists():
        logger.info("Generating the standard split of %s into %s (once)", task, folder)
        try:
            write_demo_dataset(task, folder, **params)
        except ValueError:
            if not folder.exists():  # another process may have finished it meanwhile
                raise
    return folder
