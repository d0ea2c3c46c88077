"""Zero-shot accuracy and confidence of the demo backbone as the stain/scanner shift grows.

This is how the shift of the demo tasks' standard splits was chosen: the shift at which zero-shot
on the 9-class task is partly right (the paper's zero-shot regime), decided before any prompt was
trained on it.

    python benchmarks/demo_shift_sweep.py [--model demo] [--per-class 60] [--shifts 0,0.5,1,1.5,2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calibprompt import Engine, calibration_report, load_backbone, load_task  # noqa: E402
from calibprompt.demo import world  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--shifts", default="0,0.5,1,1.5,2")
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args(argv)
    backbone = load_backbone(args.model, device="cpu")
    print(f"{args.model}: logit scale {backbone.logit_scale:.1f}")
    print("task         shift  accuracy  ECE    mean confidence")
    for task_name in ("demo", "demo-binary"):
        task = load_task(task_name)
        engine = Engine(backbone)
        engine.add_zero_shot("zs", task)
        for shift in (float(s) for s in args.shifts.split(",")):
            images, labels = [], []
            for label, cls in enumerate(task.class_ids):
                for i in range(args.per_class):
                    images.append(world.generate_patch(cls, 2_000_000 + i, args.seed, shift=shift)[0])
                    labels.append(label)
            probs = engine.predict(images)["zs"].probs
            r = calibration_report(probs, np.array(labels), n_boot=0)
            print(f"{task_name:12s} {shift:5.2f}  {r['accuracy']:8.3f}  {r['ece']:.3f}  {r['mean_confidence']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
