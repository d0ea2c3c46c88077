"""Prompt-tuning speed: the project's way against the reference way, same method, data, seed and epochs.

- Project's way: image features of a fixed number of augmented views per training image are
  computed once (and cached on disk, reused by every later method and seed), prompt sequences are
  cut to their content, and each step runs only the text encoder.
- Reference way (CoOp / the CalibPrompt code): every batch is read from disk, augmented (random
  resized crop 0.08-1, flip) and pushed through the image encoder, and the prompts run at the full
  context length (256 tokens for BiomedCLIP).

Both train the same PromptLearner with the same loss, optimiser, schedule, seed and epochs, and are
scored on the same test images. ``seconds`` is the project's training time with the feature cache
filled (as for every run after the first on the same images); ``feature_seconds`` is the one-time
cost of filling it, and ``cold_speedup`` counts it in.

    python benchmarks/train_speed.py --json speed.json [--backbone biomedclip] [--epochs 20] [--views 10]

The default backbone is a BiomedCLIP-sized architecture twin (random weights, real sizes). The
synthetic images have class-dependent colours, so that even random-weight features separate the
classes and the two accuracies can be compared. ``steps`` and ``reference_steps`` (optimiser steps of each
side: the same schedule) and ``test_images`` (each accuracy is a count of them) do not depend on the machine.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calibprompt.data import load_image  # noqa: E402
from calibprompt.fileio import atomic_write_json  # noqa: E402
from calibprompt.training.features import FeatureCache, train_transform  # noqa: E402
from calibprompt.training.losses import build_objective  # noqa: E402
from calibprompt.backbones import BACKBONES, load_backbone  # noqa: E402
from calibprompt.prompting.learner import PromptLearner  # noqa: E402
from calibprompt.training.trainer import TrainConfig, learning_rate, train_prompts  # noqa: E402

COLOURS = [(235, 225, 232), (70, 45, 130), (205, 85, 150), (150, 60, 90), (120, 140, 200), (90, 160, 110),
           (200, 180, 90), (60, 60, 60), (160, 110, 60)]


def make_images(folder: Path, classes: int, per_class: int, size: int, seed: int) -> tuple[list[Path], list[int]]:
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for label in range(classes):
        for i in range(per_class):
            pixels = np.clip(np.array(COLOURS[label]) + rng.normal(0, 30, size=(size, size, 3)), 0, 255)
            path = folder / f"c{label}_{i}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            paths.append(path)
            labels.append(label)
    return paths, labels


def reference_training(backbone, classnames, paths, labels, config: TrainConfig,
                       max_steps: int | None = None) -> PromptLearner:
    """CoOp's loop: decode, augment and encode every batch; prompts at full context length (stopped
    after ``max_steps`` steps when given, to time a few of them)."""
    objective = build_objective(config.method, backbone_family=backbone.family)
    generator = torch.Generator().manual_seed(config.seed)
    learner = PromptLearner(backbone, classnames, n_ctx=config.n_ctx, generator=generator, trim=False)
    optimizer = torch.optim.SGD(learner.parameters(), lr=learning_rate(0, config), momentum=config.momentum,
                                weight_decay=config.weight_decay)
    augment = train_transform(backbone.preprocess)
    labels_t = torch.tensor(labels)
    n, batch = len(paths), min(config.batch_size, len(paths))
    for epoch in range(config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(epoch, config)
        order = torch.randperm(n, generator=generator)
        for step in range(n // batch):
            if max_steps is not None and epoch * (n // batch) + step >= max_steps:
                return learner
            idx = order[step * batch:(step + 1) * batch]
            pixels = torch.stack([augment(load_image(paths[i])) for i in idx])
            image = backbone.encode_pixels(pixels, normalize=True).to(backbone.device)
            text = learner.encode_text(normalize=True)
            logits = backbone.logit_scale * image @ text.T
            loss, _ = objective(logits, labels_t[idx].to(backbone.device), text_features=text)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return learner


def accuracy(learner: PromptLearner, feats: torch.Tensor, labels: list[int], scale: float) -> float:
    with torch.no_grad():
        logits = scale * feats.to(learner.ctx.device) @ learner.encode_text().T
    return float((logits.argmax(1).cpu() == torch.tensor(labels)).float().mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="biomedclip",
                        help="a registered backbone; hub models are built as random-weight twins")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--method", default="coop")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    spec = BACKBONES.get(args.backbone)
    twin = spec is not None and spec.model_id is not None  # hub models are timed as random-weight twins
    backbone = load_backbone(args.backbone, device=args.device, pretrained=not twin)
    size = backbone.preprocess_cfg.get("size", 224) if backbone.preprocess_cfg else 224
    classnames = [f"tissue type {i}" for i in range(args.classes)]
    config = TrainConfig(method=args.method, epochs=args.epochs, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "train").mkdir()
        (tmp / "test").mkdir()
        train_paths, train_labels = make_images(tmp / "train", args.classes, args.shots, size, seed=0)
        test_paths, test_labels = make_images(tmp / "test", args.classes, args.test_per_class, size, seed=1)
        cache = FeatureCache(backbone, root=tmp / "features")
        test_feats = cache.plain(test_paths)  # the same evaluation for both sides, not timed

        start = time.perf_counter()
        train_feats = cache.augmented(train_paths, args.views)
        feature_seconds = time.perf_counter() - start
        start = time.perf_counter()
        ours = train_prompts(backbone, classnames, train_feats, train_labels, config)
        seconds = time.perf_counter() - start

        start = time.perf_counter()
        reference = reference_training(backbone, classnames, train_paths, train_labels, config)
        reference_seconds = time.perf_counter() - start

        result = {
            "backbone": f"{args.backbone}{' (architecture twin, random weights)' if twin else ''}",
            "speedup": reference_seconds / seconds,
            "cold_speedup": reference_seconds / (seconds + feature_seconds),
            "seconds": seconds,
            "feature_seconds": feature_seconds,
            "reference_seconds": reference_seconds,
            "accuracy": accuracy(ours.learner, test_feats, test_labels, backbone.logit_scale),
            "reference_accuracy": accuracy(reference, test_feats, test_labels, backbone.logit_scale),
            "method": args.method, "epochs": args.epochs, "views": args.views, "classes": args.classes,
            "shots": args.shots, "steps": ours.steps, "device": str(backbone.device),
            # the same schedule on both sides: epochs x (training images // batch) optimiser steps
            "reference_steps": args.epochs * (len(train_paths) // min(config.batch_size, len(train_paths))),
            "test_images": len(test_labels),
            "torch_threads": torch.get_num_threads(),
        }
    print(f"{result['backbone']} on {result['device']}, {args.classes} classes x {args.shots} shots, "
          f"{args.epochs} epochs, {args.method}:")
    print(f"  project's way  {seconds:8.1f} s training (+ {feature_seconds:.1f} s once for {args.views} cached views "
          f"per image), accuracy {result['accuracy']:.3f}")
    print(f"  reference way  {reference_seconds:8.1f} s, accuracy {result['reference_accuracy']:.3f}")
    print(f"  speedup {result['speedup']:.1f}x (target >= 10); counting the feature cache fill: "
          f"{result['cold_speedup']:.1f}x")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
