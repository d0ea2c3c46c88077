"""Loading backbones: :func:`load_backbone` and its loaders (Hub, local folder or file, bundled).

:func:`load_backbone` turns a registered name (:data:`~calibprompt.backbones.registry.BACKBONES`), a
``hf-hub:`` id, an open_clip ``local-dir:`` folder or a checkpoint file into a
:class:`~calibprompt.backbones.backbone.Backbone`: the model (eval mode, frozen) with its
preprocessing, its tokenizer and ``encode_image`` / ``encode_text``.

A Hub model whose files are all in the local Hugging Face cache is built from the cache alone, with
no network call and without touching any process-wide setting (see :mod:`calibprompt.backbones.hub`);
otherwise the Hub is probed once and the files download, or loading fails at once with a
:class:`~calibprompt.backbones.registry.BackboneUnavailableError` that says what to do.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from calibprompt.backbones.backbone import Backbone
from calibprompt.backbones.builders import _create_model, build_twin, medclip_checkpoint_path
from calibprompt.backbones.hub import (
    _unavailable_message,
    cached_file,
    cached_open_clip_config,
    hf_text_repos,
    hub_is_offline,
    hub_reachable,
    missing_hub_files,
)
from calibprompt.backbones.registry import BACKBONES, BackboneSpec, BackboneUnavailableError, _clip_files
from calibprompt.devices import resolve_device

logger = logging.getLogger(__name__)

__all__ = ["load_backbone"]


def _missing_files(spec: BackboneSpec) -> list[str]:
    """Everything ``spec`` needs that is not here: Hub files not in the local cache, a missing checkpoint."""
    missing = missing_hub_files(spec)
    if spec.builder == "open_clip" and (spec.model_id or "").startswith("hf-hub:"):
        # The Hugging Face text tower and tokenizer that the cached open_clip config names.
        config = cached_open_clip_config(spec.model_id[len("hf-hub:"):])
        for repo, alternatives in hf_text_repos((config or {}).get("model_cfg", {})).items():
            already = any(m.startswith(f"{repo}/") for m in missing)
            if not already and cached_file(repo, alternatives) is None:
                missing.append(f"{repo}/{alternatives[-1]}")
    if spec.builder == "medclip":
        from calibprompt.backbones.medclip import CHECKPOINT_URL, HUB_FILES

        missing += [f"{repo}/{name}" for repo, names in HUB_FILES for name in names if cached_file(repo, name) is None]
        if not medclip_checkpoint_path().is_file():
            missing.append(f"{medclip_checkpoint_path()} (from {CHECKPOINT_URL})")
    return missing


def _load_hub_spec(spec: BackboneSpec, label: str, device: torch.device, precision: str) -> Backbone:
    missing = _missing_files(spec)
    if not missing:
        # Everything is cached: build from the cache alone, for this call only (no network round trip,
        # and no process-wide HF_HUB_OFFLINE switch that would break a download in another thread).
        model, preprocess, tokenizer, cfg = _create_model(spec, device, precision, local_files_only=True)
    else:
        if hub_is_offline():
            raise BackboneUnavailableError(_unavailable_message(label, spec, missing, "HF_HUB_OFFLINE is set"))
        ok, reason = hub_reachable()
        if not ok:
            raise BackboneUnavailableError(
                _unavailable_message(label, spec, missing, f"the Hugging Face Hub is unreachable ({reason})")
            )
        logger.info("Downloading %s from the Hugging Face Hub (missing: %s)", label, ", ".join(missing))
        model, preprocess, tokenizer, cfg = _create_model(spec, device, precision)
    return Backbone(label, model, preprocess, tokenizer, family=spec.family, description=spec.description,
                    model_cfg=cfg)


def _adhoc_hub_spec(model_id: str) -> BackboneSpec:
    """A spec for any ``hf-hub:org/repo`` open_clip model (its text repos are found from its config); a
    registered model's own spec when the id is one of theirs (so QuiltNet keeps its QuickGELU)."""
    known = next((spec for spec in BACKBONES.values() if spec.model_id == model_id), None)
    if known is not None:
        return known
    return BackboneSpec(name=model_id, family="custom", description=f"open_clip model {model_id}",
                        model_id=model_id, hub_files=(_clip_files(model_id[len("hf-hub:"):]),))


def _load_local(path: Path, arch: str | None, device: torch.device, precision: str) -> Backbone:
    import open_clip

    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise ValueError(
                f"{path} is not an open_clip model folder: it needs open_clip_config.json and "
                "open_clip_model.safetensors (open_clip's local-dir layout)."
            )
        model_id = f"local-dir:{path}"
        model, _, preprocess = open_clip.create_model_and_transforms(model_id, device=device, precision=precision)
        tokenizer = open_clip.get_tokenizer(model_id)
        config = json.loads((path / "open_clip_config.json").read_text())
        return Backbone(path.name, model, preprocess, tokenizer, family=config.get("calibprompt_family", "custom"),
                        description=f"local model {path}", model_cfg=config.get("model_cfg"),
                        preprocess_cfg=config.get("preprocess_cfg"))
    if path.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise ValueError(f"{path}: expected a .safetensors, .pt, .pth or .bin checkpoint, or an open_clip model folder.")
    if not arch:
        raise ValueError(
            f"Loading the checkpoint file {path.name} needs its architecture: pass arch='ViT-B-16' (any name "
            "from open_clip.list_models()), or put it in a folder with open_clip_config.json."
        )
    # open_clip reads .safetensors with safetensors and .pt/.bin with torch.load(weights_only=True).
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path), device=device,
                                                                 precision=precision, weights_only=True)
    return Backbone(path.stem, model, preprocess, open_clip.get_tokenizer(arch), description=f"{arch} from {path}")


def _load_bundled(spec: BackboneSpec, device: torch.device, precision: str) -> Backbone:
    folder = Path(spec.local_dir)
    if not (folder / "open_clip_model.safetensors").is_file():
        raise BackboneUnavailableError(
            f"The bundled backbone '{spec.name}' is missing from {folder}; rebuild it with 'calibprompt demo-build' "
            "(or reinstall the package from its repository)."
        )
    backbone = _load_local(folder, None, device, precision)
    backbone.name, backbone.description = spec.name, spec.description
    return backbone


def load_backbone(name_or_path: str | os.PathLike, device: str | torch.device | None = None, *,
                  pretrained: bool = True, precision: str = "fp32", arch: str | None = None) -> Backbone:
    """Load a backbone.

    Args:
        name_or_path: a registered name (:func:`list_backbones`), ``"hf-hub:org/repo"`` (an open_clip
            Hub model), ``"local-dir:/folder"`` or a folder in open_clip's local-dir layout, or a
            checkpoint file (``.safetensors``/``.pt``; give ``arch``).
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        pretrained: ``False`` builds a random-weight twin of a registered architecture, offline.
        precision: open_clip precision (``"fp32"``, ``"fp16"``, ``"bf16"``, ...).
        arch: open_clip architecture name for a bare checkpoint file.

    Raises:
        ValueError: unknown name, or a path that is not a model.
        BackboneUnavailableError: Hub weights that can't be had here (offline, not cached).
    """
    device = resolve_device(device)
    name = os.fspath(name_or_path)
    if name in BACKBONES:
        spec = BACKBONES[name]
        if spec.local_dir is not None:
            return _load_bundled(spec, device, precision)
        if spec.is_twin_only or not pretrained:
            return build_twin(spec, device)
        return _load_hub_spec(spec, name, device, precision)
    if name.startswith("hf-hub:"):
        return _load_hub_spec(_adhoc_hub_spec(name), name, device, precision)
    if name.startswith("local-dir:"):
        name = name[len("local-dir:"):]
    path = Path(name).expanduser()
    if path.exists():
        return _load_local(path, arch, device, precision)
    raise ValueError(
        f"Unknown backbone {str(name_or_path)!r}: not a registered name ({', '.join(BACKBONES)}), "
        "not 'hf-hub:org/repo', and no such file or folder."
    )
