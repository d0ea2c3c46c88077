"""KgCoOp: CoOp kept close to the zero-shot class text features.

Reference: H. Yao, R. Zhang, C. Xu, "Visual-Language Prompt Tuning with Knowledge-guided Context
Optimization", CVPR 2023 (arXiv:2303.13283); code: htyao89/KgCoOp, and HealthX-Lab/BiomedCoOp
``trainers/kgcoop_*.py``.

The prompt and the logits are CoOp's; the learner adds to the method's loss

    L_kg = lambda * mean_k || w_k - w_k^zs ||_2^2,

with w_k (D,) the L2-normalised class text feature of the learned prompt and w_k^zs that of the
zero-shot prompt (hand-written templates, "a photo of a {}." by default), lambda = 8.0 as in the paper.
For unit vectors ``||w - w^zs||^2 = 2 (1 - cos(w, w^zs))``: BiomedCoOp's code adds ``W * (1 - mean_k cos)``
(half of this penalty for the same weight). The penalty is 0 when the learned prompt reads as the
zero-shot one (``ctx_init="a photo of a"`` with that template) and grows as the context moves away.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from calibprompt.training.learners.coop import CoOpLearner, LearnerOutput

__all__ = ["KgCoOpLearner", "kg_penalty", "DEFAULT_LAMBDA", "LEARNERS"]

DEFAULT_LAMBDA = 8.0


def kg_penalty(text_features: torch.Tensor, zero_shot_text: torch.Tensor) -> torch.Tensor:
    """``mean_k ||w_k - w_k^zs||^2`` for T, W^zs (K, D), both L2-normalised (unweighted)."""
    if text_features.shape != zero_shot_text.shape:
        raise ValueError(f"text_features {tuple(text_features.shape)} and zero_shot_text "
                         f"{tuple(zero_shot_text.shape)} must have the same shape (K, D).")
    return (text_features - zero_shot_text.to(text_features.device)).pow(2).sum(dim=1).mean()


class KgCoOpLearner(CoOpLearner):
    """CoOp plus ``lambda * mean_k ||w_k - w_k^zs||^2`` (``regularizers()["KG"]``).

    Args (besides :class:`~.coop.CoOpLearner`'s):
        kg_lambda: the penalty weight lambda (>= 0; 8.0 as Yao et al.).
    """

    name = "kgcoop"
    title = "KgCoOp"
    reference = ("Yao et al., Visual-Language Prompt Tuning with Knowledge-guided Context Optimization, "
                 "CVPR 2023 (arXiv:2303.13283)")
    description = "CoOp kept close to the zero-shot class text features (Yao et al., CVPR 2023)."

    def __init__(self, backbone, classnames: Sequence[str], *, kg_lambda: float = DEFAULT_LAMBDA, **kwargs: Any):
        if not float(kg_lambda) >= 0.0:
            raise ValueError(f"kg_lambda must be >= 0, got {kg_lambda}.")
        super().__init__(backbone, classnames, **kwargs)
        self.kg_lambda = float(kg_lambda)

    def regularizers(self, output: LearnerOutput) -> dict[str, torch.Tensor]:
        """``{"KG": lambda * mean_k ||w_k - w_k^zs||^2}`` on the batch's class text features (K, D)."""
        return {"KG": self.kg_lambda * kg_penalty(output.text_features, self.zero_shot_text)}

    def learner_params(self) -> dict[str, Any]:
        return {**super().learner_params(), "kg_lambda": self.kg_lambda}


LEARNERS = {"kgcoop": KgCoOpLearner}
