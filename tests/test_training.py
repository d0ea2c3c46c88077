"""Trainer, feature cache, jobs, runner: the few-shot pipeline end to end on a tiny backbone."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from calibprompt.prompting.checkpoint import checkpoint_paths
from calibprompt.prompting.engine import Engine
from calibprompt.training.features import FeatureCache
from calibprompt.runs.jobs import JobRunner, TrainJob, run_train_job
from calibprompt.runs.store import RunStore
from calibprompt.training.trainer import TrainConfig, learning_rate, train_prompts

COLOURS = {"adipose": (240, 230, 235), "lymphocytes": (60, 40, 120), "stroma": (200, 80, 150)}


def make_dataset(root, n_train=6, n_test=4, size=32, seed=0, colours=None, shift=0):
    """A split folder of small PNGs whose colour depends on the class (so features can separate them);
    ``colours``: class name -> RGB (default :data:`COLOURS`), ``shift`` added to every colour (another domain)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for name, colour in (colours or COLOURS).items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = rng.normal(0, 25, size=(size, size, 3))
                pixels = np.clip(np.array(colour) + shift + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture()
def dataset(tmp_path):
    return make_dataset(tmp_path / "tissue")


# ------------------------------------------------------------------ trainer
def test_learning_rate_schedule_is_warmup_then_cosine():
    cfg = TrainConfig(epochs=50)
    assert learning_rate(0, cfg) == 1e-5
    assert learning_rate(1, cfg) == pytest.approx(0.002)
    assert learning_rate(26, cfg) == pytest.approx(0.002 * 0.5 * (1 + math.cos(math.pi * 25 / 50)))
    assert learning_rate(49, cfg) == pytest.approx(0.002 * 0.5 * (1 + math.cos(math.pi * 48 / 50)))


def _features(n=24, views=3, dim=32, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g)
    labels = torch.arange(n) % k
    feats = centres[labels].unsqueeze(1) + 0.3 * torch.randn(n, views, dim, generator=g)
    return torch.nn.functional.normalize(feats, dim=-1), labels


def test_training_reduces_the_loss_and_only_the_context_moves(tiny_native):
    feats, labels = _features()
    weights_before = {k: v.clone() for k, v in tiny_native.model.state_dict().items()}
    steps = []
    result = train_prompts(tiny_native, ["a", "b", "c"], feats, labels,
                           TrainConfig(epochs=30, lr=0.05, warmup_epochs=0), on_step=steps.append)
    assert result.steps == len(steps) == 30 * (24 // 16)
    assert steps[-1].global_step == steps[-1].total_steps and steps[-1].eta == pytest.approx(0.0)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    for k, v in tiny_native.model.state_dict().items():
        assert torch.equal(v, weights_before[k]), k


def test_training_is_deterministic_for_a_seed(tiny_hf):
    feats, labels = _features()
    runs = [train_prompts(tiny_hf, ["a", "b", "c"], feats, labels, TrainConfig(method="calibprompt", epochs=3, seed=s))
            for s in (5, 5, 6)]
    assert torch.equal(runs[0].learner.ctx, runs[1].learner.ctx)
    assert not torch.equal(runs[0].learner.ctx, runs[2].learner.ctx)
    assert set(runs[0].history[0]) >= {"loss", "LS", "SMAC", "AS", "lr", "train_accuracy"}


def test_zero_shot_anchored_methods_need_zero_shot_features(tiny_native):
    feats, labels = _features()
    with pytest.raises(ValueError, match="zero-shot class features"):
        train_prompts(tiny_native, ["a", "b", "c"], feats, labels, TrainConfig(method="zs_norm", epochs=1))
    result = train_prompts(tiny_native, ["a", "b", "c"], feats, labels, TrainConfig(method="zs_penalty", epochs=1),
                           zero_shot_text=torch.randn(3, 32))
    assert "ZS_PENALTY" in result.history[0]


# ------------------------------------------------------------------ feature cache
def test_feature_cache_computes_once_and_views_are_reproducible(tiny_native, dataset, tmp_path):
    paths = sorted((dataset / "train" / "stroma").glob("*.png"))
    cache = FeatureCache(tiny_native, root=tmp_path / "f1")
    aug = cache.augmented(paths, n_views=3)
    plain = cache.plain(paths)
    assert aug.shape == (6, 3, 32) and plain.shape == (6, 32) and cache.encoded == 6 * 3 + 6
    assert not torch.allclose(aug[:, 0], aug[:, 1])  # different crops
    again = FeatureCache(tiny_native, root=tmp_path / "f1")
    assert torch.equal(again.augmented(paths, 3), aug) and torch.equal(again.plain(paths), plain)
    assert again.encoded == 0 and again.hits == 6 * 3 + 6
    more = again.augmented(paths, 5)  # only the two missing views per image are computed
    assert again.encoded == 6 * 2 and torch.equal(more[:, :3], aug)
    fresh = FeatureCache(tiny_native, root=tmp_path / "f2")  # another machine: the same views
    assert torch.allclose(fresh.augmented(paths, 3), aug, atol=1e-6)
    assert torch.allclose(plain, tiny_native.encode_image([Image.open(p) for p in paths]), atol=1e-6)


def test_augmented_views_leave_the_global_rng_alone(tiny_native, dataset, tmp_path):
    from calibprompt.data import load_image
    from calibprompt.training.features import _view_seed, file_hash, train_transform

    paths = sorted((dataset / "train" / "adipose").glob("*.png"))[:3]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        before = torch.get_rng_state()
        aug = FeatureCache(tiny_native, root=tmp_path / "f").augmented(paths, n_views=2)
        assert torch.equal(torch.get_rng_state(), before)
        # the same views as the recipe run on the global RNG seeded per view: the features did not change
        recipe, views = train_transform(tiny_native.preprocess), []
        for path in paths:
            image = load_image(path)
            for v in range(2):
                torch.manual_seed(_view_seed(file_hash(path), v))
                views.append(recipe(image))
    expected = tiny_native.encode_pixels(torch.stack(views), normalize=True).reshape(3, 2, -1)
    assert torch.allclose(aug, expected, atol=1e-6)

    results = {}

    def compute(name):  # threads computing views at once do not disturb each other
        results[name] = FeatureCache(tiny_native, root=tmp_path / name).augmented(paths, n_views=2)

    threads = [threading.Thread(target=compute, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3 and all(torch.allclose(r, aug, atol=1e-6) for r in results.values())


def test_damaged_feature_file_is_recomputed(tiny_native, dataset, tmp_path):
    paths = sorted((dataset / "test" / "adipose").glob("*.png"))[:2]
    cache = FeatureCache(tiny_native, root=tmp_path / "f")
    expected = cache.plain(paths)
    for file in (tmp_path / "f").rglob("*.safetensors"):
        file.write_bytes(b"garbage")
    again = FeatureCache(tiny_native, root=tmp_path / "f")
    assert torch.allclose(again.plain(paths), expected) and again.encoded == 2


# ------------------------------------------------------------------ jobs
def test_train_job_end_to_end(tiny_native, dataset, calibprompt_home):
    store = RunStore()
    job = TrainJob(model="tiny-random", dataset=str(dataset), shots=4, seed=1, method="calibprompt", epochs=2, n_views=2)
    record = run_train_job(job, store, backbone=tiny_native, n_boot=50)
    assert record.status == "done", record.error
    m = record.metrics
    assert m["test_images"] == 12 and m["train_images"] == 12
    assert {"accuracy", "ece", "mce", "ace", "nll", "brier", "reliability", "intervals", "history"} <= set(m)
    assert m["loss_params"] == {"alpha": 0.1, "beta": 1.0}
    weights, meta = checkpoint_paths(record.checkpoint)
    assert weights.is_file() and meta.is_file()
    rows = store.predictions(record.id)
    assert len(rows) == 12 and all(abs(sum(r["probs"]) - 1) < 1e-6 for r in rows)

    engine = Engine(tiny_native)  # the checkpoint reloads and reproduces the stored predictions
    engine.add_prompt("mine", record.checkpoint)
    out = engine.predict([r["path"] for r in rows])["mine"]
    assert np.allclose(out.probs, [r["probs"] for r in rows], atol=1e-5)
    assert engine.heads["mine"].metadata["split"]["train"]["paths"][0].startswith("train/")


def test_second_run_reuses_the_image_features(tiny_native, dataset, calibprompt_home, monkeypatch):
    store = RunStore()
    job = dict(model="tiny-random", dataset=str(dataset), shots=4, seed=1, epochs=1, n_views=2)
    run_train_job(TrainJob(method="coop", **job), store, backbone=tiny_native, n_boot=10)
    calls = []
    original = type(tiny_native).encode_pixels
    monkeypatch.setattr(type(tiny_native), "encode_pixels", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    record = run_train_job(TrainJob(method="ls", **job), store, backbone=tiny_native, n_boot=10)
    assert record.status == "done" and calls == []


def test_same_seed_same_split_and_result(tiny_native, dataset, calibprompt_home):
    store = RunStore()
    job = TrainJob(model="tiny-random", dataset=str(dataset), shots=3, seed=2, epochs=2, n_views=2)
    a, b = (run_train_job(job, store, backbone=tiny_native, n_boot=10) for _ in range(2))
    assert a.metrics["accuracy"] == b.metrics["accuracy"] and a.metrics["nll"] == pytest.approx(b.metrics["nll"])
    from calibprompt.prompting.checkpoint import read_prompt_metadata

    assert read_prompt_metadata(a.checkpoint)["split"] == read_prompt_metadata(b.checkpoint)["split"]


def test_cancel_leaves_no_checkpoint(tiny_native, dataset, calibprompt_home):
    store = RunStore()
    job = TrainJob(model="tiny-random", dataset=str(dataset), shots=4, epochs=5, n_views=2)
    record = run_train_job(job, store, backbone=tiny_native, should_stop=lambda: True)
    assert record.status == "cancelled" and record.checkpoint is None
    assert not (calibprompt_home / "runs" / record.id).exists()


def test_failed_job_is_recorded_with_its_reason(tiny_native, dataset, calibprompt_home):
    store = RunStore()
    job = TrainJob(model="tiny-random", dataset=str(dataset), shots=50, epochs=1)
    with pytest.raises(ValueError, match="fewer than the 50 shots"):
        run_train_job(job, store, backbone=tiny_native)
    (record,) = store.list_runs()
    assert record.status == "failed" and "fewer than the 50 shots" in record.error


def test_job_arguments_are_validated():
    with pytest.raises(ValueError, match="choose one of: coop"):
        TrainJob(model="m", dataset="d", method="svm")
    with pytest.raises(ValueError, match="takes no parameter 'beta'"):
        TrainJob(model="m", dataset="d", method="ls", loss_params={"beta": 2.0})


# ------------------------------------------------------------------ runner
def test_runner_queues_per_device_reports_progress_and_cancels(tiny_native, dataset, calibprompt_home):
    store = RunStore()
    gate = threading.Event()

    def loader(model, device):
        gate.wait(30)  # hold the first job until both are queued
        return tiny_native

    runner = JobRunner(store, backbone_loader=loader)
    job = dict(model="tiny-random", dataset=str(dataset), shots=4, epochs=3, n_views=2, device="cpu")
    first = runner.submit(TrainJob(method="coop", **job))
    second = runner.submit(TrainJob(method="calibprompt", **job))
    third = runner.submit(TrainJob(method="ls", **job))
    assert runner.position(first) == 0 and runner.position(second) == 1 and runner.position(third) == 2
    assert store.get_run(second).status == "queued"
    assert runner.cancel(third)
    gate.set()
    done = runner.wait(first, timeout=120)
    assert done.status == "done"
    assert runner.wait(second, timeout=120).status == "done"
    assert runner.wait(third, timeout=120).status == "cancelled"
    progress = runner.progress(second)
    assert progress["step"]["epoch"] == 3 and progress["losses"] and progress["position"] is None
    assert store.get_run(second).progress["global_step"] == progress["step"]["total_steps"]
    assert runner.cancel(first) is False
