"""The app's actions without the UI (Workspace): compare, train, calibration, review, model choice."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from calibprompt import models
from calibprompt.demo import world
from calibprompt.workspace import DEFAULT_HEADS, Workspace, choose_backbone
from test_training import make_dataset


@pytest.fixture(scope="module")
def demo_backbone():
    return models.load_backbone("demo", device="cpu")


@pytest.fixture()
def ws(demo_backbone, calibprompt_home):
    return Workspace(demo_backbone, "test banner")


def _patch(cls="TUM", index=0, tmp=None):
    from PIL import Image

    image, _ = world.generate_patch(cls, index, 11, shift=1.25)
    path = tmp / f"{cls}-{index}.png"
    Image.fromarray(image).save(path)
    return str(path)


def test_starts_on_the_demo_task_with_all_three_methods(ws):
    assert ws.task.name == "demo"
    assert [h for h in DEFAULT_HEADS if h in ws.engine.heads] == list(DEFAULT_HEADS)
    assert ws.prompt_choices()[:3] == list(DEFAULT_HEADS)


def test_compare_and_the_api_contract(ws, tmp_path):
    images = [_patch("TUM", 0, tmp_path), _patch("NORM", 1, tmp_path)]
    results = ws.compare(images)
    assert len(results) == 2
    for result in results:
        assert set(result.probs) == set(DEFAULT_HEADS)
        for probs in result.probs.values():
            assert set(probs) == set(ws.task.classnames) and abs(sum(probs.values()) - 1) < 1e-6
    api = ws.compare_api(images[0])
    assert set(api) == {"zero-shot", "coop", "calibprompt"}
    assert ws.engine.images_encoded == 2  # the second call hit the cache


def test_disagreement_flag(ws, tmp_path, monkeypatch):
    from calibprompt.engine import Prediction

    def fake_predict(images, heads):
        k = ws.task.num_classes
        probs = {"zero-shot": np.eye(k)[[0]] * 0.95 + 0.05 / k, "coop": np.eye(k)[[1]] * 0.9 + 0.1 / k,
                 "calibprompt": np.eye(k)[[1]] * 0.5 + 0.5 / k}
        return {h: Prediction(h, ws.task.classnames, np.log(probs[h]), probs[h]) for h in heads}

    monkeypatch.setattr(ws.engine, "predict", fake_predict)
    (result,) = ws.compare([_patch("ADI", 0, tmp_path)])
    assert "disagree" in result.flag and "zero-shot" in result.flag and "coop" in result.flag


def test_bad_uploads_are_clear_errors(ws, tmp_path):
    with pytest.raises(ValueError, match="Upload an image"):
        ws.compare([])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ValueError):
        ws.compare([str(broken)])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        ws.compare_api(str(empty))


def test_typed_classes_and_task_switch(ws, tmp_path):
    task = ws.set_task(["tumour", "normal tissue"])
    assert task.classnames == ["tumour", "normal tissue"] and list(ws.engine.heads) == ["zero-shot"]
    (result,) = ws.compare([_patch("TUM", 2, tmp_path)])
    assert set(result.probs) == {"zero-shot"}
    ws.set_task("demo-binary")
    assert set(ws.engine.heads) == set(DEFAULT_HEADS)
    with pytest.raises(ValueError, match="Unknown task"):
        ws.set_task("nope")


def test_training_from_the_workspace_becomes_a_prompt(ws, tmp_path, calibprompt_home):
    folder = make_dataset(calibprompt_home / "datasets" / "tissue")
    assert "tissue" in ws.dataset_choices()
    ws.set_task(["adipose", "lymphocytes", "stroma"])
    run_id = ws.start_training("tissue", method="coop", shots=4, epochs=2, device="cpu")
    record = ws.runner.wait(run_id, timeout=120)
    assert record.status == "done", record.error
    assert ws.job_status(run_id)["status"] == "done"
    assert ws.run_history()[0]["run"] == run_id
    with pytest.raises(ValueError, match="No dataset"):
        ws.start_training("../../etc", method="coop")
    assert folder.exists()


def test_zip_upload_is_unpacked_inside_the_data_directory(ws, tmp_path, calibprompt_home):
    src = make_dataset(tmp_path / "zipped", n_train=2, n_test=1)
    archive = tmp_path / "cells.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in src.rglob("*.png"):
            zf.write(path, f"cells/{path.relative_to(src)}")
    choice = ws.upload_dataset(str(archive))
    assert choice in ws.dataset_choices()
    assert (calibprompt_home / "uploads").exists()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.png", b"x")
    with pytest.raises(ValueError):
        ws.upload_dataset(str(evil))
    assert not (calibprompt_home / "outside.png").exists()


def test_calibration_reports_with_temperature_scaling(ws):
    ws.set_task("demo-binary")
    reports = ws.calibration("demo-binary", n_bins=10)
    assert set(reports) == {f"{h}{s}" for h in DEFAULT_HEADS for s in ("", " + TS")}
    for name, report in reports.items():
        assert 0 <= report["ece"] <= 1 and report["reliability"]["n_bins"] == 10
        assert sum(report["reliability"]["counts"]) == 600
    assert reports["coop + TS"]["temperature"] > 0


def test_review_ranks_confidently_wrong_cases_and_keeps_verdicts(ws):
    ws.set_task("demo-binary")
    cases = ws.review_cases("demo-binary", min_confidence=0.5)
    assert cases and all(c["score"] >= 0.5 for c in cases)
    assert [c["score"] for c in cases] == sorted((c["score"] for c in cases), reverse=True)
    case = cases[0]
    assert any(pred != case["true"] for pred, _ in case["predictions"].values())
    only_coop = ws.review_cases("demo-binary", method="coop", true_class="NORM")
    assert all(c["true"] == "NORM" and c["predictions"]["coop"][0] != "NORM" for c in only_coop)
    ws.review(case["path"], "disagree", "looks like normal crypts")
    again = ws.review_cases("demo-binary", min_confidence=0.5)
    assert again[0]["verdict"] == "disagree" and again[0]["note"] == "looks like normal crypts"
    csv_text = ws.export_reviews().read_text()
    assert "disagree" in csv_text and "looks like normal crypts" in csv_text
    with pytest.raises(ValueError):
        ws.review(case["path"], "maybe")


def test_auto_model_choice_falls_back_to_the_demo_with_a_reason(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: (False, "no route"))
    import calibprompt.workspace as workspace

    monkeypatch.setattr(workspace, "hub_reachable", lambda timeout=3.0: (False, "no route"))
    backbone, banner = choose_backbone("auto")
    assert backbone.name == "demo"
    assert "unreachable" in banner and "demo" in banner and "biomedclip" in banner.lower()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    backbone, banner = choose_backbone("auto")
    assert backbone.name == "demo" and "HF_HUB_OFFLINE" in banner


def test_an_uploaded_manifest_cannot_reach_outside_its_folder(ws, tmp_path, calibprompt_home):
    from PIL import Image

    from calibprompt.jobs import open_dataset

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
    choice = ws.upload_dataset(str(archive))
    _, ds = open_dataset(ws.resolve_dataset(choice))
    assert len(ds.train) == 6
    assert all("secret" not in str(p) for p in ds.train.paths)
    assert any("secret" in path for path, _ in ds.skipped)
