"""The ``calibprompt`` command line (also ``python -m calibprompt``).

Each sub-command is a thin function over the library; results go to stdout (tables, or JSON with
``--json``), diagnostics to stderr through logging. A user error exits with status 2 and one line
that says what to do.
"""
from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
import time
from typing import Sequence

from calibprompt import defaults

logger = logging.getLogger("calibprompt")


def _print_table(rows: list[dict], columns: Sequence[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def cmd_backbones(args: argparse.Namespace) -> int:
    from calibprompt.backbones import BACKBONES

    rows = [{"name": s.name, "family": s.family,
             "source": s.model_id or ("bundled (offline)" if s.local_dir else "random twin (offline)"),
             "context": s.context_length, "size": s.size, "licence": s.licence, "suits": ",".join(s.suits)}
            for s in BACKBONES.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, ["name", "family", "source", "context", "size", "licence", "suits"])
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from calibprompt.prompting.tasks import list_tasks, load_task

    rows = []
    for name in list_tasks():
        task = load_task(name)
        rows.append({"name": name, "classes": task.num_classes, "modality": task.modality, "title": task.title})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, ["name", "classes", "modality", "title"])
    return 0


def _parse_prompt_args(values: Sequence[str]) -> list[tuple[str, str]]:
    heads = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--prompt takes NAME=CHECKPOINT (e.g. coop=runs/coop.json), got {value!r}.")
        heads.append((name, path))
    return heads


def cmd_predict(args: argparse.Namespace) -> int:
    from calibprompt.prompting.engine import Engine
    from calibprompt.backbones import load_backbone
    from calibprompt.prompting.tasks import Task, load_task

    task = Task.from_classnames(args.classes.split(",")) if args.classes else load_task(args.task)
    backbone = load_backbone(args.model, device=args.device)
    engine = Engine(backbone)
    engine.add_zero_shot("zero-shot", task)
    for name, path in _parse_prompt_args(args.prompt):
        engine.add_prompt(name, path)
    results = engine.predict(args.images)
    if args.json:
        out = [{"image": str(img), **{head: pred.as_dicts()[i] for head, pred in results.items()}}
               for i, img in enumerate(args.images)]
        print(json.dumps(out, indent=2))
        return 0
    rows = []
    for i, img in enumerate(args.images):
        for head, pred in results.items():
            label, prob = pred.top(i, 1)[0]
            rows.append({"image": str(img), "method": head, "prediction": label, "confidence": f"{prob:.3f}"})
    _print_table(rows, ["image", "method", "prediction", "confidence"])
    return 0


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, file=sys.stderr)


def _loss_params(args: argparse.Namespace) -> dict[str, float]:
    return {k: v for k, v in (("alpha", args.alpha), ("beta", args.beta)) if v is not None}


def _check_train_args(args: argparse.Namespace, seeds: Sequence[int]) -> None:
    """Refuse an absurd train/compare request before anything is trained or recorded: the numbers
    against ``calibprompt.defaults.LIMITS``, the shots against the smallest class of the dataset's
    training pool, and that every seed's split leaves test images (a ValueError: exit status 2)."""
    from calibprompt.data.layouts import few_shot_split
    from calibprompt.data.resolve import open_dataset
    from calibprompt.runs.requests import check_number, check_train_request, class_counts_for_split

    for seed in seeds:
        check_train_request(shots=args.shots, epochs=args.epochs, seed=seed, alpha=args.alpha, beta=args.beta,
                            n_bins=args.bins, n_views=getattr(args, "views", None))
    for field, option in (("shots", "shots"), ("epochs", "epochs"), ("n_bins", "bins"), ("n_views", "views"),
                          ("alpha", "alpha"), ("beta", "beta"), ("seed", "seed")):
        if getattr(args, option, None) is not None:  # checked above: now as the numbers the run uses
            setattr(args, option, check_number(field, getattr(args, option)))
    _, dataset = open_dataset(args.dataset, args.task)
    check_train_request(shots=args.shots, epochs=args.epochs, seed=seeds[0],
                        class_counts=class_counts_for_split(dataset))
    for seed in seeds:
        few_shot_split(dataset, args.shots, seed)  # e.g. a single-folder dataset with no image left to test on


def cmd_train(args: argparse.Namespace) -> int:
    from calibprompt.runs.jobs import TrainJob, run_train_job
    from calibprompt.runs.store import RunStore

    _check_train_args(args, [args.seed])
    job = TrainJob(model=args.model, dataset=args.dataset, task=args.task, shots=args.shots, seed=args.seed,
                   method=args.method, epochs=args.epochs, loss_params=_loss_params(args), device=args.device,
                   n_views=args.views, n_bins=args.bins, protocol=args.protocol, precision=args.precision,
                   learner=getattr(args, "learner", None) or defaults.LEARNER)  # a refused combination: before any run
    store = RunStore()
    bar = None

    def on_step(info):
        nonlocal bar
        if bar is None:
            bar = _progress_bar(info.total_steps, f"{job.method} seed {job.seed}")
        bar.update(1)
        bar.set_postfix(epoch=f"{info.epoch}/{info.epochs}", loss=f"{info.loss:.3f}", lr=f"{info.lr:.1e}")

    try:
        record = run_train_job(job, store, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(record.to_dict(), indent=2))
        return 0 if record.status == "done" else 1
    print(f"run {record.id}: {record.status}")
    if record.status == "done":
        m = record.metrics
        print(f"accuracy {m['accuracy']:.4f}  ECE {m['ece']:.4f}  MCE {m['mce']:.4f}  ACE {m['ace']:.4f}  "
              f"NLL {m['nll']:.4f}  Brier {m['brier']:.4f}  ({m['test_images']} test images, "
              f"{m['train_seconds']:.1f} s training)")
        print(f"checkpoint: {record.checkpoint}")
    return 0 if record.status == "done" else 1


def _print_uncertainty_summary(head: str, summary: dict) -> None:
    """Print :func:`calibprompt.evaluation.uncertainty.uncertainty_summary` for ``head``."""
    sel, conf = summary["selective"], summary["conformal"]
    at = ", ".join(f"{float(c):.0%} coverage {v:.4f}" for c, v in sel["selective_accuracy"].items())
    print(f"selective prediction ({head}, {sel['n']} test images): AURC {sel['aurc']:.4f}; accuracy of the most "
          f"confident answers at {at}")
    print(f"conformal sets at alpha={conf['alpha']:g} ({head}; cross-fitted: {conf['cross_fit']}):")
    if conf["unavailable"]:
        print(f"  not available: {conf['unavailable']}")
        return
    rows = [{"score": name, "coverage": f"{v['coverage']:.4f}", "mean set size": f"{v['mean_set_size']:.3f}"}
            for name, v in conf["scores"].items()]
    _print_table(rows, ["score", "coverage", "mean set size"])


def _miscoverage(args: argparse.Namespace) -> float:
    """The conformal sets' miscoverage ``1 - --coverage`` (or an older parser's ``--alpha``), checked before
    any work (NaN fails too)."""
    coverage = getattr(args, "coverage", None)
    if coverage is None and getattr(args, "alpha", None) is not None:
        if not 0.0 < args.alpha < 1.0:
            raise ValueError(f"--alpha must lie in (0, 1), e.g. 0.1 for 90% prediction sets; got {args.alpha:g}.")
        return float(args.alpha)
    coverage = defaults.COVERAGE if coverage is None else coverage
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"--coverage must lie in (0, 1), e.g. 0.9 for 90% prediction sets; got {coverage:g}.")
    return round(1.0 - float(coverage), 10)


def _evaluation_request(args: argparse.Namespace, store) -> dict:
    """``evaluate``'s arguments, with a stored ``--run``'s checkpoint, model, dataset, task and split as
    defaults; ``method`` names the run's method (None for a checkpoint or zero-shot)."""
    checkpoint, run = args.checkpoint, {}
    if args.run:
        record = store.get_run(args.run)
        if record.status != "done" or not record.checkpoint:
            raise ValueError(f"Run {args.run} is {record.status}; only a done run has a checkpoint to evaluate.")
        checkpoint, run = record.checkpoint, record.params
    model = args.model or run.get("model")
    dataset = args.dataset or run.get("dataset")
    if not model or not dataset:
        raise ValueError("Give --model and --dataset (or --run ID to reuse a run's).")
    return {"model": model, "dataset": dataset, "task": args.task or run.get("task"), "checkpoint": checkpoint,
            "shots": args.shots if args.shots is not None else run.get("shots", defaults.SHOTS),
            "seed": args.seed if args.seed is not None else run.get("seed", defaults.SEED),
            "method": run.get("method")}


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a prompt through the one pipeline (:func:`calibprompt.runs.evaluation.evaluate_split`) and
    print its report, selective prediction and conformal sets
    (:func:`calibprompt.evaluation.uncertainty.uncertainty_summary`)."""
    from calibprompt.evaluation.uncertainty import uncertainty_summary
    from calibprompt.runs.evaluation import evaluate_split
    from calibprompt.runs.store import RunStore

    alpha = _miscoverage(args)  # a bad level fails before any work
    from calibprompt.evaluation.calibrators import parse_calibrators

    calibrators = parse_calibrators(args.calibrators)
    if args.test_time:
        from calibprompt.training.test_time import get_test_time

        args.test_time = get_test_time(args.test_time).name  # ValueError naming the methods
    store = RunStore()
    request = _evaluation_request(args, store)
    method = request.pop("method")
    done = evaluate_split(store, **request, device=args.device, n_bins=args.bins)
    result, task = done.evaluation, done.task
    extra = {}
    if calibrators:
        from calibprompt.evaluation.calibrators import calibrator_reports

        extra["calibrators"] = calibrator_reports(result.logits, result.labels, calibrators, n_bins=args.bins)
    if args.test_time:
        extra["test_time"] = _test_time(args, done, request["checkpoint"])
    if args.csv:
        _write_csv(args.csv, [{k: v for k, v in r.items() if k != "probs"} | {
            f"p_{c}": p for c, p in zip(task.class_ids, r["probs"])} for r in result.rows])
    summary = uncertainty_summary(result.probs, result.labels, alpha)
    if args.json:
        _write_json(args.json, {"run_id": done.run_id, "report": result.report, "rows": result.rows, **summary,
                                "coverage": round(1.0 - alpha, 10), **extra})
    r = result.report
    print(f"{done.run_id}: {len(done.test)} images, accuracy {r['accuracy']:.4f}, ECE {r['ece']:.4f} "
          f"(95% {r['intervals']['ece'][0]:.4f}-{r['intervals']['ece'][1]:.4f}), MCE {r['mce']:.4f}, "
          f"ACE {r['ace']:.4f}, NLL {r['nll']:.4f}, Brier {r['brier']:.4f}")
    _print_uncertainty_summary(method or ("prompt" if request["checkpoint"] else "zero-shot"), summary)
    if calibrators:
        _print_calibrators(extra["calibrators"])
    if args.test_time:
        t, u = extra["test_time"], extra["test_time"]["untuned"]
        print(f"test-time {t['title']} ({t['needs']}: the labels only measure it; {t['n_views']} views + the image, "
              f"{t['steps']} step, {t['seconds_per_image']:.2f} s per image on {t['images']} images): accuracy "
              f"{t['accuracy']:.4f}, ECE {t['ece']:.4f}, NLL {t['nll']:.4f}, Brier {t['brier']:.4f} "
              f"(the same prompt untuned: accuracy {u['accuracy']:.4f}, ECE {u['ece']:.4f})")
    return 0


def _test_time(args: argparse.Namespace, done, checkpoint) -> dict:
    """``evaluate --test-time NAME``: the prompt (the checkpoint's, or TPT's "a photo of a" for zero-shot)
    tuned on each test image without labels (:func:`calibprompt.runs.evaluation.evaluate_test_time`)."""
    from tqdm.auto import tqdm

    from calibprompt.runs.evaluation import evaluate_test_time, test_time_prompt

    from calibprompt.data.class_splits import stratified_subset

    prompt = test_time_prompt(done.backbone, done.task, checkpoint)
    images = stratified_subset(done.test, args.test_time_per_class) if args.test_time_per_class else done.test
    with tqdm(total=len(images), desc=f"test-time {args.test_time}", unit="image", file=sys.stderr,
              leave=False) as bar:
        return evaluate_test_time(done.backbone, done.task, images, prompt, args.test_time, n_bins=args.bins,
                                  on_image=lambda i, n: bar.update(1))


def _print_calibrators(rows: list[dict]) -> None:
    """The post-hoc calibrators' rows (cross-fitted: each half mapped by the fit on the other half)."""
    print(f"post-hoc calibrators, cross-fitted: each map is fitted on one half of the test images (at least "
          f"{rows[-1]['fitted_on']}) and applied to the other half, both ways (accuracy, ECE in %):")
    _print_table([{"calibrator": r["calibrator"], "acc": f"{100 * r['accuracy']:.2f}", "ECE": f"{100 * r['ece']:.2f}",
                   "NLL": f"{r['nll']:.3f}", "Brier": f"{r['brier']:.3f}", "fitted on": r["fitted_on"],
                   "argmax changed": f"{100 * r['argmax_changed']:.1f}%", "seconds": f"{r['seconds']:.2f}"}
                  for r in rows], ["calibrator", "acc", "ECE", "NLL", "Brier", "fitted on", "argmax changed", "seconds"])


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else ""


def cmd_runs(args: argparse.Namespace) -> int:
    from calibprompt.runs.store import RunStore

    if getattr(args, "runs_command", None) == "share":
        return _share_run(RunStore(), args.run_id, shared=not args.unshare)
    if args.show:
        return _show_run(RunStore(), args.show, as_json=args.json, top_k=args.top_k)
    records = RunStore().list_runs(status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return 0
    rows = []
    for r in records:
        m = r.metrics or {}
        learner = r.params.get("learner", defaults.LEARNER) if r.kind == "train" else ""
        rows.append({"id": r.id, "kind": r.kind, "status": r.status, "learner": learner,
                     "method": r.params.get("method", ""), "model": r.params.get("model", ""),
                     "seed": r.params.get("seed", ""), "accuracy": _fmt(m.get("accuracy")), "ece": _fmt(m.get("ece")),
                     "shared": "yes" if r.params.get("shared") is True else ""})
    _print_table(rows, ["id", "kind", "status", "learner", "method", "model", "seed", "accuracy", "ece", "shared"])
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    """``store check``: SQLite's integrity check of the run database; ``store recover``: copy what can be
    read from a damaged one into a new file."""
    from calibprompt.paths import data_dir
    from calibprompt.runs.store import check_store, recover_store

    if args.store_command == "clean-uploads":
        return _clean_uploads(args)
    if args.store_command == "recover":
        result = recover_store(args.damaged, args.out)
        for note in result.notes:
            print(f"note: {note}")
        print(f"Recovered {result.runs} run(s) into {result.path} (with {result.method}).")
        print(f"To use it: stop calibprompt, move the current {data_dir(args.data_dir) / 'runs.db'} aside, and "
              f"rename {result.path} to runs.db in the data directory.")
        return 0
    path = data_dir(args.data_dir) / "runs.db"
    if not path.is_file():
        print(f"There is no run database at {path} (calibprompt creates one on first use). If your runs are "
              "elsewhere, give --data-dir.")
        return 1
    problems = check_store(path)
    kept = sorted(path.parent.glob("runs.db.damaged-*[0-9Z]"))
    if problems:
        print(f"The run database {path} is damaged; SQLite's integrity check reports:")
        print("\n".join(f"  {line}" for line in problems))
        print("Start the app (python app.py) to keep it aside as runs.db.damaged-<time> and start a new, empty "
              "one; then run: calibprompt store recover FILE (the kept file) to copy what can still be read.")
    else:
        print(f"ok: {path} passed SQLite's integrity check.")
    for old in kept:
        print(f"A damaged run database was kept as {old}; to copy what can be read from it, run: "
              f"calibprompt store recover {old}")
    return 1 if problems else 0


def _clean_uploads(args: argparse.Namespace) -> int:
    """``store clean-uploads [--days N]``: remove the uploaded datasets older than N days (default
    ``$CALIBPROMPT_UPLOAD_DAYS`` or 30), one line each; 0 days removes nothing."""
    import os

    from calibprompt.data.uploads import clean_uploads, upload_days
    from calibprompt.runs.requests import check_option

    if args.data_dir:
        os.environ["CALIBPROMPT_HOME"] = args.data_dir
    try:
        days = upload_days() if args.days is None else check_option("days", args.days)
    except ValueError as exc:
        raise ValueError(f"--days {exc}.") from None
    if days == 0:
        print("Nothing removed: 0 days keeps uploads forever.")
        return 0
    removed = clean_uploads(days)
    for path in removed:
        print(f"removed {path.parent.name}/{path.name}")
    print(f"Removed {len(removed)} upload(s) older than {days} days.")
    return 0


def _share_run(store, run_id: str, *, shared: bool) -> int:
    """``runs share RUN_ID [--unshare]``: the operator shares one of their runs (made at the command line, or
    before owners were kept) with every user of the app, or stops sharing it. A run started in the app belongs
    to its user: only they can share it, from the Train tab."""
    from calibprompt.service.access import LOCAL, record_owner

    owner = record_owner(store.get_run(run_id).params.get("owner"))
    if owner != LOCAL:
        who = f"the user {owner[5:]}" if owner.startswith("user:") else "a browser without a login"
        raise ValueError(f"Run {run_id} was started in the app by {who}; only its owner can share it (the Train "
                         "tab's 'Share with team', when logged in).")
    record = store.set_shared(run_id, shared)
    name = record.params.get("name") or f"Run {record.id}"
    print(f"{name} is now shared with every user of the app: it is in their prompt menus and run history."
          if shared else f"{name} is no longer shared: the app's users no longer see it.")
    return 0


def _show_run(store, run_id: str, *, as_json: bool, top_k: int) -> int:
    """One run: its parameters, metrics and, for a finished training run, what its prompt says."""
    from calibprompt.backbones import load_backbone
    from calibprompt.prompting.interpret import interpret_prompt

    record = store.get_run(run_id)
    interpretation = []
    if record.status == "done" and record.checkpoint:
        backbone = load_backbone(record.params["model"], device="cpu")
        interpretation = interpret_prompt(record.checkpoint, top_k=top_k, backbone=backbone)
    if as_json:
        print(json.dumps({**record.to_dict(), "interpretation": interpretation}, indent=2))
        return 0
    m = record.metrics or {}
    print(f"run {record.id}: {record.status}, {record.params.get('method', '')} on {record.params.get('model', '')}, "
          f"task {m.get('task', record.params.get('task', ''))}, seed {record.params.get('seed', '')}, "
          f"{record.params.get('shots', '')} shots, protocol {record.params.get('protocol', 'paper')}")
    if m:
        print("accuracy " + _fmt(m.get("accuracy")) + ", ECE " + _fmt(m.get("ece")))
    if interpretation:
        print(f"\nnearest vocabulary tokens of each context vector (Euclidean, top {top_k}):")
        _print_table([{"class": e["class"] or "(shared)", "position": e["position"],
                       "tokens": ", ".join(f"{t['token']} ({t['distance']:.3f})" for t in e["tokens"])}
                      for e in interpretation], ["class", "position", "tokens"])
    return 0


def cmd_reviews(args: argparse.Namespace) -> int:
    import csv

    from calibprompt.runs.store import RunStore

    store = RunStore()
    if args.csv:
        path = store.export_reviews_csv(args.csv, reader=args.reader, dataset=args.dataset)
        with open(path, newline="", encoding="utf-8") as handle:
            count = sum(1 for _ in csv.reader(handle)) - 1  # notes may span lines: count CSV rows, not lines
        print(f"wrote {count} review{'' if count == 1 else 's'} to {path}")
        return 0
    verdicts = store.reviews(reader=args.reader, dataset=args.dataset)
    if not verdicts:
        print("no reviews" + (" matching the filters" if args.reader or args.dataset else " yet"))
        return 0
    rows = [{"dataset": r["dataset"], "image": r["image"], "method": r["method"], "reader": r["reader"],
             "verdict": r["verdict"], "prediction": r["prediction"], "confidence": _fmt(r["confidence"]),
             "reviewed_at": r["reviewed_at"][:19].replace("T", " "),
             "note": " ".join(r["note"].split())[:40]} for r in verdicts]
    _print_table(rows, ["dataset", "image", "method", "reader", "verdict", "prediction", "confidence", "reviewed_at",
                        "note"])
    pairs = store.reader_agreement(dataset=args.dataset)
    print()
    if not pairs:
        print("reader agreement: no two readers reviewed a common case")
        return 0
    print("reader agreement (Cohen's kappa over common cases; - when undefined or fewer than 2 cases)")
    _print_table([{**p, "kappa": "-" if p["kappa"] is None else f"{p['kappa']:.3f}"} for p in pairs],
                 ["reader_a", "reader_b", "cases", "kappa"])
    return 0


def _write_json(path: str, data) -> None:
    from calibprompt.fileio import atomic_write_json

    atomic_write_json(path, data)


def _write_csv(path: str, rows: list[dict]) -> None:
    import csv
    import io

    from calibprompt.fileio import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def cmd_compare(args: argparse.Namespace) -> int:
    from calibprompt.evaluation.calibrators import parse_calibrators
    from calibprompt.runs.compare import (LEARNER_ROW_FIELDS, ROW_FIELDS, parse_learners, parse_methods, parse_shots,
                                          run_comparison, summarize)

    methods = parse_methods(args.methods)
    learners = parse_learners(args.learners) if getattr(args, "learners", None) else None
    shot_counts = parse_shots(args.shots)
    protocol_rows = bool(learners or len(shot_counts) > 1 or args.base_to_novel or args.eval_dataset)
    calibrators = parse_calibrators(args.calibrators)
    fields = (LEARNER_ROW_FIELDS if protocol_rows else ROW_FIELDS) + tuple(
        f"{n}_{k}" for n in calibrators for k in ("accuracy", "ece", "nll"))
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, e.g. 1,2,3; got {args.seeds!r}.") from None
    if not seeds:
        raise ValueError("Give at least one seed, e.g. --seeds 1,2,3.")
    for shots in shot_counts:
        args.shots = shots
        _check_train_args(args, seeds)
    from tqdm.auto import tqdm

    per_seed = len(methods) if not learners else (len(learners) * len([m for m in methods if m != "zeroshot"])
                                                 + ("zeroshot" in methods))
    bar = tqdm(total=len(seeds) * len(shot_counts) * per_seed, desc="compare", unit="run", file=sys.stderr,
               leave=False)

    def on_result(row):
        if row.get("side") not in (None, "test", "base", "source"):
            return  # a run's other sides come with it
        bar.update(1)
        if row.get("refused"):
            bar.set_postfix(learner=row["learner"], method=row["method"], seed=row["seed"], refused="yes")
            return
        bar.set_postfix(method=row["method"], seed=row["seed"], acc=f"{row['accuracy']:.3f}", ece=f"{row['ece']:.3f}")

    steps = _StepCounter(bar)

    try:
        rows = run_comparison(args.model, args.dataset, methods, seeds, task=args.task,
                              shots=shot_counts if len(shot_counts) > 1 else shot_counts[0],
                              base_to_novel=args.base_to_novel, eval_dataset=args.eval_dataset,
                              calibrators=calibrators,
                              epochs=args.epochs, n_bins=args.bins, device=args.device, loss_params=_loss_params(args),
                              on_result=on_result, protocol=args.protocol, precision=args.precision,
                              max_batch_prompts=args.max_batch_prompts, resume=args.resume,
                              n_boot=defaults.N_BOOT_TABLE, executor=_ray_executor(args, defaults.N_BOOT_TABLE),
                              on_event=_ray_event, on_step=steps.update, learners=learners)
    finally:
        bar.close()
    table = summarize(rows)
    if args.json:
        _write_json(args.json, [{k: r[k] for k in fields} for r in rows])
    if args.csv:
        _write_csv(args.csv, [{k: r[k] for k in fields} for r in rows])
    precision = f", precision {args.precision}" if args.precision else ""
    target = (", base-to-novel" if args.base_to_novel else "") + (
        f", evaluated on {args.eval_dataset} too" if args.eval_dataset else "")
    print(f"{args.model} on {args.dataset}{target}: {','.join(map(str, shot_counts))} shots, seeds "
          f"{','.join(map(str, seeds))}, {args.epochs} epochs, protocol {args.protocol}{precision} "
          f"(mean +- std over seeds; accuracy, ECE, MCE, ACE in %)")
    _print_summary(table, protocol_rows)
    said = set()
    for row in (r for r in rows if r.get("refused")):
        if (row["learner"], row["method"], row["refused"]) not in said:  # once per reason, not per seed or side
            said.add((row["learner"], row["method"], row["refused"]))
            print(f"refused: {row['learner']} x {row['method']} ({row['side']}): {row['refused']}")
    return 0


def _print_summary(table: list[dict], protocol_rows: bool) -> None:
    """The summary of a comparison, one line per (learner, method, shots, side); "-" where a row kind
    has no such metric (a harmonic-mean row has accuracy and ECE only)."""
    def cell(t, key, scale=100.0, digits=2):
        mean, std = t.get(key + "_mean"), t.get(key + "_std")
        return "-" if mean is None else f"{scale * mean:.{digits}f} +- {scale * std:.{digits}f}"

    pretty = []
    for t in table:
        entry = {"learner": t["learner"], "shots": t["shots"], "side": t["side"]} if protocol_rows else {}
        entry["method"] = t["method"]
        for key, label in (("accuracy", "acc"), ("ece", "ECE"), ("mce", "MCE"), ("ace", "ACE")):
            entry[label] = cell(t, key)
        entry["NLL"], entry["Brier"] = cell(t, "nll", 1.0, 3), cell(t, "brier", 1.0, 3)
        conf = t.get("mean_confidence_mean")
        entry["conf"] = "-" if conf is None else f"{100 * conf:.1f}"
        pretty.append(entry)
    columns = ["method", "acc", "ECE", "MCE", "ACE", "NLL", "Brier", "conf"]
    _print_table(pretty, (["learner", "shots", "side"] if protocol_rows else []) + columns)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from calibprompt.fileio import atomic_write_text
    from calibprompt.paths import datasets_dir
    from calibprompt.runs.compare import parse_learners
    from calibprompt.runs.reproduce import reproduce

    bar = None
    learners = parse_learners(args.learners) if args.learners else None

    def progress(event):
        nonlocal bar
        cell = event["cell"]
        if event["event"] == "unavailable":
            logger.warning("%s is unavailable: %s", cell.backbone, event["error"])
        elif event["event"] == "start":
            if bar is None:
                from tqdm.auto import tqdm

                bar = tqdm(total=event["todo"], desc="reproduce", unit="cell", file=sys.stderr, leave=False)
                steps.bar = bar
            learner = f"{cell.learner}/" if learners else ""
            bar.set_postfix(cell=f"{cell.backbone}/{cell.dataset}/{learner}{cell.method}/s{cell.seed}")
        elif event["event"] == "done" and bar is not None:
            bar.update(1)

    steps = _StepCounter()

    try:
        result = reproduce(args.suite, args.methods, args.seeds, args.protocol, shots=args.shots, epochs=args.epochs,
                           n_bins=args.bins, model=args.model, tolerance=args.tolerance, device=args.device,
                           dry_run=args.dry_run, progress=progress, max_batch_prompts=args.max_batch_prompts,
                           n_boot=defaults.N_BOOT_TABLE, on_event=_ray_event,
                           executor=None if args.dry_run else _ray_executor(args, defaults.N_BOOT_TABLE),
                           on_step=steps.update if not args.dry_run else None, calibrators=args.calibrators or (), learners=learners)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        _write_json(args.json, result.to_dict())
    if args.markdown:
        atomic_write_text(args.markdown, result.markdown())
    if args.dry_run:
        cells = [{"backbone": c.backbone, "dataset": c.dataset, **({"learner": c.learner} if learners else {}),
                  "method": c.method, "seed": c.seed, "paper_ece": c.paper_ece, "paper_accuracy": c.paper_accuracy,
                  "status": c.status} for c in result.cells]
        if args.csv:
            _write_csv(args.csv, cells)
        print(f"{args.suite} suite, {args.protocol} protocol: {len(result.cells)} cells, nothing run "
              f"(the paper's ECE and accuracy in %)")
        _print_table([{**c, "paper_ece": "-" if c["paper_ece"] is None else f"{c['paper_ece']:.2f}",
                       "paper_accuracy": "-" if c["paper_accuracy"] is None else f"{c['paper_accuracy']:.2f}"}
                      for c in cells], ["backbone", "dataset"] + (["learner"] if learners else [])
                     + ["method", "seed", "paper_ece", "paper_accuracy", "status"])
    else:
        if args.csv:
            atomic_write_text(args.csv, result.csv())
        print(f"{args.suite} suite, {args.protocol} protocol: {args.shots} shots, seeds "
              f"{','.join(map(str, result.seeds))}, {args.epochs} epochs; mean ± std over seeds, in %; "
              f"{len(result.ran)} cells run now, {sum(c.status == 'done' for c in result.cells) - len(result.ran)} reused")
        print(result.markdown(), end="")
        compared = [r for r in result.table if r["within"] is not None]
        if compared:
            print(f"{sum(r['within'] for r in compared)} of {len(compared)} rows within ±{args.tolerance:g} ECE points "
                  "of the paper")
    refused = {(c.learner, c.method): c.error for c in result.cells if c.status == "refused"}
    for (learner, method), reason in refused.items():
        print(f"refused: {learner} x {method}: {reason}")
    for name in result.missing_data:
        print(f"missing data: {name} (put it in {datasets_dir() / name}: images/train|test/<class>/ + classnames.txt)")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from pathlib import Path

    import calibprompt.demo
    from calibprompt.cluster.connect import connect_for_tasks, local_env
    from calibprompt.cluster.features import extract_features, list_images

    folder = Path(args.dataset).expanduser()
    if folder.is_dir():
        images = list_images(folder)
    else:  # a registered dataset or task name: all its images
        from calibprompt.runs.jobs import open_dataset

        _, dataset = open_dataset(args.dataset)
        images = [p for split in (dataset.train, dataset.test) if split is not None for p in split.paths]
    if not images:
        raise ValueError(f"No images in {args.dataset} (PNG, JPEG, TIFF, BMP, WebP or DICOM files).")
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1.")
    if args.ray:
        connect_for_tasks(args.ray, gpus_per_task=args.ray_gpus_per_task, cpus_per_task=args.ray_cpus_per_task)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(images), desc="features", unit="image", file=sys.stderr, leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        summary = extract_features(images, args.model, use_ray=bool(args.ray), device=args.device,
                                   precision=args.precision, batch_size=args.batch_size,
                                   cpus_per_actor=args.ray_cpus_per_task, gpus_per_actor=args.ray_gpus_per_task,
                                   setup=(calibprompt.demo.register,), env_vars=local_env(args.ray or ""),
                                   progress=progress)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(f"{summary.images} images of {args.dataset}: {summary.cached_before} already cached, {summary.encoded} "
              f"encoded now in {summary.seconds:.1f} s ({summary.engine}); cache: {summary.cache_folder}")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from calibprompt.demo.datasets import STANDARD_SPLITS, write_demo_dataset

    std = STANDARD_SPLITS[args.task]
    out = write_demo_dataset(
        args.task, args.out, seed=args.seed,
        train_per_class=args.train_per_class if args.train_per_class is not None else std["train_per_class"],
        test_per_class=args.test_per_class if args.test_per_class is not None else std["test_per_class"],
        shift=args.shift if args.shift is not None else std["shift"], workers=args.workers)
    print(f"wrote {out} (train/<class>/*.png, test/<class>/*.png); use it with --dataset {out} --task {args.task}")
    return 0


def cmd_demo_build(args: argparse.Namespace) -> int:
    from calibprompt.demo.pretrain import DEMO_DIR, PretrainConfig, pretrain_demo_backbone

    if args.stage in ("all", "backbone"):
        config = PretrainConfig(seed=args.seed, steps=args.steps, workers=args.workers)
        bar = _progress_bar(config.steps, "pretraining")

        def on_step(record):
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", scale=f"{record['logit_scale']:.1f}")

        try:
            summary = pretrain_demo_backbone(args.out or DEMO_DIR, config, on_step=on_step)
        finally:
            bar.close()
        print(f"demo backbone written to {args.out or DEMO_DIR}: loss {summary['final_loss']:.3f}, logit scale "
              f"{summary['logit_scale']:.1f}, {summary['render_seconds'] + summary['train_seconds']:.0f} s")
    if args.stage in ("all", "prompts"):
        if args.out:
            raise ValueError("The bundled prompts are trained on the bundled backbone; drop --out to build them.")
        from calibprompt.demo.bundle import build_demo_prompts, write_sample_images

        for path in build_demo_prompts():
            print(f"prompt written: {path}")
        print(f"sample images listed in {write_sample_images()}")
    return 0


def _add_job_arguments(p: argparse.ArgumentParser, *, model_required: bool = True, training: bool = False) -> None:
    """The model, dataset, task, device and bins of a command; ``training``: its numbers are checked with the
    request (:func:`_check_train_args`), not by argparse."""
    p.add_argument("--model", required=model_required, help="backbone name (calibprompt backbones), hf-hub: id or folder")
    p.add_argument("--dataset", required=model_required,
                   help="a folder (class folders, train/test, images/train|test + classnames.txt) or CSV, or a task name")
    p.add_argument("--task", help="task name or .json file supplying class names and templates")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--bins", type=_request_number if training else _bounded("bins"), default=defaults.N_BINS,
                   help=f"calibration bins (default {defaults.N_BINS})")


def _add_batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-batch-prompts", type=_bounded("max_batch_prompts"), default=defaults.MAX_BATCH_PROMPTS, metavar="N",
                   help="the runs of one backbone and dataset train together, at most N class prompts per "
                        f"text-encoder pass (more runs are trained in chunks; bounds the memory; default "
                        f"{defaults.MAX_BATCH_PROMPTS})")


class _StepCounter:
    """``on_step(run_id, info)`` for a runs bar: shows the training steps done over all runs."""

    def __init__(self, bar=None):
        self.bar = bar
        self.steps: dict[str, tuple[int, int]] = {}
        self.last = 0.0

    def update(self, run_id: str, info) -> None:
        self.steps[run_id] = (info.global_step, info.total_steps)
        now = time.monotonic()
        if self.bar is not None and now - self.last >= 0.5:
            self.last = now
            done, total = (sum(v) for v in zip(*self.steps.values()))
            self.bar.set_postfix_str(f"training steps {done}/{total} over {len(self.steps)} runs")


def _add_ray_arguments(p: argparse.ArgumentParser, what: str = "each group of runs of one backbone and dataset") -> None:
    p.add_argument("--ray", metavar="ADDRESS",
                   help=f"run {what} as a Ray task: 'local' starts a Ray cluster on this machine, anything else "
                        "joins one (e.g. auto, ray://head:10001); needs pip install -e \".[ray]\"")
    p.add_argument("--ray-gpus-per-task", type=_bounded("ray_gpus_per_task"), default=0.0, metavar="G",
                   help="GPUs each Ray task asks for (default 0: train on the workers' CPUs)")
    p.add_argument("--ray-cpus-per-task", type=_bounded("ray_cpus_per_task"), default=1.0, metavar="C",
                   help="CPUs each Ray task asks for (also its torch threads; default 1)")


def _ray_executor(args: argparse.Namespace, n_boot: int):
    """The Ray executor of ``--ray`` (connected; :func:`calibprompt.cluster.runs.ray_executor`), or None without
    ``--ray`` (the runs are trained here)."""
    if not getattr(args, "ray", None):
        return None
    import calibprompt.demo
    from calibprompt.cluster.runs import ray_executor

    return ray_executor(args.ray, gpus_per_task=args.ray_gpus_per_task, cpus_per_task=args.ray_cpus_per_task,
                        max_batch_prompts=args.max_batch_prompts, n_boot=n_boot, setup=(calibprompt.demo.register,))


def _ray_event(event: dict) -> None:
    """Print what a user should know of a Ray task's event (a retry, a failure)."""
    from calibprompt.cluster.runs import describe_event

    line = describe_event(event)
    if line is not None:
        print(line, file=sys.stderr)


def _request_number(text: str):
    """The argparse ``type`` of a train or compare number: the value as typed, made a number where it is one
    (:func:`calibprompt.runs.requests.number_from_text`); :func:`_check_train_args` checks it by its field
    (:func:`calibprompt.runs.requests.check_number`), so 8.5 shots, "abc" or NaN exit 2 naming the field."""
    from calibprompt.runs.requests import number_from_text

    return number_from_text(text)


def _shot_counts(text: str):
    """``--shots`` of compare: one count as a number (checked with the request), a sweep ``1,2,4`` as text
    (:func:`calibprompt.runs.compare.parse_shots` checks each)."""
    return text if "," in text else _request_number(text)


def _bounded(name: str):
    """An argparse ``type`` for the numeric option ``name`` of ``calibprompt.runs.requests.CLI_LIMITS``:
    a value outside its range is refused by argparse, naming the option and the range (exit status 2)."""
    from calibprompt.runs.requests import check_option

    def parse(text: str):
        try:
            return check_option(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


def _add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    from calibprompt.training.protocols import PRECISIONS, list_protocols

    p.add_argument("--protocol", default=defaults.PROTOCOL, choices=list_protocols(),
                   help="training protocol: 'paper' (the paper's description, the default) or 'authors-code' "
                        "(the authors' published code: PLIP/QuiltNet in fp16, MedCLIP warm-up lr 1e-3, their MMCE "
                        "scale, BiomedCLIP prompts embedded twice, fresh augmentation every step); recorded with "
                        "every run")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="compute precision of the text encoder and logits (autocast), overriding the protocol's "
                        "choice for the backbone; fp16 on a CPU may be slow; recorded with every run")


def _add_runs_parser(sub) -> None:
    """``calibprompt runs [--json|--show RUN_ID ...]`` and ``calibprompt runs share RUN_ID [--unshare]``: see
    :func:`cmd_runs`."""
    p = sub.add_parser("runs", help="list the run store, or share a run with the app's users")
    p.add_argument("--json", action="store_true")
    p.add_argument("--status", help="only runs with this status")
    p.add_argument("--limit", type=_bounded("limit"))
    p.add_argument("--show", metavar="RUN_ID", help="one run in full, with the nearest words of its learned prompt")
    p.add_argument("--top-k", type=_bounded("top_k"), default=defaults.TOP_K_TOKENS,
                   help=f"nearest vocabulary tokens per context vector (with --show; default {defaults.TOP_K_TOKENS})")
    runs_sub = p.add_subparsers(dest="runs_command", metavar="{share}")
    q = runs_sub.add_parser("share", help="share a finished run made at the command line with every user of the "
                            "app (their prompt menus and run history), or stop sharing it")
    q.add_argument("run_id", metavar="RUN_ID", help="the run's id (see: calibprompt runs)")
    q.add_argument("--unshare", action="store_true", help="stop sharing the run: the app's users no longer see it")
    p.set_defaults(func=cmd_runs)


def _add_store_parser(sub) -> None:
    """``calibprompt store check|recover|clean-uploads``: see :func:`cmd_store`."""
    p = sub.add_parser("store", help="check the run database, recover runs from a damaged one, or remove old "
                       "uploads")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    q = store_sub.add_parser("check", help="SQLite's integrity check of the run database: ok or its problems (exit 1)")
    q.add_argument("--data-dir",
                   help="the data directory holding runs.db (default $CALIBPROMPT_HOME or ~/.calibprompt)")
    q = store_sub.add_parser("recover", help="copy what can be read from a damaged run database into a new file")
    q.add_argument("damaged", metavar="DAMAGED_FILE", help="the damaged database, e.g. runs.db.damaged-<time>")
    q.add_argument("--out", metavar="NEW_FILE", help="the new database to write (must not exist; default "
                   "DAMAGED_FILE.recovered.db)")
    q.add_argument("--data-dir", help=argparse.SUPPRESS)
    q = store_sub.add_parser("clean-uploads", help="remove uploaded datasets older than N days")
    q.add_argument("--days", metavar="N", help="age in days (default $CALIBPROMPT_UPLOAD_DAYS or "
                   f"{defaults.UPLOAD_DAYS}; 0 keeps every upload)")
    q.add_argument("--data-dir",
                   help="the data directory holding uploads/ (default $CALIBPROMPT_HOME or ~/.calibprompt)")
    p.set_defaults(func=cmd_store)


class _Moved(argparse.Action):
    """An option that no longer exists on this command: using it exits 2 (argparse's error) with a line
    that names the option to use instead."""

    def __init__(self, option_strings, dest, *, message: str, **kwargs):
        self.message = message
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(self.message)


def _add_listing_parsers(sub) -> None:
    """``calibprompt backbones`` and ``calibprompt tasks``: the registered backbones and task files."""
    p = sub.add_parser("backbones", help="list the registered backbones")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backbones)
    p = sub.add_parser("tasks", help="list the task files in prompts/")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tasks)


def _add_predict_parser(sub) -> None:
    """``calibprompt predict IMAGE ...``: see :func:`cmd_predict`."""
    p = sub.add_parser("predict", help="class probabilities of images, per method")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, TIFF, DICOM, ...)")
    p.add_argument("--model", default=defaults.PREDICT_MODEL, help="backbone name, hf-hub: id or model folder")
    p.add_argument("--task", default=defaults.PREDICT_TASK, help="task name from prompts/ or a task .json file")
    p.add_argument("--classes", help="comma-separated class names instead of --task")
    p.add_argument("--prompt", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="add a learned prompt head (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)


def _add_training_numbers(p: argparse.ArgumentParser, *, seeds: bool) -> None:
    """The numbers of ``train`` (one ``--seed``) or ``compare`` (``--seeds``): typed as given and checked
    with the request by :func:`_check_train_args` (``check_number``, naming the field; exit 2)."""
    number = _request_number
    if seeds:  # compare: a sweep over shot counts too
        p.add_argument("--shots", type=_shot_counts, default=defaults.SHOTS, metavar="K[,K...]",
                       help=f"images per class, or comma-separated counts for a sweep, e.g. 1,2,4,8,16 (default "
                            f"{defaults.SHOTS})")
    else:
        p.add_argument("--shots", type=number, default=defaults.SHOTS, help=f"images per class (default {defaults.SHOTS})")
    if seeds:
        p.add_argument("--seeds", default=defaults.SEEDS, help=f"comma-separated seeds (default {defaults.SEEDS})")
    else:
        p.add_argument("--seed", type=number, default=defaults.SEED,
                       help=f"split and training seed (default {defaults.SEED})")
    p.add_argument("--epochs", type=number, default=defaults.EPOCHS, help=f"training epochs (default {defaults.EPOCHS})")
    p.add_argument("--alpha", type=number, help="the loss's LS/SMAC smoothing weight (default: the paper's value "
                   "for the task)")
    p.add_argument("--beta", type=number, help="AS weight for calibprompt (or the regulariser weight of a baseline)")


def _add_train_parser(sub) -> None:
    """``calibprompt train``: see :func:`cmd_train`."""
    from calibprompt.training.learners import list_learners
    from calibprompt.training.losses import list_methods

    p = sub.add_parser("train", help="learn a prompt on a few shots (the paper's protocol by default)")
    _add_job_arguments(p, training=True)
    _add_training_numbers(p, seeds=False)
    p.add_argument("--method", default="calibprompt", choices=list_methods())
    p.add_argument("--learner", default=defaults.LEARNER, metavar="NAME",
                   help="the few-shot learner: " + ", ".join(list_learners()) + f" (default {defaults.LEARNER})")
    p.add_argument("--views", type=_request_number, default=defaults.N_VIEWS,
                   help=f"cached augmented views per training image (default {defaults.N_VIEWS})")
    _add_protocol_arguments(p)
    p.add_argument("--json", action="store_true", help="print the finished run as JSON")
    p.set_defaults(func=cmd_train)


def _add_evaluate_parser(sub) -> None:
    """``calibprompt evaluate``: see :func:`cmd_evaluate`. The conformal level is ``--coverage``; ``--alpha``
    (the loss's smoothing weight elsewhere) is refused here, pointing to ``--coverage``."""
    p = sub.add_parser("evaluate", help="calibration report of zero-shot or a learned prompt on a test split")
    _add_job_arguments(p, model_required=False)
    p.add_argument("--checkpoint", help="prompt checkpoint (.json); default: zero-shot")
    p.add_argument("--run", help="evaluate a stored run's checkpoint (its model, dataset and split by default)")
    p.add_argument("--shots", type=_bounded("shots"),
                   help=f"shots of the split whose test part is used (default {defaults.SHOTS})")
    p.add_argument("--seed", type=_bounded("seed"), help=f"seed of that split (default {defaults.SEED})")
    p.add_argument("--json", help="write the report and per-image rows to this JSON file")
    p.add_argument("--csv", help="write the per-image rows to this CSV file")
    p.add_argument("--coverage", type=_bounded("coverage"), default=defaults.COVERAGE, metavar="C",
                   help="coverage of the conformal prediction sets, above 0 and below 1 (default "
                        f"{defaults.COVERAGE:g}: the true class in the set {100 * defaults.COVERAGE:.0f}%% of the time)")
    p.add_argument("--calibrators", metavar="A,B",
                   help="post-hoc calibrators fitted on half the test images and applied to the other half, both "
                        "ways: temperature, vector, dirichlet, histogram, isotonic (the JSON gains 'calibrators')")
    p.add_argument("--test-time", metavar="NAME",
                   help="label-free test-time prompt tuning of the prompt on each test image: tpt, c-tpt, o-tpt, "
                        "a-tpt (63 augmented views and one step per image: about a second per image on a CPU; "
                        "the JSON gains 'test_time')")
    p.add_argument("--test-time-per-class", type=_bounded("shots"), metavar="K",
                   help="tune at test time on K test images per class only (a seeded stratified subset; default: "
                        "every test image), since each image costs a backward pass")
    p.add_argument("--alpha", action=_Moved, metavar="A",
                   message="--alpha is the loss's smoothing weight (train, compare); the conformal level of "
                           f"evaluate is --coverage, e.g. --coverage {defaults.COVERAGE:g} for "
                           f"{defaults.COVERAGE:.0%} prediction sets (--alpha A was --coverage 1-A)")
    p.set_defaults(func=cmd_evaluate)


def _add_reviews_parser(sub) -> None:
    """``calibprompt reviews``: see :func:`cmd_reviews`."""
    p = sub.add_parser("reviews", help="the readers' case verdicts and their agreement, or a CSV export of them")
    p.add_argument("--csv", help="write the verdicts to this CSV file (spreadsheet-safe) instead of printing them")
    p.add_argument("--reader", help="only this reader's verdicts")
    p.add_argument("--dataset", help="only verdicts on this dataset")
    p.set_defaults(func=cmd_reviews)


def _add_compare_parser(sub) -> None:
    """``calibprompt compare``: see :func:`cmd_compare`."""
    from calibprompt.training.learners import list_learners
    from calibprompt.training.losses import list_methods

    p = sub.add_parser("compare", help="several methods over several seeds: a paper-style table")
    _add_job_arguments(p, training=True)
    _add_training_numbers(p, seeds=True)
    p.add_argument("--methods", default=defaults.METHODS,
                   help="comma-separated: zeroshot, " + ", ".join(list_methods()))
    p.add_argument("--learners", metavar="A,B",
                   help="comma-separated few-shot learners to compare under every method (rows gain a learner "
                        "field; a combination a learner refuses gives a row with the reason): "
                        + ", ".join(list_learners()))
    p.add_argument("--base-to-novel", action="store_true",
                   help="train on the first half of the classes (base), evaluate on the base and on the other half "
                        "(novel), with their harmonic mean (rows gain side base/novel/hm)")
    p.add_argument("--calibrators", metavar="A,B",
                   help="post-hoc calibrators cross-fitted on each run's test predictions: temperature, vector, "
                        "dirichlet, histogram, isotonic (rows gain <name>_accuracy, <name>_ece, <name>_nll)")
    p.add_argument("--eval-dataset", metavar="DATASET",
                   help="cross-domain: also evaluate every run on this dataset with the same classes, e.g. "
                        "demo-shifted (rows gain side source/target)")
    _add_protocol_arguments(p)
    _add_batch_arguments(p)
    _add_ray_arguments(p, "the training runs")
    p.add_argument("--resume", action="store_true",
                   help="reuse finished runs with the same settings from the run store instead of training them again")
    p.add_argument("--json", help="write one row per method and seed to this JSON file")
    p.add_argument("--csv", help="write the same rows as CSV")
    p.set_defaults(func=cmd_compare)


def _add_reproduce_parser(sub) -> None:
    """``calibprompt reproduce``: see :func:`cmd_reproduce`."""
    from calibprompt.training.learners import list_learners
    from calibprompt.training.losses import list_methods
    from calibprompt.training.protocols import list_protocols

    p = sub.add_parser("reproduce", help="the paper's table: run the missing cells, compare with the published numbers")
    p.add_argument("--suite", choices=["paper", "demo"], default="paper",
                   help="paper: the 10 backbone/dataset pairs of the paper; demo: the demo backbone on demo, demo-binary")
    p.add_argument("--model", help="only this backbone of the suite (e.g. biomedclip)")
    p.add_argument("--methods", default=defaults.METHODS, help="comma-separated: zeroshot, " + ", ".join(list_methods()))
    p.add_argument("--learners", metavar="A,B",
                   help="comma-separated few-shot learners to run every training method with (the table gains a "
                        "learner column; the paper's values apply to coop only; a combination a learner refuses is "
                        f"a refused cell with the reason; default {defaults.LEARNER}): " + ", ".join(list_learners()))
    p.add_argument("--seeds", default=defaults.SEEDS, help=f"comma-separated seeds (default {defaults.SEEDS})")
    p.add_argument("--shots", type=int, default=defaults.SHOTS, help=f"images per class (default {defaults.SHOTS})")
    p.add_argument("--epochs", type=int, default=defaults.EPOCHS, help=f"training epochs (default {defaults.EPOCHS})")
    p.add_argument("--protocol", choices=list_protocols(), default=defaults.PROTOCOL,
                   help="the training protocol the paper describes, or the one of the authors' published code")
    p.add_argument("--tolerance", type=_bounded("tolerance"), default=defaults.TOLERANCE,
                   help=f"ECE points within which a row matches (default {defaults.TOLERANCE:g})")
    p.add_argument("--bins", type=_bounded("bins"), default=defaults.N_BINS, help=f"calibration bins (default {defaults.N_BINS})")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--calibrators", metavar="A,B",
                   help="post-hoc calibrators cross-fitted on each cell's test predictions (temperature, vector, "
                        "dirichlet, histogram, isotonic): the table gains an 'ECE + name' column per calibrator")
    p.add_argument("--dry-run", action="store_true", help="list the cells, the paper's values and missing data; run nothing")
    _add_batch_arguments(p)
    _add_ray_arguments(p)
    p.add_argument("--json", help="write the settings, every cell and the table to this JSON file")
    p.add_argument("--csv", help="write the table (with --dry-run: the cells) as CSV")
    p.add_argument("--markdown", help="write the table as markdown")
    p.set_defaults(func=cmd_reproduce)


def _add_features_parser(sub) -> None:
    """``calibprompt features``: see :func:`cmd_features`."""
    from calibprompt.training.protocols import PRECISIONS

    p = sub.add_parser("features", help="image features of a folder into the feature cache (optionally on Ray)")
    p.add_argument("--dataset", required=True, help="a folder of images (searched recursively) or a dataset name")
    p.add_argument("--model", required=True, help="backbone name (calibprompt backbones lists them)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (without --ray, or for Ray workers)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="image-encoder precision (autocast); each has its own cache (default fp32)")
    p.add_argument("--batch-size", type=_bounded("batch_size"), default=defaults.FEATURE_BATCH,
                   help=f"images per encoder call (default {defaults.FEATURE_BATCH})")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_ray_arguments(p, "the extraction through Ray Data (an actor pool that loads the model once per worker)")
    p.set_defaults(func=cmd_features)


def _add_demo_parsers(sub) -> None:
    """``calibprompt demo-data`` and ``calibprompt demo-build``: the synthetic demo world."""
    p = sub.add_parser("demo-data", help="write a synthetic demo dataset (train/ and test/ class folders)")
    p.add_argument("--task", required=True, choices=["demo", "demo-binary"])
    p.add_argument("--out", required=True, help="a new folder")
    p.add_argument("--seed", type=_bounded("seed"), default=defaults.DEMO_SEED)
    p.add_argument("--train-per-class", type=_bounded("train_per_class"), help="default: the standard split's")
    p.add_argument("--test-per-class", type=_bounded("test_per_class"), help="default: the standard split's")
    p.add_argument("--shift", type=_bounded("shift"), help="stain/scanner shift from the pretraining domain (default: the standard split's)")
    p.add_argument("--workers", type=_bounded("workers"), default=defaults.WORKERS)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("demo-build", help="pretrain the bundled demo backbone on the synthetic world (CPU, minutes)")
    p.add_argument("--out", help="model folder (default: the package's bundled demo model)")
    p.add_argument("--seed", type=_bounded("seed"), default=defaults.DEMO_SEED)
    p.add_argument("--steps", type=_bounded("steps"), default=defaults.DEMO_STEPS)
    p.add_argument("--workers", type=_bounded("workers"), default=defaults.WORKERS)
    p.add_argument("--stage", choices=["all", "backbone", "prompts"], default="all",
                   help="pretrain the backbone, train the bundled demo prompts and sample images, or both")
    p.set_defaults(func=cmd_demo_build)


def build_parser() -> argparse.ArgumentParser:
    """The ``calibprompt`` parser: one ``_add_*_parser`` per command, in ``--help`` order."""
    parser = argparse.ArgumentParser(prog="calibprompt", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_listing_parsers(sub)
    _add_predict_parser(sub)
    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    _add_runs_parser(sub)
    _add_store_parser(sub)
    _add_reviews_parser(sub)
    _add_compare_parser(sub)
    _add_reproduce_parser(sub)
    _add_features_parser(sub)
    _add_demo_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import calibprompt.demo
    from calibprompt.backbones import BackboneUnavailableError

    calibprompt.demo.register()  # the demo's datasets and bundled prompts (the core never imports the demo)
    try:
        return int(args.func(args) or 0)
    except (ValueError, BackboneUnavailableError, FileNotFoundError) as exc:
        print(f"calibprompt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as exc:  # a full disk, a read-only data directory, a locked database
        from calibprompt.errors import user_message

        message = user_message(exc)
        if message is None:
            raise
        print(f"calibprompt {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
