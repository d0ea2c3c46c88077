"""The evaluation protocols of the learner comparison: base-to-novel, cross-domain and shot sweeps.

Base-to-novel trains on the first ceil(K/2) classes and evaluates on both halves, the novel half with the
learned context put in front of the novel class names; a learner with a weight per class says it has
nothing for a novel class. Cross-domain evaluates every run on another dataset with the same classes.
Each protocol's rows are checked against what its runs recorded and against hand-worked numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from calibprompt.data.class_splits import base_novel_classes, restrict_classes
from calibprompt.data.layouts import few_shot_split, load_dataset
from calibprompt.prompting.learner import PromptLearner
from calibprompt.prompting.tasks import Task
from calibprompt.runs.compare import LEARNER_ROW_FIELDS, harmonic_mean, parse_shots, run_comparison
from calibprompt.runs.executors import Batched
from calibprompt.runs.jobs import TrainJob
from calibprompt.runs.store import RunStore
from calibprompt.training.learners import create_learner
from calibprompt.training.learners.transfer import for_classes, transfers
from test_training import make_dataset

COLOURS = {"adipose": (240, 230, 235), "lymphocytes": (60, 40, 120), "stroma": (200, 80, 150),
           "mucus": (120, 200, 220), "debris": (90, 90, 40)}


def _make(root: Path, n_train: int = 4, n_test: int = 3, seed: int = 0, shift: int = 0) -> Path:
    return make_dataset(root, n_train=n_train, n_test=n_test, seed=seed, colours=COLOURS, shift=shift)


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("five") / "tissue")


@pytest.fixture(scope="module")
def five_shifted(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("shifted") / "tissue", n_train=2, n_test=2, seed=3, shift=30)


# ----------------------------------------------------------------------------------------- the split
def test_base_novel_split_is_the_first_half_rounded_up():
    assert base_novel_classes(9) == ([0, 1, 2, 3, 4], [5, 6, 7, 8])
    assert base_novel_classes(4) == ([0, 1], [2, 3])
    with pytest.raises(ValueError, match="at least 4 classes"):
        base_novel_classes(3)


def test_base_and_novel_test_images_are_disjoint_and_complete(five):
    ds = load_dataset(five)
    train, test = few_shot_split(ds, 2, 1)
    base, novel = base_novel_classes(ds.num_classes)
    b, n = restrict_classes(test, base), restrict_classes(test, novel)
    assert {str(p) for p in b.paths}.isdisjoint(str(p) for p in n.paths)
    assert sorted(map(str, b.paths + n.paths)) == sorted(map(str, test.paths))
    assert b.class_ids == ds.class_ids[:3] and n.class_ids == ds.class_ids[3:]
    for images, classes in ((b, base), (n, novel)):  # relabelled 0..m-1, each image keeping its class
        for path, label in zip(images.paths, images.labels):
            assert Path(path).parent.name == ds.class_ids[classes[label]]
    assert set(restrict_classes(train, base).labels) == {0, 1, 2}


def test_a_task_subset_keeps_templates_and_names_its_part():
    task = Task.from_classnames(["a", "b", "c", "d"], templates=["x {}."])
    novel = task.subset([2, 3], "novel")
    assert novel.name == "custom:novel" and novel.classnames == ["c", "d"] and novel.templates == ("x {}.",)
    with pytest.raises(ValueError, match="distinct and in 0..3"):
        task.subset([1, 1], "base")


def test_harmonic_mean_by_hand():
    assert harmonic_mean(0.6, 0.4) == pytest.approx(0.48)
    assert harmonic_mean(0.0, 0.0) == 0.0 and harmonic_mean(0.5, None) is None


def test_parse_shots():
    assert parse_shots("1,2, 4,2") == [1, 2, 4] and parse_shots(8) == [8]
    for bad in ("1,x", "0", "8.5"):
        with pytest.raises(ValueError, match="Shots .training images per class. must be a whole number"):
            parse_shots(bad)


# ------------------------------------------------------------------------------------ transfer
def test_a_prompt_transfers_its_context_to_new_classes_and_stays_unchanged(tiny_native):
    prompt = PromptLearner(tiny_native, ["a", "b"], n_ctx=4, generator=torch.Generator().manual_seed(0))
    before = prompt.ctx.detach().clone()
    novel = for_classes(prompt, tiny_native, ["c", "d", "e"])
    assert novel.classnames == ["c", "d", "e"] and torch.equal(novel.ctx, before)
    assert prompt.classnames == ["a", "b"] and torch.equal(prompt.ctx, before)
    # the novel prompts are the novel class names behind the same context: the same as a prompt built for
    # ["a", "b", "c", "d", "e"] with that context, restricted to its last three classes
    whole = PromptLearner(tiny_native, ["a", "b", "c", "d", "e"], n_ctx=4)
    with torch.no_grad():
        whole.ctx.copy_(before)
        assert torch.allclose(novel.encode_text(), whole.encode_text()[2:], atol=1e-5)


def test_registry_prompt_learners_transfer_and_per_class_learners_say_why(tiny_native):
    cocoop = create_learner("cocoop", tiny_native, ["a", "b"])
    moved = for_classes(cocoop, tiny_native, ["c", "d", "e"])
    assert moved.classnames == ["c", "d", "e"] and cocoop.classnames == ["a", "b"]
    assert moved.meta_net is cocoop.meta_net and torch.equal(moved.prompt.ctx, cocoop.prompt.ctx)
    assert moved(torch.randn(2, tiny_native.embed_dim)).logits.shape == (2, 3)
    for name in ("linear-probe", "lp++", "clap", "tip-adapter-f"):
        extra = {"cache_size": 4} if name == "tip-adapter-f" else {}
        learner = create_learner(name, tiny_native, ["a", "b"], **extra)
        assert "nothing for a class it was not trained on" in transfers(learner)
        with pytest.raises(ValueError, match="Cannot evaluate on the novel classes"):
            for_classes(learner, tiny_native, ["c", "d"])


def test_clip_adapter_on_new_classes_by_its_formula(tiny_native):
    adapter = create_learner("clip-adapter", tiny_native, ["a", "b"])
    torch.nn.init.normal_(adapter.adapter[0].weight)
    zs = F.normalize(torch.randn(3, tiny_native.embed_dim), dim=-1)
    moved = for_classes(adapter, tiny_native, ["c", "d", "e"], zero_shot_text=zs)
    f = F.normalize(torch.randn(4, tiny_native.embed_dim), dim=-1)
    a = adapter.adapter(f)
    expected = adapter.logit_scale * F.normalize(0.2 * a + 0.8 * f, dim=-1) @ zs.T
    assert torch.allclose(moved(f), expected, atol=1e-5)


# ---------------------------------------------------------------------------------- the protocols
def test_base_to_novel_rows_match_the_runs_and_never_train_on_novel(tiny_native, five, calibprompt_home):
    store = RunStore()
    rows = run_comparison("tiny-random", str(five), ["zeroshot", "coop"], [1], shots=2, epochs=1, n_boot=10,
                          backbone=tiny_native, learners=["coop", "clip-adapter", "linear-probe"],
                          base_to_novel=True, store=store)
    assert [(r["learner"], r["side"]) for r in rows] == [
        (learner, side) for learner in ("zeroshot", "coop", "clip-adapter", "linear-probe")
        for side in ("base", "novel", "hm")]
    assert all(set(r) >= set(LEARNER_ROW_FIELDS) for r in rows)
    by = {(r["learner"], r["side"]): r for r in rows}
    for learner in ("zeroshot", "coop", "clip-adapter"):
        base, novel, hm = (by[(learner, s)] for s in ("base", "novel", "hm"))
        assert hm["accuracy"] == pytest.approx(2 * base["accuracy"] * novel["accuracy"]
                                               / (base["accuracy"] + novel["accuracy"]))
        assert hm["ece"] == pytest.approx(2 * base["ece"] * novel["ece"] / (base["ece"] + novel["ece"]))
        assert hm["nll"] is None and novel["refused"] == ""
    assert by[("linear-probe", "base")]["accuracy"] is not None
    assert "weight vector per class" in by[("linear-probe", "novel")]["refused"]
    assert by[("linear-probe", "hm")]["accuracy"] is None

    run = store.get_run(by[("coop", "base")]["run_id"])
    assert run.params["classes"] == "base" and run.metrics["test_images"] == 9  # 3 base classes x 3
    novel = run.metrics["sides"]["novel"]
    assert novel["test_images"] == 6 and novel["classes"] == ["mucus", "stroma"]  # classes in folder order
    assert novel["accuracy"] == pytest.approx(by[("coop", "novel")]["accuracy"])
    # DAC on the novel classes: T from the 9 labelled base images, scales from text features; the answers stay
    assert novel["dac"]["fitted_on"] == 9 and novel["dac"]["temperature"] > 0
    assert by[("coop", "novel")]["dac_accuracy"] == pytest.approx(by[("coop", "novel")]["accuracy"])
    assert by[("coop", "novel")]["dac_ece"] == pytest.approx(novel["dac"]["ece"])
    assert by[("coop", "base")]["dac_ece"] is None and by[("zeroshot", "novel")]["dac_ece"] is None
    meta = json.loads(Path(run.checkpoint).read_text())
    trained = meta["split"]["train"]["paths"]
    assert len(trained) == 6 and all(p.split("/")[1] in ("adipose", "debris", "lymphocytes") for p in trained)
    assert meta["task"]["classes"][-1]["id"] == "lymphocytes"  # the prompt knows the base classes only


def test_cross_domain_rows_and_a_target_of_other_classes(tiny_native, five, five_shifted, calibprompt_home, tmp_path):
    store = RunStore()
    rows = run_comparison("tiny-random", str(five), ["zeroshot", "coop"], [1], shots=2, epochs=1, n_boot=10,
                          backbone=tiny_native, eval_dataset=str(five_shifted), store=store)
    assert [(r["learner"], r["side"]) for r in rows] == [("zeroshot", "source"), ("zeroshot", "target"),
                                                         ("coop", "source"), ("coop", "target")]
    run = store.get_run(rows[2]["run_id"])
    target = run.metrics["sides"]["target"]
    assert target["test_images"] == 10 and target["dataset"] == str(five_shifted)  # its 5 x 2 test images
    assert target["ece"] == pytest.approx(rows[3]["ece"]) and rows[3]["ece"] != pytest.approx(rows[2]["ece"])
    other = make_three(tmp_path / "three")
    before = len(store.list_runs())
    with pytest.raises(ValueError, match="same classes"):
        run_comparison("tiny-random", str(five), ["coop"], [1], shots=2, epochs=1, n_boot=10,
                       backbone=tiny_native, eval_dataset=str(other), store=store)
    with pytest.raises(ValueError, match="at least 4 classes"):
        run_comparison("tiny-random", str(other), ["coop"], [1], shots=1, epochs=1, backbone=tiny_native,
                       base_to_novel=True, store=store)
    assert len(store.list_runs()) == before  # refused before any run was recorded


def make_three(root: Path) -> Path:
    for name in ("adipose", "lymphocytes", "stroma"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (i * 40, 80, 120)).save(root / name / f"{i}.png")
    return root


class Recording:
    """An executor that records the groups it gets, then trains them as the local one does."""

    def __init__(self):
        self.groups = []

    def __call__(self, groups, store, **kw):
        self.groups.extend(groups)
        return Batched(n_boot=10)(groups, store, **kw)


def test_a_shot_sweep_groups_runs_by_learner_and_resumes(tiny_native, five, calibprompt_home):
    store, executor = RunStore(), Recording()
    rows = run_comparison("tiny-random", str(five), ["coop"], [1], shots=[1, 2], epochs=1, backbone=tiny_native,
                          learners=["coop", "kgcoop"], store=store, executor=executor)
    assert [(r["shots"], r["learner"]) for r in rows] == [(1, "coop"), (1, "kgcoop"), (2, "coop"), (2, "kgcoop")]
    assert [sorted({j.learner for j in g.jobs}) for g in executor.groups] == [["coop"], ["kgcoop"]]
    assert [store.get_run(r["run_id"]).params["shots"] for r in rows] == [1, 1, 2, 2]
    again = Recording()
    resumed = run_comparison("tiny-random", str(five), ["coop"], [1], shots=[1, 2], epochs=1, backbone=tiny_native,
                             learners=["coop", "kgcoop"], store=store, executor=again, resume=True)
    assert again.groups == [] and [r["run_id"] for r in resumed] == [r["run_id"] for r in rows]


def test_a_job_refuses_two_protocols_at_once_and_records_only_what_is_set(five):
    job = TrainJob(model="tiny-random", dataset=str(five))
    assert "classes" not in job.to_params() and "eval_dataset" not in job.to_params()
    assert TrainJob(model="tiny-random", dataset=str(five), classes="base").slug == "coop-s1-base"
    with pytest.raises(ValueError, match="one at a time"):
        TrainJob(model="tiny-random", dataset=str(five), classes="base", eval_dataset="demo")
    with pytest.raises(ValueError, match="classes must be one of all, base"):
        TrainJob(model="tiny-random", dataset=str(five), classes="novel")


def test_cli_base_to_novel_json_and_a_bad_sweep(five, calibprompt_home, tmp_path, capsys):
    from calibprompt.cli import main

    out = tmp_path / "rows.json"
    assert main(["compare", "--model", "tiny-random", "--dataset", str(five), "--methods", "coop", "--seeds", "1",
                 "--shots", "2", "--epochs", "1", "--base-to-novel", "--learners", "coop,clap", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["learner"], r["side"]) for r in rows] == [("coop", "base"), ("coop", "novel"), ("coop", "hm"),
                                                         ("clap", "base"), ("clap", "novel"), ("clap", "hm")]
    assert list(rows[0]) == list(LEARNER_ROW_FIELDS) and rows[4]["accuracy"] is None
    printed = capsys.readouterr().out
    assert "base-to-novel" in printed and "refused: clap x coop (novel): Cannot evaluate on the novel classes" in printed
    assert main(["runs"]) == 0  # the run listing names each run's learner
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:4] == ["id", "kind", "status", "learner"]
    assert sorted(line.split()[3] for line in listing[1:]) == ["clap", "coop"]
    assert main(["compare", "--model", "tiny-random", "--dataset", str(five), "--shots", "1,x"]) == 2
    assert "Shots (training images per class) must be a whole number" in capsys.readouterr().err
