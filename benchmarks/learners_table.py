"""The learners table: every few-shot learner under CoOp's loss (CE) and CalibPrompt's, on the demo world.

Two protocols, through the product's own path (:func:`calibprompt.runs.compare.run_comparison`, every run
stored, so an interrupted table resumes):

1. **all classes**: seeds 1-3, 8 shots, evaluated on the standard split's 900 test images. Per learner
   and method: seconds per run (training), accuracy, ECE and AURC (mean +- std over seeds), and the paired
   difference against CoOp under the same loss (``learner - coop``), in accuracy and in ECE, with a paired
   bootstrap p-value over the (test image, seed) pairs of the three seeds
   (:func:`calibprompt.evaluation.card.paired_bootstrap` on the stacked predictions: each resample keeps
   an image's two predictions together);
2. **base-to-novel**: the same runs on the first 5 classes (base), evaluated on the base classes and on
   the 4 novel ones with the novel class names only, and the harmonic mean (HM) of each.

Nothing is tuned to the demo: every learner runs with its authors' recipe (``--epochs`` sets the prompt
learners' epochs). A learner x loss that does not exist (AS on frozen or absent class text features) and a
learner with a weight per class on novel classes are reported as such, not left out silently.

    python benchmarks/learners_table.py --seeds 1,2,3 --shots 8 --markdown learners.md --json learners.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
import time
from typing import Any, Sequence

import numpy as np

from calibprompt import defaults
from calibprompt.backbones import load_backbone
from calibprompt.demo import register
from calibprompt.evaluation.card import paired_bootstrap
from calibprompt.runs.compare import parse_learners, run_comparison
from calibprompt.runs.store import RunStore
from calibprompt.training.learners import list_learners

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helper
from _report import write_outputs  # noqa: E402

METHODS = ("coop", "calibprompt")


def _pm(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * std:.{digits}f}"


def _stacked(store: RunStore, run_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The runs' per-image probabilities stacked over seeds (N * S, K), labels and image keys in the same order."""
    probs, labels, keys = [], [], []
    for run_id in run_ids:
        rows = sorted(store.predictions(run_id), key=lambda r: Path(r["path"]).parts[-3:])
        probs.append(np.array([r["probs"] for r in rows], dtype=np.float64))
        labels.extend(int(r["label"]) for r in rows)
        keys.extend(f"{run_id[-4:]}:{'/'.join(Path(r['path']).parts[-3:])}" for r in rows)  # split/class/file
    return np.concatenate(probs), np.array(labels), keys


def paired_against_coop(store: RunStore, rows: list[dict[str, Any]], n_boot: int) -> dict[tuple, dict[str, Any]]:
    """``{(learner, method): {"d_accuracy", "p_accuracy", "d_ece", "p_ece"}}``: each learner's runs against
    coop's under the same method, paired by test image and seed (the paired bootstrap of
    :func:`~calibprompt.evaluation.card.paired_bootstrap`)."""
    runs: dict[tuple, list[str]] = {}
    for row in rows:
        if row.get("run_id") and not row["refused"]:
            runs.setdefault((row["learner"], row["method"]), []).append(row["run_id"])
    out = {}
    for (learner, method), ids in runs.items():
        if learner == "coop" or ("coop", method) not in runs:
            continue
        probs_a, labels_a, keys_a = _stacked(store, ids)
        probs_b, labels_b, keys_b = _stacked(store, runs[("coop", method)])
        if [k.split(":", 1)[1] for k in keys_a] != [k.split(":", 1)[1] for k in keys_b] or \
                not np.array_equal(labels_a, labels_b):
            raise RuntimeError(f"{learner}/{method} and coop/{method} were not evaluated on the same images.")
        entry = {}
        for metric in ("accuracy", "ece"):
            test = paired_bootstrap(probs_a, probs_b, labels_a, metric=metric, n_boot=n_boot, seed=0)
            entry[f"d_{metric}"], entry[f"p_{metric}"] = test["difference"], test["p_value"]
        out[(learner, method)] = entry
    return out


def all_classes_table(rows: list[dict[str, Any]], paired: dict[tuple, dict[str, Any]]) -> str:
    lines = ["| learner | loss | s / run | accuracy % | ECE % | AURC % | Δacc vs coop (p) | ΔECE vs coop (p) |",
             "|---|---|---|---|---|---|---|---|"]
    for learner, method in dict.fromkeys((r["learner"], r["method"]) for r in rows):
        group = [r for r in rows if (r["learner"], r["method"]) == (learner, method)]
        if any(r["refused"] for r in group):
            lines.append(f"| {learner} | {method} | refused: needs learned class text features (AS) |||||||")
            continue
        seconds = statistics.fmean(r["train_seconds"] for r in group)
        d = paired.get((learner, method))
        delta = (lambda m: f"{100 * d[f'd_{m}']:+.1f} ({d[f'p_{m}']:.3f})") if d else (lambda m: "-")
        lines.append(f"| {learner} | {method} | {seconds:.1f} | {_pm([r['accuracy'] for r in group])} | "
                     f"{_pm([r['ece'] for r in group])} | {_pm([r['aurc'] for r in group])} | "
                     f"{delta('accuracy')} | {delta('ece')} |")
    return "\n".join(lines) + "\n"


def base_to_novel_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| learner | loss | base acc % | novel acc % | HM acc % | base ECE % | novel ECE % | HM ECE % | "
             "novel ECE + DAC % |", "|---|---|---|---|---|---|---|---|---|"]
    for learner, method in dict.fromkeys((r["learner"], r["method"]) for r in rows):
        side = {s: [r for r in rows if (r["learner"], r["method"], r["side"]) == (learner, method, s)]
                for s in ("base", "novel", "hm")}
        if all(r["refused"] for r in side["base"]):
            lines.append(f"| {learner} | {method} | refused: needs learned class text features (AS) ||||||||")
            continue
        cells = [_pm([r[m] for r in side[s]]) if not any(r["refused"] for r in side[s]) else "n/a¹"
                 for m in ("accuracy", "ece") for s in ("base", "novel", "hm")]
        dac = [r["dac_ece"] for r in side["novel"] if r.get("dac_ece") is not None]
        cells.append(_pm(dac) if len(dac) == len(side["novel"]) else "-")
        lines.append(f"| {learner} | {method} | " + " | ".join(cells) + " |")
    lines.append("\n¹ the learner learns a weight (or cache values) per training class: it has none for a novel class.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", default=",".join(list_learners()))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--shots", type=int, default=defaults.SHOTS)
    parser.add_argument("--epochs", type=int, default=defaults.EPOCHS, help="the prompt learners' epochs")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--no-base-to-novel", action="store_true")
    parser.add_argument("--n-boot", type=int, default=2000, help="paired bootstrap resamples")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    register()
    learners, methods = parse_learners(args.learners), args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    backbone, store = load_backbone("demo", device="cpu"), RunStore()
    common = dict(shots=args.shots, epochs=args.epochs, backbone=backbone, learners=learners, store=store,
                  resume=True, n_boot=200)
    t0 = time.perf_counter()
    rows = run_comparison("demo", args.dataset, methods, seeds, **common)
    paired = paired_against_coop(store, rows, args.n_boot)
    b2n = [] if args.no_base_to_novel else run_comparison("demo", args.dataset, methods, seeds, base_to_novel=True,
                                                          **common)
    seconds = time.perf_counter() - t0
    text = (f"Demo world, {args.shots} shots, seeds {args.seeds}, {args.epochs} prompt epochs "
            f"({seconds:.0f} s on this machine, reused runs included)\n\n**All classes** (9 classes, "
            f"900 test images)\n\n{all_classes_table(rows, paired)}")
    if b2n:
        text += f"\n**Base-to-novel** (5 base, 4 novel classes)\n\n{base_to_novel_table(b2n)}"
    write_outputs(text, args.markdown, args.json,
                  {"rows": rows, "base_to_novel": b2n, "seconds": seconds,
                   "paired": [{"learner": k[0], "method": k[1], **v} for k, v in paired.items()]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
