"""The benchmark scripts keep running and keep their output contract (figures are measured elsewhere)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
    assert result["ratio"] > 0


def test_train_speed_writes_its_contract(tmp_path):
    out = tmp_path / "speed.json"
    assert _load("train_speed").main(["--backbone", "tiny-random", "--epochs", "2", "--views", "2",
                                      "--test-per-class", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"backbone", "speedup", "seconds", "reference_seconds", "accuracy", "reference_accuracy"} <= set(result)
    assert result["speedup"] > 0 and 0 <= result["accuracy"] <= 1


def test_table_speed_writes_its_contract_and_proves_equality(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBPROMPT_HOME", str(tmp_path / "home"))
    out = tmp_path / "table.json"
    assert _load("table_speed").main(["--backbone", "tiny-random", "--seeds", "1,2", "--methods", "coop,calibprompt",
                                      "--epochs", "2", "--test-per-class", "3", "--reference-steps", "1",
                                      "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"speedup_vs_sequential", "speedup_vs_reference", "max_abs_diff", "backbone", "device", "batched_seconds",
            "batched_feature_seconds", "batched_train_seconds", "sequential_seconds", "sequential_feature_seconds",
            "sequential_train_seconds", "reference_seconds", "reference_estimated"} <= set(result)
    assert result["max_abs_diff"] < 1e-5 and result["accuracies_equal"]
    assert result["runs"] == 4 and result["speedup_vs_sequential"] > 0
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
