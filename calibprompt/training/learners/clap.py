"""CLAP: a class-adaptive linear probe constrained towards the zero-shot prototypes.

Silva-Rodriguez, Hajimiri, Ben Ayed, Dolz, "A Closer Look at the Few-Shot Adaptation of Large
Vision-Language Models", CVPR 2024 (jusiro/CLAP). A zero-shot-initialised linear probe (ZS-LP) with
class prototypes W (K, D), W initialised to the zero-shot class text features T_zs (K, D):

    logits  = logit_scale * normalize(f) @ normalize(W)^T                         (N, K)
    penalty = mean_k lambda_k ||w_k - t_k||^2                                      (the constraint)
    lambda_k = mean_{i: y_i = k} softmax(logit_scale * f_i T_zs^T)_k               (fixed at the start)

The multipliers lambda_k (K,) are the zero-shot model's mean probability of the true class on the
support samples of class k: a class the zero-shot prototypes already get right is held close to them,
one they get wrong may move. Nothing is chosen on a validation set. The authors' recipe: SGD lr 0.1,
momentum 0.9, 300 epochs, batch 256, cosine schedule (their augmentation is the feature cache's views).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from calibprompt.training.learners.base import FeatureLearner

__all__ = ["Clap", "LEARNERS"]


class Clap(FeatureLearner):
    """CLAP on image features (N, D) -> logits (N, K); its prototypes are learned class text features."""

    name = "clap"
    title = "CLAP"
    reference = "Silva-Rodriguez et al., A Closer Look at the Few-Shot Adaptation of Large VLMs (CLAP), CVPR 2024"
    description = "Zero-shot-initialised linear probe held near the zero-shot prototypes per class (CVPR 2024)."
    text_features = "learned"
    needs_zero_shot_text = True
    defaults = {"optimizer": "sgd", "lr": 0.1, "epochs": 300, "batch_size": 256, "momentum": 0.9, "weight_decay": 0.0}

    def __init__(self, num_classes: int, dim: int, *, zero_shot_text: torch.Tensor | None = None,
                 logit_scale: float = 100.0, classnames: Sequence[str] | None = None):
        super().__init__(num_classes, dim, zero_shot_text=zero_shot_text, logit_scale=logit_scale,
                         classnames=classnames)
        self.prototypes = nn.Parameter(self.zero_shot_text.clone())
        self.register_buffer("multipliers", torch.ones(num_classes))

    def initialise(self, features: torch.Tensor, labels: torch.Tensor) -> "Clap":
        """``lambda_k = mean_{y_i = k} p_zs(k | f_i)``; W = T_zs. A class without support samples gets 1."""
        with torch.no_grad():
            probs = torch.softmax(self.zero_shot_logits(features.float()), dim=-1)  # (N, K)
            onehot = F.one_hot(labels.long(), self.num_classes).float()  # (N, K)
            counts = onehot.sum(0)
            true_prob = (probs * onehot).sum(0) / counts.clamp_min(1.0)
            self.multipliers.copy_(torch.where(counts > 0, true_prob, torch.ones_like(true_prob)))
            self.prototypes.copy_(self.zero_shot_text)
        return self

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """``logit_scale * normalize(f) @ normalize(W)^T``: (N, D) -> (N, K)."""
        return self.logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(self.prototypes, dim=-1).T

    def class_text_features(self) -> torch.Tensor:
        """The learned prototypes, L2-normalised (K, D)."""
        return F.normalize(self.prototypes, dim=-1)

    def penalty(self) -> torch.Tensor:
        """``mean_k lambda_k ||w_k - t_k||^2``."""
        return (self.multipliers * (self.prototypes - self.zero_shot_text).pow(2).sum(-1)).mean()


LEARNERS = {Clap.name: Clap}
