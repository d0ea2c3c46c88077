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
