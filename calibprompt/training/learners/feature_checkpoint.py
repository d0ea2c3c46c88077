"""Checkpoints of the feature learners (adapters and linear probes): safetensors + JSON.

``<stem>.safetensors`` holds the learner's whole state (its parameters and buffers: e.g. Tip-Adapter's
cache keys and values, CLAP's multipliers, the frozen zero-shot text features it was trained with);
``<stem>.json`` records the format (``calibprompt-learner/1``, shared with CoCoOp's checkpoints), the
learner's name and constructor settings (:meth:`FeatureLearner.config`), which tensors learned, their
shapes, the backbone and whatever the caller adds (method, loss parameters, seed, metrics). The weights
are written first and the JSON last, both atomically, so a checkpoint with a JSON file is complete.
Nothing is unpickled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from calibprompt.prompting.checkpoint import LEARNER_FORMAT, checkpoint_paths, write_checkpoint
from calibprompt.training.learners.base import FeatureLearner

__all__ = ["LEARNER_FORMAT", "save_feature_learner", "load_feature_learner"]



def save_feature_learner(path: str | os.PathLike, learner: FeatureLearner, *, backbone: str | None = None,
                         metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``learner``'s state and description; returns the JSON path."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in learner.state_dict().items()}
    meta = {"format": LEARNER_FORMAT, "kind": "feature", "backbone": backbone, **learner.config(),
            "learner_params": learner.hyperparameters(),
            "trainable": learner.trainable_names(), "shapes": {k: list(v.shape) for k, v in state.items()}}
    return write_checkpoint(path, state, {**meta, **dict(metadata or {})})


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    weights, meta_path = checkpoint_paths(path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"No learner checkpoint at {meta_path.name} "
                         "(expected a .json file beside the .safetensors).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Cannot read the learner checkpoint {meta_path.name}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != LEARNER_FORMAT or meta.get("kind") != "feature":
        raise ValueError(f"{meta_path.name} is not a feature-learner checkpoint "
                         f"(format {LEARNER_FORMAT!r}, kind 'feature').")
    try:
        tensors = load_file(str(weights))
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise ValueError(f"Cannot read the learner's tensors {weights.name}: {exc}") from exc
    return meta, tensors


def load_feature_learner(path: str | os.PathLike, *,
                         backbone: str | None = None) -> tuple[FeatureLearner, dict[str, Any]]:
    """Rebuild the learner of a checkpoint; returns ``(learner, metadata)``.

    Raises:
        ValueError: missing or damaged files, an unknown learner, another backbone than ``backbone``
            (when given), or tensors of the wrong shapes.
    """
    from calibprompt.training.learners import get_learner

    meta, tensors = _read(path)
    if backbone is not None and meta.get("backbone") not in (None, backbone):
        raise ValueError(f"This learner was trained on the backbone {meta.get('backbone')!r}, not {backbone!r}.")
    cls = get_learner(meta.get("learner", ""))
    params = dict(meta.get("learner_params") or {})
    zs = tensors.get("zero_shot_text")
    learner = cls(int(meta["num_classes"]), int(meta["dim"]), zero_shot_text=zs,
                  logit_scale=float(meta["logit_scale"]), classnames=meta.get("classnames"), **params)
    expected = {k: tuple(v.shape) for k, v in learner.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != got:
        raise ValueError(f"The tensors of this {cls.name} checkpoint {got} do not match the learner's {expected}.")
    learner.load_state_dict(tensors)
    learner.eval()
    return learner, meta

