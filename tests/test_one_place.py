"""One place each (issue 19, item 3): one validation module for metrics, reports and plots; every default
in ``calibprompt.defaults``; ``--alpha`` only for the loss; a job's protocol resolved once."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

from calibprompt import defaults
from calibprompt.cli import build_parser
from calibprompt.evaluation import metrics as M
from calibprompt.evaluation import plots as P
from calibprompt.evaluation import report as R
from calibprompt.evaluation import validation as V
from calibprompt.runs import jobs
from calibprompt.runs.jobs import TrainJob, prepare_jobs, run_train_job
from calibprompt.runs.store import RunStore
from calibprompt.training import protocols, trainer
from test_training import make_dataset

EVALUATION = Path(M.__file__).parent


# ------------------------------------------------------------------ one validation module
@pytest.mark.parametrize("module", ["metrics.py", "plots.py", "report.py"])
def test_no_module_defines_its_own_argument_or_array_checks(module):
    """The checks live in validation.py; metrics, plots and report only name them."""
    tree = ast.parse((EVALUATION / module).read_text())
    defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    own = {"_check_int", "_check_real", "_to_numpy", "_number", "_vector", "_int", "_is_real", "_check_mapping",
           "_as_confidences"}
    assert not defined & own, f"{module} defines {sorted(defined & own)}: use calibprompt.evaluation.validation"


def test_the_modules_share_the_checks():
    assert M._check_int is V.check_int and P._check_int is V.check_int and R._int is V.check_int
    assert R._number is V.check_range and R._vector is V.check_vector and M._to_numpy is V.to_numpy
    assert M.PROB_ATOL == V.PROB_ATOL and R.VALUE_ATOL == V.VALUE_ATOL


@pytest.mark.parametrize("call, message", [
    (lambda: V.check_int(2.0, "n_bins", 1), r"`n_bins` must be an int >= 1, but got 2\.0 \(type float\)"),
    (lambda: V.check_int(0, "n_boot", 1), r"`n_boot` must be an int >= 1, but got 0"),
    (lambda: V.check_open_unit(1.0, "level", "0.95 for a 95 % interval"),
     r"`level` must lie in the open interval \(0, 1\) \(e\.g\. 0\.95 for a 95 % interval\)"),
    (lambda: V.check_positive(0.0, "temperature"), r"`temperature` must be a finite number > 0"),
    (lambda: V.check_real(float("nan"), "eps"), r"`eps` must be a finite real number"),
    (lambda: V.check_choice("log", "strategy", ("uniform", "quantile")),
     r"`strategy` must be one of \('uniform', 'quantile'\), but got 'log'"),
    (lambda: V.check_range(40.0, "ece", 0.0, 1.0), r"`ece` must lie in \[0, 1\] \(a fraction, not a percentage\)"),
    (lambda: V.check_mapping({}, "reports", "method names to reports"), r"`reports` is empty"),
])
def test_argument_checks_name_the_allowed_values(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("call, message", [
    (lambda: V.check_scores([[0.5, 0.6]]), r"every row of `probs` must sum to 1.*not logits"),
    (lambda: V.check_scores([[2.0, -1.0]]), r"`probs` must lie in \[0, 1\].*not logits"),
    (lambda: V.check_scores([[np.nan, 1.0]], "logits"), r"`logits` contains 1 NaN/inf value"),
    (lambda: V.check_scores([0.5, 0.5]), r"`probs` must be 2-D with shape \(N, K\)"),
    (lambda: V.check_scores([[0.5, 0.5]], "odds"), r"`kind` must be one of \('probs', 'logits'\)"),
    (lambda: V.check_labels([0, 2], 2, 2), r"`labels` must be class indices in \[0, K\) = \[0, 2\)"),
    (lambda: V.check_labels([0.5, 1.0], 2, 2), r"integer class indices"),
    (lambda: V.check_labels([0], 2, 2), r"same number of samples N"),
    (lambda: V.check_confidences([1.5], "conf"), r"finite confidences in \[0, 1\]"),
    (lambda: V.check_outcomes([0, 2], "correct", 2), r"booleans or 0/1"),
])
def test_array_checks_say_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_array_checks_convert_tensors_and_clip_within_the_tolerance():
    torch = pytest.importorskip("torch")
    p = V.check_scores(torch.tensor([[1.0005, -0.0005]], dtype=torch.float16))
    assert p.dtype == np.float64 and p.min() >= 0.0 and p.max() <= 1.0
    assert V.check_labels(torch.tensor([True, False]), 2, 2).tolist() == [1, 0]


# ------------------------------------------------------------------ every default in defaults.py
def _defaults_of(command: str) -> dict:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.dest: a.default for a in sub._actions}


def test_the_command_line_defaults_come_from_defaults():
    assert _defaults_of("evaluate")["coverage"] == defaults.COVERAGE
    assert _defaults_of("reproduce")["tolerance"] == defaults.TOLERANCE
    assert _defaults_of("reproduce")["seeds"] == _defaults_of("compare")["seeds"] == defaults.SEEDS
    assert _defaults_of("compare")["methods"] == defaults.METHODS
    assert _defaults_of("features")["batch_size"] == defaults.FEATURE_BATCH
    assert _defaults_of("demo-build")["steps"] == defaults.DEMO_STEPS
    assert _defaults_of("train")["bins"] == defaults.N_BINS and _defaults_of("train")["views"] == defaults.N_VIEWS


def test_the_library_defaults_come_from_defaults():
    assert inspect.signature(M.calibration_report).parameters["n_boot"].default == defaults.N_BOOT
    assert inspect.signature(M.bootstrap_interval).parameters["level"].default == defaults.LEVEL
    assert inspect.signature(M.expected_calibration_error).parameters["n_bins"].default == defaults.N_BINS
    assert inspect.signature(P.confidence_histogram).parameters["n_bins"].default == defaults.N_BINS
    assert P.DEFAULT_MIN_COUNT == defaults.PLOT_MIN_COUNT
    assert defaults.ALPHA == pytest.approx(1 - defaults.COVERAGE)


def test_cli_does_not_shadow_the_defaults_module():
    import calibprompt.cli as cli

    tree = ast.parse(Path(cli.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            assert node.id != "defaults", f"cli.py assigns to `defaults` at line {node.lineno}"


# ------------------------------------------------------------------ --alpha only for the loss
def test_alpha_is_the_loss_weight_in_train_and_compare_and_refused_by_evaluate(capsys):
    parser = build_parser()
    assert parser.parse_args(["train", "--model", "m", "--dataset", "d", "--alpha", "0.1"]).alpha == 0.1
    assert parser.parse_args(["compare", "--model", "m", "--dataset", "d", "--alpha", "0.1"]).alpha == 0.1
    assert parser.parse_args(["evaluate", "--coverage", "0.8"]).coverage == 0.8
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["evaluate", "--alpha", "0.1"])
    assert caught.value.code == 2
    assert "--coverage" in capsys.readouterr().err


# ------------------------------------------------------------------ the protocol resolved once per job
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "tissue")


def test_a_job_resolves_its_protocol_once(tiny_native, dataset, calibprompt_home, monkeypatch):
    calls = []
    real = protocols.resolve_protocol

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs, "resolve_protocol", counting)
    monkeypatch.setattr(trainer, "resolve_protocol", counting)
    job = TrainJob(model="tiny-random", dataset=str(dataset), shots=4, seed=1, method="coop", epochs=2, n_views=2,
                   batch_size=4, protocol="authors-code", precision="bf16")
    assert calls == []  # creating the job checks it; the family-dependent choices wait for the backbone
    prepared = prepare_jobs([job], tiny_native)[0]
    assert len(calls) == 1 and prepared.config.settings["precision"] == "bf16"
    assert prepared.config.settings["family"] == (tiny_native.family or "").lower()
    record = run_train_job(job, RunStore(), backbone=tiny_native, n_boot=10)
    assert record.status == "done", record.error
    assert len(calls) == 2  # once more for the second preparation (run_train_job's own), never in the trainer
    assert record.metrics["protocol_settings"] == prepared.config.settings
