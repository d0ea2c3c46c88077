"""The ``calibprompt`` command line (also ``python -m calibprompt``).

Each sub-command is a thin function over the library; results go to stdout (tables, or JSON with
``--json``), diagnostics to stderr through logging. A user error exits with status 2 and one line
that says what to do.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

logger = logging.getLogger("calibprompt")


def _print_table(rows: list[dict], columns: Sequence[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def cmd_backbones(args: argparse.Namespace) -> int:
    from .models import BACKBONES

    rows = [{"name": s.name, "family": s.family, "source": s.model_id or "random twin (offline)",
             "context": s.context_length, "size": s.size, "licence": s.licence, "suits": ",".join(s.suits)}
            for s in BACKBONES.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, ["name", "family", "source", "context", "size", "licence", "suits"])
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from .tasks import list_tasks, load_task

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
    from .engine import Engine
    from .models import load_backbone
    from .tasks import Task, load_task

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calibprompt", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backbones", help="list the registered backbones")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("tasks", help="list the task files in prompts/")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("predict", help="class probabilities of images, per method")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, TIFF, DICOM, ...)")
    p.add_argument("--model", default="biomedclip", help="backbone name, hf-hub: id or model folder")
    p.add_argument("--task", default="kather", help="task name from prompts/ or a task .json file")
    p.add_argument("--classes", help="comma-separated class names instead of --task")
    p.add_argument("--prompt", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="add a learned prompt head (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from .models import BackboneUnavailableError

    try:
        return int(args.func(args) or 0)
    except (ValueError, BackboneUnavailableError, FileNotFoundError) as exc:
        print(f"calibprompt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
