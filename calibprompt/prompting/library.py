"""Bundled prompts: learned prompt checkpoints that ship with a model, offered before any run exists.

A plain-dict registry keyed by ``(backbone name, task name, method)``. Like datasets, bundled prompts
are registered explicitly by the package that ships them (the demo world's ``register()``), never on
import.
"""
from __future__ import annotations

import threading
from pathlib import Path

__all__ = ["register_bundled_prompt", "bundled_prompt_for", "list_bundled_prompts"]

_PROMPTS: dict[tuple[str, str, str], Path] = {}
_LOCK = threading.Lock()


def register_bundled_prompt(backbone: str, task: str, method: str, checkpoint: str | Path) -> None:
    """Offer ``checkpoint`` (a prompt checkpoint's .json) as ``method``'s prompt for ``backbone`` on ``task``."""
    with _LOCK:
        _PROMPTS[(str(backbone), str(task), str(method))] = Path(checkpoint)


def bundled_prompt_for(backbone: str, task: str, method: str) -> Path | None:
    """The registered checkpoint for this backbone, task and method, if it exists on disk."""
    with _LOCK:
        path = _PROMPTS.get((str(backbone), str(task), str(method)))
    return path if path is not None and path.is_file() else None


def list_bundled_prompts() -> list[tuple[str, str, str]]:
    with _LOCK:
        return list(_PROMPTS)
