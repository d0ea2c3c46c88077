"""Prompt-tuning losses: CalibPrompt's terms and the calibration baselines the paper compares against.

Every loss is a pure function returning a scalar tensor. Shapes: ``logits`` (B, K) (already scaled
by the logit scale), ``labels`` (B,) integer classes, ``text_features`` (K, D) L2-normalised,
``zero_shot_logits`` (B, K) of the same batch from the zero-shot prompts.

:data:`LOSSES` maps names to functions (:func:`get_loss`). :data:`METHODS` maps method names to
weighted combinations of them, and :func:`build_objective` turns a method into a callable that returns
the total loss and its named parts. CalibPrompt is ``LS_alpha + SMAC_alpha + beta * AS`` with the
paper's per-backbone, per-dataset alpha and beta (from the task files in ``prompts/``).

Nothing here moves tensors between devices: the same code runs on CPU, CUDA and MPS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from calibprompt import defaults

__all__ = [
    "CE", "LS", "FL", "SMAC", "AS", "MDCA", "DCA", "MMCE", "MMCE_AUTHORS", "MBLS", "LOGITNORM", "ZS_NORM", "ZS_PENALTY",
    "LOSSES", "LOSS_VARIANTS", "get_loss", "Term", "Method", "METHODS", "list_methods", "get_method", "Objective",
    "build_objective", "DEFAULT_ALPHA", "DEFAULT_BETA", "TEXT_LOSSES", "ZERO_SHOT_LOSSES",
]

DEFAULT_ALPHA = defaults.LOSS_ALPHA
DEFAULT_BETA = defaults.LOSS_BETA


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, K), got {tuple(logits.shape)}.")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}.")
    if logits.shape[1] < 2:
        raise ValueError("These losses need at least 2 classes.")


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}.")


def _smoothed_targets(labels: torch.Tensor, num_classes: int, alpha: float, dtype: torch.dtype) -> torch.Tensor:
    """(B, K): ``1 - alpha`` on the true class, ``alpha / (K - 1)`` on each other class."""
    targets = torch.full((labels.shape[0], num_classes), alpha / (num_classes - 1), dtype=dtype, device=labels.device)
    return targets.scatter_(1, labels.unsqueeze(1), 1.0 - alpha)


def CE(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, batch mean: ``mean_i -log softmax(logits_i)[y_i]``."""
    _check(logits, labels)
    return F.cross_entropy(logits, labels)


def LS(logits: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Label smoothing as in CalibPrompt: ``mean_i sum_k -t_ik log softmax(logits_i)_k`` with
    ``t_iy = 1 - alpha`` and ``t_ik = alpha / (K - 1)`` for k != y.

    (PyTorch's ``label_smoothing=eps`` spreads eps over all K classes instead; the two agree for
    ``eps = alpha * K / (K - 1)``.)
    """
    _check(logits, labels)
    _check_alpha(alpha)
    logp = F.log_softmax(logits, dim=1)
    targets = _smoothed_targets(labels, logits.shape[1], alpha, logp.dtype)
    return -(targets * logp).sum(dim=1).mean()


def FL(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 3.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017; Mukhoti et al. 2020 for calibration): ``mean_i -(1 - p_iy)^gamma log p_iy``."""
    _check(logits, labels)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}.")
    logpt = F.log_softmax(logits, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    return (-(1.0 - logpt.exp()) ** gamma * logpt).mean()


def SMAC(logits: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Smoothed accuracy and confidence matching.

    With ``p = softmax(logits)`` and, for each class c, the batch frequency ``f_c = mean_i [y_i = c]``
    smoothed to ``s_c = f_c (1 - alpha) + (1 - f_c) alpha / (K - 1)``:
    ``SMAC = mean_c |mean_i p_ic - s_c|``. With alpha = 0 this is MDCA.
    """
    _check(logits, labels)
    _check_alpha(alpha)
    num_classes = logits.shape[1]
    probs = F.softmax(logits, dim=1)
    freq = F.one_hot(labels, num_classes).to(probs.dtype).mean(dim=0)
    smoothed = freq * (1.0 - alpha) + (1.0 - freq) * alpha / (num_classes - 1)
    return (probs.mean(dim=0) - smoothed).abs().mean()


def MDCA(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-class difference of confidence and accuracy (Hebbalaguppe et al. 2022):
    ``mean_c |mean_i p_ic - mean_i [y_i = c]|``."""
    return SMAC(logits, labels, alpha=0.0)


def DCA(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Difference between confidence and accuracy (Liang et al. 2020):
    ``|mean_i max_k p_ik - mean_i [argmax_k p_ik = y_i]|``."""
    _check(logits, labels)
    conf, pred = F.softmax(logits, dim=1).max(dim=1)
    return (conf.mean() - (pred == labels).to(conf.dtype).mean()).abs()


def AS(text_features: torch.Tensor) -> torch.Tensor:
    """Angular separation of the class text features T (K, D), L2-normalised here:
    with ``S = T T^T``, ``AS = mean_i (sum_{j != i} S_ij) / (K - 1)``, the mean pairwise cosine similarity."""
    if text_features.dim() != 2 or text_features.shape[0] < 2:
        raise ValueError(f"text_features must have shape (K, D) with K >= 2, got {tuple(text_features.shape)}.")
    t = F.normalize(text_features, dim=-1)
    k = t.shape[0]
    sim = t @ t.T
    off_diagonal = sim.sum(dim=1) - sim.diagonal()
    return (off_diagonal / (k - 1)).mean()


def MMCE(logits: torch.Tensor, labels: torch.Tensor, kernel_width: float = 0.4) -> torch.Tensor:
    """Weighted maximum mean calibration error, MMCE_w (Kumar et al. 2018).

    With top-label confidences r, correctness c, m correct and n incorrect samples and the Laplacian
    kernel ``k(r, r') = exp(-|r - r'| / kernel_width)``::

        MMCE_w^2 = sum_{i,j correct} (1-r_i)(1-r_j) k_ij / m^2
                 + sum_{i,j incorrect} r_i r_j k_ij / n^2
                 - 2 sum_{i correct, j incorrect} (1-r_i) r_j k_ij / (m n)

    and the loss is ``sqrt(max(MMCE_w^2, 0) + 1e-10)``; 0 when the batch is all correct or all wrong.
    This is the paper's (Kumar et al.'s) formula; :func:`MMCE_AUTHORS` is the CalibPrompt authors' variant.
    """
    _check(logits, labels)
    conf, pred = F.softmax(logits, dim=1).max(dim=1)
    correct = (pred == labels).to(conf.dtype)
    m, n = correct.sum(), (1.0 - correct).sum()
    if m == 0 or n == 0:
        return conf.sum() * 0.0  # keeps the graph (and the device) without contributing
    kernel = torch.exp(-(conf.unsqueeze(0) - conf.unsqueeze(1)).abs() / kernel_width)
    a = (1.0 - conf) * correct  # weight of correct samples
    b = conf * (1.0 - correct)  # weight of incorrect samples
    value = (a @ kernel @ a) / (m * m) + (b @ kernel @ b) / (n * n) - 2.0 * (a @ kernel @ b) / (m * n)
    return torch.sqrt(value.clamp_min(0.0) + 1e-10)


def MMCE_AUTHORS(logits: torch.Tensor, labels: torch.Tensor, kernel_width: float = 0.4) -> torch.Tensor:
    """MMCE_w as the CalibPrompt authors' code computes it (``MMCE_weighted`` in their
    ``trainers/classification/losses.py``), for the ``authors-code`` protocol.

    Their pair terms are means over the pairs (already divided by m^2, n^2 and m n), and are then
    divided by ``m^2 + 1e-5``, ``n^2 + 1e-5`` and ``m n + 1e-5`` once more::

        value = [sum_{i,j correct} (1-r_i)(1-r_j) k_ij / m^2] / (m^2 + 1e-5)
              + [sum_{i,j incorrect} r_i r_j k_ij / n^2] / (n^2 + 1e-5)
              - 2 [sum_{i correct, j incorrect} (1-r_i) r_j k_ij / (m n)] / (m n + 1e-5)

    and the loss is ``sqrt(value + 1e-10)``; 0 when the batch is all correct or all wrong. With
    m = n the result is :func:`MMCE` divided by about m (8x smaller for 8 correct of 16). The only
    change from their code: ``value`` is clamped at 0 first (their 1e-5 terms can push an exact 0
    a hair below it, which gives NaN there).
    """
    _check(logits, labels)
    conf, pred = F.softmax(logits, dim=1).max(dim=1)
    correct = (pred == labels).to(conf.dtype)
    m, n = correct.sum(), (1.0 - correct).sum()
    if m == 0 or n == 0:
        return conf.sum() * 0.0
    kernel = torch.exp(-(conf.unsqueeze(0) - conf.unsqueeze(1)).abs() / kernel_width)
    a = (1.0 - conf) * correct
    b = conf * (1.0 - correct)
    correct_mean = (a @ kernel @ a) / (m * m)
    incorrect_mean = (b @ kernel @ b) / (n * n)
    cross_mean = (a @ kernel @ b) / (m * n)
    value = correct_mean / (m * m + 1e-5) + incorrect_mean / (n * n + 1e-5) - 2.0 * cross_mean / (m * n + 1e-5)
    return torch.sqrt(value.clamp_min(0.0) + 1e-10)


def MBLS(logits: torch.Tensor, labels: torch.Tensor, margin: float = 10.0, alpha: float = 0.1) -> torch.Tensor:
    """Margin-based label smoothing (Liu et al. 2022):
    ``CE + alpha * mean_{i,k} relu(max_j logit_ij - logit_ik - margin)``."""
    _check(logits, labels)
    gaps = logits.max(dim=1, keepdim=True).values - logits
    return F.cross_entropy(logits, labels) + alpha * F.relu(gaps - margin).mean()


def LOGITNORM(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """LogitNorm (Wei et al. 2022): cross-entropy on ``logits / (||logits||_2 * T)``."""
    _check(logits, labels)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    norms = logits.norm(p=2, dim=1, keepdim=True) + 1e-7
    return F.cross_entropy(logits / (norms * temperature), labels)


def _check_zero_shot(logits: torch.Tensor, zero_shot_logits: torch.Tensor | None) -> torch.Tensor:
    if zero_shot_logits is None:
        raise ValueError("This loss needs the zero-shot logits of the same batch (zero_shot_logits).")
    if zero_shot_logits.shape != logits.shape:
        raise ValueError(
            f"zero_shot_logits must have the shape of logits {tuple(logits.shape)}, got {tuple(zero_shot_logits.shape)}."
        )
    return zero_shot_logits.detach()


def ZS_NORM(logits: torch.Tensor, labels: torch.Tensor, zero_shot_logits: torch.Tensor) -> torch.Tensor:
    """ZS-Norm (Murugesan et al., ECCV 2024): min-max normalise each row of logits and map it onto
    the range of the same sample's zero-shot logits, then cross-entropy:
    ``z' = (z - min z) / (max z - min z) * (max zs - min zs) + min zs``."""
    _check(logits, labels)
    zs = _check_zero_shot(logits, zero_shot_logits)
    eps = 1e-6
    lo, hi = logits.min(dim=1, keepdim=True).values, logits.max(dim=1, keepdim=True).values
    zs_lo, zs_hi = zs.min(dim=1, keepdim=True).values, zs.max(dim=1, keepdim=True).values
    unit = (logits - lo) / (hi - lo).clamp_min(eps)
    return F.cross_entropy(unit * (zs_hi - zs_lo).clamp_min(eps) + zs_lo, labels)


def ZS_PENALTY(logits: torch.Tensor, labels: torch.Tensor, zero_shot_logits: torch.Tensor) -> torch.Tensor:
    """Zero-shot range penalty (Murugesan et al., ECCV 2024): how far logits leave the range of the
    same sample's zero-shot logits, ``mean relu(z - max zs) + mean relu(min zs - z)``. Used with CE."""
    _check(logits, labels)
    zs = _check_zero_shot(logits, zero_shot_logits)
    zs_lo, zs_hi = zs.min(dim=1, keepdim=True).values, zs.max(dim=1, keepdim=True).values
    return F.relu(logits - zs_hi).mean() + F.relu(zs_lo - logits).mean()


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "CE": CE, "LS": LS, "FL": FL, "SMAC": SMAC, "AS": AS, "MDCA": MDCA, "DCA": DCA, "MMCE": MMCE,
    "MMCE_AUTHORS": MMCE_AUTHORS, "MBLS": MBLS, "LOGITNORM": LOGITNORM, "ZS_NORM": ZS_NORM, "ZS_PENALTY": ZS_PENALTY,
}
#: losses on the class text features (they need a learner whose class text features learn)
TEXT_LOSSES = frozenset({"AS"})
#: losses on the zero-shot logits (they need the zero-shot class text features)
ZERO_SHOT_LOSSES = frozenset({"ZS_NORM", "ZS_PENALTY"})
_TEXT_LOSSES = TEXT_LOSSES  # the older private names
_ZERO_SHOT_LOSSES = ZERO_SHOT_LOSSES


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """The loss function called ``name`` (case-insensitive)."""
    key = str(name).upper().replace("-", "_")
    if key not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of: {', '.join(LOSSES)}.")
    return LOSSES[key]


# --------------------------------------------------------------------------------------------
# Methods: named, weighted combinations
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Term:
    """One weighted loss of a method. ``weight`` may be the name of a method parameter ("beta");
    ``kwargs`` values likewise ("alpha")."""

    loss: str
    weight: float | str = 1.0
    kwargs: Mapping[str, float | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    terms: tuple[Term, ...]
    params: Mapping[str, float] = field(default_factory=dict)  # defaults, e.g. {"alpha": 0.1}
    description: str = ""
    task_params: tuple[str, ...] = ()  # params whose default comes from the task file (the paper's table)

    @property
    def needs_zero_shot(self) -> bool:
        """Whether a term needs the zero-shot logits (:data:`ZERO_SHOT_LOSSES`)."""
        return any(t.loss in _ZERO_SHOT_LOSSES for t in self.terms)

    @property
    def needs_text_features(self) -> bool:
        """Whether a term acts on learned class text features (:data:`TEXT_LOSSES`, e.g. CalibPrompt's AS)."""
        return any(t.loss in _TEXT_LOSSES for t in self.terms)


METHODS: dict[str, Method] = {
    "coop": Method("coop", "CoOp (CE)", (Term("CE"),), description="CoOp with cross-entropy (Zhou et al. 2022)."),
    "calibprompt": Method(
        "calibprompt", "CalibPrompt",
        (Term("LS", kwargs={"alpha": "alpha"}), Term("SMAC", kwargs={"alpha": "alpha"}), Term("AS", weight="beta")),
        params={"alpha": DEFAULT_ALPHA, "beta": DEFAULT_BETA},
        description="Label smoothing + smoothed accuracy/confidence matching + beta * angular separation.",
        task_params=("alpha", "beta"),
    ),
    "ls": Method("ls", "Label smoothing", (Term("LS", kwargs={"alpha": "alpha"}),), params={"alpha": DEFAULT_ALPHA},
                 description="Label smoothing with CalibPrompt's alpha.", task_params=("alpha",)),
    "fl": Method("fl", "Focal loss", (Term("FL", kwargs={"gamma": "gamma"}),), params={"gamma": 3.0}),
    "mdca": Method("mdca", "CE + MDCA", (Term("CE"), Term("MDCA", weight="beta")), params={"beta": 1.0}),
    "dca": Method("dca", "CE + DCA", (Term("CE"), Term("DCA", weight="beta")), params={"beta": 1.0}),
    "mmce": Method("mmce", "CE + MMCE", (Term("CE"), Term("MMCE", weight="beta")), params={"beta": 2.0}),
    "mbls": Method("mbls", "MbLS", (Term("MBLS", kwargs={"margin": "margin", "alpha": "alpha"}),),
                   params={"margin": 10.0, "alpha": 0.1}),
    "logitnorm": Method("logitnorm", "LogitNorm", (Term("LOGITNORM", kwargs={"temperature": "temperature"}),),
                        params={"temperature": 1.0}),
    "zs_norm": Method("zs_norm", "ZS-Norm", (Term("ZS_NORM"),)),
    "zs_penalty": Method("zs_penalty", "CE + ZS penalty", (Term("CE"), Term("ZS_PENALTY", weight="beta")),
                         params={"beta": 1.0}),
}


def list_methods() -> list[str]:
    """Names of the trainable methods (zero-shot is not one: it learns nothing)."""
    return list(METHODS)


def get_method(name: str) -> Method:
    key = str(name).lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(f"Unknown method {name!r}; choose one of: {', '.join(METHODS)}.")
    return METHODS[key]


#: Loss implementations a protocol may swap in for a term's loss (``build_objective(mmce_scale=...)``).
LOSS_VARIANTS: dict[str, dict[str, str]] = {"mmce_scale": {"formula": "MMCE", "authors": "MMCE_AUTHORS"}}


class Objective:
    """A method with its parameters resolved: ``objective(logits, labels, text_features, zero_shot_logits)``
    returns ``(total, parts)`` where ``parts`` maps each term's loss name to its (unweighted) value.

    ``variants`` maps a term's loss name to the loss that computes it instead (e.g. ``{"MMCE":
    "MMCE_AUTHORS"}``); the part keeps the term's name."""

    def __init__(self, method: Method, params: Mapping[str, float], variants: Mapping[str, str] | None = None):
        self.method = method
        self.params = dict(params)
        self.variants = {k: v for k, v in dict(variants or {}).items() if k != v}
        for name in self.variants.values():
            get_loss(name)  # ValueError for an unknown loss

    def _value(self, value: float | str) -> float:
        return float(self.params[value]) if isinstance(value, str) else float(value)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, text_features: torch.Tensor | None = None,
                 zero_shot_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = logits.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        for term in self.method.terms:
            fn = LOSSES[self.variants.get(term.loss, term.loss)]
            kwargs = {k: self._value(v) for k, v in term.kwargs.items()}
            if term.loss in _TEXT_LOSSES:
                if text_features is None:
                    raise ValueError(f"Method {self.method.name!r} needs the class text features for {term.loss}.")
                value = fn(text_features)
            elif term.loss in _ZERO_SHOT_LOSSES:
                value = fn(logits, labels, zero_shot_logits=zero_shot_logits)
            else:
                value = fn(logits, labels, **kwargs)
            parts[term.loss] = value
            total = total + self._value(term.weight) * value
        return total, parts

    def __repr__(self) -> str:
        extra = f", variants={self.variants}" if self.variants else ""
        return f"Objective({self.method.name}, {self.params}{extra})"


def build_objective(method: str | Method, *, backbone_family: str | None = None, task=None,
                    mmce_scale: str = "formula", **overrides: float | None) -> Objective:
    """Resolve a method's parameters: explicit ``overrides`` (e.g. ``alpha=0.05``), else, for CalibPrompt's
    alpha/beta (and LS's alpha), the task file's values for this backbone family (the paper's table),
    else the method's defaults (alpha 0.1, beta 1.0 for CalibPrompt).

    ``mmce_scale``: ``"formula"`` (Kumar et al., :func:`MMCE`) or ``"authors"`` (:func:`MMCE_AUTHORS`,
    the ``authors-code`` protocol's); it only matters to methods with an MMCE term.

    Raises:
        ValueError: unknown method, or a parameter the method does not take.
    """
    scales = LOSS_VARIANTS["mmce_scale"]
    if mmce_scale not in scales:
        raise ValueError(f"mmce_scale must be one of {', '.join(scales)}, got {mmce_scale!r}.")
    method = method if isinstance(method, Method) else get_method(method)
    params = dict(method.params)
    if task is not None and backbone_family:
        for key, value in task.hyperparameters(backbone_family).items():
            if key in method.task_params:
                params[key] = value
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in params:
            allowed = ", ".join(params) or "none"
            raise ValueError(f"Method {method.name!r} takes no parameter {key!r} (it takes: {allowed}).")
        params[key] = float(value)
    return Objective(method, params, variants={"MMCE": scales[mmce_scale]})
