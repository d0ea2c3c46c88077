"""The demo's standard split is generated once, under a file lock, atomically."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from calibprompt.demo import datasets as demo_datasets
from calibprompt.demo import world

TINY = {"seed": 0, "train_per_class": 2, "test_per_class": 2, "shift": 1.0, "version": 1, "workers": 1}


@pytest.fixture()
def tiny_splits(monkeypatch, calibprompt_home):
    monkeypatch.setitem(demo_datasets.STANDARD_SPLITS, "demo-binary", dict(TINY))
    return calibprompt_home / "datasets" / f"demo-binary-standard-v1-w{world.WORLD_VERSION}"


@pytest.fixture()
def generations(monkeypatch):
    """Count the generations, slowed down so that concurrent callers overlap."""
    calls = []
    real = demo_datasets._generate

    def slow_generate(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(demo_datasets, "_generate", slow_generate)
    return calls


def _pngs(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.parent.iterdir() if ".partial-" in p.name]


def test_two_threads_at_once_generate_it_once(tiny_splits, generations):
    barrier = threading.Barrier(2)
    results, errors = [], []

    def ask():
        try:
            barrier.wait()
            results.append(demo_datasets.standard_split("demo-binary"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == [tiny_splits, tiny_splits]
    assert len(generations) == 1
    assert len(_pngs(tiny_splits)) == 2 * 2 * 2  # 2 classes x (2 train + 2 test)
    assert (tiny_splits / "demo_dataset.json").is_file()
    assert _leftovers(tiny_splits) == []
    assert demo_datasets.standard_split("demo-binary") == tiny_splits and len(generations) == 1  # reused


def test_a_stale_partial_folder_is_removed(tiny_splits, generations):
    tiny_splits.parent.mkdir(parents=True, exist_ok=True)
    stale = tiny_splits.parent / f".{tiny_splits.name}.partial-dead1234"
    (stale / "train" / "NORM").mkdir(parents=True)
    (stale / "train" / "NORM" / "half.png").write_bytes(b"\x89PNG half")
    other = tiny_splits.parent / ".someone-else.partial-x"  # another target's: left alone
    other.mkdir()
    assert demo_datasets.standard_split("demo-binary") == tiny_splits
    assert not stale.exists() and other.exists()
    assert len(generations) == 1 and len(_pngs(tiny_splits)) == 8


def test_an_interrupted_generation_leaves_no_folder_and_the_next_call_finishes(tiny_splits, monkeypatch):
    real = demo_datasets._write_class
    count = [0]

    def dies_midway(args):
        count[0] += 1
        if count[0] == 2:
            raise KeyboardInterrupt  # as if the process were stopped mid-way
        return real(args)

    monkeypatch.setattr(demo_datasets, "_write_class", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        demo_datasets.standard_split("demo-binary")
    assert not tiny_splits.exists() and _leftovers(tiny_splits) == []
    monkeypatch.setattr(demo_datasets, "_write_class", real)
    assert demo_datasets.standard_split("demo-binary") == tiny_splits
    assert len(_pngs(tiny_splits)) == 8


def test_write_demo_dataset_holds_the_lock_and_cleans_stale_partials(tmp_path):
    out = tmp_path / "mine"
    stale = tmp_path / ".mine.partial-old"
    stale.mkdir()
    assert demo_datasets.write_demo_dataset("demo-binary", out, train_per_class=1, test_per_class=1, workers=1) == out
    assert not stale.exists() and len(_pngs(out)) == 4
    with pytest.raises(ValueError, match="already exists and is not empty"):
        demo_datasets.write_demo_dataset("demo-binary", out, train_per_class=1, test_per_class=1, workers=1)


_CHILD = """
import sys, time
from calibprompt.demo import datasets as d
d.STANDARD_SPLITS["demo-binary"] = {"seed": 0, "train_per_class": 2, "test_per_class": 2, "shift": 1.0,
                                    "version": 1, "workers": 1}
real = d._generate
def slow(*a, **k):
    print("GENERATED", flush=True)
    time.sleep(1.0)
    return real(*a, **k)
d._generate = slow
start = float(sys.argv[1])
time.sleep(max(0.0, start - time.time()))
print(d.standard_split("demo-binary"), flush=True)
"""


def test_two_processes_at_once_generate_it_once(tiny_splits):
    env = dict(os.environ, CALIBPROMPT_HOME=os.environ["CALIBPROMPT_HOME"])
    start = str(time.time() + 8)  # both import calibprompt first, then ask at the same moment
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, start], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    stdout = "".join(out for out, _ in outputs)
    assert stdout.count("GENERATED") == 1
    assert stdout.count(str(tiny_splits)) == 2
    assert len(_pngs(tiny_splits)) == 8 and _leftovers(tiny_splits) == []
