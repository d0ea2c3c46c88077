"""``calibprompt reproduce --learners``: cells per learner, refused combinations, resuming per learner,
one job group per (backbone, dataset, learner), and the table's learner column."""
from __future__ import annotations

import csv
import io
import json
import math

import pytest

from calibprompt.cli import main
from calibprompt.runs import reproduce as rp
from calibprompt.runs.executors import local_executor
from calibprompt.runs.store import RunStore

#: smaller standard splits of the demo tasks than tests/test_reproduce.py's (seconds, not minutes)
TINY_SPLIT = {"seed": 0, "train_per_class": 2, "test_per_class": 4, "shift": 1.25, "version": 1, "workers": 1}
#: clip-adapter's class text features are frozen: it cannot train with calibprompt (AS), so that is refused
BASE = ["reproduce", "--suite", "demo", "--model", "demo", "--methods", "zeroshot,coop,calibprompt", "--seeds", "1",
        "--epochs", "1", "--shots", "2"]
ARGS = [*BASE, "--learners", "coop,clip-adapter"]
PAIRS = ("demo", "demo-binary")


@pytest.fixture(scope="module")
def learner_run(tmp_path_factory):
    """The CLI's ``reproduce --learners coop,clip-adapter --json`` once, in its own data directory, with an
    executor that records the job groups it receives and trains them here."""
    import calibprompt.cli as cli
    from calibprompt.demo import datasets as demo_datasets

    home = tmp_path_factory.mktemp("reproduce-learners-home")
    out = tmp_path_factory.mktemp("reproduce-learners-out") / "t.json"
    groups = []

    def recording(groups_given, store, **kwargs):
        groups.extend(groups_given)
        local_executor(n_boot=10)(groups_given, store, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CALIBPROMPT_HOME", str(home))
        for task in PAIRS:
            mp.setitem(demo_datasets.STANDARD_SPLITS, task, dict(TINY_SPLIT))
        mp.setattr(cli, "_ray_executor", lambda args, n_boot: recording)
        assert main([*ARGS, "--json", str(out)]) == 0
        yield {"data": json.loads(out.read_text()), "groups": groups, "store": RunStore()}


def test_cells_and_table_with_two_learners(learner_run):
    data, store = learner_run["data"], learner_run["store"]
    assert data["learners"] == ["coop", "clip-adapter"]
    order = [(c["dataset"], c["method"], c["learner"]) for c in data["cells"]]
    assert order == [(d, m, learner) for d in PAIRS for m, learner in (
        ("zeroshot", "zeroshot"), ("coop", "coop"), ("coop", "clip-adapter"),
        ("calibprompt", "coop"), ("calibprompt", "clip-adapter"))]
    trained = [c for c in data["cells"] if c["status"] == "done" and c["method"] != "zeroshot"]
    assert len(trained) == 6 and len(data["ran"]) == 8  # 2 x (zero-shot + 3 trained)
    for cell in trained:  # each cell is the run of its own learner, our numbers from its record
        record = store.get_run(cell["run_id"])
        assert record.kind == "train" and record.params["method"] == cell["method"]
        assert record.params.get("learner", "coop") == cell["learner"]
        assert math.isclose(cell["ece"], 100 * record.metrics["ece"])
    table = {(r["dataset"], r["learner"], r["method"]): r for r in data["table"]}
    assert len(table) == 10 and len(data["table"]) == 10
    adapter = table[("demo", "clip-adapter", "coop")]
    assert adapter["status"] == "done" and adapter["seeds"] == [1]
    assert adapter["run_ids"] != table[("demo", "coop", "coop")]["run_ids"]
    assert math.isclose(adapter["accuracy_mean"], 100 * store.get_run(adapter["run_ids"][0]).metrics["accuracy"])


def test_a_refused_combination_is_a_cell_with_its_reason_not_a_failure(learner_run):
    data, store = learner_run["data"], learner_run["store"]
    refused = [c for c in data["cells"] if c["status"] == "refused"]
    assert [(c["dataset"], c["learner"], c["method"]) for c in refused] == [
        (d, "clip-adapter", "calibprompt") for d in PAIRS]
    assert all("clip-adapter" in c["error"] and "calibprompt" in c["error"] and c["run_id"] is None for c in refused)
    assert not any(r.params.get("learner") == "clip-adapter" and r.params["method"] == "calibprompt"
                   for r in store.list_runs())  # nothing recorded for it
    row = next(r for r in data["table"] if (r["learner"], r["method"]) == ("clip-adapter", "calibprompt"))
    assert row["status"] == "refused" and row["ece_mean"] is None and row["seeds"] == []

    events = []
    rp.reproduce("demo", "coop,calibprompt", [1], epochs=1, shots=2, learners="clip-adapter", dry_run=True,
                 progress=events.append)
    assert [e["cell"].dataset for e in events if e["event"] == "refused"] == list(PAIRS)
    assert all("frozen" in e["error"] for e in events if e["event"] == "refused")


def test_each_learner_is_its_own_job_group_and_coop_trains_together(learner_run):
    groups = learner_run["groups"]
    got = [(g.jobs[0].dataset, [(j.learner, j.method) for j in g.jobs]) for g in groups]
    assert got == [(d, jobs) for d in PAIRS for jobs in ([("coop", "coop"), ("coop", "calibprompt")],
                                                         [("clip-adapter", "coop")])]
    assert all(len(g.run_ids) == len(g.jobs) for g in groups)


def test_resume_reuses_each_learners_run_and_never_another_learners(learner_run, capsys):
    data = learner_run["data"]
    before = [r.id for r in RunStore().list_runs()]
    events = []
    result = rp.reproduce("demo", "zeroshot,coop,calibprompt", [1], epochs=1, shots=2,
                          learners=["coop", "clip-adapter"], progress=events.append)
    assert result.ran == [] and [r.id for r in RunStore().list_runs()] == before  # nothing ran again
    assert [c.run_id for c in result.cells] == [c["run_id"] for c in data["cells"]]

    # the clip-adapter runs are newer and have the same settings but the learner: coop must not take them
    coop = rp.plan_cells("demo", "coop", [1], epochs=1, shots=2)
    assert [c.run_id for c in coop] == [c["run_id"] for c in data["cells"]
                                        if (c["method"], c["learner"]) == ("coop", "coop")]
    assert all("learner" not in RunStore().get_run(c.run_id).params for c in coop)
    # a learner not run yet is todo, though runs of the same method and settings exist
    assert {c.status for c in rp.plan_cells("demo", "coop", [1], epochs=1, shots=2, learners="lp++")} == {"todo"}


def test_the_cli_prints_learners_and_refusals(learner_run, tmp_path, capsys):
    out = tmp_path / "again.json"
    assert main([*ARGS, "--json", str(out), "--csv", str(tmp_path / "t.csv")]) == 0
    text = capsys.readouterr().out
    assert "0 cells run now, 8 reused" in text
    assert "| Backbone | Dataset | Learner | Method |" in text
    assert "| demo | demo | clip-adapter | coop | 1 |" in text
    assert text.count("refused: clip-adapter x calibprompt: ") == 1
    data = json.loads(out.read_text())
    assert data["learners"] == ["coop", "clip-adapter"] and len(data["cells"]) == 10
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert list(rows[0])[:4] == ["backbone", "dataset", "learner", "method"] and len(rows) == 10

    assert main([*BASE, "--dry-run"]) == 0  # coop only: today's table, no learner column
    assert "learner" not in capsys.readouterr().out.splitlines()[1]
    assert main([*ARGS, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["backbone", "dataset", "learner", "method"]
    assert main([*BASE, "--learners", "nonsense", "--dry-run"]) == 2
    assert "choose one of: coop" in capsys.readouterr().err


def test_the_papers_values_apply_to_coop_rows_only(calibprompt_home):
    cells = rp.plan_cells("paper", "zeroshot,coop,calibprompt", [1], model="plip", learners="coop,clap")
    kather = {(c.learner, c.method): c for c in cells if c.dataset == "kather"}
    assert kather[("coop", "coop")].paper_ece == 5.92 and kather[("coop", "calibprompt")].paper_ece == 3.11
    assert kather[("clap", "coop")].paper_ece is None and kather[("clap", "calibprompt")].paper_sources == ()
    assert {c.status for c in cells} == {"missing-data"}

    def cell(learner, ece):
        return rp.Cell(backbone="b", dataset="d", method="coop", seed=1, protocol="paper", shots=8, epochs=50,
                       n_bins=10, status="done", paper_ece=2.0, paper_accuracy=90.0, ece=ece, accuracy=80.0,
                       run_id="r", learner=learner)

    coop, clap = rp.build_table([cell("coop", 3.0), cell("clap", 2.5)], tolerance=1.5)
    assert (coop["learner"], coop["paper_ece"], coop["ece_diff"], coop["within"]) == ("coop", 2.0, 1.0, True)
    assert (clap["learner"], clap["paper_ece"], clap["paper_accuracy"], clap["ece_diff"], clap["within"]) == (
        "clap", None, None, None, None)
    md = rp.table_markdown([coop, clap]).splitlines()
    assert md[0].startswith("| Backbone | Dataset | Learner | Method |") and md[3].startswith("| b | d | clap | coop |")
    assert rp.table_markdown([coop]).startswith("| Backbone | Dataset | Method |")  # coop only: no column
    assert "learner" not in rp.table_csv([coop]).splitlines()[0]


def test_the_table_gains_a_column_per_post_hoc_calibrator(learner_run, monkeypatch):
    import numpy as np

    from calibprompt.evaluation import metrics as M
    from calibprompt.runs.reproduce import reproduce

    store = learner_run["store"]
    monkeypatch.setenv("CALIBPROMPT_HOME", str(store.path.parent))
    result = reproduce("demo", "zeroshot,coop", "1", model="demo", shots=2, epochs=1, store=store, dry_run=True,
                       learners="coop", calibrators="temperature")
    row = next(r for r in result.table if (r["dataset"], r["method"]) == ("demo", "coop"))
    stored = store.predictions(row["run_ids"][0])
    z = np.log(np.clip(np.array([p["probs"] for p in stored]), 1e-12, 1.0))  # probabilities below 1e-12 clipped
    y = np.array([p["label"] for p in stored])
    mapped = np.empty_like(z)
    even, odd = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    for fit_on, apply_to in ((even, odd), (odd, even)):
        mapped[apply_to] = M.apply_temperature(z[apply_to], M.fit_temperature(z[fit_on], y[fit_on]))
    assert row["temperature_ece_mean"] == pytest.approx(100 * M.expected_calibration_error(mapped, y), abs=1e-6)
    zero_shot = next(r for r in result.table if (r["dataset"], r["method"]) == ("demo", "zeroshot"))
    assert zero_shot["temperature_ece_mean"] is not None  # its evaluate run's predictions
    assert "ECE + temperature (%)" in result.markdown().splitlines()[0]
    assert "temperature_ece_mean" in result.csv().splitlines()[0]
    with pytest.raises(ValueError, match="Leave dac out"):
        reproduce("demo", "coop", "1", model="demo", store=store, dry_run=True, calibrators="dac")
