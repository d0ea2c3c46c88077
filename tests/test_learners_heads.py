"""Learners as heads: a learner checkpoint loads as a head whose probabilities are the learner's softmax,
the Compare and Calibration paths take it, prompt learners stay plain prompt heads, the service's menus
name a learner's run ``learner/method``, and the Train tab's learner menu reaches the job."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from calibprompt.prompting.checkpoint import LEARNER_FORMAT, checkpoint_format
from calibprompt.prompting.engine import Engine, learner_head
from calibprompt.training.learners import create_learner, learner_info, list_learners, load_learner, save_learner
from calibprompt.training.learners.base import train_learner
from calibprompt.training.learners.coop import train_step
from calibprompt.training.losses import build_objective

TASK = "demo-binary"


def _state(core):
    return core.set_task(core.new_session(), TASK)


def _few_shot(core, state, n: int = 8):
    """Features (N, D) and labels (N,) of the first ``n`` training images of the demo task, and the task."""
    _, task, ds = core._open(state, TASK)
    paths, labels = list(ds.train.paths)[:n * 4], list(ds.train.labels)[:n * 4]
    picked = [i for c in range(len(task.classnames)) for i in [j for j, y in enumerate(labels) if y == c][:n // 2]]
    feats = core.loaded(state).engine.image_features([paths[i] for i in picked])
    return feats, torch.tensor([labels[i] for i in picked]), task


def _feature_learner(core, state, name: str = "linear-probe"):
    feats, labels, task = _few_shot(core, state)
    learner = create_learner(name, core.loaded(state).backbone, task.classnames)
    train_learner(learner, feats, labels, "coop", epochs=3)
    return learner, feats


def _finished_run(core, state, checkpoint, learner: str | None, method: str = "calibprompt") -> str:
    params = {"model": state.model, "task": TASK, "method": method, "seed": 1, "owner": state.owner}
    if learner:
        params["learner"] = learner
    run = core.store.create_run("train", params)
    core.store.start_run(run, "cpu")
    core.store.finish_run(run, {"task": TASK, "accuracy": 0.5, "ece": 0.1}, checkpoint)
    return run


def test_a_feature_learner_checkpoint_is_a_head_with_the_learners_probabilities(core, tmp_path):
    state = _state(core)
    learner, feats = _feature_learner(core, state)
    path = save_learner(tmp_path / "lp", learner, backbone=state.model, metadata={"method": "coop"})
    assert checkpoint_format(path) == LEARNER_FORMAT
    engine = Engine(core.loaded(state).backbone)
    with pytest.raises(ValueError, match="loader=calibprompt.training.learners.load_learner"):
        engine.add_learner("lp", path)
    head = engine.add_learner("lp", path, loader=load_learner)
    assert head.kind == "learner" and head.classnames == list(learner.classnames)
    with torch.no_grad():
        expected = torch.softmax(learner(feats).double(), dim=1).numpy()
    got = engine.predict_features(feats, ["lp"])["lp"].probs
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert head.fingerprint() != learner_head("other", create_learner(
        "linear-probe", core.loaded(state).backbone, learner.classnames)).fingerprint()


def test_cocoop_heads_call_the_per_image_prompts_and_coop_stays_a_prompt_head(core, tmp_path):
    state = _state(core)
    feats, labels, task = _few_shot(core, state, 4)
    backbone = core.loaded(state).backbone
    engine = Engine(backbone)
    for name in ("cocoop", "kgcoop"):
        learner = create_learner(name, backbone, task.classnames, n_ctx=2, generator=torch.Generator().manual_seed(1))
        objective = build_objective("coop")
        train_step(learner, objective, torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=0.1),
                   feats, labels)
        path = save_learner(tmp_path / name, learner, backbone=backbone.name)
        head = engine.add_learner(name, path, loader=load_learner)
        with torch.no_grad():
            expected = torch.softmax(learner(feats).logits.double(), dim=1).numpy()
        np.testing.assert_allclose(engine.predict_features(feats, [name])[name].probs, expected, atol=1e-6)
        assert head.kind == ("learner" if name == "cocoop" else "prompt")
    plain = engine.add_prompt("kgcoop-as-prompt", tmp_path / "kgcoop")  # still a plain prompt checkpoint
    assert torch.equal(plain.text_features, engine.heads["kgcoop"].text_features)


def test_a_learner_run_is_a_menu_head_for_compare_and_calibration(core, tmp_path):
    state = _state(core)
    learner, _ = _feature_learner(core, state)
    path = save_learner(tmp_path / "lp", learner, backbone=state.model, metadata={"method": "coop"})
    run = _finished_run(core, state, path, "linear-probe", method="coop")
    options = core.prompt_options(state)
    named = [o for o in options if o["value"] == "linear-probe/coop"]
    assert named and named[0]["learner"] == "linear-probe" and named[0]["kind"] == "newest run"
    assert any(o["value"] == f"run:{run}" and o["learner"] == "linear-probe" for o in options)
    assert "coop" in core.prompt_choices(state)  # the bundled CoOp prompt keeps its plain name
    assert core.default_prompt(state, "coop") != str(path)  # a learner's run is not CoOp's default
    heads = core.resolve_heads(state, ["zero-shot", "linear-probe/coop", f"run:{run}"])
    assert heads["linear-probe/coop"].kind == "learner"
    _, task, ds = core._open(state, TASK)
    images = list(ds.test.paths)[:3]
    compared = core.compare(state, images, ["zero-shot", "linear-probe/coop"])
    feats = core.loaded(state).engine.image_features(images)
    with torch.no_grad():
        expected = torch.softmax(learner(feats).double(), dim=1).numpy()
    got = np.array([[c.probs["linear-probe/coop"][n] for n in task.classnames] for c in compared])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    reports, ev = core.calibration(state, TASK, ["zero-shot", "linear-probe/coop"])
    assert "linear-probe/coop" in reports and ev.probs["linear-probe/coop"].shape[1] == len(task.classnames)
    with pytest.raises(ValueError, match="learner/method"):
        core.resolve_heads(state, ["nothing-here"])
    with pytest.raises(ValueError, match="no plain prompt"):
        core.interpret_run(state, run)
    assert next(r for r in core.run_history(state) if r["run"] == run)["learner"] == "linear-probe"


def test_the_train_tab_lists_every_learner_with_its_description(core):
    import gradio as gr

    from calibprompt.app.train_tab import _layout

    with gr.Blocks() as page:
        _layout(["demo"], core.methods(), {}, core.learners())
    found = [c for c in page.config["components"] if c.get("props", {}).get("elem_id") == "train-learner"]
    assert len(found) == 1
    choices = found[0]["props"]["choices"]
    assert [value for _, value in choices] == list_learners() and found[0]["props"]["value"] == "coop"
    for label, value in choices:
        assert learner_info(value)["description"] in label


def test_a_start_with_a_learner_reaches_the_job(core, monkeypatch):
    from calibprompt.app.train_tab import _job_handlers
    from calibprompt.runs.jobs import TrainJob

    jobs, submit = [], type(core.runner).submit
    monkeypatch.setattr(type(core.runner), "submit",
                        lambda self, job, **kw: jobs.append(job) or submit(self, job, **kw))
    start_job = _job_handlers(core)[0]
    request = SimpleNamespace(username=None, session_hash="learner-start")
    settings = dict(dataset=TASK, run_name="", method="coop", shots=1, seed=1, epochs=1, alpha=0.0, beta=0.0,
                    device="cpu")
    takes_learner = "learner" in {f.name for f in dataclasses.fields(TrainJob)}
    state, run_id, progress, _, _ = start_job(_state(core), learner="linear-probe", request=request, **settings)
    if takes_learner:
        assert run_id and "cp-errors" not in progress and jobs[-1].learner == "linear-probe"
        core.cancel(state, run_id)
    else:  # until jobs train other learners: a clear refusal, nothing queued
        assert "cp-errors" in progress and "coop" in progress and not jobs
    with pytest.raises(ValueError, match="choose one of: coop"):
        core.start_training(_state(core), TASK, method="coop", learner="no-such-learner")
    state, run_id = core.start_training(_state(core), TASK, method="coop", shots=1, epochs=1)
    assert getattr(jobs[-1], "learner", "coop") == "coop"
    core.cancel(state, run_id)
