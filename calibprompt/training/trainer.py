"""Few-shot prompt tuning, top to bottom.

The encoders are frozen and the image features are precomputed (:mod:`calibprompt.training.features`), so a
training step is: pick one cached augmented view per image of the batch, encode the class prompts
with the current context, ``logits = logit_scale * image @ text.T``, the method's loss, an SGD step.

Defaults follow the paper's protocol: SGD (lr 0.002, momentum 0.9, weight decay 5e-4), one warm-up
epoch at a constant 1e-5, then a cosine schedule over the 50 epochs (stepped per epoch, as in
Dassl), batch 16, 16 context vectors with random N(0, 0.02) initialisation, the last epoch kept.
All randomness (context initialisation, batch order, view choice) comes from one generator seeded
with ``seed``, so a run is repeatable on a given device.

``TrainConfig.protocol`` picks the paper's protocol or the authors' code's
(:mod:`calibprompt.training.protocols`): per backbone family, the compute precision (fp16/bf16 run
the text encoder and the logits under ``torch.autocast``; the context and the loss stay fp32), the
warm-up lr, the MMCE variant and BiomedCLIP's double embedding. Its fresh augmentation is a feature
source: pass a callable ``views(step, indices) -> (B, D)`` (:class:`~calibprompt.training.features.FreshViews`)
instead of a feature tensor, and each step encodes its batch anew.
"""
from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence, Union

import torch
import torch.nn.functional as F

from calibprompt import defaults
from calibprompt.devices import autocast
from calibprompt.training.losses import Objective, build_objective
from calibprompt.training.protocols import check_choice, resolve_protocol
from calibprompt.prompting.learner import PromptLearner

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "StepInfo", "TrainResult", "TrainingCancelled", "train_prompts", "learning_rate",
           "resolve_settings", "FeatureSource", "RunSetup", "setup_run", "train_features"]

#: A feature source the trainer calls every step: ``views(step, indices) -> (len(indices), D)``.
FeatureSource = Callable[[int, torch.Tensor], torch.Tensor]


class TrainingCancelled(Exception):
    """Raised inside :func:`train_prompts` when ``should_stop()`` turns true."""


@dataclass
class TrainConfig:
    """Hyperparameters of one prompt-tuning run (the paper's protocol by default)."""

    method: str = "coop"
    epochs: int = defaults.EPOCHS
    batch_size: int = defaults.BATCH_SIZE
    lr: float = defaults.LR
    momentum: float = defaults.MOMENTUM
    weight_decay: float = defaults.WEIGHT_DECAY
    warmup_epochs: int = defaults.WARMUP_EPOCHS
    warmup_lr: float | None = None  # None: the protocol's warm-up lr for the backbone family (1e-5 in the paper)
    n_ctx: int = defaults.N_CTX
    ctx_init: str | None = None
    class_specific: bool = False
    class_token_position: str = "end"
    seed: int = defaults.SEED
    loss_params: dict[str, float] = field(default_factory=dict)  # e.g. {"alpha": 0.1, "beta": 1.0}
    protocol: str = defaults.PROTOCOL  # "paper" or "authors-code" (calibprompt.training.protocols)
    precision: str | None = None  # "fp32", "fp16", "bf16"; None: the protocol's choice for the backbone family
    #: the protocol's choices resolved for the backbone family (resolve_protocol), set once by the job
    #: (TrainJob.config(family)) or by setup_run; None: not resolved yet. Not part of to_dict().
    settings: dict[str, Any] | None = field(default=None, compare=False)
    #: the few-shot learner (:mod:`calibprompt.training.learners`); ``"coop"`` is today's PromptLearner, bit
    #: for bit. ``learner_params``: its own hyperparameters (e.g. ``{"kg_lambda": 8.0}``; for a feature
    #: learner also its training settings, :data:`calibprompt.defaults.LEARNER_RECIPE_KEYS`). Both are in
    #: :meth:`to_dict` only when not the default, so coop's records stay as they were.
    learner: str = defaults.LEARNER
    learner_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.lr <= 0 or (self.warmup_lr is not None and self.warmup_lr <= 0):
            raise ValueError("Learning rates must be positive.")
        if self.warmup_epochs < 0:
            raise ValueError("warmup_epochs must be >= 0.")
        self.protocol, self.precision = check_choice(self.protocol, self.precision)  # ValueError naming them
        from calibprompt.training.learners import learner_name

        self.learner = learner_name(self.learner)  # ValueError naming the learners
        self.learner_params = dict(self.learner_params or {})

    def to_dict(self) -> dict[str, Any]:
        """The hyperparameters (what a checkpoint records as ``config``); the resolved ``settings`` are
        recorded apart, as ``protocol_settings``; ``learner`` and ``learner_params`` only when not the
        default (coop's records are unchanged)."""
        out = asdict(self)
        out.pop("settings")
        return without_default_learner(out)

    @property
    def learner_kind(self) -> str:
        """``"prompt"`` (trained by :func:`train_prompts`' loop) or ``"feature"`` (:func:`train_features`)."""
        from calibprompt.training.learners import get_learner

        return getattr(get_learner(self.learner), "kind", "prompt")


@dataclass
class StepInfo:
    """Progress after one optimisation step (what ``on_step`` receives)."""

    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based within the epoch
    steps_per_epoch: int
    global_step: int
    total_steps: int
    loss: float
    parts: dict[str, float]
    lr: float
    elapsed: float
    eta: float

    @property
    def fraction(self) -> float:
        return self.global_step / self.total_steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    learner: PromptLearner
    config: TrainConfig
    objective_params: dict[str, float]
    history: list[dict[str, float]]  # per epoch: mean loss and parts, lr, train accuracy
    seconds: float
    steps: int
    device: str
    settings: dict[str, Any] = field(default_factory=dict)  # the protocol's resolved choices (resolve_settings)
    recipe: dict[str, Any] = field(default_factory=dict)  # a feature learner's training recipe (train_features)


def resolve_settings(config: TrainConfig, family: str | None) -> dict[str, Any]:
    """The concrete choices of a run on a backbone family: ``config.settings`` when they were resolved for
    that family already (by the job, or by :func:`setup_run`), else
    :func:`~calibprompt.training.protocols.resolve_protocol` (the protocol's, with an explicit
    ``config.precision`` or ``config.warmup_lr`` on top)."""
    if config.settings is not None and config.settings.get("family") == (family or "").lower():
        return dict(config.settings)
    return resolve_protocol(config.protocol, family, precision=config.precision, warmup_lr=config.warmup_lr)


def learning_rate(epoch: int, config: TrainConfig, family: str | None = None) -> float:
    """Learning rate of 0-based ``epoch``: the warm-up lr during warm-up (``config.warmup_lr``, else the
    protocol's for the backbone ``family``), then ``lr * (1 + cos(pi * (epoch - warmup) / epochs)) / 2``
    (Dassl's constant warm-up + cosine)."""
    if epoch < config.warmup_epochs:
        resolved = config.settings is not None and family is None  # a run's config: resolved for its family
        return float((config.settings if resolved else resolve_settings(config, family))["warmup_lr"])
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - config.warmup_epochs) / config.epochs))


@dataclass
class RunSetup:
    """Everything one run needs before its first step (what :func:`setup_run` checks and builds).

    ``features`` is (N, V, D) on the run's device, or a feature source (``fresh``); ``generator`` has
    already drawn the context initialisation, so the batch orders and view choices come next."""

    config: TrainConfig  # with the warm-up lr and precision that run
    settings: dict[str, Any]
    objective: Objective
    learner: PromptLearner
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    features: Union[torch.Tensor, FeatureSource]
    fresh: bool
    labels: torch.Tensor  # (N,)
    n_views: int
    zero_shot_text: torch.Tensor | None  # (K, D), L2-normalised
    batch: int
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs


def setup_run(backbone, classnames: Sequence[str], features: Union[torch.Tensor, FeatureSource],
              labels: Sequence[int] | torch.Tensor, config: TrainConfig | None = None, *,
              objective: Objective | None = None, task=None, zero_shot_text: torch.Tensor | None = None) -> RunSetup:
    """Check a run's inputs and build its learner, optimiser and seeded generator (the arguments are
    those of :func:`train_prompts`). Raises ``ValueError`` for inconsistent inputs."""
    config = config or TrainConfig()
    settings = resolve_settings(config, backbone.family)  # the job's, when it resolved them for this family
    config = replace(config, warmup_lr=settings["warmup_lr"], precision=settings["precision"],
                     settings=settings)  # what ran
    objective = objective or build_objective(config.method, backbone_family=backbone.family, task=task,
                                             mmce_scale=settings["mmce_scale"], **config.loss_params)
    device = backbone.device
    if device.type == "cpu" and settings["precision"] == "fp16":
        logger.warning("Training in fp16 autocast on the CPU: this may be slow (CPUs lack fast fp16 kernels).")
    labels_t = torch.as_tensor(labels, dtype=torch.long, device=device)
    fresh = callable(features)  # a feature source: every step encodes its batch anew
    if fresh:
        n, n_views = labels_t.shape[0], 1
        if hasattr(features, "__len__") and len(features) != n:
            raise ValueError(f"The feature source has {len(features)} images but there are {n} labels.")
    else:
        features = features.to(device, torch.float32)
        if features.dim() == 2:
            features = features.unsqueeze(1)
        n, n_views = features.shape[0], features.shape[1]
    if labels_t.shape != (n,):
        raise ValueError(f"Got {n} feature rows but {labels_t.numel()} labels.")
    if n == 0:
        raise ValueError("No training images.")
    if int(labels_t.min()) < 0 or int(labels_t.max()) >= len(classnames):
        raise ValueError(f"Labels must lie in [0, {len(classnames)}).")
    zs_text = None
    if objective.method.needs_zero_shot:
        if zero_shot_text is None:
            raise ValueError(f"Method {objective.method.name!r} needs the zero-shot class features (zero_shot_text).")
        zs_text = F.normalize(zero_shot_text.to(device, torch.float32), dim=-1)

    generator = torch.Generator().manual_seed(int(config.seed))
    layout = dict(n_ctx=config.n_ctx, ctx_init=config.ctx_init, class_specific=config.class_specific,
                  class_token_position=config.class_token_position, generator=generator,
                  double_embedding=settings["double_embedding"])
    if config.learner == defaults.LEARNER:
        learner = PromptLearner(backbone, classnames, **layout)
    else:
        learner = _registry_prompt_learner(backbone, classnames, config, objective, layout, zs_text)
    optimizer = torch.optim.SGD(learner.parameters(), lr=learning_rate(0, config), momentum=config.momentum,
                                weight_decay=config.weight_decay)
    batch = min(config.batch_size, n)
    return RunSetup(config, settings, objective, learner, optimizer, generator, features, fresh, labels_t, n_views,
                    zs_text, batch, n // batch)  # incomplete last batches are dropped, as in the reference


def _registry_prompt_learner(backbone, classnames: Sequence[str], config: TrainConfig, objective: Objective,
                             layout: dict[str, Any], zero_shot_text: torch.Tensor | None):
    """A prompt learner of the registry (``config.learner``: cocoop, kgcoop, prograd...) with the run's
    prompt layout and ``config.learner_params``; ``ValueError`` for a feature learner or a method it
    cannot train with (:func:`~calibprompt.training.learners.check_learner_method`)."""
    from calibprompt.training.learners import check_learner_method, create_learner

    if config.learner_kind != "prompt":
        raise ValueError(f"Learner {config.learner!r} trains on cached image features: use train_features "
                         "(the prompt learners are coop, cocoop, kgcoop, prograd).")
    check_learner_method(config.learner, objective)
    params = {**layout, **config.learner_params}
    if zero_shot_text is not None:
        params.setdefault("zero_shot_text", zero_shot_text)
    return create_learner(config.learner, backbone, list(classnames), **params)


def _batch_features(run: RunSetup, device, idx: torch.Tensor, views: torch.Tensor, global_step: int) -> torch.Tensor:
    """The batch's image features (B, D): the feature source's fresh encoding at this step, or each image's
    cached view ``views[idx]``."""
    if run.fresh:
        return run.features(global_step, idx).to(device, torch.float32)
    return run.features[idx.to(device), views[idx].to(device)]


def _registry_step(run: RunSetup, backbone, idx: torch.Tensor, views: torch.Tensor, global_step: int,
                   target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """A registry prompt learner's step (as :func:`_train_step`): ``out = learner(image)`` under the run's
    precision, then in fp32 the objective on ``out.logits`` and ``out.text_features`` plus
    ``learner.regularizers(out)``, ``learner.backward(loss, out)`` and an SGD step."""
    learner, device = run.learner, backbone.device
    with autocast(device, run.settings["precision"]):
        image = _batch_features(run, device, idx, views, global_step)
        out = learner(image)
    zs_logits = None
    if run.objective.method.needs_zero_shot:
        zs_text = run.zero_shot_text if run.zero_shot_text is not None else learner.zero_shot_text
        zs_logits = backbone.logit_scale * F.normalize(image.float(), dim=-1) @ zs_text.to(device).T
    text = out.text_features.float() if out.text_features is not None else None
    loss, parts = run.objective(out.logits.float(), target, text_features=text, zero_shot_logits=zs_logits)
    for key, value in learner.regularizers(out).items():
        parts[key] = value
        loss = loss + value
    run.optimizer.zero_grad(set_to_none=True)
    learner.backward(loss, out)
    run.optimizer.step()
    return loss, parts, out.logits


def _train_step(run: RunSetup, backbone, idx: torch.Tensor, views: torch.Tensor, global_step: int,
                target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One optimisation step on the batch ``idx`` (B,): image features (a cached view ``views[idx]``, or the
    feature source's fresh encoding), ``logits = logit_scale * image @ text.T`` (B, K) under the run's
    compute precision, the objective in fp32, an SGD step. Returns ``(loss, parts, logits)``. A registry
    prompt learner (``config.learner`` other than coop) steps through :func:`_registry_step`."""
    if not isinstance(run.learner, PromptLearner):
        return _registry_step(run, backbone, idx, views, global_step, target)
    device, scale = backbone.device, backbone.logit_scale
    with autocast(device, run.settings["precision"]):
        image = _batch_features(run, device, idx, views, global_step)
        text = run.learner.encode_text(normalize=True)
        logits = scale * image @ text.T
        zs_logits = scale * image @ run.zero_shot_text.T if run.zero_shot_text is not None else None
    logits, text = logits.float(), text.float()  # the loss in fp32, whatever the compute precision
    zs_logits = zs_logits.float() if zs_logits is not None else None
    loss, parts = run.objective(logits, target, text_features=text, zero_shot_logits=zs_logits)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return loss, parts, logits


def train_prompts(backbone, classnames: Sequence[str], features: Union[torch.Tensor, FeatureSource],
                  labels: Sequence[int] | torch.Tensor,
                  config: TrainConfig | None = None, *, objective: Objective | None = None, task=None,
                  zero_shot_text: torch.Tensor | None = None,
                  on_step: Callable[[StepInfo], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Learn a prompt context for ``classnames`` from precomputed image features.

    Args:
        backbone: the frozen :class:`~calibprompt.backbones.loading.Backbone` (its device is used).
        classnames: K class names, in label order.
        features: L2-normalised image features, (N, D) or (N, V, D) with V augmented views per image;
            or a feature source called every step, ``features(step, indices) -> (B, D)`` (fresh
            augmentation, :class:`~calibprompt.training.features.FreshViews`).
        labels: (N,) integer labels.
        config: hyperparameters (:class:`TrainConfig`; the paper's protocol by default).
        objective: the loss; default ``build_objective(config.method, backbone_family=..., task=task,
            mmce_scale=<the protocol's>, **config.loss_params)`` (the paper's alpha/beta for the task
            and backbone family).
        zero_shot_text: (K, D) zero-shot class features, needed by the ZS-Norm / ZS-penalty methods.
        on_step: called after every step with a :class:`StepInfo`.
        should_stop: polled before every step; when it returns true, :class:`TrainingCancelled` is raised.

    Many runs on one backbone train faster together: :func:`calibprompt.training.batched.train_many`.
    A feature learner (``config.learner``: an adapter or a probe) trains through :func:`train_features`.
    """
    if config is not None and config.learner_kind == "feature":
        return train_features(backbone, classnames, features, labels, config, objective=objective, task=task,
                              zero_shot_text=zero_shot_text, on_step=on_step, should_stop=should_stop)
    run = setup_run(backbone, classnames, features, labels, config, objective=objective, task=task,
                    zero_shot_text=zero_shot_text)
    config, settings, learner, optimizer, generator = run.config, run.settings, run.learner, run.optimizer, run.generator
    device = backbone.device
    labels_t, batch, steps_per_epoch, total_steps = run.labels, run.batch, run.steps_per_epoch, run.total_steps
    n = labels_t.shape[0]
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    global_step = 0
    learner.train()
    for epoch in range(config.epochs):
        lr = learning_rate(epoch, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = torch.randperm(n, generator=generator)
        views = torch.randint(run.n_views, (n,), generator=generator)
        sums: dict[str, float] = {}
        correct = 0
        for step in range(steps_per_epoch):
            if should_stop is not None and should_stop():
                raise TrainingCancelled(f"Stopped by request at epoch {epoch + 1}, step {step + 1}.")
            idx = order[step * batch:(step + 1) * batch]
            target = labels_t[idx.to(device)]
            loss, parts, logits = _train_step(run, backbone, idx, views, global_step, target)
            global_step += 1
            values = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            correct += int((logits.detach().argmax(1) == target).sum())
            if on_step is not None:
                elapsed = time.perf_counter() - start
                on_step(StepInfo(epoch + 1, config.epochs, step + 1, steps_per_epoch, global_step, total_steps,
                                 values["loss"], {k: v for k, v in values.items() if k != "loss"}, lr, elapsed,
                                 elapsed / global_step * (total_steps - global_step)))
        epoch_row = {k: v / steps_per_epoch for k, v in sums.items()}
        epoch_row.update(epoch=epoch + 1, lr=lr, train_accuracy=correct / (steps_per_epoch * batch))
        history.append(epoch_row)
    learner.eval()
    return TrainResult(learner, config, dict(run.objective.params), history, time.perf_counter() - start, global_step,
                       str(device), settings)


def train_features(backbone, classnames: Sequence[str], features: torch.Tensor, labels: Sequence[int] | torch.Tensor,
                   config: TrainConfig, *, objective: Objective | None = None, task=None,
                   zero_shot_text: torch.Tensor | None = None,
                   on_step: Callable[[StepInfo], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train a feature learner (``config.learner``: clip-adapter, tip-adapter-f, linear-probe, lp++, clap) on
    cached image features (N, D) or (N, V, D) with
    :func:`~calibprompt.training.learners.base.train_learner`: the learner's own published recipe (its
    epochs included; ``config.epochs`` is the prompt learners'), seeded with ``config.seed``, with any of
    :data:`calibprompt.defaults.LEARNER_RECIPE_KEYS` in ``config.learner_params`` on top (the other params
    go to the learner's constructor); the recipe that ran is ``TrainResult.recipe``. ``on_step`` is called
    once per epoch; ``should_stop`` is polled per epoch. ``ValueError`` for a fresh-augmentation feature
    source or a method the learner cannot take (naming what works)."""
    from calibprompt.training.learners import check_learner_method, create_learner, get_learner
    from calibprompt.training.learners.base import train_learner

    if callable(features):
        raise ValueError(f"Learner {config.learner!r} trains on cached image features; use the 'paper' protocol "
                         "(cached views), not fresh augmentation.")
    settings = resolve_settings(config, backbone.family)
    config = replace(config, warmup_lr=settings["warmup_lr"], precision=settings["precision"], settings=settings)
    objective = objective or build_objective(config.method, backbone_family=backbone.family, task=task,
                                             mmce_scale=settings["mmce_scale"], **config.loss_params)
    check_learner_method(config.learner, objective)  # before any work
    recipe = {k: v for k, v in config.learner_params.items() if k in defaults.LEARNER_RECIPE_KEYS}
    params = {k: v for k, v in config.learner_params.items() if k not in defaults.LEARNER_RECIPE_KEYS}
    if zero_shot_text is not None:
        params.setdefault("zero_shot_text", F.normalize(zero_shot_text.float(), dim=-1))
    cls = get_learner(config.learner)
    params = {**cls.data_params(len(labels)), **params}  # e.g. Tip-Adapter's cache size
    if "generator" in inspect.signature(cls.__init__).parameters:  # a random initialisation, seeded by the run
        params.setdefault("generator", torch.Generator().manual_seed(int(config.seed)))
    learner = create_learner(config.learner, backbone, list(classnames), **params).to(backbone.device)
    epochs = int({**learner.defaults, **recipe}.get("epochs", 1))
    start = time.perf_counter()

    def on_epoch(row: dict[str, float]) -> None:
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"Stopped by request after epoch {row['epoch']}.")
        if on_step is not None:
            elapsed = time.perf_counter() - start
            done = int(row["epoch"])
            parts = {k: v for k, v in row.items() if k not in ("epoch", "loss")}
            on_step(StepInfo(done, epochs, 1, 1, done, epochs, float(row.get("loss", 0.0)), parts, 0.0, elapsed,
                             elapsed / done * (epochs - done)))

    if should_stop is not None and should_stop():
        raise TrainingCancelled("Stopped by request before the first epoch.")
    result = train_learner(learner, features, torch.as_tensor(labels, dtype=torch.long), objective,
                           seed=int(config.seed), on_epoch=on_epoch, **recipe)
    return TrainResult(learner, config, dict(result.objective_params), result.history, result.seconds, result.steps,
                       str(backbone.device), settings, recipe=dict(result.recipe))


def without_default_learner(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` without ``learner`` when it is coop and without empty ``learner_params``, so that a coop
    run's recorded settings and checkpoint are those of before the learners (``params`` is changed)."""
    if params.get("learner") == defaults.LEARNER:
        params.pop("learner")
    if not params.get("learner_params"):
        params.pop("learner_params", None)
    return params
