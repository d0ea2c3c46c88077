"""Named datasets: a plain-dict registry of datasets that live somewhere other than a folder the user
names (the demo world's generated splits, a site's curated sets).

A :class:`DatasetSource` says which task its images belong to and how to get its folder (generated
or downloaded on first use). Nothing registers itself on import: a package that provides datasets
exposes a ``register()`` function, and the entry points (the CLI, the app) call it::

    from calibprompt.data.sources import DatasetSource, register_dataset
    register_dataset(DatasetSource("my-set", task="kather", folder=lambda: Path("/data/kather")))
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["DatasetSource", "register_dataset", "unregister_dataset", "list_registered_datasets",
           "get_registered_dataset"]


@dataclass(frozen=True)
class DatasetSource:
    """A named dataset.

    Attributes:
        name: what users type (``--dataset NAME``, the app's dataset menu).
        task: the task file its class folders follow.
        folder: returns the dataset's folder, creating it on first use; must be safe to call from
            several threads and processes at once.
        description: one line for listings.
    """

    name: str
    task: str
    folder: Callable[[], Path]
    description: str = ""


_SOURCES: dict[str, DatasetSource] = {}
_LOCK = threading.Lock()


def register_dataset(source: DatasetSource) -> DatasetSource:
    """Add (or replace) a named dataset."""
    if not source.name or "/" in source.name:
        raise ValueError(f"A dataset name must be non-empty and contain no '/', got {source.name!r}.")
    with _LOCK:
        _SOURCES[source.name] = source
    return source


def unregister_dataset(name: str) -> None:
    with _LOCK:
        _SOURCES.pop(name, None)


def list_registered_datasets() -> list[str]:
    """Names of the registered datasets, in registration order."""
    with _LOCK:
        return list(_SOURCES)


def get_registered_dataset(name: str) -> DatasetSource | None:
    """The registered dataset called ``name``, or None."""
    with _LOCK:
        return _SOURCES.get(str(name))
