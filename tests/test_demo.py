"""The bundled demo: its backbone, its datasets, its prompts and sample images."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from calibprompt.prompting.checkpoint import read_prompt_metadata
from calibprompt.data.layouts import load_dataset
from calibprompt.demo import world
from calibprompt.demo.bundle import SAMPLE_IMAGES_DIR, bundled_prompt
from calibprompt.demo.datasets import DEMO_TASKS, write_demo_dataset
from calibprompt.prompting.engine import Engine
from calibprompt.backbones import load_backbone
from calibprompt.prompting.tasks import load_task

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo():
    return load_backbone("demo", device="cpu")


def test_demo_backbone_loads_offline_from_its_small_bundled_folder(monkeypatch):
    """No connection is opened and only the bundled folder's few megabytes are read (the load time is measured
    by benchmarks/fast_paths.py, as a ratio to reading those files)."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the demo backbone tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    backbone = load_backbone("demo", device="cpu")
    assert backbone.family == "demo" and backbone.name == "demo"
    folder = ROOT / "calibprompt" / "assets" / "demo-backbone"
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 20 * 1024 * 1024
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert config["calibprompt_pretraining"]["logit_scale"] > 20  # grew like a real CLIP's


def test_demo_data_layout_is_readable_by_the_loaders(tmp_path):
    out = write_demo_dataset("demo-binary", tmp_path / "binary", seed=3, train_per_class=3, test_per_class=2,
                             shift=0.5, workers=1)
    for split, n in (("train", 3), ("test", 2)):
        for cls in DEMO_TASKS["demo-binary"]:
            assert len(list((out / split / cls).glob("*.png"))) == n
    ds = load_dataset(out, task=load_task("demo-binary"))
    assert ds.layout == "split-folder" and len(ds.train) == 6 and len(ds.test) == 4
    again = write_demo_dataset("demo-binary", tmp_path / "again", seed=3, train_per_class=3, test_per_class=2,
                               shift=0.5, workers=1)
    assert (out / "train/TUM/TUM_train_0001.png").read_bytes() == (again / "train/TUM/TUM_train_0001.png").read_bytes()
    with pytest.raises(ValueError, match="not empty"):
        write_demo_dataset("demo", out)
    with pytest.raises(ValueError, match="choose one of: demo, demo-binary"):
        write_demo_dataset("kather", tmp_path / "x")


def test_demo_backbone_zero_shot_is_far_above_chance(demo):
    """On a small generated test set in the pretraining domain and in the shifted domain."""
    task = load_task("demo")
    engine = Engine(demo)
    engine.add_zero_shot("zs", task)
    for shift, floor in ((0.0, 0.6), (1.0, 0.3)):
        images, labels = [], []
        for label, cls in enumerate(task.class_ids):
            for i in range(12):
                image, _ = world.generate_patch(cls, 500_000 + i, 7, shift=shift)
                images.append(image)
                labels.append(label)
        pred = engine.predict(images)["zs"]
        accuracy = float(np.mean(pred.predicted == np.array(labels)))
        assert accuracy > floor, (shift, accuracy)  # chance is 1/9


@pytest.mark.parametrize("task", ["demo", "demo-binary"])
@pytest.mark.parametrize("method", ["coop", "calibprompt"])
def test_bundled_prompts_load_into_the_engine(demo, task, method):
    path = bundled_prompt(task, method)
    meta = read_prompt_metadata(path)
    assert meta["backbone"] == "demo" and meta["method"] == method and meta["shots"] == 8 and meta["seed"] == 1
    assert meta["config"]["epochs"] == 50 and meta["config"]["lr"] == 0.002
    engine = Engine(demo)
    head = engine.add_prompt(method, path)
    assert head.classnames == load_task(task).classnames
    image, _ = world.generate_patch("TUM", 0, 0)
    probs = engine.predict([image])[method].probs
    assert probs.shape == (1, len(head.classnames)) and abs(probs.sum() - 1) < 1e-6


def test_sample_images_are_listed_with_their_true_class():
    with open(SAMPLE_IMAGES_DIR / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert 9 <= len(rows) <= 16
    for row in rows:
        assert (SAMPLE_IMAGES_DIR / row["file"]).is_file()
        assert row["true_class"] in load_task(row["task"]).class_ids
    assert any(row["true_class"] != row["coop_prediction"] for row in rows)  # some confidently wrong cases


def test_pretraining_is_deterministic_and_writes_a_loadable_model(tmp_path):
    from calibprompt.demo.pretrain import PretrainConfig, pretrain_demo_backbone

    config = PretrainConfig(steps=3, pool_per_class=8, batch_size=16, workers=1, warmup_steps=1)
    first = pretrain_demo_backbone(tmp_path / "a", config)
    pretrain_demo_backbone(tmp_path / "b", config)
    weights = [(tmp_path / d / "open_clip_model.safetensors").read_bytes() for d in ("a", "b")]
    assert weights[0] == weights[1]
    assert first["pool_images"] == 72 and first["logit_scale"] > 0
    model = load_backbone(str(tmp_path / "a"))
    assert model.family == "demo" and model.encode_text(["an H&E image of debris."]).shape == (1, 128)
