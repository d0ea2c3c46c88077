"""The service layer without the UI: one shared Core, one SessionState per user."""
from __future__ import annotations

import threading
import zipfile

import numpy as np
import pytest

from calibprompt.app.wording import review_summary
from calibprompt.backbones import loading as models
from calibprompt.defaults import DEFAULT_HEADS
from calibprompt.demo import world
from calibprompt.service.startup import choose_backbone
from test_training import make_dataset


@pytest.fixture(scope="module")
def demo_backbone():
    return models.load_backbone("demo", device="cpu")


def _patch(cls="TUM", index=0, tmp=None):
    from PIL import Image

    image, _ = world.generate_patch(cls, index, 11, shift=1.25)
    path = tmp / f"{cls}-{index}.png"
    Image.fromarray(image).save(path)
    return str(path)


def test_a_new_session_starts_on_the_demo_task_with_all_three_methods(core):
    state = core.new_session()
    assert state.task == "demo" and state.model == "demo"
    assert core.prompt_choices(state)[:3] == list(DEFAULT_HEADS)


def test_compare_and_the_stateless_api(core, tmp_path):
    state = core.new_session()
    images = [_patch("TUM", 0, tmp_path), _patch("NORM", 1, tmp_path)]
    results = core.compare(state, images)
    assert len(results) == 2
    classnames = state.task_object().classnames
    for result in results:
        assert set(result.probs) == set(DEFAULT_HEADS)
        for probs in result.probs.values():
            assert set(probs) == set(classnames) and abs(sum(probs.values()) - 1) < 1e-6
    api = core.compare_api(images[0])
    assert set(api) == {"zero-shot", "coop", "calibprompt"}
    assert api["coop"] == pytest.approx(results[0].probs["coop"], abs=1e-5)
    binary = core.compare_api(images[0], task="demo-binary")
    assert set(binary["coop"]) == {"normal colon mucosa", "colorectal adenocarcinoma epithelium"}
    assert core.loaded(state).engine.images_encoded == 2  # later calls hit the image cache


def test_sessions_do_not_see_each_others_choices(core, tmp_path):
    a, b = core.new_session(), core.new_session()
    a = core.set_task(a, "demo-binary")
    assert b.task == "demo" and a.owner != b.owner
    image = _patch("TUM", 3, tmp_path)
    (rb,) = core.compare(b, [image])
    assert len(rb.probs["zero-shot"]) == 9
    (ra,) = core.compare(a, [image])
    assert len(ra.probs["zero-shot"]) == 2


def test_a_race_between_a_task_switcher_and_a_comparer_gives_only_correct_answers(core, tmp_path):
    image = _patch("ADI", 4, tmp_path)
    switcher, comparer = core.new_session(), core.new_session()
    stop = threading.Event()

    def switch():
        state = switcher
        while not stop.is_set():
            for task in ("demo-binary", "demo"):
                state = core.set_task(state, task)
                core.compare(state, [image])

    thread = threading.Thread(target=switch)
    thread.start()
    try:
        sizes = [len(core.compare(comparer, [image])[0].probs["coop"]) for _ in range(40)]
    finally:
        stop.set()
        thread.join()
    assert sizes == [9] * 40


def test_disagreement_flag(core, tmp_path, monkeypatch):
    from calibprompt.prompting.engine import Prediction

    state = core.new_session()
    classnames = state.task_object().classnames
    k = len(classnames)

    def fake_predict(features, heads):
        probs = {"zero-shot": np.eye(k)[[0]] * 0.95 + 0.05 / k, "coop": np.eye(k)[[1]] * 0.9 + 0.1 / k,
                 "calibprompt": np.eye(k)[[1]] * 0.5 + 0.5 / k}
        return {h: Prediction(h, classnames, np.log(probs[h]), probs[h]) for h in heads}

    monkeypatch.setattr(core.loaded(state).engine, "predict_with", fake_predict)
    (result,) = core.compare(state, [_patch("ADI", 0, tmp_path)])
    assert "disagree" in result.flag and "zero-shot" in result.flag and "coop" in result.flag


def test_bad_uploads_are_clear_errors(core, tmp_path):
    state = core.new_session()
    with pytest.raises(ValueError, match="Upload an image"):
        core.compare(state, [])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ValueError):
        core.compare(state, [str(broken)])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        core.compare_api(str(empty))
    with pytest.raises(ValueError, match="Unknown task"):
        core.compare_api(_patch("TUM", 0, tmp_path), task="nope")


def test_typed_classes_and_task_switch(core, tmp_path):
    state = core.set_task(core.new_session(), typed="tumour, normal tissue")
    assert state.task_object().classnames == ["tumour", "normal tissue"]
    assert core.prompt_choices(state) == ["zero-shot"]
    (result,) = core.compare(state, [_patch("TUM", 2, tmp_path)])
    assert set(result.probs) == {"zero-shot"}
    state = core.set_task(state, "demo-binary")
    assert set(core.prompt_choices(state)) >= set(DEFAULT_HEADS)
    with pytest.raises(ValueError, match="Unknown task"):
        core.set_task(state, "nope")
    with pytest.raises(ValueError, match="at least two"):
        core.set_task(state, typed="tumour")


def test_training_is_owned_by_its_session_and_becomes_a_prompt(core, calibprompt_home):
    make_dataset(calibprompt_home / "datasets" / "tissue")
    assert "tissue" in core.dataset_choices()
    owner = core.new_session()
    with pytest.raises(ValueError, match="task file"):
        core.start_training(core.set_task(owner, typed="adipose, lymphocytes, stroma"), "tissue")
    with pytest.raises(ValueError, match="No dataset"):
        core.start_training(owner, "../../etc", method="coop")


def test_only_the_owner_can_cancel_a_job(core, calibprompt_home, monkeypatch):
    from calibprompt.runs.jobs import TrainJob

    gate = threading.Event()
    monkeypatch.setattr(core.runner, "_run", lambda entry: gate.wait(30))
    first = core.runner.submit(TrainJob(model="demo", dataset="demo", task="demo", device="cpu"), owner="alice")
    queued = core.runner.submit(TrainJob(model="demo", dataset="demo", task="demo", device="cpu"), owner="alice")
    mallory = core.new_session()
    alice = core.new_session().with_(owner="alice")
    with pytest.raises(ValueError, match="There is no run"):  # as if it did not exist (issue 18)
        core.cancel(mallory, queued)
    assert core.cancel(alice, queued)
    assert core.store.get_run(queued).status == "cancelled"  # a queued job shows cancelled at once
    gate.set()
    core.runner.wait(first, timeout=30)


def test_zip_upload_is_unpacked_inside_the_data_directory(core, tmp_path, calibprompt_home):
    src = make_dataset(tmp_path / "zipped", n_train=2, n_test=1)
    archive = tmp_path / "cells.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in src.rglob("*.png"):
            zf.write(path, f"cells/{path.relative_to(src)}")
    choice = core.upload_dataset(str(archive))
    assert choice in core.dataset_choices()
    assert (calibprompt_home / "uploads").exists()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.png", b"x")
    with pytest.raises(ValueError):
        core.upload_dataset(str(evil))
    assert not (calibprompt_home / "outside.png").exists()


def test_calibration_reports_with_temperature_scaling(core):
    state = core.set_task(core.new_session(), "demo-binary")
    reports, ev = core.calibration(state, "demo-binary", n_bins=10)
    assert set(reports) == {f"{h}{s}" for h in DEFAULT_HEADS for s in ("", " + TS")}
    for report in reports.values():
        assert 0 <= report["ece"] <= 1 and report["reliability"]["n_bins"] == 10
        assert sum(report["reliability"]["counts"]) == 600 == len(ev.paths)
    assert reports["coop + TS"]["temperature"] > 0
    with pytest.raises(ValueError, match="bins"):
        core.calibration(state, "demo-binary", n_bins=1)


def test_review_ranks_confidently_wrong_cases_and_keeps_each_readers_verdict(core):
    state = core.set_task(core.new_session(), "demo-binary").with_(reader="ann")
    cases, _ = core.review_cases(state, "demo-binary", min_confidence=0.5)
    assert cases and all(c["score"] >= 0.5 for c in cases)
    assert [c["score"] for c in cases] == sorted((c["score"] for c in cases), reverse=True)
    case = cases[0]
    wrong = {h: c for h, (p, c) in case["predictions"].items() if p != case["true"]}
    assert case["method"] == max(wrong, key=wrong.get)  # the verdict defaults to the most confidently wrong method
    assert not case["image"].startswith("/")
    only_coop, _ = core.review_cases(state, "demo-binary", method="coop", true_class="NORM")
    assert all(c["true"] == "NORM" and c["predictions"]["coop"][0] != "NORM" for c in only_coop)
    core.save_review(state, "demo-binary", case, case["method"], "disagree", "looks like normal crypts")
    bob = state.with_(reader="bob")
    core.save_review(bob, "demo-binary", case, case["method"], "agree")
    again, _ = core.review_cases(state, "demo-binary", min_confidence=0.5)
    assert again[0]["verdicts"][case["method"]] == {"verdict": "disagree", "note": "looks like normal crypts"}
    assert len(core.store.reviews(dataset="demo-binary", image=case["image"])) == 2
    assert "reviewed 1 of" in review_summary(core.review_progress(state, "demo-binary", again))
    with pytest.raises(ValueError, match="reader"):
        core.save_review(state.with_(reader=""), "demo-binary", case, case["method"], "agree")
    with pytest.raises(ValueError):
        core.save_review(state, "demo-binary", case, case["method"], "maybe")


def test_a_seed_2_run_on_a_single_folder_dataset_is_evaluated_without_its_training_images(core, calibprompt_home):
    from calibprompt.data.layouts import few_shot_split, load_dataset
    from calibprompt.prompting.tasks import Task
    from calibprompt.runs.jobs import TrainJob, run_train_job

    import json
    import shutil

    source = make_dataset(calibprompt_home / "source", n_train=10, n_test=0)
    folder = calibprompt_home / "datasets" / "single"
    shutil.move(str(source / "train"), str(folder))  # one folder per class, no test split
    ds = load_dataset(folder)
    assert ds.test is None
    task_file = calibprompt_home / "single.json"

    task_file.write_text(json.dumps({**Task.from_classnames(ds.classnames).to_dict(), "name": "single"}))
    record = run_train_job(TrainJob(model="demo", dataset=str(folder), task=str(task_file), shots=4, seed=2,
                                    method="coop", epochs=1, device="cpu"), core.store)
    assert record.status == "done", record.error
    train, test = few_shot_split(ds, 4, 2)
    default_train, _ = few_shot_split(ds, 8, 1)
    assert set(train.relative_paths()) != set(default_train.relative_paths()[:len(train)])
    state = core.new_session().with_(owner="local")  # a run of the command line is the operator's (issue 18)
    state = state.with_(task=str(task_file), classes=(), prompts=("zero-shot", f"run:{record.id}"))
    reports, ev = core.calibration(state, "single", temperature_scaling=False)
    evaluated = set(ev.images)
    assert not evaluated & set(train.relative_paths())
    assert evaluated == set(test.relative_paths())
    assert ev.excluded == len(train)


def test_the_evaluation_cache_follows_the_checkpoint_not_the_name(core, calibprompt_home, monkeypatch):
    state = core.set_task(core.new_session(), "demo-binary")
    _, first = core.calibration(state, "demo-binary", ("coop",), temperature_scaling=False)
    other = core.default_prompt(state, "calibprompt")
    monkeypatch.setattr(core, "default_prompt", lambda state, method, task=None: other)
    _, second = core.calibration(state, "demo-binary", ("coop",), temperature_scaling=False)
    assert not np.allclose(first.probs["coop"], second.probs["coop"])


def test_auto_model_choice_falls_back_to_the_demo_with_a_reason(monkeypatch, tmp_path):
    from huggingface_hub import constants

    import calibprompt.service.startup as startup

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(startup, "hub_reachable", lambda timeout=3.0: (False, "no route"))
    backbone, banner = choose_backbone("auto")
    assert backbone.name == "demo"
    assert "unreachable" in banner and "demo" in banner and "biomedclip" in banner.lower()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    backbone, banner = choose_backbone("auto")
    assert backbone.name == "demo" and "HF_HUB_OFFLINE" in banner


def test_an_uploaded_manifest_cannot_reach_outside_its_folder(core, tmp_path, calibprompt_home):
    from PIL import Image

    from calibprompt.data.resolve import open_dataset, resolve_choice

    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    archive = tmp_path / "manifest.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            for cls in ("a", "b"):
                buf = tmp_path / f"{cls}{i}.png"
                Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(buf)
                zf.write(buf, f"set/{cls}{i}.png")
        rows = [f"{c}{i}.png,{c}" for i in range(3) for c in ("a", "b")] + [f"{secret},a", "../../secret.png,b"]
        zf.writestr("set/manifest.csv", "path,label\n" + "\n".join(rows) + "\n")
    choice = core.upload_dataset(str(archive))
    _, ds = open_dataset(resolve_choice(choice))
    assert len(ds.train) == 6
    assert all("secret" not in str(p) for p in ds.train.paths)
    assert any("secret" in path for path, _ in ds.skipped)
