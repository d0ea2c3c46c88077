"""Hugging Face Hub access: what is in the local cache, whether the Hub can be reached, and messages.

Hub models download on first use (users have internet). When the Hub cannot be reached and the
files are not in the local Hugging Face cache, loading fails at once with a
:class:`~calibprompt.backbones.registry.BackboneUnavailableError` that says what to do, instead of
after huggingface_hub's retries.

A model whose files are all cached is loaded from the cache *per call*: :func:`cached_file` and
:func:`cached_snapshot` resolve the files to local paths (``huggingface_hub.try_to_load_from_cache``,
no network), and the builders hand those paths (or ``local_files_only=True``) to open_clip and
transformers. Nothing here changes a process-wide setting: ``huggingface_hub.constants.HF_HUB_OFFLINE``
and the environment are only read (:func:`hub_is_offline`), so a download running in another thread
is never switched to offline mode.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

from calibprompt.backbones.registry import BackboneSpec, BackboneUnavailableError

__all__ = [
    "HUB_PROBE_TIMEOUT_S",
    "cached_file",
    "cached_open_clip_config",
    "cached_snapshot",
    "hf_text_repos",
    "hub_is_offline",
    "hub_reachable",
    "missing_hub_files",
    "require_cached_file",
]

HUB_PROBE_TIMEOUT_S = 3.0
# Files any one of which shows that a Hugging Face tokenizer repository is cached.
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "config.json")


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def cached_file(repo: str, filenames: str | Iterable[str]) -> str | None:
    """Local path of the first of ``filenames`` of ``repo`` (main revision) in the Hugging Face cache.

    ``None`` when none is cached. Reads the cache only: no network call, no global state.
    """
    from huggingface_hub import try_to_load_from_cache

    for name in [filenames] if isinstance(filenames, str) else filenames:
        path = try_to_load_from_cache(repo, name)
        if isinstance(path, str):
            return path
    return None


def require_cached_file(repo: str, filenames: str | Iterable[str]) -> str:
    """:func:`cached_file`, raising :class:`BackboneUnavailableError` when nothing is cached."""
    names = [filenames] if isinstance(filenames, str) else list(filenames)
    path = cached_file(repo, names)
    if path is None:
        raise BackboneUnavailableError(
            f"{repo}/{' or '.join(names)} is not in the local Hugging Face cache ({_hf_cache_dir()})."
        )
    return path


def cached_snapshot(repo: str, filenames: str | Iterable[str] = ("config.json",)) -> str:
    """The local snapshot folder of ``repo`` (main revision) that holds one of ``filenames``.

    Transformers reads a local folder without any Hub access, so this is how a Hub text model is
    loaded from the cache for one call only. Raises :class:`BackboneUnavailableError` if not cached.
    """
    return str(Path(require_cached_file(repo, filenames)).parent)


def hf_text_repos(model_cfg: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Hub repositories named by an open_clip ``model_cfg``'s Hugging Face text tower and tokenizer.

    Maps each repository (local folders are left out) to the files any one of which must be cached.
    """
    text_cfg = model_cfg.get("text_cfg", {}) or {}
    repos: dict[str, tuple[str, ...]] = {}
    model_name, tokenizer_name = text_cfg.get("hf_model_name"), text_cfg.get("hf_tokenizer_name")
    if tokenizer_name and not os.path.isdir(tokenizer_name):
        repos[tokenizer_name] = _TOKENIZER_FILES
    if model_name and not os.path.isdir(model_name):
        repos[model_name] = ("config.json",)  # the text tower is built from its config
    return repos


def cached_open_clip_config(repo: str) -> dict[str, Any] | None:
    """The cached ``open_clip_config.json`` of ``repo``, parsed; ``None`` when it is not cached."""
    path = cached_file(repo, "open_clip_config.json")
    return json.loads(Path(path).read_text(encoding="utf-8")) if path else None


def missing_hub_files(spec: BackboneSpec) -> list[str]:
    """The Hub files of ``spec`` that are not in the local Hugging Face cache (``repo/file``)."""
    missing = []
    for entry in spec.hub_files:
        for alternatives in entry.files:
            if cached_file(entry.repo, alternatives) is None:
                missing.append(f"{entry.repo}/{alternatives[0]}")
    return missing


def hub_is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return bool(constants.HF_HUB_OFFLINE) or (value or "").strip().lower() in {"1", "true", "yes", "on"}


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """One quick request to the Hub endpoint (honours proxy variables); ``(ok, reason)``."""
    from huggingface_hub import constants

    url = constants.ENDPOINT.rstrip("/") + "/api/models?limit=1"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True, ""
    except urllib.error.HTTPError:
        return True, ""  # the server answered: the network path works
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, str(reason)


def _unavailable_message(label: str, spec: BackboneSpec, missing: list[str], why: str) -> str:
    repos = sorted({m.rsplit("/", 1)[0] for m in missing if " (from " not in m})
    fetch = "; ".join(f"hf download {r}" for r in repos)
    return (
        f"Cannot load the backbone '{label}' ({spec.model_id}): {why}, and these files are not in the local "
        f"Hugging Face cache ({_hf_cache_dir()}): {', '.join(missing)}. "
        f"To fix: connect this machine to the internet and try again; or pre-fill the cache on a connected "
        f"machine ({fetch}) and copy it here (set HF_HOME to point at it); or use the bundled demo model "
        f"(the 'demo' backbone), which works offline."
    )
