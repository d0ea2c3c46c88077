"""What every feature-space learner (an adapter or a linear probe on cached image features) shares.

A :class:`FeatureLearner` maps L2-normalised image features ``f`` (N, D) to logits (N, K); the frozen
backbone is never called, so a learner trains in seconds on the feature cache
(:mod:`calibprompt.training.features`). Its class text features (K, D) are

- ``"learned"``: class prototypes in the joint embedding space that move with training (LP++, CLAP);
  every loss of :mod:`calibprompt.training.losses` applies, the angular separation included;
- ``"frozen"``: the zero-shot text features, used but never moved (CLIP-Adapter, Tip-Adapter-F);
  a text-feature loss (AS) would add a constant and is refused;
- ``None``: none at all (the linear probe); AS is refused.

The zero-shot losses (ZS-Norm, ZS penalty) need zero-shot logits ``logit_scale * f @ T_zs^T``: they apply
to every learner that was given the zero-shot text features.

:func:`check_combination` names the combinations that do not exist; :func:`train_learner` is the
feature-space training loop (SGD / AdamW with a cosine schedule, or full-batch L-BFGS), with the
learner's own regulariser (:meth:`FeatureLearner.penalty`) added to the loss.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from calibprompt.training.losses import _TEXT_LOSSES, _ZERO_SHOT_LOSSES, Objective, build_objective

__all__ = ["FeatureLearner", "check_combination", "train_learner", "LearnerResult", "OPTIMIZERS", "TEXT_KINDS"]

OPTIMIZERS = ("sgd", "adamw", "lbfgs")
SCHEDULES = ("cosine", "constant")
TEXT_KINDS = ("learned", "frozen", None)


def _check_features(features: torch.Tensor, dim: int) -> torch.Tensor:
    if features.dim() != 2 or features.shape[1] != dim:
        raise ValueError(f"image features must have shape (N, {dim}), got {tuple(features.shape)}.")
    return features


class FeatureLearner(nn.Module):
    """Base class: logits (N, K) from image features (N, D).

    Subclasses set ``name`` (the registry key), ``title``, ``reference``, ``text_features`` (one of
    :data:`TEXT_KINDS`) and ``defaults`` (their training recipe: optimizer, lr, epochs, batch size),
    and implement :meth:`forward`. Constructors take only shapes and hyperparameters (what
    :meth:`config` returns), so a checkpoint rebuilds a learner and then loads its state;
    data-dependent initial values (cache keys, class centroids, multipliers) are set by :meth:`initialise`.

    ``zero_shot_text`` (K, D), when given, is kept as a buffer (saved, never trained).
    """

    name = ""
    title = ""
    reference = ""
    description = ""
    kind = "feature"  # trains on cached image features only (the prompt learners: "prompt")
    text_features: str | None = None
    needs_zero_shot_text = False
    defaults: dict[str, Any] = {"optimizer": "sgd", "lr": 1e-2, "epochs": 50, "batch_size": 32,
                                "momentum": 0.9, "weight_decay": 0.0, "schedule": "cosine"}

    def __init__(self, num_classes: int, dim: int, *, zero_shot_text: torch.Tensor | None = None,
                 logit_scale: float = 100.0, classnames: Sequence[str] | None = None):
        super().__init__()
        if classnames is not None and len(classnames) != int(num_classes):
            raise ValueError(f"Got {len(classnames)} class names for {num_classes} classes.")
        self.classnames = [str(c) for c in classnames] if classnames is not None else None
        if int(num_classes) < 2:
            raise ValueError(f"A learner needs at least 2 classes, got {num_classes}.")
        if int(dim) < 1:
            raise ValueError(f"dim must be at least 1, got {dim}.")
        if float(logit_scale) <= 0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale}.")
        self.num_classes, self.dim, self.logit_scale = int(num_classes), int(dim), float(logit_scale)
        if zero_shot_text is None and self.needs_zero_shot_text:
            raise ValueError(f"Learner {self.name!r} needs the zero-shot class text features (zero_shot_text, (K, D)).")
        if zero_shot_text is not None:
            if tuple(zero_shot_text.shape) != (self.num_classes, self.dim):
                raise ValueError(f"zero_shot_text must have shape ({self.num_classes}, {self.dim}), "
                                 f"got {tuple(zero_shot_text.shape)}.")
            self.register_buffer("zero_shot_text", F.normalize(zero_shot_text.detach().float(), dim=-1).clone())
        else:
            self.zero_shot_text = None

    @property
    def has_text_features(self) -> bool:
        """Whether its class text features learn (what the losses on them, AS, need)."""
        return self.text_features == "learned"

    @classmethod
    def from_backbone(cls, backbone, classnames: Sequence[str], *, zero_shot_text: torch.Tensor | None = None,
                      **params: Any) -> "FeatureLearner":
        """Build for a backbone's task: K from ``classnames``, D and the logit scale from the backbone;
        ``zero_shot_text`` (K, D) defaults, where the learner needs it, to the backbone's zero-shot class
        features (:func:`calibprompt.training.learners.coop.zero_shot_features`, "a photo of a {}.")."""
        if zero_shot_text is None and cls.needs_zero_shot_text:
            from calibprompt.training.learners.coop import zero_shot_features

            zero_shot_text = zero_shot_features(backbone, classnames)
        dim = int(zero_shot_text.shape[1]) if zero_shot_text is not None else int(
            backbone.encode_text(["x"], normalize=True).shape[-1])
        return cls(len(classnames), dim, zero_shot_text=zero_shot_text, logit_scale=float(backbone.logit_scale),
                   classnames=list(classnames), **params)

    @classmethod
    def data_params(cls, n_images: int) -> dict[str, Any]:
        """Constructor arguments that follow from the few-shot set's size (``n_images`` training images),
        e.g. Tip-Adapter's ``cache_size``; none by default."""
        return {}

    # -- what subclasses provide: ``forward(image_features (N, D)) -> logits (N, K)`` (nn.Module's own
    # forward refuses to run when a subclass has none), and the hooks below ----------------------------
    def initialise(self, features: torch.Tensor, labels: torch.Tensor) -> "FeatureLearner":
        """Set data-dependent initial values from the few-shot features (N, D) and labels (N,); default: none."""
        return self

    def class_text_features(self) -> torch.Tensor | None:
        """Class text features (K, D), L2-normalised: the zero-shot ones for ``"frozen"``; None for none."""
        return self.zero_shot_text if self.text_features == "frozen" else None

    def penalty(self) -> torch.Tensor:
        """The learner's own regulariser, added to the loss (0 by default)."""
        return next(self.parameters()).new_zeros(())

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor's keyword arguments beyond the shapes (JSON-able)."""
        return {}

    def config(self) -> dict[str, Any]:
        """What rebuilds this learner (with its state): name, shapes, logit scale, hyperparameters."""
        return {"learner": self.name, "num_classes": self.num_classes, "dim": self.dim,
                "logit_scale": self.logit_scale, "has_zero_shot_text": self.zero_shot_text is not None,
                "classnames": self.classnames, **self.hyperparameters()}

    # -- helpers ----------------------------------------------------------------------------
    def trainable_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def zero_shot_logits(self, image_features: torch.Tensor) -> torch.Tensor | None:
        """``logit_scale * normalize(f) @ T_zs^T`` (N, K), or None without zero-shot text."""
        if self.zero_shot_text is None:
            return None
        return self.logit_scale * F.normalize(image_features, dim=-1) @ self.zero_shot_text.T

    def optim_groups(self, lr: float, features: torch.Tensor) -> list[dict[str, Any]]:
        """Parameter groups for the optimiser (one group at ``lr`` by default; LP++ derives its own)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]


def check_combination(learner: FeatureLearner, objective: Objective) -> None:
    """Refuse, in plain words, a loss that does not exist for this learner.

    Raises:
        ValueError: a text-feature loss (AS, e.g. CalibPrompt's) on a learner whose class text features
            are frozen or absent; a zero-shot loss (ZS-Norm, ZS penalty) on a learner without zero-shot text.
    """
    losses = {t.loss for t in objective.method.terms}
    if losses & _TEXT_LOSSES and learner.text_features != "learned":
        which = "has frozen class text features (the zero-shot ones)" if learner.text_features == "frozen" \
            else "has no class text features"
        allowed = "lp++, clap (and the prompt learners)"
        raise ValueError(
            f"The method {objective.method.name!r} needs learned class text features for its angular "
            f"separation (AS), but the learner {learner.name!r} {which}; use a method without AS "
            f"(e.g. ls, mdca, fl) or a learner with learned class text features: {allowed}.")
    if losses & _ZERO_SHOT_LOSSES and learner.zero_shot_text is None:
        raise ValueError(f"The method {objective.method.name!r} needs zero-shot logits, but the learner "
                         f"{learner.name!r} was built without zero-shot text features (zero_shot_text).")


@dataclass
class LearnerResult:
    learner: FeatureLearner
    objective_params: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss and parts
    seconds: float = 0.0
    steps: int = 0
    recipe: dict[str, Any] = field(default_factory=dict)


def _recipe(learner: FeatureLearner, overrides: dict[str, Any]) -> dict[str, Any]:
    recipe = {**FeatureLearner.defaults, **learner.defaults}
    for key, value in overrides.items():
        if value is not None:
            if key not in recipe:
                raise ValueError(f"Unknown training setting {key!r}; choose from: {', '.join(recipe)}.")
            recipe[key] = value
    if recipe["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {recipe['optimizer']!r}.")
    if recipe["schedule"] not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {recipe['schedule']!r}.")
    if int(recipe["epochs"]) < 1 or int(recipe["batch_size"]) < 1 or float(recipe["lr"]) <= 0:
        raise ValueError("epochs and batch_size must be at least 1 and lr positive.")
    return recipe


def _loss(learner: FeatureLearner, objective: Objective, feats: torch.Tensor,
          target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``objective(logits, y, T, zs_logits) + learner.penalty()`` on one batch; returns (total, parts)."""
    logits = learner(feats)
    total, parts = objective(logits, target, text_features=learner.class_text_features(),
                             zero_shot_logits=learner.zero_shot_logits(feats))
    penalty = learner.penalty()
    if penalty.requires_grad or float(penalty) != 0.0:
        parts = {**parts, "penalty": penalty}
        total = total + penalty
    return total, parts


def _make_optimizer(learner: FeatureLearner, recipe: dict[str, Any], features: torch.Tensor) -> torch.optim.Optimizer:
    groups = learner.optim_groups(float(recipe["lr"]), features)
    if recipe["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=float(recipe["lr"]), momentum=float(recipe["momentum"]),
                               weight_decay=float(recipe["weight_decay"]))
    if recipe["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=float(recipe["lr"]), eps=1e-4, weight_decay=float(recipe["weight_decay"]))
    return torch.optim.LBFGS([p for g in groups for p in g["params"]], lr=1.0, max_iter=int(recipe["epochs"]),
                             tolerance_grad=1e-9, tolerance_change=1e-12, history_size=50,
                             line_search_fn="strong_wolfe")


def _views(features: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(views (N, V, D), plain (N, D))``: features (N, D) are one view; for (N, V, D) cached augmented
    views, ``plain`` is their normalised mean (what initialises cache keys, centroids and multipliers,
    as Tip-Adapter averages its augmented views)."""
    features = features.float()
    if features.dim() == 3:
        _check_features(features[:, 0], dim)
        return features, F.normalize(features.mean(dim=1), dim=-1)
    _check_features(features, dim)
    return features.unsqueeze(1), features


def train_learner(learner: FeatureLearner, features: torch.Tensor, labels: torch.Tensor,
                  method: str | Objective = "coop", *, seed: int = 1,
                  on_epoch: Callable[[dict[str, float]], None] | None = None, **recipe: Any) -> LearnerResult:
    """Train ``learner`` on cached image features and labels (N,) with a method of the loss registry.

    ``features``: (N, D), or (N, V, D) with V cached augmented views (each epoch draws one view per image).
    Each step: ``loss = objective(learner(f_B), y_B, T, zs_B) + learner.penalty()`` where T is the learner's
    learned class text features (for AS) and ``zs_B`` the zero-shot logits (for the ZS losses). SGD / AdamW
    follow the recipe's schedule over the epochs with shuffled batches (from ``seed``); L-BFGS runs full
    batch on the plain (view-mean) features for at most ``epochs`` iterations. ``recipe`` overrides the
    learner's ``defaults`` (optimizer, lr, epochs, batch_size, momentum, weight_decay, schedule). Calls
    ``learner.initialise`` first.
    """
    objective = method if isinstance(method, Objective) else build_objective(method)
    check_combination(learner, objective)
    recipe = _recipe(learner, recipe)
    device = next(learner.parameters()).device  # the learner's device (the features follow it)
    views, plain = (t.to(device) for t in _views(features, learner.dim))
    labels = torch.as_tensor(labels, dtype=torch.long).to(device)
    if labels.shape != (plain.shape[0],) or int(labels.min()) < 0 or int(labels.max()) >= learner.num_classes:
        raise ValueError(f"labels must have shape ({plain.shape[0]},) with values in [0, {learner.num_classes}).")
    start, history = time.perf_counter(), []  # the learner's own set-up (e.g. the probe's C search) counts
    learner.initialise(plain, labels)
    optimizer = _make_optimizer(learner, recipe, plain)
    learner.train()
    if recipe["optimizer"] == "lbfgs":
        steps = _run_lbfgs(learner, objective, optimizer, plain, labels, history)
    else:
        steps = _run_epochs(learner, objective, optimizer, views, labels, recipe, seed, history, on_epoch)
    learner.eval()
    return LearnerResult(learner, dict(objective.params), history, time.perf_counter() - start, steps, recipe)


def _run_lbfgs(learner, objective, optimizer, features, labels, history) -> int:
    """Full-batch L-BFGS with a strong-Wolfe line search; returns the number of closure calls."""
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        optimizer.zero_grad(set_to_none=True)
        total, _ = _loss(learner, objective, features, labels)
        total.backward()
        return total

    optimizer.step(closure)
    with torch.no_grad():
        total, parts = _loss(learner, objective, features, labels)
    history.append({"epoch": 1, "loss": float(total), **{k: float(v) for k, v in parts.items()}})
    return calls


def _run_epochs(learner, objective, optimizer, views, labels, recipe, seed, history, on_epoch) -> int:
    """Mini-batch epochs, lr ``lr_g * (1 + cos(pi * e / E)) / 2`` per group (or constant ``lr_g``);
    returns the number of steps."""
    generator = torch.Generator().manual_seed(int(seed))
    n, n_views, epochs = views.shape[0], views.shape[1], int(recipe["epochs"])
    batch = min(int(recipe["batch_size"]), n)
    base = [g["lr"] for g in optimizer.param_groups]
    steps = 0
    for epoch in range(epochs):
        for group, lr in zip(optimizer.param_groups, base):
            cosine = recipe["schedule"] == "cosine"
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) if cosine else lr
        order = torch.randperm(n, generator=generator).to(views.device)
        pick = torch.randint(n_views, (n,), generator=generator).to(views.device)  # one cached view per image
        sums: dict[str, float] = {}
        for start in range(0, n - batch + 1, batch):
            idx = order[start:start + batch]
            total, parts = _loss(learner, objective, views[idx, pick[idx]], labels[idx])
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            steps += 1
            for key, value in {"loss": total, **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        row = {"epoch": epoch + 1, **{k: v / max(1, n // batch) for k, v in sums.items()}}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return steps
