"""Absurd training requests are refused up front, in plain words: the checks, the jobs and the CLI."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from calibprompt import defaults
from calibprompt.cli import build_parser, main
from calibprompt.data.layouts import load_dataset
from calibprompt.runs.jobs import TrainJob
from calibprompt.runs.requests import check_train_request, class_counts_for_split
from calibprompt.training.trainer import TrainConfig

OK = {"shots": 8, "epochs": 50, "seed": 1}


def _images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(folder / f"img_{i}.png")


# ------------------------------------------------------------------ check_train_request
@pytest.mark.parametrize("request_", [
    OK,
    {"shots": 1, "epochs": 1, "seed": 0},
    {"shots": 8.0, "epochs": 1000.0, "seed": 2**31 - 1},  # integral floats, as a number box sends them
    {"shots": np.int64(4), "epochs": np.int32(3), "seed": np.int64(7)},
    {**OK, "alpha": 0.0, "beta": 0.0},
    {**OK, "alpha": 0.999, "beta": 100},
    {**OK, "method": "calibprompt", "class_counts": {"ADI": 8, "TUM": 30}},
    {**OK, "n_bins": 2},
])
def test_sensible_requests_pass(request_):
    assert check_train_request(**request_) is None


@pytest.mark.parametrize("change, words", [
    ({"shots": 0}, ["Shots", "whole number of at least 1", "got 0"]),
    ({"shots": -3}, ["Shots", "at least 1"]),
    ({"shots": 8.5}, ["Shots", "not a whole number", "8.5"]),
    ({"shots": True}, ["Shots", "whole number"]),
    ({"shots": "8"}, ["Shots", "'8'"]),
    ({"shots": math.nan}, ["Shots", "nan"]),
    ({"shots": math.inf}, ["Shots", "inf"]),
    ({"epochs": 0}, ["Epochs", "from 1 to 1000", "got 0"]),
    ({"epochs": 5000}, ["Epochs", "from 1 to 1000", "got 5000", "50 epochs"]),
    ({"epochs": 2.5}, ["Epochs", "not a whole number"]),
    ({"epochs": math.nan}, ["Epochs"]),
    ({"seed": -1}, ["seed", f"from 0 to {2**31 - 1}", "got -1"]),
    ({"seed": 2**31}, ["seed", f"from 0 to {2**31 - 1}"]),
    ({"seed": False}, ["seed", "whole number"]),
    ({"seed": 1.5}, ["seed", "not a whole number"]),
    ({"alpha": 1.0}, ["Alpha", "from 0 up to, but not including, 1", "got 1.0"]),
    ({"alpha": -0.1}, ["Alpha", "got -0.1"]),
    ({"alpha": math.nan}, ["Alpha", "not a finite number"]),
    ({"alpha": True}, ["Alpha"]),
    ({"beta": 101}, ["Beta", "from 0 to 100", "got 101"]),
    ({"beta": -1}, ["Beta", "from 0 to 100"]),
    ({"beta": math.inf}, ["Beta", "not a finite number"]),
    ({"beta": -math.inf}, ["Beta", "not a finite number"]),
    ({"beta": math.nan}, ["Beta", "not a finite number"]),
    ({"n_bins": 1}, ["bins", "from 2 to 100"]),
    ({"method": "svm"}, ["Unknown method 'svm'", "choose one of: coop"]),
])
def test_absurd_requests_are_refused_with_the_range_and_what_to_do(change, words):
    with pytest.raises(ValueError) as info:
        check_train_request(**{**OK, **change})
    message = str(info.value)
    for word in words:
        assert word in message
    assert message[0].isupper() and message.rstrip().endswith(".")


def test_shots_are_bounded_by_the_smallest_training_class():
    counts = {"ADI": 30, "TUM": 5, "STR": 12}
    check_train_request(shots=5, epochs=1, seed=0, class_counts=counts)
    with pytest.raises(ValueError) as info:
        check_train_request(shots=6, epochs=1, seed=0, class_counts=counts)
    message = str(info.value)
    assert "from 1 to 5" in message and "'TUM'" in message and "5 training images" in message
    assert "got 6" in message and "fewer" in message
    with pytest.raises(ValueError, match="only 1 training image;"):
        check_train_request(shots=2, epochs=1, seed=0, class_counts={"A": 1, "B": 9})
    with pytest.raises(ValueError, match="'B' has no training images"):
        check_train_request(shots=1, epochs=1, seed=0, class_counts={"A": 3, "B": 0})
    with pytest.raises(ValueError, match="no training images to pick shots from"):
        check_train_request(shots=1, epochs=1, seed=0, class_counts={})


def test_class_counts_come_from_the_pool_the_sampler_draws_from(tmp_path):
    split = tmp_path / "split"
    _images(split / "train" / "adi", 3)
    _images(split / "train" / "tum", 5)
    _images(split / "test" / "adi", 40)
    _images(split / "test" / "tum", 40)
    ds = load_dataset(split)
    assert ds.layout == "split-folder"
    assert class_counts_for_split(ds) == {"adi": 3, "tum": 5}  # the train split only, never the test split
    assert class_counts_for_split(ds.train) == {"adi": 3, "tum": 5}

    single = tmp_path / "single"
    _images(single / "adi", 4)
    _images(single / "tum", 7)
    ds = load_dataset(single)
    assert ds.layout == "image-folder" and ds.test is None
    assert class_counts_for_split(ds) == {"adi": 4, "tum": 7}  # all images: the test set is what is left


# ------------------------------------------------------------------ defaults in one place
def test_defaults_come_from_calibprompt_defaults():
    job = TrainJob(model="m", dataset="d")
    assert (job.shots, job.seed, job.epochs, job.n_bins, job.n_views, job.batch_size, job.lr, job.n_ctx) == (
        defaults.SHOTS, defaults.SEED, defaults.EPOCHS, defaults.N_BINS, defaults.N_VIEWS, defaults.BATCH_SIZE,
        defaults.LR, defaults.N_CTX)
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.n_ctx, cfg.seed) == (
        defaults.EPOCHS, defaults.BATCH_SIZE, defaults.LR, defaults.N_CTX, defaults.SEED)
    parser = build_parser()
    for command in ("train", "compare"):
        args = parser.parse_args([command, "--model", "m", "--dataset", "d"])
        assert (args.shots, args.epochs, args.bins) == (defaults.SHOTS, defaults.EPOCHS, defaults.N_BINS)
    args = parser.parse_args(["train", "--model", "m", "--dataset", "d"])
    assert (args.seed, args.views) == (defaults.SEED, defaults.N_VIEWS)


# ------------------------------------------------------------------ TrainJob
@pytest.mark.parametrize("change, words", [
    ({"shots": 0}, "Shots"),
    ({"shots": 8.5}, "not a whole number"),
    ({"epochs": 100000}, "from 1 to 1000"),
    ({"seed": -1}, "seed"),
    ({"method": "calibprompt", "loss_params": {"alpha": 1.5}}, "Alpha"),
    ({"method": "calibprompt", "loss_params": {"beta": math.nan}}, "Beta"),
    ({"method": "fl", "loss_params": {"gamma": math.inf}}, "gamma must be a finite number"),
    ({"n_views": 0}, "augmented views"),
    ({"n_bins": 0}, "bins"),
])
def test_train_job_refuses_absurd_values(change, words):
    with pytest.raises(ValueError, match=words):
        TrainJob(model="m", dataset="d", **change)


def test_train_job_normalises_integral_floats():
    job = TrainJob(model="m", dataset="d", shots=4.0, epochs=2.0, seed=np.int64(3), n_views=2.0)
    assert (job.shots, job.epochs, job.seed, job.n_views) == (4, 2, 3, 2)
    assert all(type(v) is int for v in (job.shots, job.epochs, job.seed, job.n_views))


# ------------------------------------------------------------------ CLI
def test_cli_refuses_too_many_shots_before_anything_is_written(tmp_path, capsys, calibprompt_home):
    data = tmp_path / "tissue"
    _images(data / "train" / "adi", 6)
    _images(data / "train" / "tum", 3)
    _images(data / "test" / "adi", 2)
    _images(data / "test" / "tum", 2)
    assert main(["train", "--model", "tiny-random", "--dataset", str(data), "--shots", "4", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "calibprompt train: error:" in err and "'tum'" in err and "only 3 training images" in err
    assert main(["compare", "--model", "tiny-random", "--dataset", str(data), "--shots", "5", "--seeds", "1,2",
                 "--epochs", "1"]) == 2
    assert "'tum'" in capsys.readouterr().err
    assert not (calibprompt_home / "runs.db").exists()  # no run was recorded
    for folder in ("runs", "features"):  # no checkpoint, no cached feature
        assert not (calibprompt_home / folder).exists() or not any((calibprompt_home / folder).iterdir())


@pytest.mark.parametrize("argv, words", [
    (["train", "--epochs", "5000"], "from 1 to 1000"),
    (["train", "--seed", "-4"], "seed"),
    (["train", "--alpha", "nan"], "Alpha"),
    (["train", "--method", "calibprompt", "--beta", "inf"], "Beta"),
    (["train", "--shots", "0"], "Shots"),
    (["compare", "--seeds", "1,-2"], "got -2"),
    (["compare", "--epochs", "0"], "Epochs"),
    (["compare", "--beta", "1e9"], "Beta"),
])
def test_cli_exits_2_with_the_message(argv, words, tmp_path, capsys, calibprompt_home):
    data = tmp_path / "tissue"
    _images(data / "train" / "adi", 3)
    _images(data / "train" / "tum", 3)
    command, *rest = argv
    assert main([command, "--model", "tiny-random", "--dataset", str(data), *rest]) == 2
    err = capsys.readouterr().err
    assert f"calibprompt {command}: error:" in err and words in err
    assert not (calibprompt_home / "runs.db").exists()


def test_cli_refuses_a_single_folder_split_that_leaves_nothing_to_test(tmp_path, capsys, calibprompt_home):
    data = tmp_path / "single"
    _images(data / "adi", 2)
    _images(data / "tum", 2)
    assert main(["train", "--model", "tiny-random", "--dataset", str(data), "--shots", "2", "--epochs", "1"]) == 2
    assert "no test images" in capsys.readouterr().err
    assert not (calibprompt_home / "runs.db").exists()
