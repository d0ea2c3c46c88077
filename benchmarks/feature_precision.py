"""How much mixed precision moves image features and the calibration measured with them.

For each precision (fp32, bf16, fp16 autocast of the image encoder) the plain features of a task's
test images are computed through :class:`calibprompt.training.features.FeatureCache`, then the
zero-shot head is evaluated on them. Printed: seconds, the cosine similarity of each feature to its
fp32 twin (min and mean), and the accuracy and ECE (percent) with each, so the difference can be
judged in the unit the paper reports.

    python benchmarks/feature_precision.py --model demo --dataset demo --json precision.json

The default model is the demo world's backbone (trained weights, so the ECE means something);
``--device cuda`` measures on a GPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calibprompt import defaults  # noqa: E402
from calibprompt.backbones import load_backbone  # noqa: E402
from calibprompt.data.layouts import few_shot_split  # noqa: E402
from calibprompt.fileio import atomic_write_json  # noqa: E402
from calibprompt.data.resolve import open_dataset  # noqa: E402
from calibprompt.runs.jobs import evaluate_zero_shot  # noqa: E402
from calibprompt.training.features import FeatureCache  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--shots", type=int, default=defaults.SHOTS, help="the split's shots (its test images are used)")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import calibprompt.demo

    calibprompt.demo.register()
    backbone = load_backbone(args.model, device=args.device)
    task, dataset = open_dataset(args.dataset)
    _, test = few_shot_split(dataset, args.shots, defaults.SEED)
    out = {"model": args.model, "dataset": args.dataset, "device": str(backbone.device), "test_images": len(test),
           "torch_threads": torch.get_num_threads(), "precisions": {}}
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions.split(","):
            cache = FeatureCache(backbone, root=Path(tmp) / precision, precision=precision)
            start = time.perf_counter()
            feats = cache.plain(test.paths)
            seconds = time.perf_counter() - start
            report = evaluate_zero_shot(backbone, task, test, cache, n_boot=50).report
            reference = feats if reference is None else reference
            cosine = torch.nn.functional.cosine_similarity(feats, reference, dim=-1)
            out["precisions"][precision] = {
                "seconds": seconds, "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
                "accuracy": 100 * float(report["accuracy"]), "ece": 100 * float(report["ece"])}
    print(f"{args.model} on {out['device']}, zero-shot on {len(test)} test images of {args.dataset}:")
    for precision, row in out["precisions"].items():
        print(f"  {precision}: {row['seconds']:6.1f} s, cosine to fp32 min {row['cosine_min']:.5f} mean "
              f"{row['cosine_mean']:.5f}, accuracy {row['accuracy']:.2f} %, ECE {row['ece']:.2f} %")
    if args.json:
        atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
