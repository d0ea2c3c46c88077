"""Building backbone models: open_clip, PLIP and MedCLIP builders, random-weight twins, and saving.

Every registered architecture can be built as a *twin*: the same classes and sizes with random
weights and no download (:func:`build_twin`, ``load_backbone(name, pretrained=False)``), which is how
the tests and benchmarks exercise real architectures offline. ``tiny-random`` and ``tiny-random-hf``
are tiny twins (a native open_clip CLIP, and a CustomTextCLIP with a Hugging Face BERT text tower).

``_create_model(..., local_files_only=True)`` builds a real model from the local Hugging Face cache
only, for that one call: Hub files are resolved to local paths (:mod:`calibprompt.backbones.hub`) and
transformers is called with ``local_files_only=True``. No process-wide offline switch is touched.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from calibprompt.backbones.backbone import Backbone, _make_transform
from calibprompt.backbones.hub import cached_snapshot, hf_text_repos, require_cached_file
from calibprompt.backbones.registry import (
    _OPENAI_PREPROCESS,
    CLIP_WEIGHT_FILES,
    TWIN_TEXT_DIRS,
    BackboneSpec,
    BackboneUnavailableError,
)
from calibprompt.devices import resolve_device

logger = logging.getLogger(__name__)

__all__ = ["build_twin", "medclip_checkpoint_path", "save_backbone"]


def _resolve_twin_text_dirs(model_cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(model_cfg)
    text_cfg = cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if key in text_cfg and text_cfg[key] in TWIN_TEXT_DIRS:
            text_cfg[key] = str(TWIN_TEXT_DIRS[text_cfg[key]])
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
    return cfg


def build_twin(spec: BackboneSpec, device: torch.device | str | None = "cpu") -> Backbone:
    """The architecture of ``spec`` with random weights (seeded by ``spec.seed``), built offline."""
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if spec.builder != "open_clip":
        model, preprocess, tokenizer, cfg = _create_model(spec, resolve_device(device), "fp32", twin=True)
        return Backbone(f"{spec.name}-twin", model, preprocess, tokenizer, family=spec.family, pretrained=False,
                        description=f"Random-weight twin of {spec.name}.", model_cfg=cfg)

    cfg = _resolve_twin_text_dirs(spec.model_cfg)
    text_cfg = cfg["text_cfg"]
    model_class = CustomTextCLIP if "hf_model_name" in text_cfg else CLIP
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = model_class(**cfg)
    if "hf_tokenizer_name" in text_cfg:
        tokenizer = HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=text_cfg["context_length"])
    else:
        tokenizer = SimpleTokenizer(context_length=text_cfg.get("context_length", 77))
    image_size = cfg["vision_cfg"]["image_size"]
    model.to(resolve_device(device))
    return Backbone(
        spec.name if spec.is_twin_only else f"{spec.name}-twin",
        model,
        _make_transform(image_size, spec.preprocess),
        tokenizer,
        family=spec.family,
        pretrained=False,
        description=spec.description if spec.is_twin_only else f"Random-weight twin of {spec.name}.",
        model_cfg=cfg,
        preprocess_cfg={"size": image_size, **{k: list(v) if isinstance(v, tuple) else v
                                              for k, v in spec.preprocess.items()}},
    )


def save_backbone(backbone: Backbone, folder: str | os.PathLike) -> Path:
    """Write ``backbone`` in open_clip's ``local-dir:`` layout (``open_clip_config.json`` +
    ``open_clip_model.safetensors``), loadable offline with :func:`load_backbone` (folder path)."""
    from safetensors.torch import save_file

    from calibprompt.fileio import atomic_write, atomic_write_json

    if backbone.model_cfg is None:
        raise ValueError(f"The architecture config of {backbone.name!r} is unknown, so it cannot be saved.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    atomic_write(folder / CLIP_WEIGHT_FILES[0], lambda tmp: save_file(state, tmp))
    config = {"model_cfg": backbone.model_cfg, "preprocess_cfg": backbone.preprocess_cfg or {},
              "calibprompt_family": backbone.family}
    atomic_write_json(folder / "open_clip_config.json", config)
    return folder


# --------------------------------------------------------------------------------------------
# open_clip models, from the Hub or from the local cache only
# --------------------------------------------------------------------------------------------
def _weight_file_names(filename: str) -> tuple[str, ...]:
    """The file names open_clip tries for a Hub weights file, in its order (a .safetensors twin first)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if filename == HF_WEIGHTS_NAME:
        return HF_SAFE_WEIGHTS_NAME, filename
    if filename.endswith((".bin", ".pth")):
        return filename[:-4] + ".safetensors", filename
    return (filename,)


def _cached_text_cfg(model_cfg: dict[str, Any]) -> dict[str, Any] | None:
    """``model_cfg``'s text config with its Hub text model replaced by its cached snapshot folder.

    ``None`` when the text tower is not a Hugging Face model from the Hub. ``hf_model_pretrained`` is
    ``False``, as open_clip sets it when a full checkpoint is loaded (always the case here).
    """
    text_cfg = model_cfg.get("text_cfg", {}) or {}
    name = text_cfg.get("hf_model_name")
    if not name or name not in hf_text_repos(model_cfg):
        return None
    return {**text_cfg, "hf_model_name": cached_snapshot(name, "config.json"), "hf_model_pretrained": False}


def _cached_tokenizer(model_cfg: dict[str, Any], fallback_id: str):
    """open_clip's tokenizer for ``model_cfg`` (as ``get_tokenizer`` makes it), read from the cache only."""
    import open_clip
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer

    text_cfg = model_cfg.get("text_cfg", {}) or {}
    name = text_cfg.get("hf_tokenizer_name")
    if not name:
        return open_clip.get_tokenizer(fallback_id)  # a SimpleTokenizer: no Hub access
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    if name in hf_text_repos(model_cfg):
        kwargs["local_files_only"] = True  # passed on to AutoTokenizer.from_pretrained
    return HFTokenizer(name, context_length=text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH),
                       tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs)


def _create_openclip_from_cache(spec: BackboneSpec, kwargs: dict[str, Any]):
    """``(model, preprocess, tokenizer)`` of an open_clip Hub model, from the local cache only.

    ``hf-hub:org/repo`` models load as open_clip ``local-dir:`` from their cached snapshot folder;
    built-in names with a pretrained tag load the tag's cached weights file as ``pretrained=<path>``
    (with the tag's preprocessing); a Hugging Face text tower is built from its cached config folder.
    ``None`` when the weights do not come from the Hub (a tag with only a URL).
    """
    import open_clip

    model_id = spec.model_id or ""
    if model_id.startswith("hf-hub:"):
        repo = model_id[len("hf-hub:"):]
        snapshot = cached_snapshot(repo, "open_clip_config.json")  # the main revision's folder
        require_cached_file(repo, CLIP_WEIGHT_FILES)  # in the same folder (both resolve refs/main)
        config = json.loads((Path(snapshot) / "open_clip_config.json").read_text(encoding="utf-8"))
        model_cfg = config.get("model_cfg", config)
        text_cfg = _cached_text_cfg(model_cfg)
        extra = {"text_cfg": text_cfg} if text_cfg else {}
        local_id = f"local-dir:{snapshot}"
        model, _, preprocess = open_clip.create_model_and_transforms(local_id, **kwargs, **extra)
        return model, preprocess, _cached_tokenizer(model_cfg, local_id)

    tag_cfg = open_clip.get_pretrained_cfg(model_id, spec.pretrained_tag) if spec.pretrained_tag else {}
    if not tag_cfg.get("hf_hub"):
        return None
    repo, filename = os.path.split(tag_cfg["hf_hub"])
    weights = require_cached_file(repo, _weight_file_names(filename or "open_clip_pytorch_model.bin"))
    model_cfg = open_clip.get_model_config(model_id) or {}
    text_cfg = _cached_text_cfg(model_cfg)
    extra = {"text_cfg": text_cfg} if text_cfg else {}
    # The tag's preprocessing, which open_clip merges in when it is given the tag itself.
    extra.update({f"image_{k}": tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg})
    model, _, preprocess = open_clip.create_model_and_transforms(model_id, pretrained=weights, **kwargs, **extra)
    return model, preprocess, _cached_tokenizer(model_cfg, model_id)


def _create_openclip(spec: BackboneSpec, device: torch.device, precision: str, local_files_only: bool = False):
    import open_clip

    kwargs: dict[str, Any] = {"device": device, "precision": precision}
    if spec.force_quick_gelu:
        kwargs["force_quick_gelu"] = True
    if local_files_only:
        created = _create_openclip_from_cache(spec, kwargs)
        if created is not None:
            return created
    model, _, preprocess = open_clip.create_model_and_transforms(spec.model_id, pretrained=spec.pretrained_tag, **kwargs)
    tokenizer = open_clip.get_tokenizer(spec.model_id)
    return model, preprocess, tokenizer


# --------------------------------------------------------------------------------------------
# PLIP and MedCLIP
# --------------------------------------------------------------------------------------------
def _create_plip(device: torch.device, twin: bool, local_files_only: bool = False):
    from open_clip.tokenizer import SimpleTokenizer

    from calibprompt.backbones.plip import PLIP_REPO, hf_clip_to_openclip, tiny_hf_clip

    if twin:
        hf = tiny_hf_clip()
    else:
        from transformers import CLIPModel

        hf = CLIPModel.from_pretrained(PLIP_REPO, local_files_only=local_files_only)
    model, cfg = hf_clip_to_openclip(hf)
    preprocess = _make_transform(cfg["vision_cfg"]["image_size"], _OPENAI_PREPROCESS)
    return model.to(device), preprocess, SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"]), cfg


def medclip_checkpoint_path() -> Path:
    """Where the released MedCLIP-ViT weights are looked for (``$MEDCLIP_CHECKPOINT``, else the data directory)."""
    from calibprompt.backbones.medclip import CHECKPOINT_NAME
    from calibprompt.paths import data_dir

    override = os.environ.get("MEDCLIP_CHECKPOINT")
    return Path(override).expanduser() if override else data_dir() / "models" / "medclip-vit" / CHECKPOINT_NAME


def _create_medclip(device: torch.device, twin: bool, local_files_only: bool = False):
    from calibprompt.backbones.medclip import build_medclip, download_medclip_checkpoint

    checkpoint = None
    if not twin:
        checkpoint = medclip_checkpoint_path()
        if not checkpoint.is_file():
            if local_files_only:
                raise BackboneUnavailableError(f"The MedCLIP-ViT checkpoint is missing: {checkpoint}.")
            logger.info("Downloading the MedCLIP-ViT checkpoint into %s", checkpoint.parent)
            checkpoint = download_medclip_checkpoint(checkpoint.parent)
    model, preprocess, tokenizer = build_medclip(checkpoint, twin=twin, device=device,
                                                 local_files_only=local_files_only)
    return model, preprocess, tokenizer, None


def _create_model(spec: BackboneSpec, device: torch.device, precision: str, twin: bool = False,
                  local_files_only: bool = False):
    """``(model, preprocess, tokenizer, model_cfg)`` for a spec's builder.

    ``local_files_only``: read every Hub file from the local cache, for this call only (no network).
    """
    if spec.builder == "plip":
        return _create_plip(device, twin, local_files_only)
    if spec.builder == "medclip":
        return _create_medclip(device, twin, local_files_only)
    return (*_create_openclip(spec, device, precision, local_files_only), None)
