"""Shared, thread-safe resources of a multi-user server: loaded backbones, prompt heads and evaluations.

Nothing here holds a user's choices. A :class:`BackbonePool` loads each (backbone, device) once and
keeps a bounded number in memory; a :class:`ContentCache` keeps derived values (a head's text
features, a test set's predictions) under keys built from what they depend on (the backbone's
fingerprint, the task's classes and templates, a checkpoint's bytes, the images' paths), never
from a display name, so two users can never be served each other's stale result.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable

from calibprompt.devices import resolve_device
from calibprompt.fileio import file_sha256

if TYPE_CHECKING:
    from calibprompt.prompting.engine import Engine
    from calibprompt.prompting.tasks import Task
    from calibprompt.training.features import FeatureCache

logger = logging.getLogger(__name__)

__all__ = ["LoadedBackbone", "BackbonePool", "ContentCache", "task_key", "file_digest"]


@dataclass
class LoadedBackbone:
    """A backbone with its shared image-feature caches (in memory by image content, on disk by file)."""

    backbone: Any
    engine: Engine
    features: FeatureCache

    @property
    def name(self) -> str:
        return self.backbone.name

    @classmethod
    def wrap(cls, backbone) -> "LoadedBackbone":
        """``backbone`` with a fresh engine and feature cache (imported here: they pull in torchvision,
        which the app's page does not need)."""
        from calibprompt.prompting.engine import Engine
        from calibprompt.training.features import FeatureCache

        return cls(backbone, Engine(backbone), FeatureCache(backbone))


def _load_backbone(name: str, device: Any):
    from calibprompt.backbones import load_backbone

    return load_backbone(name, device=device)


class BackbonePool:
    """Backbones keyed by ``(name, device)``, each loaded once, at most ``max_loaded`` in memory.

    Concurrent requests for a model that is loading wait for that one load (whichever thread started
    it: a request, or the app's background start, :meth:`calibprompt.service.core.Core.preload`). The
    least recently used model is dropped when the pool is full, except the ``pinned`` ones (the app's
    default model, pinned with :meth:`pin` before it loads).

    Args:
        max_loaded: how many backbones to keep in memory.
        loader: ``(name, device) -> Backbone`` (default :func:`calibprompt.backbones.loading.load_backbone`).
    """

    def __init__(self, max_loaded: int = 2, loader: Callable[[str, Any], Any] | None = None):
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {max_loaded}.")
        self.max_loaded = int(max_loaded)
        self._loader = loader or _load_backbone
        self._lock = threading.Lock()
        self._loaded: OrderedDict[tuple[str, str], LoadedBackbone] = OrderedDict()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._pinned: set[tuple[str, str]] = set()

    @staticmethod
    def _key(name: str, device: Any) -> tuple[str, str]:
        return str(name), str(resolve_device(device))

    def add(self, backbone, *, pin: bool = False) -> LoadedBackbone:
        """Put an already loaded backbone in the pool (the app's start-up model)."""
        key = self._key(backbone.name, backbone.device)
        entry = LoadedBackbone.wrap(backbone)
        with self._lock:
            self._loaded[key] = entry
            if pin:
                self._pinned.add(key)
            self._evict()
        return entry

    def get(self, name: str, device: Any = None) -> LoadedBackbone:
        """The pool's backbone ``name`` on ``device`` (loaded on first use)."""
        key = self._key(name, device)
        with self._lock:
            entry = self._loaded.get(key)
            if entry is not None:
                self._loaded.move_to_end(key)
                return entry
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per key; the others wait here and then find it loaded
            with self._lock:
                entry = self._loaded.get(key)
                if entry is not None:
                    return entry
            logger.info("Loading backbone %s on %s", *key)
            backbone = self._loader(key[0], key[1])
            entry = LoadedBackbone.wrap(backbone)
            with self._lock:
                self._loaded[key] = entry
                self._loading.pop(key, None)
                self._evict()
            return entry

    def pin(self, name: str, device: Any = None) -> None:
        """Never unload ``name`` on ``device`` once it is loaded (the app's default model, before it loads)."""
        key = self._key(name, device)
        with self._lock:
            self._pinned.add(key)

    def loaded(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._loaded)

    def _evict(self) -> None:
        while len(self._loaded) > self.max_loaded:
            victim = next((k for k in self._loaded if k not in self._pinned), None)
            if victim is None:
                return
            logger.info("Unloading backbone %s on %s (pool full)", *victim)
            del self._loaded[victim]


class ContentCache:
    """A bounded, thread-safe LRU map from content keys to values, computing each value once."""

    def __init__(self, max_items: int = 256):
        self.max_items = int(max_items)
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._gates: dict[Hashable, threading.Lock] = {}

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            gate = self._gates.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = compute()
            with self._lock:
                self._items[key] = value
                self._gates.pop(key, None)
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)
            return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def task_key(task: Task) -> str:
    """A hash of what a task's zero-shot head depends on: its class names (in order) and templates."""
    payload = json.dumps({"classes": task.classnames, "ids": task.class_ids, "templates": list(task.templates)})
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGEST_LOCK = threading.Lock()


def file_digest(*paths: str | Path) -> str:
    """SHA-256 over the bytes of ``paths`` (memoised by path, size and modification time)."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        stat = path.stat()
        memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        with _DIGEST_LOCK:
            known = _DIGESTS.get(memo)
        if known is None:
            known = file_sha256(path)
            with _DIGEST_LOCK:
                _DIGESTS[memo] = known
        digest.update(known.encode())
    return digest.hexdigest()[:32]
