"""The demo's bundled prompts and sample images.

:func:`build_demo_prompts` trains CoOp and CalibPrompt on each demo task's standard split (8 shots,
seed 1, the paper's protocol) with the bundled demo backbone and writes the checkpoints to the
top-level ``prompts/demo/<task>-<method>.{safetensors,json}``, so the app compares all three methods as
soon as it starts. :func:`write_sample_images` picks a dozen test patches across classes (including cases a
method gets confidently wrong) into ``sample_images/`` with a ``labels.csv`` listing their true class.
"""
from __future__ import annotations

import csv
import io
import logging
import shutil
from pathlib import Path

import numpy as np

from calibprompt.prompting.checkpoint import checkpoint_paths, read_prompt_metadata
from calibprompt.fileio import atomic_write_json, atomic_write_text
from calibprompt.paths import SAMPLE_IMAGES_DIR, bundled_dir
from calibprompt.runs.store import RunStore
from calibprompt.demo.datasets import STANDARD_SPLITS

logger = logging.getLogger(__name__)

__all__ = ["BUNDLED_PROMPTS_DIR", "SAMPLE_IMAGES_DIR", "bundled_prompt", "build_demo_prompts", "write_sample_images"]

#: The demo's prompt checkpoints: ``prompts/demo`` of the shipped prompts folder (also when
#: ``$CALIBPROMPT_PROMPTS_DIR`` points the task files elsewhere: the checkpoints ship with the package).
BUNDLED_PROMPTS_DIR = bundled_dir("prompts") / "demo"
DEMO_METHODS = ("coop", "calibprompt")


def bundled_prompt(task: str, method: str) -> Path:
    """Path (.json) of a bundled demo prompt checkpoint."""
    return BUNDLED_PROMPTS_DIR / f"{task}-{method}.json"


def build_demo_prompts(tasks=("demo", "demo-binary"), methods=DEMO_METHODS, *, seed: int = 1, shots: int = 8,
                       out_dir: Path = BUNDLED_PROMPTS_DIR, store: RunStore | None = None) -> list[Path]:
    """Train and write the bundled prompts; returns the checkpoint JSON paths."""
    from calibprompt.runs.jobs import TrainJob, run_train_job
    from calibprompt.backbones import load_backbone

    store = store or RunStore()
    backbone = load_backbone("demo", device="cpu")
    written = []
    for task in tasks:
        for method in methods:
            job = TrainJob(model="demo", dataset=task, task=task, shots=shots, seed=seed, method=method, device="cpu")
            record = run_train_job(job, store, backbone=backbone)
            if record.status != "done":
                raise RuntimeError(f"Training the bundled {task} {method} prompt ended {record.status}: {record.error}")
            source_weights, source_meta = checkpoint_paths(record.checkpoint)
            target_weights, target_meta = checkpoint_paths(out_dir / f"{task}-{method}")
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source_weights, target_weights)
            meta = read_prompt_metadata(source_meta)
            version = STANDARD_SPLITS[task]["version"]
            meta["dataset"] = f"{task} standard split v{version}"  # not this machine's path
            meta["split"]["train"]["root"] = meta["dataset"]
            meta["weights"] = target_weights.name
            atomic_write_json(target_meta, meta)
            written.append(target_meta)
            logger.info("Bundled %s %s: accuracy %.3f, ECE %.3f", task, method, meta["metrics"]["accuracy"],
                        meta["metrics"]["ece"])
    return written


def write_sample_images(task: str = "demo", n_per_class: int = 1, n_wrong: int = 3, out_dir: Path = SAMPLE_IMAGES_DIR,
                        method: str = "coop") -> Path:
    """Copy test patches of ``task``'s standard split into ``out_dir``: ``n_per_class`` correctly
    classified by ``method``'s bundled prompt per class, plus ``n_wrong`` it gets most confidently
    wrong; writes ``labels.csv`` (file, task, true class, the method's prediction and confidence)."""
    from calibprompt.data.layouts import few_shot_split
    from calibprompt.prompting.engine import Engine
    from calibprompt.runs.jobs import open_dataset
    from calibprompt.backbones import load_backbone

    task_obj, dataset = open_dataset(task)
    _, test = few_shot_split(dataset, 8, 1)
    engine = Engine(load_backbone("demo", device="cpu"))
    engine.add_prompt(method, bundled_prompt(task, method))
    pred = engine.predict(test.paths, heads=[method])[method]
    labels = np.asarray(test.labels)
    correct = pred.predicted == labels
    chosen: list[int] = []
    for label in range(task_obj.num_classes):
        idx = np.where((labels == label) & correct)[0]
        chosen.extend(idx[np.argsort(-pred.confidence[idx])][:n_per_class].tolist())
    wrong = np.where(~correct)[0]
    chosen.extend(wrong[np.argsort(-pred.confidence[wrong])][:n_wrong].tolist())
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "task", "true_class", f"{method}_prediction", f"{method}_confidence"])
    for i in chosen:
        true_id = task_obj.class_ids[labels[i]]
        name = f"{task}-{true_id.lower()}-{Path(test.paths[i]).stem.rsplit('_', 1)[-1]}.png"
        shutil.copyfile(test.paths[i], out_dir / name)
        writer.writerow([name, task, true_id, task_obj.class_ids[pred.predicted[i]], f"{pred.confidence[i]:.3f}"])
    return atomic_write_text(out_dir / "labels.csv", buffer.getvalue())
