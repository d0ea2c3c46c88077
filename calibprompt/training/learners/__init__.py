"""The few-shot learners: a plain-dict registry in open_clip's style.

Each learner is a small module whose docstring gives its paper, its formula and shapes, and which ends
with ``LEARNERS = {name: class}``. Two kinds:

- ``"prompt"`` learners on the text side (run the text encoder every step): ``coop``, ``cocoop``,
  ``kgcoop``, ``prograd`` (:mod:`.coop`, :mod:`.cocoop`, :mod:`.kgcoop`, :mod:`.prograd`), built as
  ``cls(backbone, classnames, **params)``;
- ``"feature"`` learners on cached image features (adapters and linear probes, no encoder at all):
  ``clip-adapter``, ``tip-adapter-f``, ``linear-probe``, ``lp++``, ``clap``
  (:class:`~.base.FeatureLearner`), built as ``cls.from_backbone(backbone, classnames, **params)``
  or ``cls(num_classes, dim, zero_shot_text=..., **params)``.

Every learner gives logits (N, K) from image features (N, D), and its class text features (K, D) where it
has them, so the loss registry (:mod:`calibprompt.training.losses`) applies; the combinations that do not
exist are refused in plain words (:func:`~.base.check_combination`, :func:`~.coop.check_method`).
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["list_learners", "get_learner", "create_learner", "learner_info", "save_learner", "load_learner",
           "LEARNER_MODULES", "learner_name", "check_learner_method"]

#: registry name -> module (in this package) that defines it, in the order the menus list them
LEARNER_MODULES: dict[str, str] = {
    "coop": "coop",
    "cocoop": "cocoop",
    "kgcoop": "kgcoop",
    "prograd": "prograd",
    "clip-adapter": "clip_adapter",
    "tip-adapter-f": "tip_adapter_f",
    "linear-probe": "linear_probe",
    "lp++": "lp_plus_plus",
    "clap": "clap",
}


def _key(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    aliases = {"lpp": "lp++", "lp-plus-plus": "lp++", "tip-adapter": "tip-adapter-f", "tipadapter-f": "tip-adapter-f",
               "clipadapter": "clip-adapter", "lp": "linear-probe", "linear": "linear-probe"}
    return aliases.get(key, key)


def learner_name(name: str) -> str:
    """The registry name of ``name`` (aliases and case resolved); ``ValueError`` naming the learners."""
    return get_learner(name).name


def check_learner_method(name: str, method) -> None:
    """Refuse, before anything runs, a method that learner ``name`` cannot train with: a loss on learned
    class text features (AS, e.g. CalibPrompt's) on a learner whose class text features are frozen
    (clip-adapter, tip-adapter-f) or absent (linear-probe). ``method``: a name, Method or Objective.

    Raises:
        ValueError: naming the combination and the learners and methods that work.
    """
    from calibprompt.training.losses import Method, Objective, get_method

    if isinstance(method, Objective):
        method = method.method
    method = method if isinstance(method, Method) else get_method(method)
    cls = get_learner(name)
    if method.needs_text_features and getattr(cls, "text_features", None) != "learned":
        works = [n for n in LEARNER_MODULES if getattr(get_learner(n), "text_features", None) == "learned"]
        which = "frozen (the zero-shot ones)" if cls.text_features == "frozen" else "absent"
        raise ValueError(
            f"The method {method.name!r} needs learned class text features for its angular separation (AS), "
            f"but the class text features of learner {cls.name!r} are {which}; use a method without AS "
            f"(e.g. coop, ls, fl, mdca) with {cls.name!r}, or one of the learners: {', '.join(works)}.")


def list_learners() -> list[str]:
    """The registry's names, prompt learners first."""
    return list(LEARNER_MODULES)


def get_learner(name: str):
    """The learner class called ``name`` (case-insensitive; ``_`` and ``-`` alike).

    Raises:
        ValueError: an unknown name, naming the allowed ones.
    """
    key = _key(name)
    if key not in LEARNER_MODULES:
        raise ValueError(f"Unknown learner {name!r}; choose one of: {', '.join(LEARNER_MODULES)}.")
    module = importlib.import_module(f"{__name__}.{LEARNER_MODULES[key]}")
    return module.LEARNERS[key]


def create_learner(name: str, backbone=None, classnames=None, **params: Any):
    """A new learner: ``cls(backbone, classnames, **params)`` for a prompt learner,
    ``cls.from_backbone(backbone, classnames, **params)`` for a feature learner (with a backbone), else
    ``cls(**params)`` (a feature learner from shapes: ``num_classes``, ``dim``, ``zero_shot_text``...)."""
    cls = get_learner(name)
    if getattr(cls, "kind", "prompt") == "prompt":
        if backbone is None or classnames is None:
            raise ValueError(f"Learner {cls.name!r} is a prompt learner: give the backbone and the class names.")
        return cls(backbone, classnames, **params)
    if backbone is not None:
        if classnames is None:
            raise ValueError(f"Learner {cls.name!r} needs the class names with the backbone.")
        return cls.from_backbone(backbone, classnames, **params)
    return cls(**params)


def learner_info(name: str) -> dict[str, Any]:
    """``{"name", "title", "kind", "reference", "description", "text_features"}`` of a learner."""
    cls = get_learner(name)
    return {"name": cls.name, "title": getattr(cls, "title", cls.name), "kind": getattr(cls, "kind", "prompt"),
            "reference": getattr(cls, "reference", ""), "description": getattr(cls, "description", ""),
            "text_features": getattr(cls, "text_features", None)}


def save_learner(path: str | os.PathLike, learner, *, backbone: str, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write any learner's checkpoint (safetensors + JSON recording the learner); returns the JSON path.
    Feature learners: :func:`.feature_checkpoint.save_feature_learner`; prompt learners: :func:`.coop.save_learner`."""
    if getattr(learner, "kind", "prompt") == "feature":
        from calibprompt.training.learners.feature_checkpoint import save_feature_learner

        return save_feature_learner(path, learner, backbone=backbone, metadata=metadata)
    from calibprompt.training.learners.coop import save_learner as save_prompt_learner

    return save_prompt_learner(path, learner, backbone=backbone, metadata=metadata)


def load_learner(path: str | os.PathLike, backbone, **kwargs: Any):
    """Rebuild any learner from its checkpoint; returns ``(learner, metadata)``. A feature learner's JSON
    says ``"kind": "feature"``; anything else (today's prompt checkpoints included) is a prompt learner,
    rebuilt on ``backbone`` (:func:`.coop.load_learner`)."""
    from calibprompt.prompting.checkpoint import checkpoint_paths

    _, meta_path = checkpoint_paths(path)
    try:
        kind = json.loads(meta_path.read_text(encoding="utf-8")).get("kind")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        kind = None  # the prompt loader says what is wrong, in its words
    if kind == "feature":
        from calibprompt.training.learners.feature_checkpoint import load_feature_learner

        name = getattr(backbone, "name", backbone)
        check = kwargs.get("check_backbone", True)
        return load_feature_learner(path, backbone=name if check else None)
    from calibprompt.training.learners.coop import load_learner as load_prompt_learner

    return load_prompt_learner(path, backbone, **kwargs)
