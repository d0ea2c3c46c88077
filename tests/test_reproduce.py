"""``calibprompt reproduce``: the paper's cells, their published values, resumable runs and the table."""
from __future__ import annotations

import csv
import io
import json
import math

import pytest

from calibprompt.cli import main
from calibprompt.runs import reproduce as rp
from calibprompt.runs.store import RunStore

# The ECE (%) the authors' README reports, CE prompt tuning (coop) -> CalibPrompt.
README_ECE = {
    ("plip", "kather"): (5.92, 3.11), ("plip", "pannuke"): (17.82, 2.19), ("plip", "digestpath"): (9.50, 3.08),
    ("quiltnet-b32", "kather"): (2.49, 3.58), ("quiltnet-b32", "pannuke"): (19.70, 2.47),
    ("quiltnet-b32", "digestpath"): (11.27, 0.77),
    ("biomedclip", "covid"): (6.61, 4.69), ("biomedclip", "rsna18"): (7.02, 5.74),
    ("medclip", "covid"): (27.51, 27.41), ("medclip", "rsna18"): (17.21, 17.14),
}
TINY = ["--suite", "demo", "--methods", "zeroshot,coop", "--seeds", "1", "--epochs", "1", "--shots", "2"]
#: small standard splits of the demo tasks, so that generating them and their features takes seconds
TINY_SPLIT = {"seed": 0, "train_per_class": 3, "test_per_class": 12, "shift": 1.25, "version": 1, "workers": 1}


def test_paper_results_file_names_real_backbones_tasks_methods_and_sources():
    from calibprompt.backbones import BACKBONES
    from calibprompt.prompting.tasks import list_tasks
    from calibprompt.training.losses import list_methods

    sources = rp.paper_sources()
    results = rp.paper_results()
    seen = set()
    for entry in results:
        key = (entry["backbone"], entry["dataset"], entry["method"])
        assert key not in seen
        seen.add(key)
        assert entry["backbone"] in BACKBONES and entry["dataset"] in list_tasks()
        assert entry["method"] in list_methods() + ["zeroshot"]
        assert entry["sources"] and all(s in sources for s in entry["sources"])
        assert all(s in sources for s in entry.get("accuracy_sources", ()))
        assert 0 <= entry["ece"] <= 100
    for (backbone, dataset), (ce, calib) in README_ECE.items():
        assert rp.paper_value(backbone, dataset, "coop")["ece"] == ce
        assert rp.paper_value(backbone, dataset, "calibprompt")["ece"] == calib
    assert rp.paper_value("quiltnet-b32", "kather", "calibprompt")["accuracy"] == 87.52
    assert {(b, d) for b, d, _ in seen} == set(rp.PAPER_PAIRS) and len(rp.PAPER_PAIRS) == 10


def test_dry_run_of_the_paper_suite_on_an_empty_data_dir(calibprompt_home, tmp_path, capsys):
    out = tmp_path / "cells.json"
    assert main(["reproduce", "--dry-run", "--json", str(out), "--csv", str(tmp_path / "cells.csv")]) == 0
    data = json.loads(out.read_text())
    cells = data["cells"]
    assert len(cells) == 10 * 3 * 3
    assert {(c["backbone"], c["dataset"]) for c in cells} == set(README_ECE)
    assert {c["method"] for c in cells} == {"zeroshot", "coop", "calibprompt"}
    assert {c["status"] for c in cells} == {"missing-data"}
    for c in cells:
        ce, calib = README_ECE[(c["backbone"], c["dataset"])]
        assert c["paper_ece"] == {"zeroshot": None, "coop": ce, "calibprompt": calib}[c["method"]]
    assert data["missing_data"] == ["covid", "rsna18", "kather", "pannuke", "digestpath"]
    assert RunStore().list_runs() == []  # nothing ran
    text = capsys.readouterr().out
    assert "missing data: kather" in text and "27.51" in text
    rows = list(csv.DictReader(io.StringIO((tmp_path / "cells.csv").read_text())))
    assert len(rows) == 90 and rows[3]["paper_ece"] == "27.51" and rows[3]["status"] == "missing-data"

    # one backbone, other seeds; a dataset folder that appears is no longer missing
    (calibprompt_home / "datasets" / "kather").mkdir(parents=True)
    cells = rp.plan_cells("paper", "coop,calibprompt", [1], model="plip")
    assert [(c.dataset, c.method) for c in cells] == [(d, m) for d in ("kather", "pannuke", "digestpath")
                                                      for m in ("coop", "calibprompt")]
    assert [c.status for c in cells] == ["todo", "todo"] + ["missing-data"] * 4


def test_bad_requests_exit_with_status_2(calibprompt_home, capsys):
    assert main(["reproduce", "--dry-run", "--model", "demo"]) == 2  # not in the paper suite
    assert "no backbone 'demo'" in capsys.readouterr().err
    assert main(["reproduce", "--dry-run", "--methods", "nonsense"]) == 2
    assert main(["reproduce", "--dry-run", "--seeds", "1,x"]) == 2
    assert main(["reproduce", "--dry-run", "--epochs", "0"]) == 2
    with pytest.raises(ValueError, match="Unknown suite"):
        rp.plan_cells("nope")
    with pytest.raises(ValueError, match="protocol"):
        rp.plan_cells("demo", protocol="nope")


def _cell(method, seed, ece, acc, paper_ece=None, paper_acc=None, status="done"):
    return rp.Cell(backbone="b", dataset="d", method=method, seed=seed, protocol="paper", shots=8, epochs=50,
                   n_bins=10, status=status, paper_ece=paper_ece, paper_accuracy=paper_acc, run_id=f"r{seed}",
                   ece=ece, accuracy=acc)


def test_tolerance_and_table_on_a_hand_example():
    assert rp.within_tolerance(4.61, 3.11, 1.5) is True  # exactly 1.5 points apart: within
    assert rp.within_tolerance(4.62, 3.11, 1.5) is False
    assert rp.within_tolerance(1.0, 3.11, 1.5) is False and rp.within_tolerance(2.0, 3.11, 1.5) is True
    assert rp.within_tolerance(None, 3.11) is None and rp.within_tolerance(3.0, None) is None
    with pytest.raises(ValueError):
        rp.within_tolerance(1.0, 2.0, -1)

    cells = [_cell("coop", 1, 3.0, 80.0, 2.0, 90.0), _cell("coop", 2, 4.0, 84.0, 2.0, 90.0),
             _cell("calibprompt", 1, 2.0, 70.0, 5.0), _cell("calibprompt", 2, None, None, 5.0, status="todo"),
             _cell("zeroshot", 1, None, None, status="missing-data")]
    table = rp.build_table(cells, tolerance=1.5)
    coop, calib, zs = table
    assert coop["seeds"] == [1, 2] and coop["ece_mean"] == 3.5 and math.isclose(coop["ece_std"], math.sqrt(0.5))
    assert coop["accuracy_mean"] == 82.0 and coop["ece_diff"] == 1.5 and coop["accuracy_diff"] == -8.0
    assert coop["within"] is True and coop["status"] == "done" and coop["run_ids"] == ["r1", "r2"]
    assert rp.build_table(cells, tolerance=1.4)[0]["within"] is False
    assert calib["status"] == "partial" and calib["ece_std"] == 0.0 and calib["ece_diff"] == -3.0
    assert calib["within"] is False and calib["accuracy_diff"] is None
    assert zs["status"] == "missing-data" and zs["ece_mean"] is None and zs["within"] is None

    md = rp.table_markdown(table, 1.5).splitlines()
    assert md[0].startswith("| Backbone |") and "Within ±1.5" in md[0] and len(md) == 5
    assert "| b | d | coop | 1,2 | 82.00 ± 2.83 | 3.50 ± 0.71 | 2.00 | +1.50 | 90.00 | yes | done |" == md[2]
    rows = list(csv.DictReader(io.StringIO(rp.table_csv(table))))
    assert rows[0]["ece_mean"] == "3.5000" and rows[0]["within"] == "True" and rows[2]["within"] == ""
    assert rows[0]["run_ids"] == "r1;r2"


# ------------------------------------------------------------------- the demo suite, end to end

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo suite on a tiny budget (and tiny demo splits), once, in its own data directory."""
    from calibprompt.demo import datasets as demo_datasets

    home = tmp_path_factory.mktemp("reproduce-home")
    out = tmp_path_factory.mktemp("reproduce-out")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CALIBPROMPT_HOME", str(home))
        for task in ("demo", "demo-binary"):
            mp.setitem(demo_datasets.STANDARD_SPLITS, task, dict(TINY_SPLIT))
        args = ["reproduce", *TINY, "--json", str(out / "t.json"), "--csv", str(out / "t.csv"),
                "--markdown", str(out / "t.md")]
        assert main(args) == 0
        yield {"home": home, "out": out, "runs": [r.id for r in RunStore().list_runs()]}


@pytest.mark.slow
def test_demo_suite_end_to_end_writes_our_numbers(demo_run):
    out = demo_run["out"]
    data = json.loads((out / "t.json").read_text())
    assert len(data["cells"]) == 4 and {c["status"] for c in data["cells"]} == {"done"}
    assert len(data["ran"]) == 4 and sorted(data["ran"]) == sorted(demo_run["runs"])
    table = data["table"]
    assert [(r["dataset"], r["method"]) for r in table] == [("demo", "zeroshot"), ("demo", "coop"),
                                                            ("demo-binary", "zeroshot"), ("demo-binary", "coop")]
    for row in table:
        assert row["seeds"] == [1] and row["status"] == "done" and row["ece_std"] == 0.0
        assert 0 <= row["ece_mean"] <= 100 and 0 < row["accuracy_mean"] <= 100
        assert row["paper_ece"] is None and row["within"] is None  # the paper has no demo numbers
    store = RunStore()
    kinds = sorted(store.get_run(i).kind for i in data["ran"])
    assert kinds == ["evaluate", "evaluate", "train", "train"]
    coop = store.get_run(table[1]["run_ids"][0])
    assert coop.params["method"] == "coop" and coop.params["epochs"] == 1 and coop.params["seed"] == 1
    assert coop.params["shots"] == 2 and coop.metrics["test_images"] == 9 * 12
    assert math.isclose(100 * coop.metrics["ece"], table[1]["ece_mean"])

    md = (out / "t.md").read_text().splitlines()
    assert md[0].startswith("| Backbone |") and len(md) == 2 + 4 and "| demo | demo-binary | coop | 1 |" in md[5]
    rows = list(csv.DictReader(io.StringIO((out / "t.csv").read_text())))
    assert len(rows) == 4 and float(rows[0]["ece_mean"]) == pytest.approx(table[0]["ece_mean"], abs=1e-4)


@pytest.mark.slow
def test_a_second_run_reuses_the_stored_cells(demo_run, capsys):
    before = [r.id for r in RunStore().list_runs()]
    assert main(["reproduce", *TINY]) == 0
    assert "0 cells run now, 4 reused" in capsys.readouterr().out
    assert [r.id for r in RunStore().list_runs()] == before  # no new runs

    events = []
    result = rp.reproduce("demo", "zeroshot,coop", [1], epochs=1, shots=2, progress=events.append)
    assert result.ran == [] and [e["event"] for e in events] == ["reused"] * 4
    assert {e["run_id"] for e in events} == set(before) and events[0]["total"] == 4 and events[0]["todo"] == 0

    # other settings or a method not run yet are todo; the finished cells stay done
    planned = rp.plan_cells("demo", "zeroshot,coop,calibprompt", [1, 2], epochs=1, shots=2)
    status = {(c.dataset, c.method, c.seed): c.status for c in planned}
    assert status[("demo", "coop", 1)] == "done" and status[("demo", "zeroshot", 1)] == "done"
    assert status[("demo", "coop", 2)] == "todo" and status[("demo", "calibprompt", 1)] == "todo"
    assert {c.status for c in rp.plan_cells("demo", "coop", [1], epochs=2, shots=2)} == {"todo"}
    assert {c.status for c in rp.plan_cells("demo", "zeroshot", [1], shots=3)} == {"todo"}
    assert {c.status for c in rp.plan_cells("demo", "zeroshot", [1], shots=2, n_bins=15)} == {"todo"}
    assert main(["reproduce", "--suite", "demo", "--methods", "zeroshot,coop,calibprompt", "--seeds", "1,2",
                 "--epochs", "1", "--shots", "2", "--dry-run"]) == 0
    assert [r.id for r in RunStore().list_runs()] == before  # a dry run runs nothing
