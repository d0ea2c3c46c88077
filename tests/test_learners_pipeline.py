"""The learner registry through the pipeline: jobs, checkpoints, evaluation, comparisons and the CLI.

Every learner kind trains as a job on a tiny dataset, is checkpointed with its learner recorded, reloads
to the stored predictions, and a combination a learner cannot take is refused before any run row exists.
Plain coop keeps its params, its checkpoint and its batched loop exactly as before.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from calibprompt.prompting.checkpoint import checkpoint_paths, read_prompt_metadata
from calibprompt.prompting.engine import Engine
from calibprompt.runs.compare import LEARNER_ROW_FIELDS, parse_learners, run_comparison
from calibprompt.runs.jobs import TrainJob, run_train_job
from calibprompt.runs.store import RunStore
from calibprompt.training.learners import load_learner
from calibprompt.training.losses import get_method
from calibprompt.training.trainer import TrainConfig, train_prompts

from test_training import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "tissue", n_train=4, n_test=3)


def _job(dataset, **kw):
    base = dict(model="tiny-random", dataset=str(dataset), shots=3, seed=1, epochs=1, n_views=2, batch_size=3, n_ctx=4)
    return TrainJob(**{**base, **kw})


def test_method_says_what_it_needs():
    assert get_method("calibprompt").needs_text_features and not get_method("coop").needs_text_features
    assert get_method("zs-norm").needs_zero_shot and not get_method("ls").needs_text_features


def test_coop_params_and_config_are_unchanged(dataset):
    job = _job(dataset)
    assert "learner" not in job.to_params() and "learner_params" not in job.to_params()
    assert set(TrainConfig().to_dict()) == set(TrainConfig(learner="coop").to_dict())
    assert "learner" not in TrainConfig().to_dict()
    other = _job(dataset, learner="CLIP_adapter", method="ls")
    assert other.learner == "clip-adapter" and other.to_params()["learner"] == "clip-adapter"
    assert TrainConfig(learner="lpp").to_dict()["learner"] == "lp++"
    with pytest.raises(ValueError, match="choose one of: coop, cocoop"):
        _job(dataset, learner="nope")


@pytest.mark.parametrize("learner", ["cocoop", "kgcoop", "prograd", "clip-adapter", "tip-adapter-f", "linear-probe",
                                     "lp++", "clap"])
def test_a_job_per_learner_trains_checkpoints_and_evaluates(learner, tiny_native, dataset, calibprompt_home):
    store = RunStore()
    params = {"epochs": 3} if learner in ("lp++", "clap", "clip-adapter", "linear-probe") else {}
    job = _job(dataset, learner=learner, method="ls", learner_params=params)
    record = run_train_job(job, store, backbone=tiny_native, n_boot=10)
    assert record.status == "done", record.error
    assert record.params["learner"] == learner
    m = record.metrics
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["ece"] <= 1 and m["learner"] == learner
    rows = store.predictions(record.id)
    assert len(rows) == 9 and all(abs(sum(r["probs"]) - 1) < 1e-6 for r in rows)
    _, meta_path = checkpoint_paths(record.checkpoint)
    meta = json.loads(meta_path.read_text())
    assert meta["learner"] == learner and meta["method"] == "ls"

    reloaded, _ = load_learner(record.checkpoint, tiny_native)  # the checkpoint gives back the stored predictions
    assert reloaded.name == learner
    engine = Engine(tiny_native)
    engine.add_learner("mine", reloaded)
    out = engine.predict([r["path"] for r in rows])["mine"]
    assert np.allclose(out.probs, [r["probs"] for r in rows], atol=1e-4)


def test_coop_checkpoint_is_a_plain_prompt_checkpoint(tiny_native, dataset, calibprompt_home):
    record = run_train_job(_job(dataset, method="coop"), RunStore(), backbone=tiny_native, n_boot=10)
    meta = read_prompt_metadata(record.checkpoint)
    assert "learner" not in meta["config"] and "learner" not in record.metrics and "learner" not in record.params
    learner, _ = load_learner(record.checkpoint, tiny_native)
    assert learner.name == "coop"


@pytest.mark.parametrize("learner", ["linear-probe", "clip-adapter", "tip-adapter-f"])
def test_a_refused_combination_fails_before_a_run_row(learner, dataset, calibprompt_home):
    store = RunStore()
    with pytest.raises(ValueError, match=r"angular separation \(AS\).*lp\+\+, clap"):
        run_train_job(_job(dataset, learner=learner, method="calibprompt"), store)
    assert store.list_runs() == []


def test_trainer_refuses_a_feature_learner_with_an_as_loss(tiny_native):
    feats = torch.nn.functional.normalize(torch.randn(6, tiny_native.embed_dim), dim=-1)
    with pytest.raises(ValueError, match="use a method without AS"):
        train_prompts(tiny_native, ["a", "b", "c"], feats, torch.arange(6) % 3,
                      TrainConfig(method="calibprompt", learner="linear-probe"))


def test_comparison_over_learners_keeps_coop_batched_and_refuses_in_a_row(tiny_native, dataset, calibprompt_home):
    learners = parse_learners("coop,kgcoop,linear-probe")
    rows = run_comparison("tiny-random", str(dataset), ["zeroshot", "coop", "calibprompt"], [1], shots=3, epochs=1,
                          n_boot=10, backbone=tiny_native, learners=learners)
    assert [(r["learner"], r["method"]) for r in rows] == [
        ("zeroshot", "zeroshot"), ("coop", "coop"), ("coop", "calibprompt"), ("kgcoop", "coop"),
        ("kgcoop", "calibprompt"), ("linear-probe", "coop"), ("linear-probe", "calibprompt")]
    for row in rows:
        assert set(LEARNER_ROW_FIELDS) <= set(row)
    refused = rows[-1]
    assert refused["accuracy"] is None and "angular separation" in refused["refused"]
    assert all(r["refused"] == "" and 0 <= r["accuracy"] <= 1 for r in rows[:-1])
    plain = run_comparison("tiny-random", str(dataset), ["coop"], [1], shots=3, epochs=1, n_boot=10,
                           backbone=tiny_native, store=RunStore())
    assert "learner" not in plain[0] and plain[0]["accuracy"] == rows[1]["accuracy"]  # coop as before


def test_parse_learners_names_the_learners():
    assert parse_learners("coop, LPP,coop") == ["coop", "lp++"]
    with pytest.raises(ValueError, match="clip-adapter"):
        parse_learners("coop,adapter-x")


def test_a_feature_learners_random_start_follows_the_runs_seed(tiny_native):
    """CLIP-Adapter's MLP starts at random: the run's seed fixes it, whatever ran before in the process."""
    feats = torch.nn.functional.normalize(torch.randn(12, 2, tiny_native.embed_dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    labels = torch.arange(12) % 3
    states = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        config = TrainConfig(method="ls", learner="clip-adapter", seed=5, learner_params={"epochs": 2})
        result = train_prompts(tiny_native, ["a", "b", "c"], feats, labels, config)
        states.append({k: v.clone() for k, v in result.learner.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
