"""Many prompt-tuning runs on one backbone, trained in one loop.

A comparison table is several methods x several seeds on one backbone and dataset. Trained one by
one, each step of each run sends K prompts through the text encoder: far too little work to fill a
CPU, let alone a GPU. :func:`train_many` trains the runs side by side instead. Each run keeps all
that makes it itself: its context vectors, SGD state and learning-rate schedule, its seeded
generator (context initialisation, batch order, view choice), its image features and labels, its
objective. What the runs share is the text encoder: at every step the prompts of all runs still
training are stacked, (sum of K_r, L, W), and encoded in one forward and one backward pass; the
text features are split back per run and each run computes its own loss on its own batch::

    text_r  = split(encode(cat_r prompts_r))[r]           (K, D) per run r
    loss_r  = objective_r(scale * image_r @ text_r.T, ...)
    backward(sum_r loss_r);  optimizer_r.step()  for every r

Run r's loss depends only on its own context, so the gradient of the sum with respect to ctx_r is
run r's own gradient, and every run follows the trajectory :func:`~calibprompt.training.trainer.train_prompts`
gives it alone, up to the float rounding of larger matrix products (tested: contexts within 1e-5,
equal metrics). Runs may differ in method, seed, loss parameters, features and even epochs and
image counts (a run that has finished leaves the batch); they must share the backbone, the class
names and the prompt layout (number of context vectors, class-token position, initialisation words,
double embedding) and the compute precision, so that their prompts stack.

Memory grows with the number of prompts per step; ``max_batch_prompts`` bounds it by training the
runs in consecutive chunks of at most that many prompts (whole runs per chunk).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

from calibprompt import defaults
from calibprompt.devices import autocast
from calibprompt.training.losses import Objective
from calibprompt.training.trainer import (FeatureSource, RunSetup, StepInfo, TrainConfig, TrainingCancelled,
                                          TrainResult, learning_rate, setup_run)

__all__ = ["RunInputs", "train_many", "chunk_runs", "layout_key"]


@dataclass
class RunInputs:
    """One run of a batch: what :func:`~calibprompt.training.trainer.train_prompts` takes besides the
    backbone and class names (see there for the shapes)."""

    config: TrainConfig
    features: Union[torch.Tensor, FeatureSource]  # (N, D) or (N, V, D), or a feature source
    labels: Sequence[int] | torch.Tensor  # (N,)
    objective: Objective | None = None
    zero_shot_text: torch.Tensor | None = None  # (K, D), for the methods that need zero-shot logits


def layout_key(config: TrainConfig) -> tuple:
    """What runs must share to stack their prompts: the prompt layout of their configs (the compute
    precision and double embedding follow from the protocol and are checked by :func:`train_many`)."""
    return (config.n_ctx, config.ctx_init, config.class_specific, config.class_token_position)


def chunk_runs(n_runs: int, n_classes: int, max_batch_prompts: int | None) -> list[range]:
    """Consecutive chunks of run indices with at most ``max_batch_prompts`` prompts each (at least
    one run per chunk): ``chunk_runs(9, 2, 8) == [range(0, 4), range(4, 8), range(8, 9)]``."""
    if max_batch_prompts is None:
        per_chunk = max(1, n_runs)
    else:
        if int(max_batch_prompts) < 1:
            raise ValueError(f"max_batch_prompts must be at least 1, got {max_batch_prompts}.")
        per_chunk = max(1, int(max_batch_prompts) // max(1, n_classes))
    return [range(i, min(i + per_chunk, n_runs)) for i in range(0, n_runs, per_chunk)]


class _Progress:
    """The per-epoch bookkeeping of one run in the shared loop (as :func:`train_prompts` keeps it)."""

    def __init__(self, run: RunSetup):
        self.run = run
        self.history: list[dict[str, float]] = []
        self.order = self.views = None
        self.sums: dict[str, float] = {}
        self.correct = 0
        self.lr = 0.0

    def position(self, global_step: int) -> tuple[int, int]:
        """(0-based epoch, 0-based step in it) of the run's ``global_step``-th step."""
        return divmod(global_step, self.run.steps_per_epoch)

    def begin_epoch(self, epoch: int) -> None:
        run = self.run
        self.lr = learning_rate(epoch, run.config)
        for group in run.optimizer.param_groups:
            group["lr"] = self.lr
        n = run.labels.shape[0]
        self.order = torch.randperm(n, generator=run.generator)  # the same draws, in the same order, as alone
        self.views = torch.randint(run.n_views, (n,), generator=run.generator)
        self.sums, self.correct = {}, 0

    def end_epoch(self, epoch: int) -> None:
        steps = self.run.steps_per_epoch
        row = {k: v / steps for k, v in self.sums.items()}
        row.update(epoch=epoch + 1, lr=self.lr, train_accuracy=self.correct / (steps * self.run.batch))
        self.history.append(row)


def train_many(backbone, classnames: Sequence[str], runs: Sequence[RunInputs], *, task=None,
               max_batch_prompts: int | None = defaults.MAX_BATCH_PROMPTS,
               on_step: Callable[[int, StepInfo], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> list[TrainResult]:
    """Train every run of ``runs`` as :func:`~calibprompt.training.trainer.train_prompts` would alone,
    sharing the text encoder's passes (see the module docstring); returns their results in order.

    Args:
        backbone: the frozen backbone all runs share.
        classnames: the K class names all runs share.
        runs: the runs (:class:`RunInputs`).
        task: the task, for the methods whose default parameters depend on it.
        max_batch_prompts: at most this many prompts per text-encoder pass (``None``: all runs at once);
            runs are trained in consecutive chunks of whole runs.
        on_step: ``on_step(i, info)`` after every step of run ``i`` (its index in ``runs``).
        should_stop: polled before every shared step; when true, :class:`TrainingCancelled` is raised.

    ``TrainResult.seconds`` of each run is its chunk's wall time divided by the chunk's runs. Only plain
    ``coop`` runs stack; another learner (``config.learner``) is refused: train it with ``train_prompts``.
    """
    others = sorted({r.config.learner for r in runs if r.config.learner != defaults.LEARNER})
    if others:
        raise ValueError(f"Only {defaults.LEARNER!r} runs train together; train the learners {', '.join(others)} "
                         "one by one (calibprompt.training.trainer.train_prompts).")
    setups = [setup_run(backbone, classnames, r.features, r.labels, r.config, objective=r.objective, task=task,
                        zero_shot_text=r.zero_shot_text) for r in runs]
    if not setups:
        return []
    keys = {(layout_key(s.config), s.settings["precision"], s.settings["double_embedding"]) for s in setups}
    if len(keys) > 1:
        raise ValueError("Runs trained together must share the prompt layout (n_ctx, ctx_init, class_specific, "
                         f"class_token_position), precision and embedding; got {len(keys)} different ones.")
    results: list[TrainResult | None] = [None] * len(setups)
    for chunk in chunk_runs(len(setups), len(classnames), max_batch_prompts):
        for i, result in zip(chunk, _train_chunk(backbone, [setups[i] for i in chunk], list(chunk),
                                                 on_step, should_stop)):
            results[i] = result
    return results


def _train_chunk(backbone, setups: list[RunSetup], indices: list[int],
                 on_step: Callable[[int, StepInfo], None] | None,
                 should_stop: Callable[[], bool] | None) -> list[TrainResult]:
    """The shared loop over one chunk of runs."""
    device, scale = backbone.device, backbone.logit_scale
    tower = setups[0].learner.tower
    precision = setups[0].settings["precision"]
    progress = [_Progress(s) for s in setups]
    token_ids = torch.cat([s.learner.token_ids for s in setups])  # (sum K_r, L)
    sizes = [s.learner.num_classes for s in setups]
    longest = max(s.total_steps for s in setups)
    start = time.perf_counter()
    for s in setups:
        s.learner.train()
    for global_step in range(longest):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"Stopped by request at step {global_step + 1} of {longest}.")
        active = [i for i, s in enumerate(setups) if global_step < s.total_steps]
        batches = []
        for i in active:
            p, run = progress[i], setups[i]
            epoch, step = p.position(global_step)
            if step == 0:
                p.begin_epoch(epoch)
            idx = p.order[step * run.batch:(step + 1) * run.batch]
            batches.append((idx, run.labels[idx.to(device)]))
        ids = token_ids if len(active) == len(setups) else torch.cat([setups[i].learner.token_ids for i in active])
        with autocast(device, precision):
            prompts = torch.cat([setups[i].learner() for i in active])  # (sum K_r, L, W)
            texts = torch.nn.functional.normalize(tower.encode_embeddings(prompts, ids), dim=-1)
            texts = texts.split([sizes[i] for i in active])
            outputs = []
            for i, text, (idx, _) in zip(active, texts, batches):
                run = setups[i]
                if run.fresh:
                    image = run.features(global_step, idx).to(device, torch.float32)
                else:
                    image = run.features[idx.to(device), progress[i].views[idx].to(device)]
                zs = scale * image @ run.zero_shot_text.T if run.zero_shot_text is not None else None
                outputs.append((scale * image @ text.T, text, zs))
        total = None
        values_per_run = []
        for i, (logits, text, zs), (_, target) in zip(active, outputs, batches):
            logits, text = logits.float(), text.float()  # the loss in fp32, whatever the compute precision
            loss, parts = setups[i].objective(logits, target, text_features=text,
                                              zero_shot_logits=zs.float() if zs is not None else None)
            total = loss if total is None else total + loss
            values_per_run.append((loss, parts, logits, target))
        for i in active:
            setups[i].optimizer.zero_grad(set_to_none=True)
        total.backward()
        for i in active:
            setups[i].optimizer.step()

        elapsed = time.perf_counter() - start
        for i, (loss, parts, logits, target) in zip(active, values_per_run):
            p, run = progress[i], setups[i]
            values = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}
            for key, value in values.items():
                p.sums[key] = p.sums.get(key, 0.0) + value
            p.correct += int((logits.detach().argmax(1) == target).sum())
            epoch, step = p.position(global_step)
            done = global_step + 1
            if on_step is not None:
                on_step(indices[i], StepInfo(epoch + 1, run.config.epochs, step + 1, run.steps_per_epoch, done,
                                             run.total_steps, values["loss"],
                                             {k: v for k, v in values.items() if k != "loss"}, p.lr, elapsed,
                                             elapsed / done * (run.total_steps - done)))
            if step + 1 == run.steps_per_epoch:
                p.end_epoch(epoch)
    seconds = (time.perf_counter() - start) / len(setups)
    results = []
    for s, p in zip(setups, progress):
        s.learner.eval()
        results.append(TrainResult(s.learner, s.config, dict(s.objective.params), p.history, seconds, s.total_steps,
                                   str(device), s.settings))
    return results
