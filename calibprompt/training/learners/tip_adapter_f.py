"""Tip-Adapter-F: a key-value cache of the few-shot features, its keys fine-tuned.

Zhang, Zhang, Fang, Gao, Li, Dai, Qiao, Li, "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022 (arXiv:2111.03930). With the few-shot image features as cache keys
F_c (M, D) (M = N K-shot images, L2-normalised), their one-hot labels as values L (M, K), and the
frozen zero-shot class text features T_zs (K, D):

    A      = exp(-beta * (1 - f F_c^T))                   (N, M) affinities
    logits = alpha * A L + logit_scale * f T_zs^T        (N, K)

Tip-Adapter-F ("fine-tuned") makes the keys F_c learnable (initialised from the features, then not
re-normalised, as in the authors' code); the values and T_zs stay fixed. The authors' defaults:
alpha 1, beta 1 (searched on a validation set there; never here), AdamW lr 1e-3 (eps 1e-4), 20 epochs,
cosine schedule; ``logit_scale`` 100 as CLIP's.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from calibprompt.training.learners.base import FeatureLearner

__all__ = ["TipAdapterF", "LEARNERS"]


class TipAdapterF(FeatureLearner):
    """Tip-Adapter-F over a cache of ``cache_size`` few-shot features; ``alpha`` >= 0, ``beta`` > 0."""

    name = "tip-adapter-f"
    title = "Tip-Adapter-F"
    reference = "Zhang et al., Tip-Adapter, ECCV 2022"
    description = ("A fine-tuned cache of the few-shot features added to the zero-shot logits "
                   "(Zhang et al., ECCV 2022).")
    text_features = "frozen"
    needs_zero_shot_text = True
    defaults = {"optimizer": "adamw", "lr": 1e-3, "epochs": 20, "batch_size": 32, "momentum": 0.9, "weight_decay": 0.0}

    def __init__(self, num_classes: int, dim: int, *, zero_shot_text: torch.Tensor | None = None,
                 logit_scale: float = 100.0, classnames: Sequence[str] | None = None, cache_size: int,
                 alpha: float = 1.0, beta: float = 1.0):
        super().__init__(num_classes, dim, zero_shot_text=zero_shot_text, logit_scale=logit_scale,
                         classnames=classnames)
        if int(cache_size) < 1:
            raise ValueError(f"cache_size must be at least 1 (the number of few-shot images), got {cache_size}.")
        if float(alpha) < 0 or float(beta) <= 0:
            raise ValueError(f"alpha must be >= 0 and beta > 0, got alpha={alpha}, beta={beta}.")
        self.alpha, self.beta, self.cache_size = float(alpha), float(beta), int(cache_size)
        self.cache_keys = nn.Parameter(torch.zeros(self.cache_size, dim))
        self.register_buffer("cache_values", torch.zeros(self.cache_size, num_classes))

    @classmethod
    def data_params(cls, n_images: int) -> dict[str, Any]:
        """The cache holds every few-shot image: ``{"cache_size": n_images}``."""
        return {"cache_size": int(n_images)}

    def hyperparameters(self) -> dict[str, Any]:
        return {"cache_size": self.cache_size, "alpha": self.alpha, "beta": self.beta}

    def initialise(self, features: torch.Tensor, labels: torch.Tensor) -> "TipAdapterF":
        """Keys = normalize(features) (M, D), values = one_hot(labels) (M, K)."""
        if features.shape[0] != self.cache_size:
            raise ValueError(f"The cache holds {self.cache_size} features, got {features.shape[0]} to initialise it.")
        with torch.no_grad():
            self.cache_keys.copy_(F.normalize(features.float(), dim=-1))
            self.cache_values.copy_(F.one_hot(labels.long(), self.num_classes).float())
        return self

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """``alpha * exp(-beta (1 - f F_c^T)) L + logit_scale * f T_zs^T``: (N, D) -> (N, K)."""
        f = F.normalize(image_features, dim=-1)
        affinity = torch.exp(-self.beta * (1.0 - f @ self.cache_keys.T))
        return self.alpha * affinity @ self.cache_values + self.logit_scale * f @ self.zero_shot_text.T


LEARNERS = {TipAdapterF.name: TipAdapterF}
