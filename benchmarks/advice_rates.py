"""How often the advice says Answer, Refer or Not checked on held-out labelled images, and how often
the answering method is right in each case.

The calibration (sets, accuracy per confidence, likeness reference) is fitted on the even-indexed test
images of a demo task and the advice given on the odd-indexed ones, as a user's new images would be.

    python benchmarks/advice_rates.py --task demo --json advice.json
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np


def measure(task: str, coverage: float, answer_with: str | None) -> dict:
    import calibprompt.demo
    from calibprompt.backbones import load_backbone
    from calibprompt.service.advice import assess_predictions, fit_calibration
    from calibprompt.service.core import Core

    calibprompt.demo.register()
    core = Core(load_backbone("demo", device="cpu"), "benchmark")
    state = core.set_task(core.new_session(), task)
    ev = core.evaluate(state, task)
    n = len(ev.labels)
    fit, held = np.arange(n) % 2 == 0, np.arange(n) % 2 == 1
    feats = np.asarray(ev.features, dtype=np.float32)
    calibration = fit_calibration(f"{task} (even half)", feats[fit], ev.labels[fit],
                                  {h: p[fit] for h, p in ev.probs.items()}, ev.task.classnames, 1 - coverage)
    advice = assess_predictions({h: p[held] for h, p in ev.probs.items()}, feats[held], calibration,
                                ev.task.classnames, answer_with=answer_with)
    labels = ev.labels[held]
    counts, right = Counter(), Counter()
    for a, y in zip(advice, labels):
        counts[a["verdict"]] += 1
        right[a["verdict"]] += int(a["methods"][a["answering_method"]]["prediction"] == ev.task.classnames[int(y)])
    failed = Counter(name for a in advice for name, c in a["checks"].items() if c["state"] == "failed")
    return {"task": task, "coverage": coverage, "answering_method": advice[0]["answering_method"],
            "held_out_images": int(held.sum()),
            "share": {v: counts[v] / len(advice) for v in counts},
            "accuracy": {v: right[v] / counts[v] for v in counts},
            "accuracy_overall": sum(right.values()) / len(advice),
            "failed_checks": dict(failed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="demo", choices=["demo", "demo-binary"])
    parser.add_argument("--coverage", type=float, default=0.9)
    parser.add_argument("--answer-with", default=None)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if not 0.5 <= args.coverage < 1:
        parser.error("--coverage must be from 0.5 to below 1, e.g. 0.9")
    out = measure(args.task, args.coverage, args.answer_with)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        from calibprompt.fileio import atomic_write_json

        atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
