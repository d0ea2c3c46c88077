"""Batched training of many runs gives every run what training it alone gives."""
from __future__ import annotations

import pytest
import torch

from calibprompt.prompting.learner import PromptLearner
from calibprompt.training.batched import RunInputs, chunk_runs, train_many
from calibprompt.training.trainer import TrainConfig, TrainingCancelled, train_prompts

CLASSES = ["tumour", "stroma", "necrosis"]
# a mix of methods (calibprompt and zs-norm need the zero-shot logits, mdca/mmce batch-level terms), seeds,
# loss parameters and image counts
MIX = [("coop", 1, {}), ("calibprompt", 1, {}), ("ls", 2, {}), ("calibprompt", 2, {"alpha": 0.3, "beta": 2.0}),
       ("mdca", 3, {}), ("zs-norm", 3, {}), ("mmce", 1, {})]


def _data(backbone, seed: int, n: int, views: int = 3):
    g = torch.Generator().manual_seed(100 + seed)
    feats = torch.nn.functional.normalize(torch.randn(n, views, backbone.embed_dim, generator=g), dim=-1)
    labels = torch.arange(n) % len(CLASSES)
    return feats, labels


@pytest.fixture()
def zero_shot_text(tiny_backbone):
    return tiny_backbone.encode_text([f"a photo of {c}" for c in CLASSES])


# learning rates at which the contexts move far (>= 1e-3) from their start on each twin, so that "within 1e-5"
# means the same trajectory (the random-init BERT twin passes little gradient to the context: CLS barely attends)
LR = {"tiny-random": 0.01, "tiny-random-hf": 2.0}


def _inputs(backbone, zs, epochs=3):
    runs = []
    for i, (method, seed, params) in enumerate(MIX):
        feats, labels = _data(backbone, seed, n=12 + 4 * (i % 2))  # two image counts: different step counts
        config = TrainConfig(method=method, epochs=epochs, seed=seed, batch_size=4, n_ctx=4, loss_params=params,
                             lr=LR[backbone.name], warmup_epochs=0)
        runs.append(RunInputs(config, feats, labels, zero_shot_text=zs))
    return runs


@pytest.mark.parametrize("max_batch_prompts", [None, 7])
def test_batched_runs_equal_runs_trained_alone(tiny_backbone, zero_shot_text, max_batch_prompts):
    runs = _inputs(tiny_backbone, zero_shot_text)
    together = train_many(tiny_backbone, CLASSES, runs, max_batch_prompts=max_batch_prompts)
    for run, batched in zip(runs, together):
        alone = train_prompts(tiny_backbone, CLASSES, run.features, run.labels, run.config,
                              zero_shot_text=zero_shot_text)
        assert batched.steps == alone.steps
        assert torch.allclose(batched.learner.ctx, alone.learner.ctx, atol=1e-5, rtol=0), run.config.method
        moved = (alone.learner.ctx - PromptLearner(tiny_backbone, CLASSES, n_ctx=4, generator=torch.Generator(
        ).manual_seed(run.config.seed)).ctx).abs().max()
        assert moved > 1e-3  # so that within 1e-5 means the same trajectory
        assert len(batched.history) == len(alone.history)
        for mine, theirs in zip(batched.history, alone.history):
            assert mine.keys() == theirs.keys()
            assert mine["train_accuracy"] == theirs["train_accuracy"]
            for key in mine:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
        assert batched.objective_params == alone.objective_params
        assert batched.settings == alone.settings


def test_runs_learn_different_contexts_and_every_context_moves(tiny_backbone, zero_shot_text):
    runs = _inputs(tiny_backbone, zero_shot_text, epochs=2)
    initial = [PromptLearner(tiny_backbone, CLASSES, n_ctx=4,
                             generator=torch.Generator().manual_seed(r.config.seed)).ctx for r in runs]
    together = train_many(tiny_backbone, CLASSES, runs)
    for start, result in zip(initial, together):
        assert (result.learner.ctx - start).abs().max() > 1e-3  # each run was trained
    assert not torch.allclose(together[0].learner.ctx, together[1].learner.ctx)  # same seed, other method


def test_on_step_reports_every_step_of_every_run_and_should_stop_cancels(tiny_backbone, zero_shot_text):
    runs = _inputs(tiny_backbone, zero_shot_text, epochs=2)
    seen: dict[int, list[int]] = {}
    results = train_many(tiny_backbone, CLASSES, runs, on_step=lambda i, info: seen.setdefault(i, []).append(
        info.global_step))
    for i, result in enumerate(results):
        assert seen[i] == list(range(1, result.steps + 1))
    calls = []
    with pytest.raises(TrainingCancelled):
        train_many(tiny_backbone, CLASSES, runs, should_stop=lambda: calls.append(1) or len(calls) > 3)


def test_runs_with_different_prompt_layouts_are_refused(tiny_backbone):
    feats, labels = _data(tiny_backbone, 1, 8)
    runs = [RunInputs(TrainConfig(epochs=1, n_ctx=4), feats, labels), RunInputs(TrainConfig(epochs=1, n_ctx=5), feats,
                                                                                 labels)]
    with pytest.raises(ValueError, match="prompt layout"):
        train_many(tiny_backbone, CLASSES, runs)


def test_chunks_hold_whole_runs_within_the_prompt_budget():
    assert chunk_runs(9, 2, 8) == [range(0, 4), range(4, 8), range(8, 9)]
    assert chunk_runs(3, 5, 2) == [range(0, 1), range(1, 2), range(2, 3)]  # one run per chunk at least
    assert chunk_runs(4, 2, None) == [range(0, 4)]
    with pytest.raises(ValueError, match="at least 1"):
        chunk_runs(4, 2, 0)


# ------------------------------------------------------------------ a comparison table, batched or one by one
@pytest.mark.parametrize("model", ["tiny-random", "tiny-random-hf"])
def test_a_batched_comparison_equals_the_same_runs_one_by_one(model, calibprompt_home, tmp_path):
    from calibprompt.prompting.checkpoint import checkpoint_paths
    from calibprompt.runs.compare import run_comparison
    from calibprompt.runs.store import RunStore
    from safetensors.torch import load_file
    from test_training import make_dataset

    dataset = make_dataset(tmp_path / "tissue", n_train=6, n_test=4)
    store = RunStore()
    methods = ["zeroshot", "coop", "calibprompt", "zs-norm", "mdca"]
    kwargs = dict(shots=4, epochs=3, store=store, n_boot=20, device="cpu")
    alone = run_comparison(model, str(dataset), methods, [1, 2], batched=False, **kwargs)
    together = run_comparison(model, str(dataset), methods, [1, 2], max_batch_prompts=9, **kwargs)  # 3 runs a chunk
    assert [(r["method"], r["seed"]) for r in together] == [(m, s) for s in (1, 2) for m in methods]
    for a, b in zip(alone, together):
        assert a["accuracy"] == b["accuracy"], (a["method"], a["seed"])
        for key in ("ece", "mce", "ace", "nll", "brier", "mean_confidence"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a["method"], a["seed"])
        if a["method"] == "zeroshot":
            continue
        ctx = [load_file(str(checkpoint_paths(store.get_run(r["run_id"]).checkpoint)[0]))["ctx"] for r in (a, b)]
        assert torch.allclose(ctx[0], ctx[1], atol=1e-5, rtol=0)
        record = store.get_run(b["run_id"])
        assert record.status == "done" and record.metrics["trained_together"] == 8
        assert record.params["method"] == a["method"] and record.params["seed"] == a["seed"]
        assert store.predictions(b["run_id"])  # the per-image predictions are stored too
