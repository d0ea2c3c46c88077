"""Linear probe: multinomial logistic regression on the image features.

The baseline of Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021 (CLIP's linear-probe evaluation, scikit-learn's L-BFGS logistic regression), as the few-shot
papers use it (CoOp, BiomedCoOp). With W (K, D) and b (K,):

    logits = f W^T + b                                                 (N, K)
    loss   = mean_i CE(logits_i, y_i) + ||W||_F^2 / (2 C N)            (b not penalised)

which is scikit-learn's ``LogisticRegression(C=C, solver="lbfgs")`` objective
``C sum_i CE_i + ||W||^2 / 2`` divided by ``C N`` (same minimiser). The default recipe is full-batch
L-BFGS with a strong-Wolfe line search; the features are taken as given (L2-normalised by the cache).
For K = 2 scikit-learn fits one weight vector (binary logistic), whose penalty on ``w = w_1 - w_0`` is
twice ours: our probe with C equals scikit-learn's binary fit with 2 C.

No text features: the angular separation (AS) does not apply; the zero-shot losses apply when
``zero_shot_text`` is given (only to compute the zero-shot logits, never for the weights).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from calibprompt.training.learners.base import FeatureLearner

__all__ = ["LinearProbe", "LEARNERS"]


class LinearProbe(FeatureLearner):
    """Logistic regression (N, D) -> (N, K); ``C`` > 0 is the inverse L2 strength, ``n_train`` the N of
    the penalty ``||W||^2 / (2 C N)`` (set by :meth:`initialise` from the training features)."""

    name = "linear-probe"
    title = "Linear probe"
    reference = "Radford et al., CLIP, ICML 2021 (logistic regression, L-BFGS)"
    description = "Logistic regression on the image features, L-BFGS as scikit-learn (Radford et al. 2021)."
    text_features = None
    needs_zero_shot_text = False
    defaults = {"optimizer": "lbfgs", "lr": 1.0, "epochs": 1000, "batch_size": 1_000_000, "momentum": 0.0,
                "weight_decay": 0.0}

    def __init__(self, num_classes: int, dim: int, *, zero_shot_text: torch.Tensor | None = None,
                 logit_scale: float = 100.0, classnames: Sequence[str] | None = None, C: float = 1.0, n_train: int = 1):
        super().__init__(num_classes, dim, zero_shot_text=zero_shot_text, logit_scale=logit_scale,
                         classnames=classnames)
        if not float(C) > 0:
            raise ValueError(f"C must be > 0, got {C}.")
        if int(n_train) < 1:
            raise ValueError(f"n_train must be at least 1, got {n_train}.")
        self.C, self.n_train = float(C), int(n_train)
        self.weight = nn.Parameter(torch.zeros(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def hyperparameters(self) -> dict[str, Any]:
        return {"C": self.C, "n_train": self.n_train}

    def initialise(self, features: torch.Tensor, labels: torch.Tensor) -> "LinearProbe":
        """Records N for the penalty; W and b start at 0 (as scikit-learn's L-BFGS)."""
        self.n_train = int(features.shape[0])
        return self

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """``f W^T + b``: (N, D) -> (N, K)."""
        return image_features @ self.weight.T + self.bias

    def penalty(self) -> torch.Tensor:
        """``||W||_F^2 / (2 C N)``."""
        return self.weight.pow(2).sum() / (2.0 * self.C * self.n_train)


LEARNERS = {LinearProbe.name: LinearProbe}
