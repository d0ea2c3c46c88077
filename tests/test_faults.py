"""Faults a user can cause or meet (issue 18): odd task files, a full disk at the checkpoint, a device this
machine lacks, absurd command-line numbers. Each is refused or reported in plain words, with nothing
half-written left behind."""
from __future__ import annotations

import errno
import json

import pytest
import torch
from safetensors import SafetensorError

from calibprompt import defaults
from calibprompt.cli import _request_number, build_parser, main
from calibprompt.prompting import checkpoint as checkpoint_module
from calibprompt.prompting.checkpoint import CheckpointWriteError, checkpoint_paths, save_context
from calibprompt.prompting.tasks import load_task
from calibprompt.runs.jobs import TrainJob, failure_text, run_train_job
from calibprompt.runs.requests import CLI_LIMITS, check_option
from calibprompt.runs.store import RunStore
from test_training import make_dataset

CLASSES = [{"id": "normal"}, {"id": "pneumonia"}]


def _task_file(tmp_path, text: str | bytes):
    path = tmp_path / "task.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _task_json(**fields) -> str:
    return json.dumps({"name": "xray", "classes": CLASSES, **fields})


# ---------------------------------------------------------------- task files
def test_a_task_file_with_a_byte_order_mark_loads(tmp_path):
    path = _task_file(tmp_path, b"\xef\xbb\xbf" + _task_json(templates=["a chest X-ray of {}."]).encode())
    task = load_task(path)
    assert task.class_ids == ["normal", "pneumonia"] and task.templates == ("a chest X-ray of {}.",)


@pytest.mark.parametrize("fields, words", [
    ({"classes": "normal, pneumonia"}, ["'classes' must be a list of class names", "not a single string"]),
    ({"classes": {"normal": 1}}, ["'classes' must be a list of class names"]),
    ({"classes": [{"id": "normal"}, {"id": "  "}]}, ["class 2 of 'classes'", "'id'", "non-empty"]),
    ({"classes": ["normal", ""]}, ["class 2 of 'classes'", "non-empty"]),
    ({"classes": [{"id": "a", "name": " "}, {"id": "b"}]}, ["class 1 of 'classes'", "'name'"]),
    ({"templates": []}, ["'templates' is empty"]),
    ({"templates": ["a chest X-ray."]}, ["'templates'", "'{}' exactly once", "'a chest X-ray.'"]),
    ({"templates": "a chest X-ray of {}."}, ["'templates' must be a list of texts"]),
])
def test_malformed_task_files_are_refused_naming_the_field_and_the_file(tmp_path, fields, words):
    data = {"name": "xray", "classes": CLASSES, **fields}
    path = _task_file(tmp_path, json.dumps(data))
    with pytest.raises(ValueError) as caught:
        load_task(path)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_a_task_file_without_templates_gets_the_default(tmp_path):
    assert load_task(_task_file(tmp_path, _task_json())).templates == ("a photo of a {}.",)


# ---------------------------------------------------------------- checkpoint on a full disk
def _ctx_config():
    return torch.zeros(4, 8), {"classnames": ["a", "b"], "n_ctx": 4}


def _no_files_left(folder) -> bool:
    return not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                    "\"No space left on device\" }) (os error 28)"),
])
def test_a_checkpoint_on_a_full_disk_fails_plainly_and_leaves_nothing(calibprompt_home, monkeypatch, error):
    def full_disk(tensors, filename):
        with open(filename, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise error

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    folder = calibprompt_home / "runs" / "r1"
    ctx, config = _ctx_config()
    with pytest.raises(CheckpointWriteError) as caught:
        save_context(folder / "prompt", ctx, config, backbone="tiny-random")
    assert str(caught.value) == ("The disk is full: the prompt could not be saved to runs/r1/prompt.safetensors. "
                                 "Free some space and train again.")
    assert caught.value.errno == errno.ENOSPC
    assert failure_text(caught.value) == str(caught.value)  # what a failed run records
    assert _no_files_left(folder)


def test_a_checkpoint_whose_description_cannot_be_written_leaves_no_weights(calibprompt_home, monkeypatch):
    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(checkpoint_module, "atomic_write_json", read_only)
    folder = calibprompt_home / "runs" / "r2"
    ctx, config = _ctx_config()
    with pytest.raises(CheckpointWriteError, match="read-only: the prompt could not be saved to runs/r2/prompt.json"):
        save_context(folder / "prompt", ctx, config, backbone="tiny-random")
    assert not any(p.exists() for p in checkpoint_paths(folder / "prompt"))


def test_other_checkpoint_errors_pass_through(calibprompt_home, monkeypatch):
    def broken(tensors, filename):
        raise SafetensorError("some other serialisation problem")

    monkeypatch.setattr(checkpoint_module, "save_file", broken)
    ctx, config = _ctx_config()
    with pytest.raises(SafetensorError):
        save_context(calibprompt_home / "runs" / "r3" / "prompt", ctx, config, backbone="tiny-random")


def test_a_run_on_a_full_disk_is_recorded_failed_with_the_plain_message(tiny_native, tmp_path, calibprompt_home,
                                                                        monkeypatch):
    dataset = make_dataset(tmp_path / "tissue")

    def full_disk(tensors, filename):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    store = RunStore()
    job = TrainJob(model="tiny-random", dataset=str(dataset), shots=2, epochs=1, n_views=1)
    with pytest.raises(CheckpointWriteError):
        run_train_job(job, store, backbone=tiny_native, n_boot=10)
    (record,) = store.list_runs()
    assert record.status == "failed" and record.checkpoint is None
    assert record.error.startswith("The disk is full: the prompt could not be saved to runs/")
    assert _no_files_left(calibprompt_home / "runs" / record.id)


# ---------------------------------------------------------------- devices
@pytest.mark.parametrize("device", ["tpu", "cuda:7", "cuda:x"] + ([] if torch.cuda.is_available() else ["cuda"]))
def test_an_unusable_device_is_refused_before_any_run_is_recorded(calibprompt_home, device):
    store = RunStore()
    before = len(store.list_runs())
    job = TrainJob(model="tiny-random", dataset="anything", device=device)
    with pytest.raises(ValueError, match="The devices available here are: auto, .*cpu"):
        run_train_job(job, store)
    assert len(store.list_runs()) == before == 0


def test_the_cli_refuses_an_unusable_device_and_records_no_run(tmp_path, calibprompt_home, capsys):
    dataset = make_dataset(tmp_path / "tissue")
    code = main(["train", "--model", "tiny-random", "--dataset", str(dataset), "--shots", "2", "--epochs", "1",
                 "--device", "tpu"])
    assert code == 2
    assert "Unknown device 'tpu'" in capsys.readouterr().err
    assert RunStore().list_runs() == []


# ---------------------------------------------------------------- command-line bounds
@pytest.mark.parametrize("argv, option", [
    (["evaluate", "--bins", "1"], "--bins"),
    (["evaluate", "--coverage", "0"], "--coverage"),
    (["evaluate", "--shots", "0"], "--shots"),
    (["evaluate", "--seed", "nan"], "--seed"),
    (["demo-build", "--steps", "0"], "--steps"),
    (["compare", "--model", "m", "--dataset", "d", "--max-batch-prompts", "0"], "--max-batch-prompts"),
    (["compare", "--model", "m", "--dataset", "d", "--ray-cpus-per-task", "0"], "--ray-cpus-per-task"),
    (["features", "--model", "m", "--dataset", "d", "--batch-size", "1000000"], "--batch-size"),
    (["runs", "--limit", "0"], "--limit"),
    (["reproduce", "--tolerance", "-1"], "--tolerance"),
    (["demo-data", "--task", "demo", "--out", "x", "--workers", "0"], "--workers"),
])
def test_out_of_range_numbers_are_refused_by_argparse_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be a" in err
    assert " from " in err or " above " in err  # the range


def test_in_range_numbers_are_parsed():
    args = build_parser().parse_args(["train", "--model", "m", "--dataset", "d", "--views", "100", "--bins", "15.0"])
    assert (args.views, args.bins) == (100, 15) and isinstance(args.bins, int)
    args = build_parser().parse_args(["evaluate", "--coverage", "0.95", "--shots", "4"])
    assert (args.coverage, args.shots) == (0.95, 4)
    assert build_parser().parse_args(["evaluate"]).coverage == defaults.COVERAGE


#: train's and compare's numbers are checked with the request (the shots against the dataset's smallest
#: class) by check_number, through check_train_request, which exits 2 with the field's name and range
#: (tests/test_requests.py, tests/test_bounds.py); reproduce's shots and epochs are checked by the command,
#: which exits 2 with its own message (tests/test_reproduce.py); evaluate's --coverage is bounded by argparse
#: (tests/test_cli_evaluate.py)
CHECKED_WITH_THE_DATASET = {"--shots", "--seed", "--epochs", "--alpha", "--beta", "--views", "--bins"}
CHECKED_BY_THE_COMMAND = {"reproduce": {"--shots", "--epochs"}}


def test_every_numeric_option_of_the_parser_is_bounded():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.type is _request_number:
                assert name in ("train", "compare") and action.option_strings[0] in CHECKED_WITH_THE_DATASET
                continue
            if action.type not in (int, float):
                continue
            option = action.option_strings[0]
            assert (name in ("train", "compare") and option in CHECKED_WITH_THE_DATASET
                    or option in CHECKED_BY_THE_COMMAND.get(name, ())), f"calibprompt {name} {option} is unbounded"


@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize("option, value, words", [
    ("--epochs", "5000", "Epochs must be a whole number from 1 to 1000"),
    ("--shots", "0", "Shots (training images per class) must be a whole number"),
    ("--seed", "-1", "The seed must be a whole number from 0 to"),
    ("--alpha", "1", "Alpha (the smoothing weight) must be a number from 0 up to, but not including, 1"),
])
def test_training_numbers_out_of_range_exit_2_before_anything_is_recorded(command, option, value, words, tmp_path,
                                                                            calibprompt_home, capsys):
    argv = [command, "--model", "tiny-random", "--dataset", str(tmp_path / "nowhere"), option, value]
    assert main(argv) == 2
    assert words in capsys.readouterr().err
    assert not (calibprompt_home / "runs.db").exists()


def test_the_limits_say_their_range():
    assert CLI_LIMITS["views"].text() == "a whole number from 1 to 100"
    with pytest.raises(ValueError, match="must be a number above 0 and below 1; got 1"):
        check_option("coverage", "1")
