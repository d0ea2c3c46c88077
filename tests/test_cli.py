"""The command line in separate processes, as a user runs it: train, runs, evaluate, compare, recovery."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from calibprompt.cli import main
from test_training import make_dataset


def _cli(*args, home, check=True, timeout=300):
    env = dict(os.environ, CALIBPROMPT_HOME=str(home))
    proc = subprocess.run([sys.executable, "-m", "calibprompt", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "tissue")


def test_train_then_runs_in_a_new_process(dataset, tmp_path):
    home = tmp_path / "home"
    out = _cli("train", "--model", "tiny-random", "--dataset", str(dataset), "--shots", "4", "--seed", "1",
               "--method", "coop", "--epochs", "2", "--views", "2", home=home)
    assert "done" in out.stdout and "checkpoint:" in out.stdout
    runs = json.loads(_cli("runs", "--json", home=home).stdout)
    assert len(runs) == 1
    run = runs[0]
    assert run["status"] == "done" and run["params"]["method"] == "coop"
    assert 0 <= run["metrics"]["ece"] <= 1 and run["metrics"]["test_images"] == 12

    from calibprompt.prompting.engine import Engine
    from calibprompt.backbones import load_backbone

    engine = Engine(load_backbone("tiny-random"))
    head = engine.add_prompt("coop", run["checkpoint"])
    assert head.classnames == ["adipose", "lymphocytes", "stroma"]

    report = tmp_path / "eval.json"
    out = _cli("evaluate", "--run", run["id"], "--json", str(report), home=home)
    assert "accuracy" in out.stdout
    evaluated = json.loads(report.read_text())
    assert evaluated["report"]["accuracy"] == pytest.approx(run["metrics"]["accuracy"])
    assert len(evaluated["rows"]) == 12


def test_compare_writes_the_row_contract(dataset, tmp_path):
    home, rows_json, rows_csv = tmp_path / "home", tmp_path / "rows.json", tmp_path / "rows.csv"
    out = _cli("compare", "--model", "tiny-random", "--dataset", str(dataset), "--shots", "4", "--seeds", "1,2",
               "--methods", "zeroshot,coop,calibprompt", "--epochs", "1", "--json", str(rows_json),
               "--csv", str(rows_csv), home=home)
    rows = json.loads(rows_json.read_text())
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("zeroshot", 1), ("coop", 1), ("calibprompt", 1), ("zeroshot", 2), ("coop", 2), ("calibprompt", 2)]
    for row in rows:
        assert set(row) == {"method", "seed", "accuracy", "ece", "mce", "ace", "nll", "brier", "mean_confidence",
                            "train_seconds"}
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["ece"] <= 1
    assert rows[0]["train_seconds"] == 0 and rows[1]["train_seconds"] > 0
    assert rows_csv.read_text().splitlines()[0].startswith("method,seed,accuracy,ece")
    assert "calibprompt" in out.stdout and "+-" in out.stdout
    stored = json.loads(_cli("runs", "--json", home=home).stdout)
    assert sum(r["status"] == "done" for r in stored) == 4  # the trained runs are in the store


def test_killed_training_is_marked_interrupted_at_the_next_start(dataset, tmp_path):
    home = tmp_path / "home"
    env = dict(os.environ, CALIBPROMPT_HOME=str(home))
    proc = subprocess.Popen([sys.executable, "-m", "calibprompt", "train", "--model", "tiny-random", "--dataset",
                             str(dataset), "--shots", "4", "--epochs", "1000", "--views", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            db = home / "runs.db"
            if db.exists():
                try:
                    with sqlite3.connect(db) as conn:
                        row = conn.execute("SELECT status, progress FROM runs").fetchone()
                except sqlite3.OperationalError:  # the file exists, its schema is not written yet
                    row = None
                if row and row[0] == "running" and row[1]:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the training process never reported progress")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    runs = json.loads(_cli("runs", "--json", home=home).stdout)
    assert runs[0]["status"] == "interrupted" and "stopped" in runs[0]["error"]
    assert runs[0]["checkpoint"] is None


def test_user_errors_exit_2_with_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CALIBPROMPT_HOME", str(tmp_path / "home"))
    assert main(["train", "--model", "tiny-random", "--dataset", str(tmp_path / "nowhere"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "neither a folder/CSV file nor a dataset or task name" in err
    assert main(["compare", "--model", "tiny-random", "--dataset", "x", "--methods", "zeroshot,svm"]) == 2
    assert "choose one of: coop" in capsys.readouterr().err
    assert main(["train", "--model", "tiny-random", "--dataset", "kather", "--epochs", "1"]) == 2
    assert "No data for the task 'kather'" in capsys.readouterr().err
