"""ProGrad: CoOp whose gradient never works against the zero-shot prediction.

Reference: B. Zhu, Y. Niu, Y. Han, Y. Wu, H. Zhang, "Prompt-aligned Gradient for Prompt Tuning",
ICCV 2023 (arXiv:2205.14865); code: BeierZhu/Prompt-align, and HealthX-Lab/BiomedCoOp
``trainers/prograd_*.py``.

The prompt and the logits are CoOp's. With ``g`` the gradient of the method's loss (the task loss:
CE for CoOp, LS + SMAC + beta AS for CalibPrompt, ...) and ``g_kl`` that of the distillation loss

    L_kl = T^2 * mean_i KL(softmax(z_i^zs / T) || softmax(z_i / T))

towards the zero-shot logits z^zs (N, K), each parameter's gradient becomes

    g <- g - lambda * (g . g_kl / ||g_kl||^2) g_kl     if g . g_kl < 0,   g otherwise,

so that (lambda = 1) the update is orthogonal to g_kl whenever the two conflict. The projection is
per parameter tensor, as in the authors' Dassl trainer; for CoOp there is one tensor (the context), so
it equals the projection of the whole gradient. T = 1, lambda = 1 by default.

Note: BiomedCoOp's ``ProGrad_BiomedCLIP`` (fp32 path) takes its "zero-shot" logits from the learned model
itself (``zs_clip_output = self.model(image)``), so its g_kl is 0 and no projection ever happens there;
here the teacher is the zero-shot head.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from calibprompt.training.learners.coop import CoOpLearner, LearnerOutput

__all__ = ["ProGradLearner", "project_gradient", "distillation_loss", "LEARNERS"]


def project_gradient(g: torch.Tensor, g_kl: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """``g - lam * (g . g_kl / ||g_kl||^2) g_kl`` if ``g . g_kl < 0``, else ``g`` (any shape, flattened
    for the dot product); ``g`` unchanged when ``g_kl`` is 0."""
    dot = torch.dot(g.flatten(), g_kl.flatten())
    norm2 = torch.dot(g_kl.flatten(), g_kl.flatten())
    if dot >= 0 or norm2 == 0:
        return g
    return g - lam * (dot / norm2) * g_kl


def distillation_loss(logits: torch.Tensor, zero_shot_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * mean_i sum_k p^zs_ik (log p^zs_ik - log p_ik)`` with ``p = softmax(z / T)``; (N, K) inputs."""
    log_p = F.log_softmax(logits / temperature, dim=1)
    log_q = F.log_softmax(zero_shot_logits.detach().to(logits) / temperature, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature ** 2


class ProGradLearner(CoOpLearner):
    """CoOp trained with prompt-aligned gradients (see the module docstring).

    Args (besides :class:`~.coop.CoOpLearner`'s):
        prograd_lambda: the projection strength lambda in [0, 1] (1: the full projection).
        temperature: the distillation temperature T (> 0).
    """

    name = "prograd"
    title = "ProGrad"
    reference = "Zhu et al., Prompt-aligned Gradient for Prompt Tuning, ICCV 2023 (arXiv:2205.14865)"
    description = "CoOp with gradients projected off the zero-shot KL direction (Zhu et al., ICCV 2023)."

    def __init__(self, backbone, classnames: Sequence[str], *, prograd_lambda: float = 1.0,
                 temperature: float = 1.0, **kwargs: Any):
        if not 0.0 <= float(prograd_lambda) <= 1.0:
            raise ValueError(f"prograd_lambda must be in [0, 1], got {prograd_lambda}.")
        if not float(temperature) > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        super().__init__(backbone, classnames, **kwargs)
        self.prograd_lambda = float(prograd_lambda)
        self.temperature = float(temperature)

    def forward(self, image_features: torch.Tensor) -> LearnerOutput:
        """CoOp's output, with the zero-shot logits (N, K) in ``extras["zero_shot_logits"]``."""
        out = super().forward(image_features)
        out.extras["zero_shot_logits"] = self.zero_shot_logits(image_features).to(out.logits.device)
        return out

    def backward(self, loss: torch.Tensor, output: LearnerOutput) -> None:
        """Set each parameter's ``.grad`` to :func:`project_gradient` of d loss / d p against
        d L_kl / d p (L_kl: :func:`distillation_loss` of the output's logits)."""
        params = [p for p in self.parameters() if p.requires_grad]
        kl = distillation_loss(output.logits, output.extras["zero_shot_logits"], self.temperature)
        g_task = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        g_kl = torch.autograd.grad(kl, params, allow_unused=True)
        for p, g, gk in zip(params, g_task, g_kl):
            if g is None:
                continue
            g = project_gradient(g, gk, self.prograd_lambda) if gk is not None else g
            p.grad = g if p.grad is None else p.grad + g
        output.extras["kl"] = kl.detach()

    def learner_params(self) -> dict[str, Any]:
        return {**super().learner_params(), "prograd_lambda": self.prograd_lambda, "temperature": self.temperature}


LEARNERS = {"prograd": ProGradLearner}
