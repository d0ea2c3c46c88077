"""Prompt checkpoints: the learned context vectors as safetensors, described by a JSON file beside them.

``<stem>.safetensors`` holds one tensor, ``ctx``. ``<stem>.json`` holds everything needed to rebuild
and to judge the prompt: the backbone it was learned on, the class names and prompt layout, and
whatever the trainer adds (task, method, loss parameters, seed, shots, split files, metrics,
timings). Both are written atomically, the JSON last, so a checkpoint with a JSON file is complete.
Nothing is ever unpickled.
"""
from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from calibprompt.fileio import atomic_write, atomic_write_json
from calibprompt.paths import shown
from calibprompt.prompting.learner import PromptLearner

__all__ = ["FORMAT", "LEARNER_FORMAT", "checkpoint_format", "save_prompt", "save_context", "write_checkpoint", "read_prompt_metadata",
           "load_prompt", "checkpoint_paths",
           "CheckpointWriteError"]

FORMAT = "calibprompt-prompt/1"
#: the format of learner checkpoints that a prompt checkpoint cannot hold (CoCoOp's meta-net, the adapters'
#: weights): read by :func:`calibprompt.training.learners.load_learner`, in the layers above this one
LEARNER_FORMAT = "calibprompt-learner/1"

_EDQUOT = getattr(errno, "EDQUOT", None)
_FULL = {errno.ENOSPC} | ({_EDQUOT} if _EDQUOT is not None else set())
_DENIED = {errno.EROFS, errno.EACCES, errno.EPERM}
_OS_ERROR_CODE = re.compile(r"os error (\d+)")  # how safetensors (Rust) reports an OS error


class CheckpointWriteError(OSError):
    """A prompt checkpoint that could not be written for lack of space or permission; ``str()`` is a
    plain message that names the file (relative to the data directory) and says what to do. Nothing of
    the checkpoint is left behind."""

    def __str__(self) -> str:
        return str(self.strerror)


def _os_error_code(exc: BaseException) -> int | None:
    """The errno of an OSError, or of an OS error that safetensors wraps in a SafetensorError."""
    if isinstance(exc, OSError):
        return exc.errno
    match = _OS_ERROR_CODE.search(str(exc))
    return int(match.group(1)) if match else None


def _shown_path(path: Path) -> str:
    """``path`` relative to the data directory when it lies inside it (as the app shows it)."""
    from calibprompt.paths import data_dir

    try:
        return str(path.resolve().relative_to(data_dir()))
    except (ValueError, OSError):
        return str(path)


def _write_error(exc: BaseException, path: Path) -> CheckpointWriteError | None:
    """The plain error for a write that failed for lack of space or permission (None for others)."""
    code = _os_error_code(exc)
    shown = _shown_path(path)
    if code in _FULL:
        text = f"The disk is full: the prompt could not be saved to {shown}. Free some space and train again."
    elif code == errno.EROFS:
        text = (f"The disk is read-only: the prompt could not be saved to {shown}. Make the data directory "
                "writable (or set CALIBPROMPT_HOME to a writable folder) and train again.")
    elif code in _DENIED:
        text = (f"Permission denied: the prompt could not be saved to {shown}. Make the data directory "
                "writable (or set CALIBPROMPT_HOME to a writable folder) and train again.")
    else:
        return None
    return CheckpointWriteError(code, text, str(path))


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights, metadata)`` paths for a checkpoint given by stem, .json or .safetensors path."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def checkpoint_format(path: str | os.PathLike) -> str | None:
    """The ``format`` a checkpoint's JSON records (:data:`FORMAT` or :data:`LEARNER_FORMAT`), or None when it
    cannot be read or records none (then :func:`read_prompt_metadata` says what is wrong)."""
    _, meta_path = checkpoint_paths(path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta.get("format") if isinstance(meta, dict) else None


def save_prompt(path: str | os.PathLike, learner: PromptLearner, *, backbone: str,
                metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``learner``'s context and description; returns the JSON path."""
    return save_context(path, learner.ctx, learner.config(), backbone=backbone, metadata=metadata)


def save_context(path: str | os.PathLike, ctx: torch.Tensor, prompt_config: Mapping[str, Any], *, backbone: str,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write context vectors ``ctx`` ((M, W), or (K, M, W) class-specific) with the prompt layout
    ``prompt_config`` (:meth:`PromptLearner.config`); returns the JSON path. What :func:`save_prompt`
    does for a learner, for a context that travelled without one (from a worker process, say)."""
    ctx = ctx.detach().to("cpu", torch.float32).contiguous()
    meta = {"format": FORMAT, "backbone": backbone, **dict(prompt_config), "ctx_shape": list(ctx.shape)}
    return write_checkpoint(path, {"ctx": ctx}, {**meta, **dict(metadata or {})})


def write_checkpoint(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write ``tensors`` (CPU, contiguous) to ``<stem>.safetensors``, then ``meta`` (with ``weights`` set to
    that file's name) to ``<stem>.json``, each atomically; returns the JSON path. Weights whose description
    could not be written are removed (they are no checkpoint), and a full or read-only disk is said in plain
    words. Every checkpoint format (prompts, learners) is written here."""
    weights, meta_path = checkpoint_paths(path)
    meta = {**dict(meta), "weights": weights.name}
    tensors = dict(tensors)
    try:
        atomic_write(weights, lambda tmp: save_file(tensors, tmp))
    except (OSError, SafetensorError) as exc:
        plain = _write_error(exc, weights)
        if plain is None:
            raise
        raise plain from exc
    try:
        atomic_write_json(meta_path, meta)
    except BaseException as exc:
        weights.unlink(missing_ok=True)  # weights without their description are no checkpoint: remove them
        plain = _write_error(exc, meta_path) if isinstance(exc, OSError) else None
        if plain is None:
            raise
        raise plain from exc
    return meta_path


def read_prompt_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description of a checkpoint (``ValueError`` if it is missing or not one of ours)."""
    _, meta_path = checkpoint_paths(path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"No prompt checkpoint at {shown(meta_path)} (expected a .json file beside the .safetensors).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Cannot read the prompt checkpoint {shown(meta_path)}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{shown(meta_path)} is not a CalibPrompt prompt checkpoint (format {FORMAT!r}).")
    return meta


def load_prompt(path: str | os.PathLike, backbone, *, check_backbone: bool = True) -> tuple[PromptLearner, dict[str, Any]]:
    """Rebuild the :class:`PromptLearner` of a checkpoint on ``backbone``; returns it with the metadata.

    Raises:
        ValueError: missing or damaged files, or a checkpoint learned on another backbone.
    """
    meta = read_prompt_metadata(path)
    weights, _ = checkpoint_paths(path)
    if check_backbone and meta.get("backbone") != backbone.name:
        raise ValueError(
            f"This prompt was learned on the backbone {meta.get('backbone')!r}, but the loaded backbone is "
            f"{backbone.name!r}; load {meta.get('backbone')!r} to use it."
        )
    try:
        ctx = load_file(str(weights))["ctx"]
    except (FileNotFoundError, SafetensorError, KeyError, OSError) as exc:
        raise ValueError(f"Cannot read the context vectors {shown(weights)}: {exc}") from exc
    learner = PromptLearner(
        backbone, meta["classnames"], n_ctx=int(meta["n_ctx"]), ctx_init=meta.get("ctx_init"),
        class_specific=bool(meta.get("class_specific", False)),
        class_token_position=meta.get("class_token_position", "end"),
        double_embedding=bool(meta.get("double_embedding", False)),
    )
    if tuple(ctx.shape) != tuple(learner.ctx.shape):
        raise ValueError(
            f"The context in {weights.name} has shape {tuple(ctx.shape)}, but this backbone's prompt needs "
            f"{tuple(learner.ctx.shape)}; it was learned on a different architecture."
        )
    with torch.no_grad():
        learner.ctx.copy_(ctx.to(learner.ctx.device, learner.ctx.dtype))
    return learner, meta
