"""The post-hoc calibrators and test-time tuning where users reach them: ``calibprompt evaluate`` and the
Calibration tab's service.

The numbers of each calibrator and each test-time loss are checked against references in
test_calibrators.py and test_test_time.py; here: that what the user asks for is computed on the right
images, reported with what it was fitted on, refused in plain words when it does not apply, and that
test-time tuning leaves the prompt file untouched.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from calibprompt.cli import main
from calibprompt.evaluation import metrics as M
from calibprompt.evaluation.calibrators import cross_fit, list_calibrators
from calibprompt.runs.jobs import TrainJob, run_train_job
from calibprompt.runs.store import RunStore

from test_training import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "tissue", n_train=4, n_test=4)


def _evaluate(*extra, out):
    return main(["evaluate", "--model", "tiny-random", "--dataset", str(out[0]), "--shots", "2", "--json",
                 str(out[1]), *extra])


def test_evaluate_writes_one_entry_per_calibrator(dataset, calibprompt_home, tmp_path, capsys):
    report = tmp_path / "report.json"
    names = "temperature,vector,dirichlet,histogram,isotonic"
    assert _evaluate("--calibrators", names, out=(dataset, report)) == 0
    data = json.loads(report.read_text())
    rows = data["calibrators"]
    assert [r["calibrator"] for r in rows] == ["none", *names.split(",")]
    for row in rows[1:]:
        assert row["fitted_on"] == 6 and {"accuracy", "ece", "nll", "brier"} <= set(row)  # 12 images, 6 per half
    raw = rows[0]
    assert raw["accuracy"] == pytest.approx(data["report"]["accuracy"]) and raw["ece"] == pytest.approx(data["report"]["ece"])
    # the temperature row: T fitted on each half by hand and applied to the other, scored by the metrics module
    probs = np.array([r["probs"] for r in data["rows"]])
    labels = np.array([r["label"] for r in data["rows"]])
    expected = cross_fit("temperature", np.log(probs), labels).probs  # softmax(log p / T) == softmax(z / T)
    assert rows[1]["ece"] == pytest.approx(M.expected_calibration_error(expected, labels), abs=1e-6)
    assert "post-hoc calibrators, cross-fitted" in capsys.readouterr().out


@pytest.mark.parametrize("names, words", [("isotonic,nope", "choose one of: temperature, vector"),
                                          ("dac", "dac calibrates a prompt on classes it was not trained on")])
def test_evaluate_refuses_calibrators_it_cannot_fit_before_any_work(names, words, dataset, calibprompt_home, tmp_path,
                                                                    capsys):
    assert _evaluate("--calibrators", names, out=(dataset, tmp_path / "r.json")) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "r.json").exists()
    assert RunStore().list_runs() == []  # refused before an evaluate run was recorded


def test_evaluate_test_time_tunes_without_touching_the_prompt(dataset, tiny_native, calibprompt_home, tmp_path):
    job = TrainJob(model="tiny-random", dataset=str(dataset), shots=2, epochs=1, n_views=2, batch_size=3, n_ctx=4,
                   method="coop")
    run = run_train_job(job, RunStore(), backbone=tiny_native, n_boot=10)
    weights = run.checkpoint.replace(".json", ".safetensors")
    before = open(weights, "rb").read()
    report = tmp_path / "tt.json"
    assert main(["evaluate", "--run", run.id, "--test-time", "C_TPT", "--json", str(report)]) == 0
    tt = json.loads(report.read_text())["test_time"]
    assert tt["method"] == "c-tpt" and tt["needs"] == "no labels" and tt["images"] == 12
    assert tt["n_views"] == 63 and tt["steps"] == 1 and tt["seconds_per_image"] > 0
    assert 0 <= tt["ece"] <= 1 and tt["untuned"]["accuracy"] == pytest.approx(run.metrics["accuracy"])
    assert open(weights, "rb").read() == before
    assert main(["evaluate", "--run", run.id, "--test-time", "magic"]) == 2
    assert main(["evaluate", "--run", run.id, "--test-time", "tpt", "--test-time-per-class", "1", "--json",
                 str(report)]) == 0  # a seeded stratified subset: one test image of each of the 3 classes
    assert json.loads(report.read_text())["test_time"]["images"] == 3


def test_a_stratified_subset_keeps_each_class_and_its_seed():
    from calibprompt.data.class_splits import stratified_subset
    from calibprompt.data.layouts import LabeledImages, Sample

    images = LabeledImages("/d", ["a", "b"], ["a", "b"], [Sample(f"/d/{i}.png", i % 2) for i in range(10)])
    picked = stratified_subset(images, 2, seed=3)
    assert sorted(picked.labels) == [0, 0, 1, 1] and picked.paths == stratified_subset(images, 2, seed=3).paths
    assert [str(p) for p in picked.paths] == sorted((str(p) for p in picked.paths), key=lambda p: int(p[3:-4]))
    assert len(stratified_subset(images, 9).paths) == 10  # fewer images than asked: all of them
    with pytest.raises(ValueError, match="at least 1"):
        stratified_subset(images, 0)


def test_a_learner_run_evaluates_but_cannot_be_tuned_at_test_time(dataset, tiny_native, calibprompt_home, capsys,
                                                                   tmp_path):
    job = TrainJob(model="tiny-random", dataset=str(dataset), shots=2, epochs=1, method="ls", learner="linear-probe")
    run = run_train_job(job, RunStore(), backbone=tiny_native, n_boot=10)
    assert main(["evaluate", "--run", run.id, "--json", str(tmp_path / "lp.json")]) == 0  # a learner checkpoint
    assert json.loads((tmp_path / "lp.json").read_text())["report"]["accuracy"] == pytest.approx(run.metrics["accuracy"])
    assert main(["evaluate", "--run", run.id, "--test-time", "tpt"]) == 2
    assert "needs a prompt with a learned context" in capsys.readouterr().err


def test_the_calibration_view_adds_a_row_per_calibrator(core):
    state = core.set_task(core.new_session(), "demo-binary")
    reports, ev = core.calibration(state, "demo-binary", heads=["coop"], temperature_scaling=True,
                                   calibrators=["isotonic", "histogram"])
    assert list(reports) == ["coop", "coop + TS", "coop + isotonic", "coop + histogram"]
    assert reports["coop + isotonic"]["fitted_on"] == 300 == len(ev.labels) // 2
    assert reports["coop + histogram"]["argmax_changed"] == 0.0  # top-label: the answer never changes
    expected = cross_fit("isotonic", ev.logits["coop"], ev.labels).probs
    assert reports["coop + isotonic"]["ece"] == pytest.approx(M.expected_calibration_error(expected, ev.labels))
    with pytest.raises(ValueError, match="dac calibrates a prompt on classes it was not trained on"):
        core.calibration(state, "demo-binary", heads=["coop"], calibrators=["dac"])
    with pytest.raises(ValueError, match="choose one of"):
        core.calibration(state, "demo-binary", heads=["coop"], calibrators=["platt"])
    assert "dac" in list_calibrators()


def test_compare_offers_a_test_time_answer_for_a_task_without_labelled_images(core):
    sample = core.sample_images()[0][0]
    typed = core.set_task(core.new_session(), typed="tumour, normal tissue, fat")
    found = core.assess(typed, [sample], ["zero-shot"], test_time="tpt")
    image = found["images"][0]
    assert list(image["methods"]) == ["zero-shot", "zero-shot + TPT"]
    tuned = image["methods"]["zero-shot + TPT"]
    assert tuned["verdict"] == "not checked" and tuned["set"] is None and tuned["accuracy"] is None
    assert any("no labelled image checked this answer" in n for n in tuned["notes"])
    assert sum(tuned["probs"].values()) == pytest.approx(1.0)
    assert "TPT tuned each prompt on each image alone" in found["test_time"] and "s per image" in found["test_time"]
    # the chosen prompts' advice is what it is without test-time tuning
    state = core.set_task(core.new_session(), "demo")
    plain = core.assess(state, [sample], ["coop", "calibprompt"])["images"][0]
    both = core.assess(state, [sample], ["coop", "calibprompt"], test_time="c-tpt")["images"][0]
    assert both["verdict"] == plain["verdict"] and both["answering_method"] == plain["answering_method"]
    assert {n: e["verdict"] for n, e in both["methods"].items() if "+" not in n} == {
        n: e["verdict"] for n, e in plain["methods"].items()}
    assert set(both["methods"]) == {"coop", "calibprompt", "coop + C-TPT", "calibprompt + C-TPT"}
    assert core.assess(state, [sample], ["coop"], test_time="off")["test_time"] == ""
    with pytest.raises(ValueError, match="tpt, c-tpt, o-tpt"):
        core.assess(state, [sample], ["coop"], test_time="magic")


def test_compare_rows_gain_calibrated_columns(dataset, tiny_native, calibprompt_home, tmp_path):
    from calibprompt.runs.compare import run_comparison

    store = RunStore()
    rows = run_comparison("tiny-random", str(dataset), ["zeroshot", "coop"], [1], shots=2, epochs=1, n_boot=10,
                          backbone=tiny_native, store=store, calibrators="temperature, isotonic")
    for row in rows:
        assert {"temperature_accuracy", "temperature_ece", "temperature_nll", "isotonic_ece"} <= set(row)
        assert row["temperature_accuracy"] == pytest.approx(row["accuracy"])  # TS never changes the answer
    stored = store.predictions(rows[1]["run_id"])
    probs, labels = np.array([p["probs"] for p in stored]), np.array([p["label"] for p in stored])
    z = np.log(probs)
    mapped = np.empty_like(z)
    even, odd = np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1
    for fit_on, apply_to in ((even, odd), (odd, even)):
        mapped[apply_to] = M.apply_temperature(z[apply_to], M.fit_temperature(z[fit_on], labels[fit_on]))
    assert rows[1]["temperature_ece"] == pytest.approx(M.expected_calibration_error(mapped, labels), abs=1e-6)
    with pytest.raises(ValueError, match="Leave dac out"):
        run_comparison("tiny-random", str(dataset), ["coop"], [1], shots=2, epochs=1, backbone=tiny_native,
                       store=store, calibrators=["dac"])
    out = tmp_path / "rows.csv"
    assert main(["compare", "--model", "tiny-random", "--dataset", str(dataset), "--methods", "coop", "--seeds", "1",
                 "--shots", "2", "--epochs", "1", "--calibrators", "histogram", "--csv", str(out)]) == 0
    assert out.read_text().splitlines()[0].endswith("histogram_accuracy,histogram_ece,histogram_nll")
