"""The one evaluation pipeline (calibprompt.runs.evaluation) and the uncertainty summary the CLI prints:
the same numbers as the stages it replaced, the images it leaves out, and the words of its refusals."""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from calibprompt.data.resolve import open_dataset
from calibprompt.evaluation.conformal import cross_fitted_sets
from calibprompt.evaluation.report import evaluate_head
from calibprompt.evaluation.selective import risk_coverage, selective_accuracy
from calibprompt.evaluation.uncertainty import CROSS_FIT, uncertainty_summary
from calibprompt.prompting.engine import Engine, Head
from calibprompt.runs.evaluation import evaluate_prompt, evaluate_split, never_trained_on, predict_prompt, prompt_head
from calibprompt.training.features import FeatureCache
from test_training import make_dataset


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A dataset with a test split of 3 classes x 6 images, its task and test images."""
    root = make_dataset(tmp_path_factory.mktemp("data") / "tissue", n_test=6)
    task, ds = open_dataset(root)
    return task, ds


def test_evaluate_prompt_gives_the_numbers_of_the_engine_and_report_it_replaces(tiny_native, split):
    task, ds = split
    feats = FeatureCache(tiny_native).plain(ds.test.paths)
    engine = Engine(tiny_native)
    engine.add_zero_shot("zero-shot", task)
    want = evaluate_head(engine, "zero-shot", feats, ds.test.labels, [str(p) for p in ds.test.paths],
                         task.classnames, n_bins=5, n_boot=20)
    got = evaluate_prompt(tiny_native, task, ds.test, None, n_bins=5, n_boot=20)
    np.testing.assert_allclose(got.probs, want.probs, rtol=0, atol=1e-12)
    assert got.report["ece"] == pytest.approx(want.report["ece"], abs=1e-12)
    assert got.report["intervals"]["ece"] == pytest.approx(want.report["intervals"]["ece"], abs=1e-12)
    assert [r["path"] for r in got.rows] == [r["path"] for r in want.rows] and len(got.rows) == 18
    # precomputed features and an encoded head give the same result as computing them here
    head = engine.heads["zero-shot"]
    again = evaluate_prompt(tiny_native, task, ds.test, head, features=feats, n_bins=5, n_boot=20)
    np.testing.assert_allclose(again.probs, want.probs, rtol=0, atol=1e-12)
    assert predict_prompt(tiny_native, task, head, feats).probs.shape == (18, 3)


def test_a_prompt_of_other_classes_or_of_no_known_kind_is_refused(tiny_native, split):
    task, ds = split
    other = Engine(tiny_native).add_zero_shot("other", ["a", "b", "c"])
    with pytest.raises(ValueError, match="predicts the classes"):
        evaluate_prompt(tiny_native, task, ds.test, other, n_boot=10)
    with pytest.raises(ValueError, match="None \\(zero-shot\\), a checkpoint path, a PromptLearner or a Head"):
        prompt_head(tiny_native, task, 42)


def test_never_trained_on_leaves_out_the_recorded_training_images(split):
    _, ds = split
    pool = ds.test
    rel = pool.relative_paths()
    by_relative = {"split": {"train": {"root": "elsewhere", "paths": rel[:2]}}}
    by_absolute = {"split": {"train": {"root": str(pool.root), "paths": rel[2:3]}}}
    kept, excluded = never_trained_on(pool, [by_relative, by_absolute, None])
    assert excluded == 3 and len(kept) == len(pool) - 3
    assert not set(kept.relative_paths()) & set(rel[:3])
    everything = {"split": {"train": {"root": str(pool.root), "paths": rel}}}
    with pytest.raises(ValueError, match="Every test image of 'tissue' was used to train"):
        never_trained_on(pool, [everything], "tissue")


def test_evaluate_split_records_an_evaluate_run(split, calibprompt_home):
    from calibprompt.runs.store import RunStore

    task, ds = split
    store = RunStore(calibprompt_home / "runs.db")
    done = evaluate_split(store, model="tiny-random", dataset=str(ds.root), shots=2, seed=1, device="cpu", n_boot=10)
    record = store.get_run(done.run_id)
    assert record.kind == "evaluate" and record.status == "done"
    assert record.params["head"] == "zero-shot" and record.params["shots"] == 2
    assert record.metrics["ece"] == pytest.approx(done.evaluation.report["ece"])
    assert len(done.test) == 18 and done.task.name == task.name


def test_the_uncertainty_summary_is_the_selective_and_conformal_numbers(split):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=40)
    labels = rng.integers(0, 3, size=40)
    out = uncertainty_summary(probs, labels, 0.2)
    assert out["selective"]["n"] == 40
    assert out["selective"]["aurc"] == pytest.approx(risk_coverage(probs, labels)["aurc"])
    assert out["selective"]["selective_accuracy"] == pytest.approx(
        {"0.8": selective_accuracy(probs, labels, 0.8), "0.9": selective_accuracy(probs, labels, 0.9)})
    conf = out["conformal"]
    assert conf["alpha"] == 0.2 and conf["cross_fit"] == CROSS_FIT and conf["unavailable"] is None
    assert conf["scores"]["aps"]["coverage"] == pytest.approx(
        cross_fitted_sets(probs, labels, alpha=0.2, score="aps")["coverage"])
    too_few = uncertainty_summary(probs, labels, 0.01)["conformal"]
    assert too_few["scores"] == {} and "Too few samples" in too_few["unavailable"]


@pytest.mark.parametrize("given, alpha", [({"coverage": 0.9}, 0.1), ({"coverage": 0.8}, 0.2),
                                          ({"alpha": 0.2}, 0.2), ({"coverage": None, "alpha": 0.05}, 0.05),
                                          ({}, 0.1)])
def test_cmd_evaluate_reads_the_coverage_or_an_older_alpha(given, alpha):
    from calibprompt.cli import _miscoverage

    assert _miscoverage(argparse.Namespace(**given)) == alpha


@pytest.mark.parametrize("given, words", [({"coverage": 1.0}, "--coverage must lie in (0, 1)"),
                                          ({"coverage": math.nan}, "--coverage must lie in (0, 1)"),
                                          ({"alpha": 0.0}, "--alpha must lie in (0, 1)")])
def test_cmd_evaluate_refuses_a_level_outside_0_1(given, words):
    from calibprompt.cli import _miscoverage

    with pytest.raises(ValueError, match=words.replace("(", "\\(").replace(")", "\\)")):
        _miscoverage(argparse.Namespace(**given))


def test_a_head_is_passed_through_unchanged(tiny_native, split):
    task, _ = split
    head = Engine(tiny_native).add_zero_shot("zero-shot", task)
    assert prompt_head(tiny_native, task, head) is head and isinstance(head, Head)
