"""A whole comparison table, cold: batched, the same runs one by one, and the reference-style loop.

The table is several methods x several seeds on one backbone and dataset, from nothing cached
(image features included), through the product's own path (:func:`calibprompt.runs.compare.run_comparison`,
which stores every run, its checkpoint, metrics and predictions):

- ``batched``: every run of the table in one loop (one text-encoder pass per step over all runs'
  prompts, :mod:`calibprompt.training.batched`), image features computed once for every image;
- ``sequential``: the same runs one after another (``batched=False``), sharing the feature cache;
- ``reference``: the reference-style loop of CoOp and the CalibPrompt code (every batch decoded,
  augmented and encoded, prompts at full context length, every run encoding the test images anew).
  It is not run to the end: ``--reference-steps`` of its steps are timed (after one warm-up step)
  and multiplied by its step count, and the time to encode the test images once is multiplied by
  the number of runs. The JSON says so (``reference_estimated``).

``max_abs_diff`` is the largest difference between any run's context vectors trained batched and
alone, and the metrics of both are compared method by method; ``same_runs`` says both tables hold the same
(method, seed) runs and ``max_metric_diff`` is the largest difference of any of their metrics. The synthetic images have strongly
class-dependent colours, so that even a random-weight twin's features separate the classes
(``separability``: nearest-class-mean accuracy of the test features) and accuracies are not 0.
The runs use ``--lr 0.5`` rather than the paper's 0.002: a random-weight BERT passes far less
gradient to the context than a trained one, and at 0.002 the twin's prompt barely moves in 20
epochs (accuracy 0 on both sides: the classes' initial order); at 0.5 it learns the synthetic
classes. The learning rate changes no timing.

    python benchmarks/table_speed.py --seeds 1,2,3 --methods coop,calibprompt,ls --epochs 20 --json table.json

The default backbone is a BiomedCLIP-sized architecture twin (random weights, real sizes). By
default the training pool holds exactly ``--shots`` images per class, so every seed trains on the
same images (the seeds differ in initialisation, batch order and views); ``--pool`` makes it larger.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import make_images, reference_training  # noqa: E402

from calibprompt import defaults  # noqa: E402
from calibprompt.fileio import atomic_write_json  # noqa: E402
from calibprompt.backbones import BACKBONES, load_backbone  # noqa: E402
from calibprompt.data import load_image  # noqa: E402
from calibprompt.prompting.checkpoint import checkpoint_paths  # noqa: E402
from calibprompt.runs.compare import parse_methods, run_comparison  # noqa: E402
from calibprompt.runs.store import RunStore  # noqa: E402
from calibprompt.training.trainer import TrainConfig  # noqa: E402


def _dataset(root: Path, classes: int, pool: int, test_per_class: int, size: int) -> list[str]:
    names = [f"tissue type {i}" for i in range(classes)]
    for split, per_class, seed in (("train", pool, 0), ("test", test_per_class, 1)):
        for label, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True)
            paths, _ = make_images(folder, label + 1, per_class, size, seed=seed + 10 * label)
            for path in paths:  # make_images writes classes 0..label; keep this class's images only
                if not path.name.startswith(f"c{label}_"):
                    path.unlink()
    return names


def _table(backbone, root: Path, home: Path, args, methods, seeds, batched: bool) -> dict:
    os.environ["CALIBPROMPT_HOME"] = str(home)  # a fresh data directory: nothing cached
    store = RunStore()
    start = time.perf_counter()
    rows = run_comparison(backbone.name, str(root), methods, seeds, shots=args.shots, epochs=args.epochs, lr=args.lr,
                          device=str(backbone.device), store=store, n_boot=50, batched=batched,
                          max_batch_prompts=args.max_batch_prompts, backbone=backbone)
    seconds = time.perf_counter() - start
    records = [store.get_run(r["run_id"]) for r in rows]
    contexts = {(r["method"], r["seed"]): _context(store.get_run(r["run_id"]).checkpoint) for r in rows}
    feature = sum(rec.metrics["feature_seconds"] for rec in records)
    train = sum(rec.metrics["train_seconds"] for rec in records)
    return {"seconds": seconds, "feature_seconds": feature, "train_seconds": train,
            "other_seconds": seconds - feature - train, "rows": rows, "contexts": contexts}


def _context(checkpoint: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(checkpoint_paths(checkpoint)[0]))["ctx"]


def _separability(backbone, root: Path, names: list[str]) -> float:
    """Nearest-class-mean accuracy of plain test features, means from the training images."""
    def feats(split):
        out = []
        for label, name in enumerate(names):
            paths = sorted((root / split / name).iterdir())
            out += [(f, label) for f in backbone.encode_image([load_image(p) for p in paths])]
        return out

    train, test = feats("train"), feats("test")
    means = torch.stack([torch.stack([f for f, y in train if y == k]).mean(0) for k in range(len(names))])
    predicted = torch.stack([f for f, _ in test]) @ torch.nn.functional.normalize(means, dim=-1).T
    return float((predicted.argmax(1) == torch.tensor([y for _, y in test])).float().mean())


def _reference(backbone, root: Path, names: list[str], args, n_runs: int) -> dict:
    paths = [p for name in names for p in sorted((root / "train" / name).iterdir())][: args.shots * len(names)]
    labels = [k for k, name in enumerate(names) for _ in range(args.shots)]
    config = TrainConfig(method="coop", epochs=args.epochs, seed=1)
    reference_training(backbone, names, paths, labels, config, max_steps=1)  # warm-up step
    start = time.perf_counter()
    reference_training(backbone, names, paths, labels, config, max_steps=args.reference_steps)
    per_step = (time.perf_counter() - start) / args.reference_steps
    tests = [p for name in names for p in sorted((root / "test" / name).iterdir())]
    start = time.perf_counter()
    backbone.encode_image([load_image(p) for p in tests])
    test_seconds = time.perf_counter() - start
    steps = len(paths) // min(config.batch_size, len(paths)) * args.epochs
    return {"seconds": n_runs * (steps * per_step + test_seconds), "step_seconds": per_step,
            "steps_per_run": steps, "test_encode_seconds": test_seconds, "timed_steps": args.reference_steps}


def _metric_agreement(batched: list[dict], sequential: list[dict]) -> tuple[bool, float]:
    """Whether both tables hold the same (method, seed) runs, and the largest difference of any metric of
    :data:`calibprompt.runs.compare.METRIC_FIELDS` between a run trained batched and alone."""
    from calibprompt.runs.compare import METRIC_FIELDS

    one = {(r["method"], r["seed"]): r for r in batched}
    other = {(r["method"], r["seed"]): r for r in sequential}
    diff = 0.0
    for key in set(one) & set(other):
        for field in METRIC_FIELDS:
            a, b = one[key].get(field), other[key].get(field)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                diff = max(diff, abs(float(a) - float(b)))
    return len(one) == len(batched) and set(one) == set(other), diff


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="biomedclip",
                        help="a registered backbone; hub models are built as random-weight twins")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--pool", type=int, help="training images per class in the dataset (default: --shots)")
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--methods", default="coop,calibprompt,ls")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--lr", type=float, default=0.5,
                        help="SGD learning rate of every run (default 0.5; see the module docstring)")
    parser.add_argument("--max-batch-prompts", type=int, default=defaults.MAX_BATCH_PROMPTS)
    parser.add_argument("--reference-steps", type=int, default=3, help="reference-loop steps to time")
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def _print(result: dict, args, batched: dict, sequential: dict, reference: dict) -> None:
    """The table's figures in words."""
    n_runs, metric_diff, separability, per_method = (result["runs"], result["max_ece_diff"], result["separability"],
                                                     result["per_method"])
    print(f"{result['backbone']} on {result['device']}: {n_runs} runs ({','.join(result['methods'])} x seeds "
          f"{args.seeds}), {args.classes} classes x {args.shots} shots, {args.epochs} epochs, cold")
    for name, table in (("batched", batched), ("one by one", sequential)):
        print(f"  {name:<11} {table['seconds']:7.1f} s  (features {table['feature_seconds']:.1f} s, training "
              f"{table['train_seconds']:.1f} s, evaluation and storage {table['other_seconds']:.1f} s)")
    print(f"  reference   {reference['seconds']:7.1f} s  (estimated: {reference['step_seconds']:.2f} s per step x "
          f"{reference['steps_per_run']} steps x {n_runs} runs, + {reference['test_encode_seconds']:.1f} s of test "
          f"images per run; {args.reference_steps} steps timed)")
    print(f"  speedup {result['speedup_vs_sequential']:.2f}x over one by one (training alone "
          f"{result['training_speedup_vs_sequential']:.2f}x), {result['speedup_vs_reference']:.1f}x over the reference")
    print(f"  largest context difference batched vs alone {result['max_abs_diff']:.1e}, largest ECE difference "
          f"{metric_diff:.1e}, accuracies equal: {result['accuracies_equal']}; separability {separability:.2f}")
    print(f"  the same runs both ways: {result['same_runs']}; largest difference of any metric "
          f"{result['max_metric_diff']:.1e}")
    for method, sides in per_method.items():
        print(f"    {method:<12} accuracy {sides['batched']['accuracy']:.3f} / {sides['sequential']['accuracy']:.3f}, "
              f"ECE {sides['batched']['ece']:.4f} / {sides['sequential']['ece']:.4f} (batched / one by one)")


def main(argv=None) -> int:
    args = _parse(argv)
    methods = [m for m in parse_methods(args.methods) if m != "zeroshot"]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    spec = BACKBONES.get(args.backbone)
    twin = spec is not None and spec.model_id is not None
    backbone = load_backbone(args.backbone, device=args.device, pretrained=not twin)
    size = backbone.preprocess_cfg.get("size", 224) if backbone.preprocess_cfg else 224
    size = size[0] if isinstance(size, (list, tuple)) else size
    home_before = os.environ.get("CALIBPROMPT_HOME")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = _dataset(tmp / "data", args.classes, args.pool or args.shots, args.test_per_class, size)
        try:  # a warm-up table first (one run, one epoch), so that neither side pays first-call costs
            _table(backbone, tmp / "data", tmp / "home-warm-up", argparse.Namespace(**{**vars(args), "epochs": 1}),
                   methods[:1], seeds[:1], batched=True)
            batched = _table(backbone, tmp / "data", tmp / "home-batched", args, methods, seeds, batched=True)
            sequential = _table(backbone, tmp / "data", tmp / "home-sequential", args, methods, seeds, batched=False)
        finally:
            if home_before is None:
                os.environ.pop("CALIBPROMPT_HOME", None)
            else:
                os.environ["CALIBPROMPT_HOME"] = home_before
        n_runs = len(methods) * len(seeds)
        reference = _reference(backbone, tmp / "data", names, args, n_runs)
        separability = _separability(backbone, tmp / "data", names)

    diffs = [float((batched["contexts"][k] - sequential["contexts"][k]).abs().max()) for k in batched["contexts"]]
    per_method = {}
    for method in methods:
        for name, table in (("batched", batched), ("sequential", sequential)):
            rows = [r for r in table["rows"] if r["method"] == method]
            per_method.setdefault(method, {})[name] = {
                "accuracy": statistics.fmean(r["accuracy"] for r in rows), "ece": statistics.fmean(r["ece"] for r in rows)}
    metric_diff = max(abs(a["ece"] - b["ece"]) for a, b in zip(batched["rows"], sequential["rows"]))
    same_runs, all_metrics_diff = _metric_agreement(batched["rows"], sequential["rows"])
    result = {
        "backbone": f"{args.backbone}{' (architecture twin, random weights)' if twin else ''}",
        "device": str(backbone.device),
        "torch_threads": torch.get_num_threads(),
        "runs": n_runs, "methods": methods, "seeds": seeds, "epochs": args.epochs, "classes": args.classes,
        "shots": args.shots, "lr": args.lr, "pool": args.pool or args.shots, "test_per_class": args.test_per_class,
        "max_batch_prompts": args.max_batch_prompts,
        "speedup_vs_sequential": sequential["seconds"] / batched["seconds"],
        "speedup_vs_reference": reference["seconds"] / batched["seconds"],
        "training_speedup_vs_sequential": sequential["train_seconds"] / batched["train_seconds"],
        "max_abs_diff": max(diffs),
        "max_ece_diff": metric_diff,
        "same_runs": same_runs,
        "max_metric_diff": all_metrics_diff,
        "accuracies_equal": all(a["accuracy"] == b["accuracy"] for a, b in zip(batched["rows"], sequential["rows"])),
        "batched_seconds": batched["seconds"], "batched_feature_seconds": batched["feature_seconds"],
        "batched_train_seconds": batched["train_seconds"], "batched_other_seconds": batched["other_seconds"],
        "sequential_seconds": sequential["seconds"], "sequential_feature_seconds": sequential["feature_seconds"],
        "sequential_train_seconds": sequential["train_seconds"], "sequential_other_seconds": sequential["other_seconds"],
        "reference_seconds": reference["seconds"], "reference_estimated": True,
        "reference_step_seconds": reference["step_seconds"], "reference_steps_per_run": reference["steps_per_run"],
        "reference_timed_steps": reference["timed_steps"], "reference_test_encode_seconds": reference["test_encode_seconds"],
        "separability": separability,
        "per_method": per_method,
    }
    _print(result, args, batched, sequential, reference)
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
