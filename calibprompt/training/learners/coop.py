"""CoOp as a registry learner: learned context vectors in front of the class names.

Reference: K. Zhou, J. Yang, C. C. Loy, Z. Liu, "Learning to Prompt for Vision-Language Models",
IJCV 2022 (arXiv:2109.01134); code: KaiyangZhou/CoOp, and HealthX-Lab/BiomedCoOp ``trainers/coop_*.py``.

This module wraps today's :class:`calibprompt.prompting.learner.PromptLearner` (unchanged) and holds
what the other prompt learners on the text side (:mod:`.cocoop`, :mod:`.kgcoop`, :mod:`.prograd`) share:

* :class:`LearnerOutput`: ``logits`` (N, K), ``text_features`` (K, D), optional extras;
* :class:`CoOpLearner`: ``forward(image_features (N, D)) -> LearnerOutput`` with
  ``logits = logit_scale * normalize(image) @ normalize(text).T``; ``regularizers(output)`` (the
  learner's own loss terms, none for CoOp); ``backward(loss, output)`` (plain autograd for CoOp);
* :func:`check_method`: refuses loss combinations that do not exist for a learner, in plain words;
* :func:`train_step`: one optimisation step of any of these learners under a method of the loss registry;
* :func:`save_learner` / :func:`load_learner`: safetensors + JSON checkpoints that record the learner.

Checkpoints of ``coop``, ``kgcoop`` and ``prograd`` are plain prompt checkpoints
(``calibprompt-prompt/1``, tensor ``ctx``, read by :func:`calibprompt.prompting.checkpoint.load_prompt` and
so by the engine) with ``learner`` and ``learner_params`` added: at inference the three are CoOp
contexts. CoCoOp's carry a meta-net and are written as ``calibprompt-learner/1`` (see :mod:`.cocoop`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from calibprompt.prompting.checkpoint import LEARNER_FORMAT, checkpoint_paths, load_prompt, read_prompt_metadata, save_context
from calibprompt.prompting.learner import PromptLearner
from calibprompt.training.losses import Method, Objective, get_method

__all__ = ["LearnerOutput", "CoOpLearner", "check_method", "train_step", "save_learner", "load_learner",
           "zero_shot_features", "LEARNER_FORMAT", "LEARNERS", "DEFAULT_ZS_TEMPLATES"]

#: The format of checkpoints that a plain prompt checkpoint cannot hold (CoCoOp's meta-net).
#: Zero-shot templates when none are given (KgCoOp's and ProGrad's reference prompt, "a photo of a {}.").
DEFAULT_ZS_TEMPLATES = ("a photo of a {}.",)
_TEXT_LOSSES = ("AS",)


@dataclass
class LearnerOutput:
    """What a learner's forward gives for a batch of N image features over K classes.

    ``logits`` (N, K), already scaled; ``text_features`` (K, D) L2-normalised (None for learners that have
    no class text features); ``extras`` learner-specific tensors (e.g. CoCoOp's per-image class features
    (N, K, D), ProGrad's zero-shot logits (N, K))."""

    logits: torch.Tensor
    text_features: torch.Tensor | None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


def zero_shot_features(backbone, classnames: Sequence[str],
                       templates: Sequence[str] = DEFAULT_ZS_TEMPLATES) -> torch.Tensor:
    """Zero-shot class text features W^zs (K, D): per class, the normalised mean over ``templates`` of
    ``normalize(encode_text(template.format(name)))`` (as :meth:`Engine.add_zero_shot`)."""
    templates = list(templates)
    if not templates:
        raise ValueError("At least one zero-shot template is needed, e.g. 'a photo of a {}.'.")
    names = [" ".join(str(c).replace("_", " ").split()) for c in classnames]
    texts = [t.format(c) for c in names for t in templates]
    feats = backbone.encode_text(texts, normalize=True).view(len(names), len(templates), -1)
    return F.normalize(feats.mean(dim=1), dim=-1)


class CoOpLearner(nn.Module):
    """CoOp: ``t_k = normalize(g([SOS] ctx_1..ctx_M name_k . [EOS]))``, ``logits = s * normalize(x) @ T^T``.

    Args:
        backbone: the frozen backbone (its text tower, logit scale and device are used).
        classnames: the K class names, in label order.
        n_ctx, ctx_init, class_specific, class_token_position, double_embedding: as
            :class:`~calibprompt.prompting.learner.PromptLearner`.
        generator: seeds the random context initialisation.
        zero_shot_text: (K, D) zero-shot class features, for the zero-shot losses (ZS-Norm / penalty) and
            the learners that pull towards them; None: computed from ``zs_templates`` when needed.
        zs_templates: templates for the zero-shot features (default ``"a photo of a {}."``).

    Only the context (``prompt.ctx``) learns; the backbone is not a submodule.
    """

    name = "coop"
    title = "CoOp"
    reference = "Zhou et al., Learning to Prompt for Vision-Language Models, IJCV 2022 (arXiv:2109.01134)"
    description = "Learned context vectors shared by all class prompts (Zhou et al., IJCV 2022)."
    kind = "prompt"  # runs the text encoder every step (the adapters: "feature")
    has_text_features = True
    text_features = "learned"  # as FeatureLearner.text_features: every loss applies, AS included
    needs_zero_shot_text = False  # computed from zs_templates when a loss or the learner needs it

    def __init__(self, backbone, classnames: Sequence[str], *, n_ctx: int = 16, ctx_init: str | None = None,
                 class_specific: bool = False, class_token_position: str = "end",
                 generator: torch.Generator | None = None, double_embedding: bool = False,
                 zero_shot_text: torch.Tensor | None = None, zs_templates: Sequence[str] | None = None):
        super().__init__()
        self.prompt = PromptLearner(backbone, classnames, n_ctx=n_ctx, ctx_init=ctx_init,
                                    class_specific=class_specific, class_token_position=class_token_position,
                                    generator=generator, double_embedding=double_embedding)
        object.__setattr__(self, "backbone", backbone)  # frozen: not a submodule, not in the state_dict
        self.logit_scale = float(backbone.logit_scale)
        self.zs_templates = tuple(zs_templates or DEFAULT_ZS_TEMPLATES)
        self._zero_shot = None
        if zero_shot_text is not None:
            self._set_zero_shot(zero_shot_text)

    # -- shared plumbing ------------------------------------------------------------------
    @property
    def classnames(self) -> list[str]:
        return list(self.prompt.classnames)

    @property
    def num_classes(self) -> int:
        return self.prompt.num_classes

    def _set_zero_shot(self, text: torch.Tensor) -> None:
        if text.dim() != 2 or text.shape[0] != self.num_classes:
            raise ValueError(f"zero_shot_text must have shape (K={self.num_classes}, D), got {tuple(text.shape)}.")
        self._zero_shot = F.normalize(text.detach().to(self.prompt.ctx.device, torch.float32), dim=-1)

    @property
    def zero_shot_text(self) -> torch.Tensor:
        """W^zs (K, D), L2-normalised: the given zero-shot features, else those of ``zs_templates``."""
        if self._zero_shot is None:
            self._set_zero_shot(zero_shot_features(self.backbone, self.classnames, self.zs_templates))
        return self._zero_shot

    def zero_shot_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``s * normalize(x) @ W^zs.T`` (N, K), no gradient."""
        with torch.no_grad():
            image = F.normalize(image_features.float(), dim=-1)
            return self.logit_scale * image @ self.zero_shot_text.to(image.device).T

    # -- the learner ----------------------------------------------------------------------
    def encode_text(self, normalize: bool = True) -> torch.Tensor:
        """Class text features T (K, D) of the learned prompts."""
        return self.prompt.encode_text(normalize=normalize)

    def forward(self, image_features: torch.Tensor) -> LearnerOutput:
        """``logits = s * normalize(x) @ T^T`` (N, K) for image features x (N, D); ``text_features`` T (K, D)."""
        text = self.encode_text(normalize=True).float()
        image = F.normalize(image_features.to(text.device, torch.float32), dim=-1)
        return LearnerOutput(self.logit_scale * image @ text.T, text)

    def regularizers(self, output: LearnerOutput) -> dict[str, torch.Tensor]:
        """The learner's own weighted loss terms, added to the method's loss (none for CoOp)."""
        return {}

    def backward(self, loss: torch.Tensor, output: LearnerOutput) -> None:
        """Fill the parameters' ``.grad`` from ``loss`` (plain autograd; ProGrad projects)."""
        loss.backward()

    def learner_params(self) -> dict[str, Any]:
        """The learner's own hyperparameters (recorded in checkpoints)."""
        return {"zs_templates": list(self.zs_templates)}

    def hyperparameters(self) -> dict[str, Any]:
        """Alias of :meth:`learner_params` (the adapters' name for it)."""
        return self.learner_params()

    def trainable_names(self) -> list[str]:
        """Names of the parameters that learn (``prompt.ctx``, and CoCoOp's ``meta_net.*``)."""
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def class_text_features(self) -> torch.Tensor:
        """Class text features (K, D) without an image (the adapters' accessor): :meth:`encode_text`."""
        return self.encode_text(normalize=True).float()

    def config(self) -> dict[str, Any]:
        """The prompt layout (:meth:`PromptLearner.config`) with the learner's name and parameters."""
        return {**self.prompt.config(), "learner": self.name, "learner_params": self.learner_params()}

    def load_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Copy checkpoint tensors (names as :meth:`named_parameters`, ``ctx`` for the context) in place."""
        own = {("ctx" if k == "prompt.ctx" else k): p for k, p in self.named_parameters()}
        if set(tensors) != set(own):
            raise ValueError(f"The checkpoint holds {sorted(tensors)}, but learner {self.name!r} needs {sorted(own)}.")
        for key, param in own.items():
            if tuple(tensors[key].shape) != tuple(param.shape):
                raise ValueError(f"Tensor {key!r} has shape {tuple(tensors[key].shape)}, but this backbone's "
                                 f"{self.name} learner needs {tuple(param.shape)}; it was learned on another "
                                 "architecture.")
            with torch.no_grad():
                param.copy_(tensors[key].to(param.device, param.dtype))


def check_method(learner, method: str | Method | Objective) -> Method:
    """The method if ``learner`` can train with it; ``ValueError`` naming the combination otherwise.

    Losses on class text features (AS, in CalibPrompt) need a learner with ``has_text_features``;
    every learner here has them, the adapters on image features alone may not."""
    if isinstance(method, Objective):
        method = method.method
    method = method if isinstance(method, Method) else get_method(method)
    text_terms = [t.loss for t in method.terms if t.loss in _TEXT_LOSSES]
    if text_terms and not getattr(learner, "has_text_features", False):
        raise ValueError(
            f"Method {method.name!r} has the loss {', '.join(text_terms)} on class text features, but learner "
            f"{learner.name!r} has none; with {learner.name!r} use a method whose losses act on logits only "
            "(e.g. coop, ls, fl, mdca, dca, mmce, mbls, logitnorm, zs_norm, zs_penalty).")
    return method


def train_step(learner, objective: Objective, optimizer: torch.optim.Optimizer, image_features: torch.Tensor,
               labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], LearnerOutput]:
    """One step: ``out = learner(x)``; ``loss = objective(out.logits, y, out.text_features, zs_logits)
    + sum(learner.regularizers(out))``; ``learner.backward(loss, out)``; ``optimizer.step()``.

    Shapes: ``image_features`` (B, D), ``labels`` (B,). Returns ``(loss, parts, out)``; ``parts`` holds
    the method's terms and the learner's regularisers (weighted), by name."""
    check_method(learner, objective)
    out = learner(image_features)
    zs_logits = learner.zero_shot_logits(image_features) if objective.method.needs_zero_shot else None
    loss, parts = objective(out.logits, labels.to(out.logits.device), text_features=out.text_features,
                            zero_shot_logits=zs_logits)
    for key, value in learner.regularizers(out).items():
        parts[key] = value
        loss = loss + value
    optimizer.zero_grad(set_to_none=True)
    learner.backward(loss, out)
    optimizer.step()
    return loss.detach(), {k: v.detach() for k, v in parts.items()}, out


def save_learner(path: str | os.PathLike, learner, *, backbone: str,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a prompt learner's tensors (safetensors) and description (JSON, with ``learner`` and
    ``learner_params``); returns the JSON path. CoOp, KgCoOp and ProGrad write plain prompt checkpoints."""
    writer = getattr(learner, "save", None)
    if writer is not None:
        return writer(path, backbone=backbone, metadata=metadata)
    return save_context(path, learner.prompt.ctx, learner.config(), backbone=backbone, metadata=metadata)


def load_learner(path: str | os.PathLike, backbone, *, check_backbone: bool = True,
                 zero_shot_text: torch.Tensor | None = None):
    """Rebuild the learner of a checkpoint written by :func:`save_learner`; returns ``(learner, metadata)``.
    A prompt checkpoint without a ``learner`` entry (today's) loads as ``coop``."""
    from calibprompt.training.learners.cocoop import CoCoOpLearner
    from calibprompt.training.learners.kgcoop import KgCoOpLearner
    from calibprompt.training.learners.prograd import ProGradLearner

    classes = {cls.name: cls for cls in (CoOpLearner, CoCoOpLearner, KgCoOpLearner, ProGradLearner)}
    _, meta_path = checkpoint_paths(path)
    meta = _read_any_metadata(meta_path)
    name = meta.get("learner", "coop")
    if name not in classes:
        raise ValueError(f"{meta_path.name} holds a {name!r} learner; the prompt learners are: {', '.join(classes)}.")
    if classes[name] is CoCoOpLearner:
        return CoCoOpLearner.load(path, backbone, check_backbone=check_backbone, zero_shot_text=zero_shot_text)
    prompt, meta = load_prompt(path, backbone, check_backbone=check_backbone)
    params = dict(meta.get("learner_params") or {})
    learner = classes[name](backbone, meta["classnames"], **_prompt_kwargs(meta), **params, zero_shot_text=zero_shot_text)
    learner.load_tensors({"ctx": prompt.ctx.detach()})
    return learner, meta


def _prompt_kwargs(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"n_ctx": int(meta["n_ctx"]), "ctx_init": meta.get("ctx_init"),
            "class_specific": bool(meta.get("class_specific", False)),
            "class_token_position": meta.get("class_token_position", "end"),
            "double_embedding": bool(meta.get("double_embedding", False))}


def _read_any_metadata(meta_path: Path) -> dict[str, Any]:
    """The JSON of a prompt (``calibprompt-prompt/1``) or learner (``calibprompt-learner/1``) checkpoint."""
    import json

    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return read_prompt_metadata(meta_path)  # its plain ValueError
    if isinstance(meta, dict) and meta.get("format") == LEARNER_FORMAT:
        return meta
    return read_prompt_metadata(meta_path)


LEARNERS = {"coop": CoOpLearner}
