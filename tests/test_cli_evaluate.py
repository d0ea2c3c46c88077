"""``calibprompt evaluate``: the selective-prediction numbers and the cross-fitted conformal sets it
reports (stdout and --json), for a given --coverage (miscoverage alpha = 1 - coverage)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from calibprompt.cli import main
from calibprompt.evaluation.conformal import cross_fitted_sets
from calibprompt.evaluation.selective import risk_coverage, selective_accuracy
from test_training import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # 3 classes x 12 test images = 36 test images: cross-fitting halves of 18
    return make_dataset(tmp_path_factory.mktemp("data") / "tissue", n_test=12)


def _evaluate(dataset, *extra):
    return main(["evaluate", "--model", "tiny-random", "--dataset", str(dataset), "--shots", "4", *extra])


def test_evaluate_reports_conformal_sets_and_selective_accuracy(dataset, tmp_path, calibprompt_home, capsys):
    out_json = tmp_path / "eval.json"
    assert _evaluate(dataset, "--coverage", "0.8", "--json", str(out_json)) == 0
    stdout = capsys.readouterr().out
    assert "selective prediction (zero-shot, 36 test images): AURC" in stdout
    assert "80% coverage" in stdout and "90% coverage" in stdout
    assert ("conformal sets at alpha=0.2 (zero-shot; cross-fitted: fit on the even-indexed test images, measure "
            "on the odd ones, and the reverse; the two results averaged)") in stdout
    table = stdout.split("the two results averaged):\n", 1)[1].splitlines()
    assert table[0].split() == ["score", "coverage", "mean", "set", "size"]
    assert [line.split()[0] for line in table[1:4]] == ["lac", "aps", "raps"]

    report = json.loads(out_json.read_text())
    assert {"run_id", "report", "rows", "selective", "conformal"} <= set(report)
    probs = np.array([r["probs"] for r in report["rows"]])
    labels = np.array([r["label"] for r in report["rows"]])
    assert probs.shape == (36, 3)

    sel = report["selective"]
    assert sel["n"] == 36
    assert sel["aurc"] == pytest.approx(risk_coverage(probs, labels)["aurc"])
    assert sel["selective_accuracy"] == pytest.approx(
        {"0.8": selective_accuracy(probs, labels, 0.8), "0.9": selective_accuracy(probs, labels, 0.9)})

    conf = report["conformal"]
    assert conf["alpha"] == 0.2 and conf["unavailable"] is None
    assert set(conf["scores"]) == {"lac", "aps", "raps"}
    for score, got in conf["scores"].items():
        want = cross_fitted_sets(probs, labels, alpha=0.2, score=score)
        assert got["coverage"] == pytest.approx(want["coverage"])
        assert got["mean_set_size"] == pytest.approx(want["mean_set_size"])
        folds = [(f["fit"], f["measure"], f["n_fit"]) for f in got["folds"]]
        assert folds == [("even", "odd", 18), ("odd", "even", 18)]
        assert got["coverage"] == pytest.approx(np.mean([f["coverage"] for f in got["folds"]]))
        assert f"{score}" in stdout and f"{got['coverage']:.4f}" in stdout


def test_evaluate_default_alpha_and_too_few_images_for_an_alpha(dataset, calibprompt_home, capsys):
    assert _evaluate(dataset) == 0  # default coverage 0.9, alpha 0.1: halves of 18 >= 9
    stdout = capsys.readouterr().out
    assert "conformal sets at alpha=0.1" in stdout and "not available" not in stdout
    # alpha 0.02 needs 49 images per half: reported, and the rest of the evaluation still succeeds
    assert _evaluate(dataset, "--coverage", "0.98") == 0
    stdout = capsys.readouterr().out
    assert "accuracy" in stdout and "AURC" in stdout
    assert ("not available: Too few samples for cross-fitted conformal sets at alpha=0.02: each half needs at "
            "least ceil(1/alpha) - 1 = 49, but 36 samples give halves of 18 and 18") in stdout


@pytest.mark.parametrize("coverage", ["0", "1", "-0.1", "1.5", "nan", "abc"])
def test_evaluate_rejects_a_bad_coverage_before_any_work(dataset, calibprompt_home, capsys, coverage):
    with pytest.raises(SystemExit) as caught:
        _evaluate(dataset, "--coverage", coverage)
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert "calibprompt evaluate: error: argument --coverage: must be a number above 0 and below 1" in captured.err
    assert main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # no evaluate run was created


def test_evaluate_refuses_alpha_and_points_to_coverage(dataset, calibprompt_home, capsys):
    """--alpha is the loss's smoothing weight (train, compare): evaluate exits 2 and names --coverage."""
    with pytest.raises(SystemExit) as caught:
        _evaluate(dataset, "--alpha", "0.1")
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "calibprompt evaluate: error: --alpha is the loss's smoothing weight" in err
    assert "--coverage 0.9" in err
    assert main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # no evaluate run was created
