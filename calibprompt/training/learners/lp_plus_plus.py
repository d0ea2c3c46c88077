"""LP++: a linear probe whose class weights blend visual prototypes and the zero-shot text features.

Huang, Shakeri, Dolz, Boudiaf, Bahig, Ben Ayed, "LP++: A Surprisingly Strong Linear Probe for Few-Shot
CLIP", CVPR 2024 (FereshteShakeri/FewShot-CLIP-Strong-Baseline; BiomedCoOp's LP++ baseline). With
visual prototypes V (K, D) and bias b (K,), class-wise multipliers alpha (K,) and the frozen zero-shot
class text features T_zs (K, D):

    logits = f V^T + b + alpha * (f T_zs^T)        (alpha broadcast over the rows)       (N, K)
           = f (V + diag(alpha) T_zs)^T + b

Initialisation (the authors'): V = the class centroids of the few-shot features, b = 0, every
alpha_k = mean_c 250 * mean_{i: y_i = c} f_i . t_c. Full-batch gradient descent with the step sizes the
paper derives from Lipschitz bounds: ``lr_V = 4 N / lambda_max(F^T F)`` for V and b (momentum 0.9) and
``lr_alpha = N / (4 max_k sum_i (f_i . t_k)^2)`` for alpha, 300 epochs. (The authors step alpha every
10 epochs; here it steps with V, every epoch, at its own learning rate.)

Its class text features are the blended weights ``normalize(V + diag(alpha) T_zs)`` (K, D).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from calibprompt.training.learners.base import FeatureLearner

__all__ = ["LPPlusPlus", "LEARNERS"]

ALPHA_SCALE = 250.0  # the authors' factor in the initial multiplier


class LPPlusPlus(FeatureLearner):
    """LP++ on image features (N, D) -> logits (N, K)."""

    name = "lp++"
    title = "LP++"
    reference = "Huang et al., LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP, CVPR 2024"
    description = "Linear probe blending visual centroids and text weights per class (Huang et al., CVPR 2024)."
    text_features = "learned"
    needs_zero_shot_text = True
    defaults = {"optimizer": "sgd", "lr": 1.0, "epochs": 300, "batch_size": 1_000_000, "momentum": 0.9,
                "weight_decay": 0.0, "schedule": "constant"}

    def __init__(self, num_classes: int, dim: int, *, zero_shot_text: torch.Tensor | None = None,
                 logit_scale: float = 100.0, classnames: Sequence[str] | None = None):
        super().__init__(num_classes, dim, zero_shot_text=zero_shot_text, logit_scale=logit_scale,
                         classnames=classnames)
        self.visual = nn.Parameter(torch.zeros(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.alpha = nn.Parameter(torch.ones(num_classes))

    def hyperparameters(self) -> dict[str, Any]:
        return {}

    def initialise(self, features: torch.Tensor, labels: torch.Tensor) -> "LPPlusPlus":
        """V = class centroids (a class without samples: its text feature), b = 0,
        alpha_k = mean_c 250 * mean_{y_i = c} f_i . t_c."""
        with torch.no_grad():
            onehot = F.one_hot(labels.long(), self.num_classes).float()  # (N, K)
            counts = onehot.sum(0).clamp_min(1.0)
            centroids = onehot.T @ features.float() / counts[:, None]  # (K, D)
            seen = onehot.sum(0) > 0
            self.visual.copy_(torch.where(seen[:, None], centroids, self.zero_shot_text))
            self.bias.zero_()
            text_centroids = (onehot * (features.float() @ self.zero_shot_text.T)).sum(0) / counts  # (K,)
            self.alpha.fill_(float(ALPHA_SCALE * text_centroids[seen].mean()))
        return self

    def optim_groups(self, lr: float, features: torch.Tensor) -> list[dict[str, Any]]:
        """``lr * 4N / lambda_max(F^T F)`` for V and b, ``lr * N / (4 max_k ||F t_k||^2)`` for alpha."""
        f = features.double()
        n = f.shape[0]
        lam = torch.linalg.eigvalsh(f.T @ f).max().clamp_min(1e-12)
        text_energy = (f @ self.zero_shot_text.double().T).pow(2).sum(0).max().clamp_min(1e-12)
        return [{"params": [self.visual, self.bias], "lr": lr * float(4 * n / lam)},
                {"params": [self.alpha], "lr": lr * float(n / (4 * text_energy)), "momentum": 0.0}]

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """``f V^T + b + alpha * (f T_zs^T)``: (N, D) -> (N, K)."""
        return image_features @ self.visual.T + self.bias + self.alpha * (image_features @ self.zero_shot_text.T)

    def class_text_features(self) -> torch.Tensor:
        """``normalize(V + diag(alpha) T_zs)`` (K, D)."""
        return F.normalize(self.visual + self.alpha[:, None] * self.zero_shot_text, dim=-1)


LEARNERS = {LPPlusPlus.name: LPPlusPlus}
