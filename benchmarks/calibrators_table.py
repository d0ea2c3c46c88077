"""The calibrators table: train-time calibration against post-hoc maps and label-free test-time tuning.

On the demo world, for zero-shot, CoOp and CalibPrompt (8 shots, seeds 1-3, trained through
:func:`calibprompt.runs.compare.run_comparison`, so stored runs are reused):

- **raw**: each prompt on the standard split's 900 test images;
- **post-hoc** (labelled images): temperature, vector, Dirichlet, histogram binning and isotonic regression,
  each cross-fitted on those 900 images (fitted on one half, applied to the other, both ways:
  :func:`calibprompt.evaluation.calibrators.calibrator_reports`);
- **test-time** (no labels): C-TPT and O-TPT (:mod:`calibprompt.training.test_time`, 63 views, one step),
  which cost a backward pass per image, so they run on a stratified subset (``--tt-per-class`` test images
  per class, the same for every prompt and seed); the raw prompt is scored on that subset too, so each
  test-time row has its own raw baseline beside it. Zero-shot's test-time rows start from TPT's
  "a photo of a" context (its raw row uses the task's template ensemble).

Accuracy, ECE and AURC in %, mean ± std over seeds; seconds per image for the test-time rows.

    python benchmarks/calibrators_table.py --seeds 1,2,3 --tt-per-class 5 --markdown calibrators.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
import time
from typing import Any, Sequence


from calibprompt import defaults
from calibprompt.backbones import load_backbone
from calibprompt.data.class_splits import stratified_subset
from calibprompt.data.layouts import few_shot_split
from calibprompt.data.resolve import open_dataset
from calibprompt.demo import register
from calibprompt.evaluation.calibrators import cross_fit, list_calibrators
from calibprompt.evaluation.metrics import expected_calibration_error
from calibprompt.evaluation.selective import risk_coverage
from calibprompt.runs.compare import run_comparison
from calibprompt.runs.evaluation import evaluate_prompt, evaluate_test_time, test_time_prompt
from calibprompt.runs.store import RunStore

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helper
from _report import write_outputs  # noqa: E402

POST_HOC = [n for n in list_calibrators() if n != "dac"]
TEST_TIME = ("c-tpt", "o-tpt")


def _pm(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * std:.{digits}f}"


def _rows_for_prompt(backbone, task, test, subset, prompt_name: str, checkpoint, n_bins: int) -> list[dict[str, Any]]:
    """The raw, post-hoc and test-time rows of one prompt on one seed's test split."""
    evaluation = evaluate_prompt(backbone, task, test, checkpoint, n_bins=n_bins, n_boot=0)
    labels = evaluation.labels
    mapped = {"raw": (evaluation.probs, 0)}
    for name in POST_HOC:  # each cross-fitted on the test images (one half fits, the other is mapped)
        fit = cross_fit(name, evaluation.logits, labels)
        mapped[name] = (fit.probs, min(fit.fitted_on))
    rows = [{"prompt": prompt_name, "calibration": name, "kind": "raw" if name == "raw" else "post-hoc",
             "images": len(test), "accuracy": float((probs.argmax(1) == labels).mean()),
             "ece": expected_calibration_error(probs, labels, n_bins=n_bins),
             "aurc": risk_coverage(probs, labels)["aurc"], "fitted_on": fitted_on, "seconds_per_image": None}
            for name, (probs, fitted_on) in mapped.items()]
    prompt = test_time_prompt(backbone, task, checkpoint)
    for method in TEST_TIME:
        tt = evaluate_test_time(backbone, task, subset, prompt, method, n_bins=n_bins)
        if method == TEST_TIME[0]:  # the untuned prompt on the same subset, once
            rows.append({"prompt": prompt_name, "calibration": "raw (test-time subset)", "kind": "raw",
                         "images": tt["images"], "accuracy": tt["untuned"]["accuracy"], "ece": tt["untuned"]["ece"],
                         "aurc": tt["untuned"]["aurc"], "fitted_on": 0, "seconds_per_image": None})
        rows.append({"prompt": prompt_name, "calibration": tt["title"], "kind": "test-time (no labels)",
                     "images": tt["images"], "accuracy": tt["accuracy"], "ece": tt["ece"], "aurc": tt["aurc"],
                     "fitted_on": 0, "seconds_per_image": tt["seconds_per_image"]})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| prompt | calibration | needs | images | accuracy % | ECE % | AURC % | s / image |",
             "|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["prompt"], r["calibration"]) for r in rows):
        group = [r for r in rows if (r["prompt"], r["calibration"]) == key]
        kind = group[0]["kind"]
        needs = {"raw": "-", "post-hoc": f"labels ({group[0]['fitted_on']} images)"}.get(kind, "no labels")
        aurc = _pm([r["aurc"] for r in group])
        seconds = [r["seconds_per_image"] for r in group if r["seconds_per_image"] is not None]
        speed = f"{statistics.fmean(seconds):.2f}" if seconds else "-"
        lines.append(f"| {key[0]} | {key[1]} | {needs} | {group[0]['images']} | {_pm([r['accuracy'] for r in group])} "
                     f"| {_pm([r['ece'] for r in group])} | {aurc} | {speed} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--shots", type=int, default=defaults.SHOTS)
    parser.add_argument("--epochs", type=int, default=defaults.EPOCHS)
    parser.add_argument("--tt-per-class", type=int, default=5, help="test images per class for the test-time rows")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    register()
    seeds = [int(s) for s in args.seeds.split(",")]
    backbone, store = load_backbone("demo", device="cpu"), RunStore()
    t0 = time.perf_counter()
    runs = run_comparison("demo", "demo", ["coop", "calibprompt"], seeds, shots=args.shots, epochs=args.epochs,
                          backbone=backbone, store=store, resume=True, n_boot=200)
    task, dataset = open_dataset("demo")
    rows = []
    for seed in seeds:
        _, test = few_shot_split(dataset, args.shots, seed)
        subset = stratified_subset(test, args.tt_per_class)
        checkpoints = {"zero-shot": None, **{r["method"]: store.get_run(r["run_id"]).checkpoint
                                             for r in runs if r["seed"] == seed}}
        for name, checkpoint in checkpoints.items():
            rows += [{**r, "seed": seed} for r in _rows_for_prompt(backbone, task, test, subset, name, checkpoint,
                                                                  defaults.N_BINS)]
    seconds = time.perf_counter() - t0
    text = (f"Demo world, {args.shots} shots, seeds {args.seeds}, {args.epochs} epochs; test-time rows on "
            f"{args.tt_per_class} test images per class ({seconds:.0f} s on this machine, reused runs included)\n\n"
            + table(rows))
    write_outputs(text, args.markdown, args.json, {"rows": rows, "seconds": seconds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
