"""CLIP-Adapter: a residual bottleneck MLP on the image feature.

Gao, Geng, Zhang, Ma, Fang, Zhang, Li, Qiao, "CLIP-Adapter: Better Vision-Language Models with Feature
Adapters", IJCV 2023 (arXiv:2110.04544, 2021). As in the authors' code and BiomedCoOp's baseline:

    A(f) = ReLU(W_2 ReLU(W_1 f))              W_1: (D/4, D), W_2: (D, D/4), no biases
    f'   = ratio * A(f) + (1 - ratio) * f     ratio 0.2
    logits = logit_scale * normalize(f') @ T_zs^T        (N, K)

with T_zs (K, D) the frozen zero-shot class text features. Only W_1 and W_2 learn.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from calibprompt.training.learners.base import FeatureLearner

__all__ = ["ClipAdapter", "LEARNERS"]


class ClipAdapter(FeatureLearner):
    """CLIP-Adapter on image features (N, D) -> logits (N, K); ``ratio`` in [0, 1], ``reduction`` >= 1."""

    name = "clip-adapter"
    title = "CLIP-Adapter"
    reference = "Gao et al., CLIP-Adapter, IJCV 2023 (arXiv 2021)"
    description = "A residual MLP on the image feature (ratio 0.2), zero-shot text classifier (Gao et al. 2021)."
    text_features = "frozen"
    needs_zero_shot_text = True
    defaults = {"optimizer": "sgd", "lr": 1e-2, "epochs": 50, "batch_size": 32, "momentum": 0.9, "weight_decay": 0.0}

    def __init__(self, num_classes: int, dim: int, *, zero_shot_text: torch.Tensor | None = None,
                 logit_scale: float = 100.0, classnames: Sequence[str] | None = None, ratio: float = 0.2,
                 reduction: int = 4, generator: torch.Generator | None = None):
        super().__init__(num_classes, dim, zero_shot_text=zero_shot_text, logit_scale=logit_scale,
                         classnames=classnames)
        if not 0.0 <= float(ratio) <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}.")
        if int(reduction) < 1 or dim // int(reduction) < 1:
            raise ValueError(f"reduction must be between 1 and {dim}, got {reduction}.")
        self.ratio, self.reduction = float(ratio), int(reduction)
        hidden = dim // self.reduction
        self.adapter = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                     nn.Linear(hidden, dim, bias=False), nn.ReLU())
        if generator is not None:  # a seeded initialisation (nn.Linear's default, Kaiming-uniform)
            for layer in (self.adapter[0], self.adapter[2]):
                bound = 1.0 / layer.in_features ** 0.5
                with torch.no_grad():
                    layer.weight.uniform_(-bound, bound, generator=generator)

    def hyperparameters(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "reduction": self.reduction}

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """``logit_scale * normalize(ratio * A(f) + (1 - ratio) * f) @ T_zs^T``: (N, D) -> (N, K)."""
        mixed = self.ratio * self.adapter(image_features) + (1.0 - self.ratio) * image_features
        return self.logit_scale * F.normalize(mixed, dim=-1) @ self.zero_shot_text.T


LEARNERS = {ClipAdapter.name: ClipAdapter}
