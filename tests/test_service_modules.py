"""The service modules on their own (no Core, no model): data out of the services, words in the app's
formatter exactly as the page showed them before, and the run-ownership refusals of service.access."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from calibprompt.app.wording import calibration_note, review_summary, with_calibration_note
from calibprompt.service.access import no_such_run, own_run, shown_owner, visible_run
from calibprompt.service.advice import fit_calibration
from calibprompt.service.compare import calibration_summary
from calibprompt.service.session import SessionState, set_task, typed_classes


def _old_note(calibration, no_data: str) -> str:
    """The sentence Core._calibration_note wrote before the split (kept here as the reference)."""
    if calibration is None:
        return no_data
    sets = ", ".join(f"{n} covered {100 * c.coverage:.0f} % of held-out cases with {c.mean_set_size:.1f} classes "
                     f"on average (ECE {100 * c.ece:.1f} %)" for n, c in calibration.methods.items())
    return (f"Calibrated on {calibration.dataset.rstrip('.')}. {calibration.coverage_label} prediction sets: "
            + (sets or "none") + (f". {calibration.note}" if calibration.note else "."))


@pytest.mark.parametrize("n, alpha", [(60, 0.1), (60, 0.2), (6, 0.1)])  # (6, 0.1): too few, a note instead
def test_the_calibration_note_reads_as_before(n, alpha):
    rng = np.random.default_rng(1)
    probs = {"coop": rng.dirichlet(np.ones(3), size=n), "calibprompt": rng.dirichlet(np.ones(3), size=n)}
    labels = rng.integers(0, 3, size=n)
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    calibration = fit_calibration(f"{n} test images of demo.", feats, labels, probs, ["a", "b", "c"], alpha)
    summary = calibration_summary(calibration, "no data")
    assert calibration_note(summary) == _old_note(calibration, "no data")
    assert all(isinstance(v, float) for m in summary["methods"].values() for v in m.values())
    assert calibration_note(calibration_summary(None, "No labelled test images.")) == "No labelled test images."
    api = with_calibration_note({"verdict": "refer", "calibration": summary})
    assert api == {"verdict": "refer", "calibration": _old_note(calibration, "no data")}


def test_the_review_summary_reads_as_before():
    assert review_summary({"reader": "ann", "reviewed": 1, "listed": 4}) == \
        "You (ann) have reviewed 1 of the 4 listed cases."
    assert review_summary({"reader": "", "reviewed": 0, "listed": 2}) == \
        "You (no reader name yet) have reviewed 0 of the 2 listed cases."


class _Store:
    def __init__(self, *records):
        self.records = {r.id: r for r in records}

    def get_run(self, run_id):
        if run_id not in self.records:
            raise ValueError(f"no run {run_id} in /some/file.db")
        return self.records[run_id]


def _run(run_id, owner, shared=False):
    return SimpleNamespace(id=run_id, params={"owner": owner, "shared": shared})


def test_a_run_is_refused_alike_when_unknown_or_private_and_named_when_shared():
    store = _Store(_run("r1", "user:ann"), _run("r2", "user:bob", shared=True), _run("r3", "browser:x"))
    assert visible_run(store, "user:ann", " r1 ").id == "r1"
    for who, run_id in (("user:ann", "r3"), ("user:ann", "nope"), ("browser:y", "r2")):
        with pytest.raises(ValueError) as caught:
            visible_run(store, who, run_id)
        assert str(caught.value) == no_such_run(run_id) and ".db" not in str(caught.value)
    with pytest.raises(ValueError, match="Choose a run first"):
        visible_run(store, "user:ann", None)
    with pytest.raises(ValueError, match="Run r2 was shared with you by bob; only the user who started it can "
                                         "cancel it"):
        own_run(store, "user:ann", "r2", "cancel it")
    assert own_run(store, "user:bob", "r2", "cancel it").id == "r2"
    assert [shown_owner("user:ann", o) for o in ("user:ann", "", "local", "user:bob", "browser:x")] == \
        ["you", "operator", "operator", "bob", ""]


def test_the_task_choice_keeps_its_bounds():
    state = SessionState(model="demo", task="demo")
    typed = set_task(state, typed=" pneumonia, normal , pneumonia")
    assert typed.classes == ("pneumonia", "normal") and typed.prompts == ("zero-shot",)
    with pytest.raises(ValueError, match="Type at least two class names"):
        typed_classes("only one")
    with pytest.raises(ValueError, match="Choose a task"):
        set_task(state)
