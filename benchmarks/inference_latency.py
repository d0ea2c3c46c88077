"""Cost of comparing three methods side by side, against predicting with zero-shot alone.

Builds a BiomedCLIP-sized architecture twin (ViT-B/16 + PubMedBERT-shaped BERT, random weights, real
sizes; no download), an engine with a zero-shot head and two learned-prompt heads (CoOp and
CalibPrompt; untrained context is enough for timing), and times ``Engine.predict`` on a batch of
images with the zero-shot head alone and with all three heads. The image cache is cleared before
every repetition, so each timing includes the image encoder. Text features are computed when a head
is added, once, and are not part of a prediction.

    python benchmarks/inference_latency.py --json latency.json [--images 8] [--repeats 3] [--device auto]

Prints images/s of the backbone on this machine and writes
``{"backbone", "ratio", "zero_shot_seconds", "three_heads_seconds", "naive_three_heads_seconds", ...}``.
Target: ratio <= 1.2.

Beside the timings, two figures that do not depend on the machine: ``images_encoded`` (how many images
went through the image encoder for one prediction of each kind: ``images`` for zero-shot alone and for
the three heads together, three times that for one pass per head) and ``max_abs_diff`` (the largest
difference between a head's probabilities predicted with the other two and alone: 0 up to float error).
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calibprompt import Engine, PromptLearner, load_backbone, load_task  # noqa: E402
from calibprompt.fileio import atomic_write_json  # noqa: E402


def _images(n: int, size: int = 256, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


@contextlib.contextmanager
def count_encoded(backbone):
    """Count the images that go through ``backbone.model.encode_image`` (N per call with N images) inside the
    block; yields a one-item list holding the running count."""
    count = [0]
    original = backbone.model.encode_image

    def counted(pixels, *args, **kwargs):
        count[0] += int(pixels.shape[0])
        return original(pixels, *args, **kwargs)

    backbone.model.encode_image = counted
    try:
        yield count
    finally:
        backbone.model.encode_image = original


def deterministic_figures(backbone, engine, images, heads: list[str]) -> dict:
    """``images_encoded`` per kind of prediction, and ``max_abs_diff`` of each head together vs alone."""
    encoded = {}
    for kind, groups in (("zero_shot", [heads[:1]]), ("three_heads", [heads]), ("naive_three_heads",
                                                                              [[h] for h in heads])):
        with count_encoded(backbone) as count:
            for group in groups:
                engine.clear_image_cache()
                engine.predict(images, heads=group)
        encoded[kind] = count[0]
    engine.clear_image_cache()
    together = engine.predict(images, heads=heads)
    diff = 0.0
    for head in heads:
        engine.clear_image_cache()
        alone = engine.predict(images, heads=[head])[head].probs
        diff = max(diff, float(np.abs(together[head].probs - alone).max()))
    return {"images_encoded": encoded, "max_abs_diff": diff}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="biomedclip", help="registered backbone whose twin is timed")
    parser.add_argument("--task", default="covid")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args(argv)

    backbone = load_backbone(args.backbone, device=args.device, pretrained=False)
    task = load_task(args.task)
    engine = Engine(backbone)
    engine.add_zero_shot("zero-shot", task)
    gen = torch.Generator().manual_seed(0)
    engine.add_prompt("coop", PromptLearner(backbone, task.classnames, n_ctx=16, generator=gen))
    engine.add_prompt("calibprompt", PromptLearner(backbone, task.classnames, n_ctx=16, generator=gen))
    images = _images(args.images)
    three = ["zero-shot", "coop", "calibprompt"]

    def zero_shot_only():
        engine.clear_image_cache()
        engine.predict(images, heads=["zero-shot"])

    def three_heads():
        engine.clear_image_cache()
        engine.predict(images, heads=three)

    def naive_three_heads():  # what an app without a shared image pass would do
        for head in three:
            engine.clear_image_cache()
            engine.predict(images, heads=[head])

    zero_shot_only()  # warm-up (allocator, kernels)
    zs = _time(zero_shot_only, args.repeats)
    both = _time(three_heads, args.repeats)
    naive = _time(naive_three_heads, max(1, args.repeats // 2))
    zs_s, three_s, naive_s = statistics.median(zs), statistics.median(both), statistics.median(naive)
    result = {
        "backbone": f"{args.backbone} (architecture twin, random weights)",
        "ratio": three_s / zs_s,
        "naive_ratio": naive_s / zs_s,
        "zero_shot_seconds": zs_s,
        "three_heads_seconds": three_s,
        "naive_three_heads_seconds": naive_s,
        "images": args.images,
        "images_per_second": args.images / zs_s,
        "repeats": args.repeats,
        "device": str(backbone.device),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        **deterministic_figures(backbone, engine, images, three),
    }
    print(f"{args.backbone} twin on {backbone.device}: {result['images_per_second']:.2f} images/s "
          f"({args.images} images, median of {args.repeats})")
    print(f"zero-shot alone {zs_s:.3f} s; zero-shot + CoOp + CalibPrompt {three_s:.3f} s; "
          f"ratio {result['ratio']:.3f} (target <= 1.2); one image pass per head would be {result['naive_ratio']:.2f}x")
    print(f"images through the encoder per prediction: {result['images_encoded']}; largest difference of a "
          f"head's probabilities with the others vs alone {result['max_abs_diff']:.1e}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
