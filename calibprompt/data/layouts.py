"""Labelled image datasets on disk and reproducible few-shot splits.

:func:`load_dataset` lists the images of a dataset (it never decodes them) and returns a
:class:`Dataset`: one or two :class:`LabeledImages` splits plus what was skipped and why.
Accepted layouts (detected in this order):

``csv``
    A ``.csv`` file, or a folder holding a ``manifest.csv``. Columns ``path,label`` and an
    optional ``split`` (``train``/``test``, or ``val`` used as the test split when no row says
    ``test``). The header row is optional (detected by its column names); without one, columns
    are positional ``path, label[, split]``. Relative paths are relative to the CSV's folder.
    Labels are class ids (or, with a task, any name :meth:`Task.label_of` accepts). Without a
    split column every row is a training image.
``reference``
    The paper's layout: ``<root>/images/{train,test}/<class>/*`` plus ``<root>/classnames.txt``
    whose lines read ``<folder> <class name words...>``.
``split-folder``
    ``<root>/train/<class>/*`` and ``<root>/test/<class>/*``. Without ``test``, ``val`` (or
    ``valid``/``validation``) is the test split; :attr:`Dataset.test_split` names the folder used.
``image-folder``
    ``<root>/<class>/*``: a single split, held in :attr:`Dataset.train` (``test`` is None).

A folder that holds nothing but one sub-folder (as unpacked archives often do) is descended
into before the layout is detected. Split and class folder names are matched
case-insensitively for ``train``/``test``/``val``.

Rules common to all layouts:

* Hidden files and folders (name starting with ``.``), ``__MACOSX``, ``Thumbs.db`` and
  ``desktop.ini`` are ignored silently.
* Only the direct children of a class folder are used, sorted by name. Non-image files (by
  suffix, see :func:`calibprompt.data.images.is_image_file`), files outside class folders,
  folders nested in class folders, empty class folders and CSV rows whose file is missing are
  skipped and recorded in :attr:`Dataset.skipped` as ``(path, reason)``; they are never fatal.
* Without a task, the classes are the sorted folder names (union of the splits; for a CSV the
  sorted labels, numerically when all are integers); class names come from ``classnames.txt``
  when it names the folder, else from the folder name with ``_`` replaced by a space.
* With a task, every folder (CSV label) must match a task class by id, prompt name or display
  name, case-insensitively (``_`` may stand for a space); labels follow the task's order and
  ``class_ids``/``classnames`` are the task's. Every task class needs at least one image.

All sample lists are relative to :attr:`Dataset.root` (``LabeledImages.root`` is the dataset
root for every split), so recorded relative paths identify images independently of where the
dataset folder lives.
"""
from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from calibprompt.imaging.images import is_image_file
from calibprompt.paths import shown
from calibprompt.prompting.tasks import load_task  # tasks sit below data: they never import it

__all__ = [
    "Sample",
    "LabeledImages",
    "Dataset",
    "LAYOUTS",
    "load_dataset",
    "sample_few_shot",
    "few_shot_split",
    "from_relative_paths",
]

#: The layouts :func:`load_dataset` recognises (values of :attr:`Dataset.layout`).
LAYOUTS = ("image-folder", "split-folder", "reference", "csv")

_IGNORED_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "test": "test", "testing": "test",
    "val": "val", "valid": "val", "validation": "val",
}
_MANIFEST_NAME = "manifest.csv"
_CLASSNAMES_FILE = "classnames.txt"
_MAX_WRAPPER_DEPTH = 5

_LAYOUT_HELP = (
    "Accepted layouts: one folder per class (<root>/<class>/<images>); train and test folders "
    "(<root>/train/<class>/<images> and <root>/test/<class>/<images>); the paper's layout "
    "(<root>/images/train/<class>/<images>, <root>/images/test/..., <root>/classnames.txt); or a "
    "CSV manifest with columns path,label[,split] (a .csv file or a folder with manifest.csv)."
)

# CSV header detection: names a header cell may have, per column.
_PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "file_path", "image",
                 "image_path", "img", "img_path")
_LABEL_COLUMNS = ("label", "class", "class_id", "classname", "class_name", "target", "category")
_SPLIT_COLUMNS = ("split", "subset", "set", "fold", "partition")


# =============================================================================
# Data model
# =============================================================================


@dataclass(frozen=True)
class Sample:
    """One labelled image: its path and its label index (in the dataset's class order)."""

    path: Path
    label: int


@dataclass
class LabeledImages:
    """Labelled images of one split.

    ``class_ids`` (folder names) and ``classnames`` (prompt names) are in label order; ``root``
    is the folder that :meth:`relative_paths` are relative to (the dataset root).
    """

    root: Path
    class_ids: list[str]
    classnames: list[str]
    samples: list[Sample]

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.class_ids = list(self.class_ids)
        self.classnames = list(self.classnames)
        self.samples = list(self.samples)
        if len(self.class_ids) != len(self.classnames):
            raise ValueError(
                f"class_ids ({len(self.class_ids)}) and classnames ({len(self.classnames)}) "
                "must have the same length."
            )
        n = len(self.class_ids)
        for sample in self.samples:
            if not 0 <= sample.label < n:
                raise ValueError(f"Label {sample.label} of {shown(sample.path)} is outside 0..{n - 1}.")

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.samples]

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def counts(self) -> dict[str, int]:
        """Number of images per class id, in label order (classes without images count 0)."""
        counts = dict.fromkeys(self.class_ids, 0)
        for sample in self.samples:
            counts[self.class_ids[sample.label]] += 1
        return counts

    def by_class(self) -> dict[int, list[Sample]]:
        """Samples grouped by label, every label present, in label order."""
        groups: dict[int, list[Sample]] = {label: [] for label in range(len(self.class_ids))}
        for sample in self.samples:
            groups[sample.label].append(sample)
        return groups

    def relative_path(self, path: str | os.PathLike) -> str:
        """``path`` relative to :attr:`root` as a posix string, or absolute when outside it."""
        path = Path(path)
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.absolute().as_posix()

    def relative_paths(self) -> list[str]:
        """Paths relative to :attr:`root` (posix strings; absolute for files outside it)."""
        return [self.relative_path(s.path) for s in self.samples]

    def subset(self, indices: Iterable[int]) -> "LabeledImages":
        """A new :class:`LabeledImages` with the samples at ``indices`` (in that order)."""
        return LabeledImages(self.root, self.class_ids, self.classnames,
                             [self.samples[int(i)] for i in indices])


@dataclass
class Dataset:
    """A dataset found by :func:`load_dataset`.

    ``train`` holds the training split (all images for the ``image-folder`` layout), ``test``
    the test split or None when the dataset has none. ``train_split``/``test_split`` name the
    folder (or CSV split value) each came from, e.g. ``"val"`` when a ``val`` folder served as
    the test split. ``skipped`` lists ``(path, reason)`` for every file left out.
    """

    name: str
    root: Path
    layout: str
    class_ids: list[str]
    classnames: list[str]
    train: LabeledImages | None
    test: LabeledImages | None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    train_split: str | None = None
    test_split: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def summary(self) -> str:
        """One line, e.g. ``"120 train / 40 test images in 9 classes; 2 files skipped (non-image)"``."""
        n_train = len(self.train) if self.train is not None else 0
        n_test = len(self.test) if self.test is not None else 0
        text = f"{n_train} train / {n_test} test images in {self.num_classes} classes"
        if self.test is None:
            text += " (no test split)"
        elif self.test_split and self.test_split.lower() != "test":
            text += f" (test split: {self.test_split})"
        text += f"; {len(self.skipped)} {'file' if len(self.skipped) == 1 else 'files'} skipped"
        if self.skipped:
            kinds: dict[str, int] = {}
            for _, reason in self.skipped:
                kind = _reason_kind(reason)
                kinds[kind] = kinds.get(kind, 0) + 1
            if len(kinds) == 1:
                text += f" ({next(iter(kinds))})"
            else:
                text += " (" + ", ".join(f"{n} {kind}" for kind, n in kinds.items()) + ")"
        return text


_REASON_NON_IMAGE = "not an image file (unsupported suffix)"
_REASON_MISSING = "file not found"


def _reason_kind(reason: str) -> str:
    if reason.startswith("not an image"):
        return "non-image"
    if reason.startswith("file not found"):
        return "missing"
    return "other"


# =============================================================================
# Loading
# =============================================================================


def load_dataset(source: str | os.PathLike, task=None, *, confine_to_root: bool = False) -> Dataset:
    """Find the labelled images of a dataset folder or CSV manifest (see the module docstring).

    Parameters
    ----------
    source:
        A dataset folder, or a ``.csv`` manifest.
    task:
        Optional :class:`calibprompt.prompting.tasks.Task` (or task name) the folders must match; the
        labels then follow the task's class order.
    confine_to_root:
        Skip (and record) CSV rows and symlinked files that resolve outside the dataset root.
        Use it for uploaded datasets, so that a manifest cannot point at other files.

    Raises
    ------
    ValueError
        The path is missing or neither a folder nor a ``.csv`` file; no class folders were found;
        there are fewer than 2 classes; there is no image at all; a folder or label matches no
        class of ``task``, or a task class has no image.
    """
    if task is not None and not hasattr(task, "class_ids"):
        task = load_task(task)
    root = Path(source).expanduser().absolute()
    if not root.exists():
        raise ValueError(f"Dataset path not found: {shown(root)}. Check the path and try again.")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return _load_csv(root, task, confine_to_root)
        if root.suffix.lower() == ".zip":
            raise ValueError(
                f"{root} is a zip archive; extract it first (calibprompt.data.extract_zip) and "
                "give the extracted folder."
            )
        raise ValueError(f"{shown(root)} is neither a folder nor a .csv manifest. {_LAYOUT_HELP}")
    if not root.is_dir():
        raise ValueError(f"{shown(root)} is neither a folder nor a .csv manifest. {_LAYOUT_HELP}")

    for _ in range(_MAX_WRAPPER_DEPTH + 1):
        manifest = root / _MANIFEST_NAME
        if manifest.is_file():
            return _load_csv(manifest, task, confine_to_root)
        images_dir = _child_dir(root, "images")
        if images_dir is not None:
            splits = _find_split_dirs(images_dir)
            if splits is not None:
                return _load_split_folders(root, "reference", splits, task, confine_to_root)
        splits = _find_split_dirs(root)
        if splits is not None:
            return _load_split_folders(root, "split-folder", splits, task, confine_to_root)
        wrapped = _single_wrapper_dir(root)
        if wrapped is None:
            break
        root = wrapped
    return _load_image_folder(root, task, confine_to_root)


# -----------------------------------------------------------------------------
# Folder listing helpers
# -----------------------------------------------------------------------------


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in _IGNORED_NAMES


def _list_dir(folder: Path) -> tuple[list[Path], list[Path]]:
    """(sub-folders, files) of ``folder``, visible entries only, each sorted by name."""
    dirs, files = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if _ignored(entry.name):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                (dirs if is_dir else files).append(Path(entry.path))
    except PermissionError as exc:
        raise ValueError(f"Cannot read the folder {shown(folder)} (permission denied).") from exc
    return sorted(dirs, key=lambda p: p.name), sorted(files, key=lambda p: p.name)


def _child_dir(folder: Path, name: str) -> Path | None:
    """The visible sub-folder of ``folder`` called ``name`` (case-insensitive), if any."""
    for sub in _list_dir(folder)[0]:
        if sub.name.lower() == name:
            return sub
    return None


def _find_split_dirs(folder: Path) -> dict[str, Path] | None:
    """Map canonical split -> folder when ``folder`` is split into train/test/val folders.

    It is when it has a ``train`` or ``test`` folder, or only split folders. When a name occurs
    twice (``val`` and ``validation``), the first in sorted order wins.
    """
    dirs = _list_dir(folder)[0]
    found: dict[str, Path] = {}
    for sub in dirs:
        canonical = _SPLIT_ALIASES.get(sub.name.lower())
        if canonical is not None and canonical not in found:
            found[canonical] = sub
    if not found:
        return None
    if "train" in found or "test" in found or len(found) == len(dirs):
        return found
    return None


def _single_wrapper_dir(folder: Path) -> Path | None:
    """The only sub-folder of ``folder`` when ``folder`` holds nothing else and that sub-folder
    holds only folders (so it cannot be a class folder itself)."""
    dirs, files = _list_dir(folder)
    if len(dirs) != 1 or files:
        return None
    inner_dirs, inner_files = _list_dir(dirs[0])
    if inner_files or not inner_dirs:
        return None
    return dirs[0]


def _read_classnames_file(*folders: Path) -> dict[str, str]:
    """``folder id -> class name`` from the first ``classnames.txt`` found in ``folders``."""
    for folder in folders:
        path = folder / _CLASSNAMES_FILE
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"Cannot read {shown(path)}: {exc}. Save it as UTF-8 text.") from exc
            names: dict[str, str] = {}
            for line in text.splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split(None, 1)
                names[parts[0]] = " ".join(parts[1].split()) if len(parts) > 1 else _readable(parts[0])
            return names
    return {}


def _readable(class_id: str) -> str:
    return " ".join(class_id.replace("_", " ").split()) or class_id


def _outside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return False
    except ValueError:
        return True


def _display(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _collect_class_folder(folder: Path, root: Path, skipped: list, confine: bool) -> list[Path]:
    """Image files directly inside a class folder, sorted by name; the rest is recorded."""
    dirs, files = _list_dir(folder)
    for sub in dirs:
        skipped.append((_display(sub, root) + "/",
                        "folder inside a class folder (only images directly inside class folders are used)"))
    images = []
    for path in files:
        if not is_image_file(path):
            skipped.append((_display(path, root), _REASON_NON_IMAGE))
        elif confine and path.is_symlink() and _outside(path, root):
            skipped.append((_display(path, root), "link to a file outside the dataset folder"))
        else:
            images.append(path)
    return images


def _record_loose_files(folder: Path, root: Path, skipped: list) -> None:
    for path in _list_dir(folder)[1]:
        if path.name.lower() in (_CLASSNAMES_FILE, _MANIFEST_NAME, "readme", "readme.md", "readme.txt",
                                 "license", "license.txt"):
            continue
        reason = ("image outside any class folder" if is_image_file(path)
                  else "not an image file (and outside any class folder)")
        skipped.append((_display(path, root), reason))


# -----------------------------------------------------------------------------
# Class resolution (shared by the folder and CSV loaders)
# -----------------------------------------------------------------------------


class _ClassResolver:
    """Turns folder names / CSV labels into label indices, with or without a task."""

    def __init__(self, task, file_names: dict[str, str], where: str):
        self.task = task
        self.file_names = file_names
        self.where = where

    def task_label(self, key: str, what: str) -> int:
        task = self.task
        candidates = [key, key.replace("_", " ")]
        if key in self.file_names:
            candidates.append(self.file_names[key])
        for candidate in candidates:
            try:
                return task.label_of(candidate)
            except ValueError:
                continue
        options = ", ".join(f"{cid} ({name})" for cid, name in zip(task.class_ids, task.classnames))
        raise ValueError(
            f"The {what} {key!r} in {self.where} does not match any class of task {task.name!r}. "
            f"Its classes are: {options}. Rename the {what} to one of these ids (or names), or "
            "choose another task."
        )

    def finish(self, keys_with_images: Sequence[str], numeric: bool = False):
        """``(class_ids, classnames, key -> label)`` for the keys that have images."""
        if self.task is not None:
            mapping = {key: self.task_label(key, "folder") for key in keys_with_images}
            return list(self.task.class_ids), list(self.task.classnames), mapping
        if numeric:
            class_ids = sorted(set(keys_with_images), key=lambda k: (int(k), k))
        else:
            class_ids = sorted(set(keys_with_images))
        classnames = [self.file_names.get(cid) or _readable(cid) for cid in class_ids]
        return class_ids, classnames, {cid: i for i, cid in enumerate(class_ids)}


def _check_classes(task, class_ids: list[str], images: Iterable[LabeledImages | None], root: Path) -> None:
    if task is not None:
        present = set()
        for split in images:
            if split is not None:
                present.update(s.label for s in split.samples)
        missing = [f"{cid!r} ({name})" for i, (cid, name) in enumerate(zip(task.class_ids, task.classnames))
                   if i not in present]
        if missing:
            raise ValueError(
                f"Task {task.name!r} class {', '.join(missing)} has no images in {shown(root)}. Add a folder "
                "(or CSV rows) with images of every task class, or choose a task that matches the data."
            )
    elif len(class_ids) < 2:
        found = f"only the class {class_ids[0]!r}" if class_ids else "no class"
        raise ValueError(
            f"{shown(root)} has {found} with images; a classification dataset needs at least 2 classes. "
            + _LAYOUT_HELP
        )


def _empty_error(root: Path, skipped: list) -> ValueError:
    extra = f" ({len(skipped)} files skipped, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
    return ValueError(
        f"The dataset {root} contains no images{extra}. Add PNG, JPEG, TIFF or DICOM images to "
        "the class folders."
    )


# -----------------------------------------------------------------------------
# Folder layouts
# -----------------------------------------------------------------------------


def _load_image_folder(root: Path, task, confine: bool) -> Dataset:
    skipped: list[tuple[str, str]] = []
    class_dirs, _ = _list_dir(root)
    if not class_dirs:
        raise ValueError(f"No class folders found in {shown(root)}. {_LAYOUT_HELP}")
    _record_loose_files(root, root, skipped)
    files_of = {}
    for folder in class_dirs:
        files = _collect_class_folder(folder, root, skipped, confine)
        if files:
            files_of[folder.name] = files
        elif task is None:
            skipped.append((_display(folder, root) + "/", "class folder without images"))
        else:
            files_of[folder.name] = []  # must still match the task
    if not any(files_of.values()):
        raise _empty_error(root, skipped)
    resolver = _ClassResolver(task, _read_classnames_file(root), str(root))
    class_ids, classnames, mapping = resolver.finish(list(files_of))
    _check_duplicate_matches(task, mapping, str(root))
    train = _build(root, class_ids, classnames, files_of, mapping)
    _check_classes(task, class_ids, [train], root)
    return Dataset(root.name, root, "image-folder", class_ids, classnames, train, None, skipped,
                   train_split=None, test_split=None)


def _load_split_folders(root: Path, layout: str, splits: dict[str, Path], task, confine: bool) -> Dataset:
    skipped: list[tuple[str, str]] = []
    split_parent = next(iter(splits.values())).parent
    used = {"train": splits.get("train"), "test": splits.get("test") or splits.get("val")}
    if splits.get("test") is not None and splits.get("val") is not None:
        skipped.append((_display(splits["val"], root) + "/", "val split not used (a test split is present)"))
    for sub in _list_dir(split_parent)[0]:
        if sub not in splits.values():
            skipped.append((_display(sub, root) + "/", "folder is not a train/test/val split"))
    _record_loose_files(split_parent, root, skipped)

    files_per_split: dict[str, dict[str, list[Path]]] = {}
    any_class_dir = False
    for split, folder in used.items():
        if folder is None:
            continue
        class_dirs, _ = _list_dir(folder)
        any_class_dir = any_class_dir or bool(class_dirs)
        _record_loose_files(folder, root, skipped)
        files_per_split[split] = {}
        for class_dir in class_dirs:
            files = _collect_class_folder(class_dir, root, skipped, confine)
            if files or task is not None:
                files_per_split[split][class_dir.name] = files
            else:
                skipped.append((_display(class_dir, root) + "/", "class folder without images"))
    if not any_class_dir:
        raise ValueError(f"No class folders found in the split folders of {split_parent}. {_LAYOUT_HELP}")
    if not any(files for per_class in files_per_split.values() for files in per_class.values()):
        raise _empty_error(root, skipped)

    keys = sorted({key for per_class in files_per_split.values() for key in per_class})
    resolver = _ClassResolver(task, _read_classnames_file(root, split_parent), str(root))
    class_ids, classnames, mapping = resolver.finish(keys)
    for split, per_class in files_per_split.items():
        _check_duplicate_matches(task, {k: mapping[k] for k in per_class}, str(used[split]))

    built: dict[str, LabeledImages | None] = {"train": None, "test": None}
    for split, per_class in files_per_split.items():
        images = _build(root, class_ids, classnames, per_class, mapping)
        if not len(images):
            raise ValueError(
                f"The {used[split].name} folder of {root} has no images; add images to its class "
                "folders or remove it."
            )
        built[split] = images
    _check_classes(task, class_ids, built.values(), root)
    return Dataset(
        root.name, root, layout, class_ids, classnames, built["train"], built["test"], skipped,
        train_split=used["train"].name if built["train"] is not None else None,
        test_split=used["test"].name if built["test"] is not None else None,
    )


def _check_duplicate_matches(task, mapping: dict[str, int], where: str) -> None:
    if task is None:
        return
    seen: dict[int, str] = {}
    for key, label in mapping.items():
        if label in seen:
            raise ValueError(
                f"The folders {seen[label]!r} and {key!r} in {where} both match the class "
                f"{task.class_ids[label]!r} of task {task.name!r}; merge them into one folder."
            )
        seen[label] = key


def _build(root: Path, class_ids, classnames, files_of: dict[str, list[Path]], mapping) -> LabeledImages:
    """Samples in label order, each class's files in name order."""
    samples = []
    for key in sorted(files_of, key=lambda k: (mapping[k], k)):
        samples.extend(Sample(path, mapping[key]) for path in files_of[key])
    return LabeledImages(root, class_ids, classnames, samples)


# -----------------------------------------------------------------------------
# CSV manifests
# -----------------------------------------------------------------------------


def _read_csv_rows(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise ValueError(f"Cannot read the CSV manifest {shown(path)}: {exc}") from exc
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    rows = []
    for row in csv.reader(io.StringIO(text), delimiter=delimiter):
        cells = [cell.strip() for cell in row]
        if any(cells) and not cells[0].startswith("#"):
            rows.append(cells)
    return rows


def _csv_columns(first_row: list[str]) -> tuple[bool, int, int, int | None]:
    """(has_header, path column, label column, split column or None)."""
    lowered = [cell.lower().replace(" ", "_") for cell in first_row]

    def find(names):
        for name in names:
            if name in lowered:
                return lowered.index(name)
        return None

    path_col, label_col, split_col = find(_PATH_COLUMNS), find(_LABEL_COLUMNS), find(_SPLIT_COLUMNS)
    if path_col is not None or label_col is not None:
        if path_col is None or label_col is None:
            raise ValueError(
                f"The CSV header {','.join(first_row)!r} needs a 'path' and a 'label' column "
                "(and optionally 'split')."
            )
        return True, path_col, label_col, split_col
    return False, 0, 1, (2 if len(first_row) > 2 else None)


def _load_csv(csv_path: Path, task, confine: bool) -> Dataset:
    root = csv_path.parent
    rows = _read_csv_rows(csv_path)
    if not rows:
        raise ValueError(f"The CSV manifest {shown(csv_path)} is empty; give one row per image: path,label[,split].")
    has_header, path_col, label_col, split_col = _csv_columns(rows[0])
    body = list(enumerate(rows, start=1))[1 if has_header else 0:]
    if not body:
        raise ValueError(f"The CSV manifest {shown(csv_path)} has a header but no rows.")
    if len(rows[0]) < 2:
        raise ValueError(
            f"The CSV manifest {csv_path} needs at least two columns, path and label "
            f"(row 1 reads {','.join(rows[0])!r})."
        )

    skipped: list[tuple[str, str]] = []
    per_split: dict[str, list[tuple[Path, str]]] = {"train": [], "test": [], "val": []}
    seen: set[tuple[str, Path]] = set()
    for line_no, row in body:
        where = f"row {line_no}"
        if len(row) <= max(path_col, label_col):
            skipped.append((",".join(row), f"{where}: missing path or label"))
            continue
        raw_path, label = row[path_col], row[label_col]
        if not raw_path or not label:
            skipped.append((",".join(row), f"{where}: empty path or label"))
            continue
        split = "train"
        if split_col is not None:
            value = row[split_col].lower() if split_col < len(row) else ""
            split = _SPLIT_ALIASES.get(value)
            if split is None:
                skipped.append((raw_path, f"{where}: unknown split {value!r} (use train or test)"))
                continue
        path = Path(raw_path.replace("\\", "/")).expanduser()
        if not path.is_absolute():
            path = root / path
        if not is_image_file(path):
            skipped.append((raw_path, _REASON_NON_IMAGE))
            continue
        if confine and _outside(path, root):
            skipped.append((raw_path, f"{where}: outside the dataset folder"))
            continue
        if not path.is_file():
            skipped.append((raw_path, f"{_REASON_MISSING} ({where})"))
            continue
        if (split, path) in seen:
            skipped.append((raw_path, f"{where}: listed twice"))
            continue
        seen.add((split, path))
        per_split[split].append((path, label))

    test_split = "test" if per_split["test"] else ("val" if per_split["val"] else None)
    if per_split["test"] and per_split["val"]:
        skipped.extend((_display(p, root), "val split not used (a test split is present)")
                       for p, _ in per_split["val"])
    used = {"train": per_split["train"], "test": per_split[test_split] if test_split else []}
    if not used["train"] and not used["test"]:
        raise _empty_error(csv_path, skipped)

    labels = sorted({label for rows_ in used.values() for _, label in rows_})
    resolver = _ClassResolver(task, _read_classnames_file(root), str(csv_path))
    if task is not None:
        mapping = {label: resolver.task_label(label, "label") for label in labels}
        class_ids, classnames = list(task.class_ids), list(task.classnames)
    else:
        numeric = all(re.fullmatch(r"[+-]?\d+", label) for label in labels)
        class_ids, classnames, mapping = resolver.finish(labels, numeric=numeric)

    built: dict[str, LabeledImages | None] = {}
    for split, items in used.items():
        built[split] = (LabeledImages(root, class_ids, classnames, [Sample(p, mapping[lbl]) for p, lbl in items])
                        if items else None)
    _check_classes(task, class_ids, built.values(), csv_path)
    name = root.name if csv_path.stem.lower() == "manifest" else csv_path.stem
    return Dataset(name, root, "csv", class_ids, classnames, built["train"], built["test"], skipped,
                   train_split="train" if built["train"] is not None else None, test_split=test_split)


# =============================================================================
# Few-shot splits
# =============================================================================


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def sample_few_shot(images: LabeledImages, shots: int, seed: int) -> LabeledImages:
    """Pick ``shots`` images per class, reproducibly.

    Per class (in label order), the class's samples are sorted by relative path and
    ``numpy.random.default_rng([seed, label]).permutation(n)[:shots]`` chooses among them; the
    chosen ones are returned sorted by path. The selection depends only on the seed, the label
    and the relative paths, not on file creation order or on where the dataset folder lives.

    Raises ValueError when ``shots < 1`` or a class has fewer than ``shots`` images.
    """
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"shots must be a positive integer (images per class), got {shots!r}.")
    shots = int(shots)
    seed = _check_seed(seed)
    chosen: list[Sample] = []
    for label, samples in images.by_class().items():
        if len(samples) < shots:
            raise ValueError(
                f"Class {images.class_ids[label]!r} has only {_plural(len(samples), 'image')}, fewer "
                f"than the {shots} shots requested; ask for fewer shots or add images."
            )
        ordered = sorted(samples, key=lambda s: images.relative_path(s.path))
        picks = np.random.default_rng([seed, label]).permutation(len(ordered))[:shots]
        chosen.extend(sorted((ordered[int(i)] for i in picks), key=lambda s: images.relative_path(s.path)))
    return LabeledImages(images.root, images.class_ids, images.classnames, chosen)


def few_shot_split(dataset: Dataset | LabeledImages, shots: int, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """The k-shot training set and the test set of ``dataset``.

    The training set is :func:`sample_few_shot` of ``dataset.train``. The test set is
    ``dataset.test`` when the dataset has a test split; otherwise it is the images of
    ``dataset.train`` that were not chosen as shots (so training and test never overlap).
    A bare :class:`LabeledImages` is treated as a dataset without a test split.

    Raises ValueError when there are no training images, too few per class, or no test image.
    """
    if isinstance(dataset, LabeledImages):
        train, test, name = dataset, None, str(dataset.root)
    else:
        train, test, name = dataset.train, dataset.test, dataset.name
    if train is None or not len(train):
        raise ValueError(
            f"The dataset {name!r} has no training images to pick shots from; add a train split."
        )
    shots_set = sample_few_shot(train, shots, seed)
    if test is not None and len(test):
        return shots_set, test
    chosen = set(shots_set.samples)
    rest = [s for s in train.samples if s not in chosen]
    if not rest:
        raise ValueError(
            f"The dataset {name!r} has no test images: it has no test split and all its images "
            f"are used as the {shots} shots per class. Add a test split or more images."
        )
    return shots_set, LabeledImages(train.root, train.class_ids, train.classnames, rest)


def from_relative_paths(dataset_or_images: Dataset | LabeledImages, paths: Sequence[str],
                        labels: Sequence[int]) -> LabeledImages:
    """Rebuild a recorded split from its relative paths and labels (as :meth:`LabeledImages.relative_paths`
    and :attr:`LabeledImages.labels` recorded them).

    Paths are resolved against the dataset root (absolute paths are used as they are); the
    classes are those of ``dataset_or_images``. Raises ValueError when the lists differ in
    length, a label is out of range, or files are missing (naming the first few).
    """
    source = dataset_or_images
    root = Path(source.root)
    class_ids = list(source.class_ids)
    classnames = list(source.classnames)
    paths, labels = list(paths), list(labels)
    if len(paths) != len(labels):
        raise ValueError(f"Got {len(paths)} paths but {len(labels)} labels; they must match one to one.")
    samples, missing = [], []
    for rel, label in zip(paths, labels):
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < len(class_ids):
            raise ValueError(f"Label {label!r} of {rel} is not a class index 0..{len(class_ids) - 1}.")
        path = Path(rel)
        if not path.is_absolute():
            path = root / path
        if not path.is_file():
            missing.append(str(rel))
        samples.append(Sample(path, int(label)))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"{len(missing)} of the {len(paths)} recorded images are missing under {root}: {shown}. "
            "Restore the dataset folder as it was when the run was recorded."
        )
    return LabeledImages(root, class_ids, classnames, samples)
