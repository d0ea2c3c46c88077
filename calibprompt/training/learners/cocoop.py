"""CoCoOp: conditional prompt learning, a context that depends on the image.

Reference: K. Zhou, J. Yang, C. C. Loy, Z. Liu, "Conditional Prompt Learning for Vision-Language
Models", CVPR 2022 (arXiv:2203.05557); code: KaiyangZhou/CoOp (``trainers/cocoop.py``), and
HealthX-Lab/BiomedCoOp ``trainers/cocoop_*.py``.

A meta-net ``h = Linear(D, D/16) - ReLU - Linear(D/16, W)`` maps the normalised image feature x_i (D,)
to a bias pi_i = h(x_i) (W,) added to every context vector, ``ctx_m(x_i) = ctx_m + pi_i``. The text
encoder g then runs once per image over the K prompts ``[SOS] ctx_1(x_i) .. ctx_M(x_i) name_k . [EOS]``:

    t_ik = normalize(g(prompt_k(x_i)))          (N, K, D)
    logits_ik = s * normalize(x_i) . t_ik       (N, K)

The loss registry's class text features (K, D) (for the angular separation, AS) are the batch's
instance-conditioned class features averaged over the images and renormalised,
``T_k = normalize(mean_i t_ik)``; the per-image features are in ``extras["instance_text_features"]``.
Without an image (``encode_text()``), the class features are those of the bare context (pi = 0).
The context is shared by the classes and the class name comes last, as in the paper.

Checkpoints hold ``ctx`` and the meta-net's weights and are written as ``calibprompt-learner/1``
(:data:`~.coop.LEARNER_FORMAT`), which today's prompt loader refuses instead of dropping the meta-net.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from calibprompt.prompting.checkpoint import checkpoint_paths, write_checkpoint
from calibprompt.training.learners.coop import LEARNER_FORMAT, CoOpLearner, LearnerOutput, _prompt_kwargs

__all__ = ["CoCoOpLearner", "MetaNet", "LEARNERS"]


class MetaNet(nn.Module):
    """``h(x) = W2 relu(W1 x + b1) + b2``: (N, D) -> (N, W), hidden ``max(D // 16, 1)``.

    Initialised as PyTorch's ``nn.Linear`` (uniform in +-1/sqrt(fan_in)) but from ``generator``, so a
    seeded run is repeatable."""

    def __init__(self, in_dim: int, out_dim: int, generator: torch.Generator | None = None):
        super().__init__()
        hidden = max(int(in_dim) // 16, 1)
        self.linear1 = nn.Linear(in_dim, hidden)
        self.linear2 = nn.Linear(hidden, out_dim)
        with torch.no_grad():
            for layer in (self.linear1, self.linear2):
                bound = 1.0 / math.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.relu(self.linear1(x)))


class CoCoOpLearner(CoOpLearner):
    """CoCoOp (see the module docstring). Learns ``prompt.ctx`` (M, W) and ``meta_net`` (D -> W).

    Args: as :class:`~.coop.CoOpLearner`; ``class_specific`` must be False and ``class_token_position``
    ``"end"`` (the paper's layout).
    """

    name = "cocoop"
    title = "CoCoOp"
    reference = "Zhou et al., Conditional Prompt Learning for Vision-Language Models, CVPR 2022 (arXiv:2203.05557)"
    description = "Context shifted per image by a meta-net on the image feature (Zhou et al., CVPR 2022)."

    def __init__(self, backbone, classnames: Sequence[str], *, generator: torch.Generator | None = None,
                 **kwargs: Any):
        if kwargs.get("class_specific"):
            raise ValueError("CoCoOp learns one context shared by the classes; class_specific must be False.")
        position = kwargs.get("class_token_position", "end")
        if position != "end":
            raise ValueError(f"CoCoOp puts the class name last: class_token_position must be 'end', got {position!r}.")
        super().__init__(backbone, classnames, generator=generator, **kwargs)
        ctx = self.prompt.ctx
        self.meta_net = MetaNet(int(backbone.embed_dim), int(ctx.shape[-1]), generator).to(ctx.device, ctx.dtype)

    def bias(self, image_features: torch.Tensor) -> torch.Tensor:
        """pi = h(normalize(x)): (N, D) -> (N, W)."""
        image = F.normalize(image_features.to(self.prompt.ctx.device, torch.float32), dim=-1)
        return self.meta_net(image.to(self.prompt.ctx.dtype))

    def instance_text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """t (N, K, D), L2-normalised: the K class prompts with the context shifted by each image's bias,
        encoded in one batch of N * K prompts."""
        p = self.prompt
        shifted = p.ctx.unsqueeze(0) + self.bias(image_features).unsqueeze(1)  # (N, M, W)
        n, k = shifted.shape[0], p.num_classes
        ctx = shifted.unsqueeze(1).expand(n, k, -1, -1)  # (N, K, M, W)
        prefix = p.token_prefix.unsqueeze(0).expand(n, -1, -1, -1)  # (N, K, 1, W)
        suffix = p.token_suffix.unsqueeze(0).expand(n, -1, -1, -1)  # (N, K, L-1-M, W)
        prompts = torch.cat([prefix, ctx, suffix], dim=2).flatten(0, 1)  # (N K, L, W)
        ids = p.token_ids.repeat(n, 1)
        feats = p.tower.encode_embeddings(prompts, ids).float()
        return F.normalize(feats, dim=-1).view(n, k, -1)

    def forward(self, image_features: torch.Tensor) -> LearnerOutput:
        """``logits_ik = s * normalize(x_i) . t_ik`` (N, K); ``text_features = normalize(mean_i t_ik)`` (K, D);
        ``extras["instance_text_features"]`` t (N, K, D), ``extras["bias"]`` pi (N, W)."""
        inst = self.instance_text_features(image_features)
        image = F.normalize(image_features.to(inst.device, torch.float32), dim=-1)
        logits = self.logit_scale * torch.einsum("nd,nkd->nk", image, inst)
        text = F.normalize(inst.mean(dim=0), dim=-1)
        return LearnerOutput(logits, text, {"instance_text_features": inst})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The learned tensors by checkpoint name: ``ctx`` and ``meta_net.*``."""
        return {("ctx" if k == "prompt.ctx" else k): v.detach().to("cpu", torch.float32).contiguous()
                for k, v in self.named_parameters()}

    def save(self, path: str | os.PathLike, *, backbone: str, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write ``<stem>.safetensors`` (ctx, meta-net) then ``<stem>.json``; returns the JSON path."""
        tensors = self.tensors()
        meta = {"format": LEARNER_FORMAT, "backbone": backbone, **self.config(),
                "shapes": {k: list(v.shape) for k, v in tensors.items()}}
        return write_checkpoint(path, tensors, {**meta, **dict(metadata or {})})

    @classmethod
    def load(cls, path: str | os.PathLike, backbone, *, check_backbone: bool = True,
             zero_shot_text: torch.Tensor | None = None) -> tuple["CoCoOpLearner", dict[str, Any]]:
        """Rebuild a CoCoOp learner from :meth:`save`'s files; ``ValueError`` for missing or damaged files,
        another learner, or another backbone."""
        weights, meta_path = checkpoint_paths(path)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tensors = load_file(str(weights))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError) as exc:
            raise ValueError(f"Cannot read the CoCoOp checkpoint {meta_path.name}: {exc}") from exc
        if meta.get("format") != LEARNER_FORMAT or meta.get("learner") != cls.name:
            raise ValueError(f"{meta_path.name} is not a CoCoOp checkpoint (format {LEARNER_FORMAT!r}, "
                             "learner 'cocoop').")
        if check_backbone and meta.get("backbone") != backbone.name:
            raise ValueError(f"This CoCoOp prompt was learned on the backbone {meta.get('backbone')!r}, but the loaded "
                             f"backbone is {backbone.name!r}; load {meta.get('backbone')!r} to use it.")
        params = dict(meta.get("learner_params") or {})
        learner = cls(backbone, meta["classnames"], **_prompt_kwargs(meta), **params, zero_shot_text=zero_shot_text)
        learner.load_tensors(tensors)
        return learner, meta


LEARNERS = {"cocoop": CoCoOpLearner}
