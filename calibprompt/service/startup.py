"""Which model the app starts on: BiomedCLIP when it can be had, else the bundled demo model, with a
banner that says which and why.

:func:`choose_model` decides without loading a bundled model (it always loads, offline), so the app
can serve its page while that model loads in the background (:meth:`calibprompt.service.core.Core.preload`);
:func:`choose_backbone` decides and loads.
"""
from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibprompt.backbones import BACKBONES, hub_is_offline, hub_reachable, load_backbone, missing_hub_files

__all__ = ["choose_backbone", "choose_model", "StartupModel", "DEFAULT_TASK", "DISCLAIMER", "default_task_for",
           "check_data_dir"]

DISCLAIMER = ("For research and review only, not for diagnosis. The probabilities come from a vision-language "
              "model and can be confidently wrong.")
#: the task a backbone family starts on
DEFAULT_TASK = {"demo": "demo", "biomedclip": "covid", "medclip": "covid", "quiltnet": "kather", "plip": "kather",
                "clip": "kather"}


def check_data_dir() -> Path:
    """The data directory, created if missing and checked writable by writing (and removing) a small file in
    it; an OSError (read-only, full, permission denied) goes to the caller, which says it in plain words
    (:func:`calibprompt.errors.user_message`)."""
    from calibprompt.paths import data_dir

    root = data_dir()
    handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=root)
    try:
        os.write(handle, b"ok")
    finally:
        os.close(handle)
        os.unlink(probe)
    return root


def default_task_for(family: str) -> str:
    return DEFAULT_TASK.get(family, "kather")


@dataclass(frozen=True)
class StartupModel:
    """The model the app starts on: its registered ``name``, the ``banner`` that says which and why, and
    the ``backbone`` when choosing it meant loading it (BiomedCLIP, or a model named on the command line
    that is not bundled); None for a bundled model, which loads later."""

    name: str
    banner: str
    backbone: Any = None


def _bundled(name: str) -> bool:
    spec = BACKBONES.get(name)
    return spec is not None and spec.local_dir is not None


def choose_model(requested: str = "auto", *, download_timeout: float = 45.0) -> StartupModel:
    """Pick the model the app starts on, loading it only where the choice depends on that.

    ``auto`` uses BiomedCLIP when it is in the local Hugging Face cache (and loads), or when it downloads
    within ``download_timeout`` seconds (the download goes on in the background otherwise); else the
    bundled demo model, with a banner that says why and how to switch. ``HF_HUB_OFFLINE=1`` skips the
    attempt. Any other ``requested`` name is loaded now (so a model that cannot be had stops the app at
    once with its reason), except a bundled one.
    """
    if requested != "auto":
        if _bundled(requested):
            return StartupModel(requested, f"Model: {requested}. {BACKBONES[requested].description}")
        backbone = load_backbone(requested)
        return StartupModel(backbone.name, f"Model: {backbone.name}. {backbone.description}", backbone)
    spec = BACKBONES["biomedclip"]
    why = ""
    if not missing_hub_files(spec):
        try:
            return StartupModel("biomedclip", "Model: BiomedCLIP (from the local Hugging Face cache).",
                                load_backbone("biomedclip"))
        except Exception as exc:  # a damaged cache must not stop the app
            why = f"BiomedCLIP is in the cache but failed to load ({exc})"
    elif hub_is_offline():
        why = "HF_HUB_OFFLINE is set, and BiomedCLIP is not in the local Hugging Face cache"
    else:
        ok, reason = hub_reachable()
        if not ok:
            why = f"the Hugging Face Hub is unreachable ({reason}) and BiomedCLIP is not in the local cache"
        else:
            result: dict[str, Any] = {}

            def download():
                try:
                    result["backbone"] = load_backbone("biomedclip")
                except Exception as exc:  # noqa: BLE001 - reported in the banner
                    result["error"] = exc

            thread = threading.Thread(target=download, name="biomedclip-download", daemon=True)
            thread.start()
            thread.join(download_timeout)
            if "backbone" in result:
                return StartupModel("biomedclip", "Model: BiomedCLIP (downloaded from the Hugging Face Hub).",
                                    result["backbone"])
            why = (f"BiomedCLIP could not be downloaded ({result['error']})" if "error" in result else
                   f"BiomedCLIP did not download within {download_timeout:.0f} s (it goes on in the background)")
    banner = (f"Model: the bundled demo model, because {why}. It knows only a synthetic histology world "
              "(tasks 'demo' and 'demo-binary'). To use a real Med-VLM, connect to the internet and pick "
              "BiomedCLIP or QuiltNet as the model.")
    return StartupModel("demo", banner)


def choose_backbone(requested: str = "auto", *, download_timeout: float = 45.0):
    """Load the model the app starts on; returns ``(backbone, banner)``: :func:`choose_model`'s choice,
    loaded."""
    choice = choose_model(requested, download_timeout=download_timeout)
    return (choice.backbone if choice.backbone is not None else load_backbone(choice.name)), choice.banner
