"""The benchmark scripts keep running, keep their output contract and report figures a user relies on.

A timing here is never held to a limit (a loaded machine moves it): what is asserted is what does not depend
on the machine (the runs, the counts, the equalities) and that each ratio is the one its own timings give.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inference_latency_writes_its_contract(tmp_path):
    out = tmp_path / "latency.json"
    assert _load("inference_latency").main(["--backbone", "tiny-random", "--images", "2", "--repeats", "1",
                                            "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"backbone", "ratio", "images_per_second", "zero_shot_seconds", "three_heads_seconds"} <= set(result)
    assert result["ratio"] == pytest.approx(result["three_heads_seconds"] / result["zero_shot_seconds"])
    assert result["images_per_second"] == pytest.approx(2 / result["zero_shot_seconds"])
    # one image pass serves all three heads; one pass per head would encode every image three times
    assert result["images_encoded"] == {"zero_shot": 2, "three_heads": 2, "naive_three_heads": 6}
    assert result["max_abs_diff"] <= 1e-6  # a head predicts the same beside the others as alone


def test_train_speed_writes_its_contract(tmp_path):
    out = tmp_path / "speed.json"
    assert _load("train_speed").main(["--backbone", "tiny-random", "--epochs", "2", "--views", "2",
                                      "--test-per-class", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"backbone", "speedup", "seconds", "reference_seconds", "accuracy", "reference_accuracy"} <= set(result)
    assert result["speedup"] == pytest.approx(result["reference_seconds"] / result["seconds"])
    assert result["cold_speedup"] == pytest.approx(result["reference_seconds"]
                                                   / (result["seconds"] + result["feature_seconds"]))
    # the same schedule on both sides: 2 classes x 8 shots in one batch of 16, for 2 epochs
    assert result["steps"] == result["reference_steps"] == 2
    assert result["test_images"] == 8
    for accuracy in (result["accuracy"], result["reference_accuracy"]):  # a count of the 8 test images
        assert 0 <= accuracy <= 1 and accuracy * 8 == pytest.approx(round(accuracy * 8))


def test_table_speed_writes_its_contract_and_proves_equality(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBPROMPT_HOME", str(tmp_path / "home"))
    out = tmp_path / "table.json"
    assert _load("table_speed").main(["--backbone", "tiny-random", "--seeds", "1,2", "--methods", "coop,calibprompt",
                                      "--epochs", "2", "--test-per-class", "3", "--reference-steps", "1",
                                      "--lr", "0.002", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"speedup_vs_sequential", "speedup_vs_reference", "max_abs_diff", "backbone", "device", "batched_seconds",
            "batched_feature_seconds", "batched_train_seconds", "sequential_seconds", "sequential_feature_seconds",
            "sequential_train_seconds", "reference_seconds", "reference_estimated"} <= set(result)
    assert result["max_abs_diff"] < 1e-5 and result["accuracies_equal"]
    # batched trains the same runs as one by one, with the same metrics (float32 evaluation: to 1e-6)
    assert result["runs"] == 4 and result["same_runs"] and result["max_metric_diff"] <= 1e-6
    assert result["max_ece_diff"] <= result["max_metric_diff"]
    assert result["speedup_vs_sequential"] == pytest.approx(result["sequential_seconds"] / result["batched_seconds"])
    for side in ("batched", "sequential"):  # the parts add up to the whole
        parts = sum(result[f"{side}_{part}_seconds"] for part in ("feature", "train", "other"))
        assert parts == pytest.approx(result[f"{side}_seconds"])
    assert result["reference_steps_per_run"] == 2  # 16 training images in one batch, 2 epochs
    assert result["separability"] == 1.0  # the synthetic classes are separable even with random weights


def test_feature_precision_writes_its_contract(tmp_path, monkeypatch):
    from test_training import make_dataset

    monkeypatch.setenv("CALIBPROMPT_HOME", str(tmp_path / "home"))
    dataset = make_dataset(tmp_path / "tissue", n_train=2, n_test=2)
    out = tmp_path / "precision.json"
    assert _load("feature_precision").main(["--model", "tiny-random", "--dataset", str(dataset), "--precisions",
                                            "fp32,bf16", "--shots", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["precisions"]) == {"fp32", "bf16"}
    assert result["precisions"]["fp32"]["cosine_min"] > 0.9999
    assert 0.9 < result["precisions"]["bf16"]["cosine_min"] <= 1.0 + 1e-6


def test_fast_paths_writes_its_ratios_from_its_own_timings(tmp_path):
    out = tmp_path / "fast.json"
    assert _load("fast_paths").main(["--rows", "500", "--boot", "20", "--megabytes", "1", "--repeats", "1",
                                     "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    report, refusal, demo = result["report"], result["refusal"], result["demo_load"]
    assert report["rows"] == 500 and report["boot"] == 20
    assert report["ratio_to_point"] == pytest.approx(report["seconds"] / report["point_seconds"])
    assert report["per_resample_ratio"] == pytest.approx(report["per_resample_seconds"] / report["seconds"])
    assert refusal["megabytes"] == pytest.approx(1.0, rel=0.01)
    assert refusal["large_to_small"] == pytest.approx(refusal["large_seconds"] / refusal["small_seconds"])
    assert refusal["bomb_to_decode"] == pytest.approx(refusal["bomb_seconds"] / refusal["decode_seconds"])
    assert 0 < demo["bytes"] <= 20 * 1024 * 1024  # the bundled demo model's files
    assert demo["to_read"] == pytest.approx(demo["seconds"] / demo["read_seconds"])
    with pytest.raises(SystemExit, match="--boot must be a whole number >= 1"):
        _load("fast_paths").main(["--boot", "0"])


@pytest.mark.parametrize("name", ["learners_table", "calibrators_table"])
def test_the_table_benchmarks_load_and_take_their_options(name, capsys):
    with pytest.raises(SystemExit) as done:
        _load(name).main(["--help"])
    assert done.value.code == 0 and "--seeds" in capsys.readouterr().out
