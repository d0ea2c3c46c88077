"""The Ray paths on a local cluster (``ray.init(num_cpus=2)``): a comparison table as a Ray task, a
task killed mid-way, and a feature extraction through Ray Data. Skipped when Ray is not installed
(``pip install -e ".[ray]"``; the test extra installs it, so CI runs these)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray", reason='needs Ray: pip install -e ".[ray]"')

from calibprompt.cli import main  # noqa: E402
from calibprompt.runs.store import RunStore  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    from calibprompt.cluster.connect import connect

    if ray.is_initialized():
        ray.shutdown()
    connect("local", num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    path = tmp_path / "home"
    monkeypatch.setenv("CALIBPROMPT_HOME", str(path))
    return path


def _rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def test_compare_on_ray_gives_the_rows_of_the_plain_path_and_stores_its_runs(ray_cluster, home, tmp_path):
    args = ["compare", "--model", "demo", "--dataset", "demo", "--methods", "zeroshot,coop,calibprompt", "--seeds",
            "1,2", "--shots", "2", "--epochs", "2"]
    assert main(args + ["--json", str(tmp_path / "plain.json")]) == 0
    assert main(args + ["--ray", "local", "--json", str(tmp_path / "ray.json")]) == 0
    plain, on_ray = _rows(tmp_path / "plain.json"), _rows(tmp_path / "ray.json")
    assert [(r["method"], r["seed"]) for r in on_ray] == [(r["method"], r["seed"]) for r in plain]
    for a, b in zip(plain, on_ray):
        assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1e-6), (a["method"], a["seed"])
        assert b["ece"] == pytest.approx(a["ece"], abs=1e-6), (a["method"], a["seed"])
    store = RunStore()
    trained = [r for r in store.list_runs(kind="train") if r.status == "done"]
    assert len(trained) == 8  # 4 plain + 4 on Ray, all recorded by this process
    on_ray_runs = [r for r in trained if r.device == "ray"]
    assert len(on_ray_runs) == 4
    for record in on_ray_runs:
        assert Path(record.checkpoint).is_file() and store.predictions(record.id)
    # run again with --resume: nothing is trained, the same rows come back
    assert main(args + ["--ray", "local", "--resume", "--json", str(tmp_path / "again.json")]) == 0
    assert [r["ece"] for r in _rows(tmp_path / "again.json")] == [r["ece"] for r in on_ray]
    assert len([r for r in RunStore().list_runs(kind="train")]) == 8


def test_a_task_killed_mid_way_is_retried_and_nothing_half_written_remains(ray_cluster, home, tmp_path):
    from test_training import make_dataset

    from calibprompt.cluster.runs import JobGroup, RayOptions, train_groups_on_ray
    from calibprompt.paths import data_dir, runs_dir
    from calibprompt.runs.jobs import TrainJob

    dataset = make_dataset(tmp_path / "tissue", n_train=6, n_test=4)
    store = RunStore()
    jobs = [TrainJob(model="tiny-random", dataset=str(dataset), shots=4, seed=seed, method=method, epochs=300,
                     device="cpu") for seed in (1, 2) for method in ("coop", "calibprompt")]
    run_ids = [store.create_run("train", job.to_params()) for job in jobs]
    events: list[dict] = []
    killed: list[int] = []

    def on_event(event):
        events.append(event)

    def on_step(run_id, info):  # the first step seen: kill the worker that trains the group
        if not killed and events:
            killed.append(events[-1]["pid"])
            os.kill(events[-1]["pid"], signal.SIGKILL)

    options = RayOptions(n_boot=20, max_retries=2, env_vars={"CALIBPROMPT_HOME": str(data_dir())})
    records = train_groups_on_ray([JobGroup(jobs, run_ids)], store, options, on_step=on_step, on_event=on_event)
    assert killed, "the task finished before it could be killed"
    assert [e["event"] for e in events] == ["start", "retry"]
    assert events[1]["pid"] != killed[0]
    assert [r.status for r in records] == ["done"] * 4
    assert {r.id for r in store.list_runs(kind="train")} == set(run_ids)  # no extra, no failed runs
    written = sorted(p.name for p in runs_dir().rglob("*") if p.is_file())
    assert written == sorted(["prompt.json", "prompt.safetensors"] * 4)  # complete checkpoints, no temporary files
    # the retried runs equal the same runs trained here without Ray
    from calibprompt.runs.batch import run_train_jobs

    again = run_train_jobs([TrainJob(**{**j.to_params(), "epochs": 300}) for j in jobs], store, n_boot=20)
    for a, b in zip(records, again):
        assert a.metrics["accuracy"] == b.metrics["accuracy"]
        assert a.metrics["ece"] == pytest.approx(b.metrics["ece"], abs=1e-6)


def test_a_failing_task_marks_its_runs_failed_and_says_why(ray_cluster, home, tmp_path):
    from calibprompt.cluster.runs import JobGroup, RayOptions, train_groups_on_ray
    from calibprompt.paths import data_dir
    from calibprompt.runs.jobs import TrainJob

    store = RunStore()
    job = TrainJob(model="tiny-random", dataset=str(tmp_path / "nowhere"), shots=2, epochs=1, device="cpu")
    run_id = store.create_run("train", job.to_params())
    options = RayOptions(n_boot=20, env_vars={"CALIBPROMPT_HOME": str(data_dir())})
    with pytest.raises(RuntimeError, match="Ray task of tiny-random/.*nowhere failed"):
        train_groups_on_ray([JobGroup([job], [run_id])], store, options)
    record = store.get_run(run_id)
    assert record.status == "failed" and "nowhere" in record.error


def test_features_on_ray_fill_the_cache_with_the_plain_paths_features(ray_cluster, home, tmp_path):
    from safetensors.torch import load_file
    from test_data_images import make_dicom

    folder = tmp_path / "images" / "sub"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "scan.dcm").write_bytes(make_dicom(rng.integers(0, 4095, (32, 32)).astype(np.uint16), bits_stored=12))
    (folder / "notes.txt").write_text("not an image")

    def cache_files(root: Path) -> dict[str, torch.Tensor]:
        return {p.stem: load_file(str(p))["plain"] for p in root.rglob("*.safetensors")}

    home_plain = tmp_path / "plain-home"
    os.environ["CALIBPROMPT_HOME"] = str(home_plain)
    assert main(["features", "--dataset", str(tmp_path / "images"), "--model", "tiny-random", "--device", "cpu",
                 "--json"]) == 0
    plain = cache_files(home_plain / "features")
    os.environ["CALIBPROMPT_HOME"] = str(home)
    assert main(["features", "--dataset", str(tmp_path / "images"), "--model", "tiny-random", "--ray", "local",
                 "--json"]) == 0
    on_ray = cache_files(home / "features")
    assert len(plain) == 13 and set(on_ray) == set(plain)  # 12 PNGs and the DICOM, not the text file
    for key in plain:
        assert torch.allclose(on_ray[key], plain[key], atol=1e-5), key
    # a second extraction finds everything cached and encodes nothing
    from calibprompt.cluster.features import extract_features, list_images

    summary = extract_features(list_images(tmp_path / "images"), "tiny-random", use_ray=True)
    assert (summary.images, summary.cached_before, summary.encoded) == (13, 13, 0)
