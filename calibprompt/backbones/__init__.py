"""Backbones: the frozen medical vision-language models that prompts are learned for.

- :mod:`~calibprompt.backbones.registry`: :data:`BACKBONES` (a plain dict of :class:`BackboneSpec`),
  :func:`list_backbones`, :func:`get_backbone_spec`.
- :mod:`~calibprompt.backbones.backbone`: the :class:`Backbone` object (``encode_image`` /
  ``encode_text``, preprocessing, tokenizer, fingerprint).
- :mod:`~calibprompt.backbones.hub`: the Hugging Face cache and Hub (:func:`missing_hub_files`,
  :func:`hub_is_offline`, :func:`hub_reachable`).
- :mod:`~calibprompt.backbones.builders`: building models (open_clip, PLIP, MedCLIP), random-weight
  twins (:func:`build_twin`), :func:`save_backbone`.
- :mod:`~calibprompt.backbones.loading`: :func:`load_backbone`.

Patch ``calibprompt.backbones.loading.hub_reachable`` (where :func:`load_backbone` looks it up) to
fake the network in tests.
"""
from calibprompt.backbones.backbone import Backbone
from calibprompt.backbones.builders import build_twin, medclip_checkpoint_path, save_backbone
from calibprompt.backbones.hub import hub_is_offline, hub_reachable, missing_hub_files
from calibprompt.backbones.loading import load_backbone
from calibprompt.backbones.registry import (
    BACKBONES,
    BackboneSpec,
    BackboneUnavailableError,
    HubFiles,
    get_backbone_spec,
    list_backbones,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneSpec",
    "BackboneUnavailableError",
    "HubFiles",
    "build_twin",
    "get_backbone_spec",
    "hub_is_offline",
    "hub_reachable",
    "list_backbones",
    "load_backbone",
    "medclip_checkpoint_path",
    "missing_hub_files",
    "save_backbone",
]
