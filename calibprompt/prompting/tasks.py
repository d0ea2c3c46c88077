"""Classification tasks: class names, zero-shot templates and the paper's hyperparameters.

A task file (JSON: in the repository's top-level ``prompts/`` folder, in ``$CALIBPROMPT_HOME/prompts``
for a user's own, or anywhere when given by path) looks like::

    {"name": "kather", "title": "...", "modality": "histopathology",
     "classes": [{"id": "ADI", "name": "adipose tissue", "display": "Adipose"}, ...],
     "templates": ["An H&E image of {}."],
     "calibprompt": {"plip": {"alpha": 0.05, "beta": 0.01}, "quiltnet": {"alpha": 0.01, "beta": 1.0}}}

``id`` is the class folder name on disk, ``name`` the words put into prompts, ``display`` what the
app shows. Classes are listed in the order of their labels (the folders' alphabetical order, as in
the reference code). ``calibprompt`` holds CalibPrompt's alpha (LS = SMAC) and beta (AS weight) per
backbone family, from the paper's table.
"""
from __future__ import annotations


import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from calibprompt.paths import bundled_dir, shown, user_prompts_dir

__all__ = ["TaskClass", "Task", "PROMPTS_DIR", "task_files", "list_tasks", "load_task", "DEFAULT_TEMPLATES"]

logger = logging.getLogger(__name__)

#: The bundled task files: ``$CALIBPROMPT_PROMPTS_DIR`` when set, else the shipped ``prompts/`` folder
#: (the repository's top-level one in a checkout, the wheel's copy when installed).
PROMPTS_DIR = Path(os.environ.get("CALIBPROMPT_PROMPTS_DIR") or bundled_dir("prompts"))
DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass(frozen=True)
class TaskClass:
    id: str
    name: str
    display: str


@dataclass(frozen=True)
class Task:
    """A classification task (see the module docstring for the file format)."""

    name: str
    classes: tuple[TaskClass, ...]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    title: str = ""
    modality: str = ""
    description: str = ""
    source: str = ""
    paper_hparams: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self):
        if len(self.classes) < 2:
            raise ValueError(f"Task {self.name!r} needs at least 2 classes, got {len(self.classes)}.")
        for key, values in (("id", [c.id for c in self.classes]), ("name", [c.name for c in self.classes])):
            if len(set(values)) != len(values):
                raise ValueError(f"Task {self.name!r}: class {key}s must be distinct, got {values}.")
        if not self.templates:
            raise ValueError(f"Task {self.name!r} needs at least one template.")
        for template in self.templates:
            if template.count("{}") != 1:
                raise ValueError(f"Task {self.name!r}: template {template!r} must contain '{{}}' exactly once.")

    @property
    def classnames(self) -> list[str]:
        """Class names as used in prompts, in label order."""
        return [c.name for c in self.classes]

    @property
    def class_ids(self) -> list[str]:
        """Class folder names, in label order."""
        return [c.id for c in self.classes]

    @property
    def display_names(self) -> list[str]:
        return [c.display for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prompts_for(self, classname: str) -> list[str]:
        """The zero-shot prompts of one class: every template filled with its name."""
        return [t.format(classname) for t in self.templates]

    def hyperparameters(self, backbone_family: str) -> dict[str, float]:
        """CalibPrompt's alpha/beta for a backbone family from the paper (empty when not given)."""
        return dict(self.paper_hparams.get(backbone_family, {}))

    def label_of(self, class_id_or_name: str) -> int:
        """Label index of a class given by folder id, prompt name or display name (case-insensitive)."""
        key = class_id_or_name.strip().lower()
        for index, c in enumerate(self.classes):
            if key in (c.id.lower(), c.name.lower(), c.display.lower()):
                return index
        raise ValueError(f"Class {class_id_or_name!r} is not in task {self.name!r}; its classes: {', '.join(self.class_ids)}.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "modality": self.modality, "description": self.description,
            "source": self.source,
            "classes": [{"id": c.id, "name": c.name, "display": c.display} for c in self.classes],
            "templates": list(self.templates),
            "calibprompt": {k: dict(v) for k, v in self.paper_hparams.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | None = None) -> "Task":
        where = f" in {path}" if path else ""
        try:
            raw_classes = data["classes"]
            name = str(data["name"])
        except KeyError as exc:
            raise ValueError(f"Task file{where} lacks the key {exc.args[0]!r} (needs 'name' and 'classes').") from None
        classes = _classes_from(raw_classes, where)
        hparams = {
            str(family): {str(k): float(v) for k, v in values.items()}
            for family, values in (data.get("calibprompt") or {}).items()
        }
        return cls(
            name=name, classes=tuple(classes), templates=_templates_from(data, where),
            title=str(data.get("title", "")), modality=str(data.get("modality", "")),
            description=str(data.get("description", "")), source=str(data.get("source", "")),
            paper_hparams=hparams, path=path,
        )

    def subset(self, indices: Sequence[int], part: str) -> "Task":
        """The task restricted to the classes at ``indices`` (in that order, relabelled 0..m-1), named
        ``<name>:<part>`` (e.g. ``"demo:novel"``), with the same templates; its hyperparameters are the task's."""
        indices = [int(i) for i in indices]
        if any(not 0 <= i < self.num_classes for i in indices) or len(set(indices)) != len(indices):
            raise ValueError(f"Class indices must be distinct and in 0..{self.num_classes - 1}; got {indices}.")
        return replace(self, name=f"{self.name}:{part}", classes=tuple(self.classes[i] for i in indices),
                                   title=f"{self.title or self.name} ({part} classes)")

    @classmethod
    def from_classnames(cls, classnames: Sequence[str], templates: Sequence[str] | None = None,
                        name: str = "custom") -> "Task":
        """A task from class names typed by a user (the name doubles as id and display name)."""
        names = [" ".join(str(c).split()) for c in classnames]
        names = [n for n in names if n]
        return cls(name=name, classes=tuple(TaskClass(n, n, n) for n in names),
                   templates=tuple(templates or DEFAULT_TEMPLATES))


def _classes_from(raw_classes: Any, where: str) -> list[TaskClass]:
    """The ``classes`` of a task file: a list of class ids (strings) or of ``{"id", "name", "display"}``
    objects, each id and name non-empty (ValueError naming the field and the file otherwise)."""
    if isinstance(raw_classes, str):
        raise ValueError(f"Task file{where}: 'classes' must be a list of class names such as "
                         f"[\"normal\", \"pneumonia\"], not a single string ({raw_classes!r}).")
    if not isinstance(raw_classes, (list, tuple)):
        raise ValueError(f"Task file{where}: 'classes' must be a list of class names such as "
                         f"[\"normal\", \"pneumonia\"]; got {type(raw_classes).__name__}.")
    classes = []
    for index, entry in enumerate(raw_classes):
        if isinstance(entry, str):
            entry = {"id": entry}
        if not isinstance(entry, Mapping) or "id" not in entry:
            raise ValueError(f"Task file{where}: each class needs an 'id' (its folder name), got {entry!r}.")
        for key in ("id", "name", "display"):
            value = entry.get(key)
            if key != "id" and value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Task file{where}: class {index + 1} of 'classes' has an empty or non-text "
                                 f"{key!r} ({value!r}); give every class a non-empty name.")
        cid = entry["id"].strip()
        cname = (entry.get("name") or cid.replace("_", " ")).strip()
        classes.append(TaskClass(cid, cname, (entry.get("display") or cname).strip()))
    return classes


def _templates_from(data: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """The ``templates`` of a task file (the default when the key is absent): a non-empty list of
    texts, each with one ``{}`` where the class name goes (ValueError naming the file otherwise)."""
    if "templates" not in data or data["templates"] is None:
        return DEFAULT_TEMPLATES
    templates = data["templates"]
    example = '["a chest X-ray showing {}."]'
    if isinstance(templates, str) or not isinstance(templates, (list, tuple)):
        raise ValueError(f"Task file{where}: 'templates' must be a list of texts such as {example}; "
                         f"got {templates!r}.")
    if not templates:
        raise ValueError(f"Task file{where}: 'templates' is empty; give at least one, such as {example}, "
                         "or leave the key out for the default.")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"Task file{where}: each of 'templates' must be text with '{{}}' exactly once, where "
                             f"the class name goes, such as {example}; got {template!r}.")
    return tuple(templates)


def _json_files(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the ``*.json`` files directly in ``folder`` (empty when it is no folder)."""
    return {p.stem: p for p in sorted(folder.glob("*.json")) if p.is_file()} if folder.is_dir() else {}


_SHADOWED: set[Path] = set()  # user task files already warned about (one warning per file)


def task_files(prompts_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The task files by task name (the file name without ``.json``), sorted by name.

    With ``prompts_dir``: that folder's files only. Otherwise the bundled ones (:data:`PROMPTS_DIR`)
    and, beside them, a user's own in ``$CALIBPROMPT_HOME/prompts``
    (:func:`calibprompt.paths.user_prompts_dir`). A user's file named like a bundled task is refused:
    the bundled task keeps its name (runs, bundled prompts and the paper's hyperparameters refer to it),
    and a warning, logged once per file, says to rename the file or load it by its path.
    """
    if prompts_dir:
        return _json_files(Path(prompts_dir))
    found = _json_files(Path(PROMPTS_DIR))
    user_folder = user_prompts_dir()
    if user_folder.is_dir() and user_folder.resolve() != Path(PROMPTS_DIR).resolve():
        for name, path in _json_files(user_folder).items():
            if name not in found:
                found[name] = path
            elif path not in _SHADOWED:
                _SHADOWED.add(path)
                logger.warning("Ignoring the task file %s: a bundled task is named %r; rename the file (e.g. "
                               "%s-mine.json) or load it by its path.", shown(path), name, name)
    return dict(sorted(found.items()))


def list_tasks(prompts_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the task files: the bundled ones and the user's own (see :func:`task_files`)."""
    return list(task_files(prompts_dir))


def load_task(name_or_path: str | os.PathLike, prompts_dir: str | os.PathLike | None = None) -> Task:
    """Load a task by name (``"kather"``, ``"covid"``, a user's own, ...) or from a JSON file path."""
    if isinstance(name_or_path, Task):
        return name_or_path
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" and candidate.is_file():
        path = candidate
    else:
        files = task_files(prompts_dir)
        path = files.get(str(name_or_path))
        if path is None:
            known = ", ".join(files) or "none found"
            raise ValueError(f"Unknown task {str(name_or_path)!r}; choose one of: {known} (or give a task .json "
                             "file, or add your own to the prompts folder of the data directory).")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is fine
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Cannot read the task file {path}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ValueError(f"The task file {path} must hold a JSON object.")
    return Task.from_dict(data, path=str(path))
