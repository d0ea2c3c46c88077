"""The advice rules (calibprompt.service.advice): verdicts over every combination of check states, and
the checks built from hand-made calibration data, where every number is worked out by hand."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from calibprompt.evaluation.conformal import ConformalClassifier
from calibprompt.service.advice import (ANSWER, CHECKS, FAILED, NOT_CHECKED, NOT_RUN, PASSED, REFER, STATES,
                                        CalibrationData, Check, MethodCalibration, assess_image,
                                        choose_answering_method, decide, fit_calibration)

CLASSES = ["benign", "malignant", "normal"]


def test_the_verdict_over_every_combination_of_check_states():
    seen = set()
    for states in itertools.product(STATES, repeat=len(CHECKS)):  # all 3^7 = 2187 combinations
        verdict = decide({name: Check(state, "why") for name, state in zip(CHECKS, states)})
        expected = REFER if FAILED in states else NOT_CHECKED if NOT_RUN in states else ANSWER
        assert verdict == expected, states  # a check that did not run is never a pass
        seen.add(verdict)
    assert seen == {ANSWER, REFER, NOT_CHECKED}


def test_a_missing_check_is_not_a_pass():
    checks = {name: Check(PASSED, "ok") for name in CHECKS if name != "likeness"}
    with pytest.raises(ValueError, match="likeness"):
        decide(checks)


def test_an_unknown_state_is_refused():
    with pytest.raises(ValueError, match="passed, failed, not run"):
        Check("skipped", "")


def _calibration(n=200, seed=0) -> CalibrationData:
    """Three methods on 200 labelled images: 'sharp' is right and sure, 'vague' spreads its mass, and
    'wrongsure' always says 'normal' at 0.9 (overconfident: right a third of the time)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    sharp = np.full((n, 3), 0.025)
    sharp[np.arange(n), labels] = 0.95
    vague = np.full((n, 3), 1 / 3)
    wrongsure = np.tile([0.05, 0.05, 0.9], (n, 1))
    feats = (1.0 + 0.1 * rng.normal(size=(n, 8))).astype(np.float32)  # one cluster around the ones vector
    return fit_calibration("hand-made", feats, labels, {"sharp": sharp, "vague": vague, "wrongsure": wrongsure, "twin": sharp.copy()},
                           CLASSES, alpha=0.1), feats


def test_fit_calibration_keeps_each_methods_ece():
    cal, _ = _calibration()
    assert cal.methods["sharp"].ece == pytest.approx(0.05)  # right every time at 0.95
    assert cal.methods["wrongsure"].ece == pytest.approx(0.9 - 1 / 3, abs=0.01)
    assert cal.methods["vague"].ece == pytest.approx(abs(1 / 3 - 67 / 200))  # says 1/3, right on class 0: 67 of 200
    # lowest ECE picks the calibrated but useless method; its 3-class set then refers every case
    assert choose_answering_method(["sharp", "vague", "wrongsure"], cal) == "vague"
    assert choose_answering_method(["sharp", "wrongsure"], cal) == "sharp"


def test_the_answering_method():
    assert choose_answering_method(["zero-shot", "coop", "calibprompt"], None) == "calibprompt"
    assert choose_answering_method(["zero-shot", "coop"], None) == "zero-shot"
    assert choose_answering_method(["zero-shot", "coop"], None, "coop") == "coop"
    with pytest.raises(ValueError, match="Answer with"):
        choose_answering_method(["zero-shot"], None, "coop")


def _probs(sharp, vague=(1 / 3, 1 / 3, 1 / 3), wrongsure=(0.05, 0.05, 0.9)):
    return {"sharp": np.array(sharp), "vague": np.array(vague), "wrongsure": np.array(wrongsure)}


def test_a_sure_answer_that_every_check_vouches_for_is_answered():
    cal, feats = _calibration()
    out = assess_image({"sharp": np.array([0.95, 0.025, 0.025])}, feats[:1], cal, CLASSES)
    assert out["answering_method"] == "sharp"
    assert {c["state"] for c in out["checks"].values()} == {PASSED}
    assert out["verdict"] == ANSWER and out["refer"] is False and out["reasons"] == []
    assert out["methods"]["sharp"]["set"] == ["benign"]


def test_without_labelled_images_the_verdict_is_not_checked_never_answer():
    out = assess_image(_probs([0.95, 0.025, 0.025]), np.ones((1, 8)), None, CLASSES, answer_with="sharp",
                       no_data_reason="no labelled images for this task")
    assert out["verdict"] == NOT_CHECKED and out["refer"] is True
    for name in ("labelled_images", "likeness", "set_size", "overconfidence", "disagreement"):
        assert out["checks"][name]["state"] == NOT_RUN, name
    assert all(e["set"] is None and e["accuracy"] is None for e in out["methods"].values())
    assert any("no labelled images" in r.lower() for r in out["reasons"])


def test_an_image_unlike_the_labelled_ones_gets_no_set_no_accuracy_and_refer():
    cal, feats = _calibration()
    far = -np.ones((1, 8), dtype=np.float32)  # the opposite direction: cosine distance 2
    out = assess_image(_probs([0.95, 0.025, 0.025]), far, cal, CLASSES)
    assert out["checks"]["likeness"]["state"] == FAILED
    assert out["verdict"] == REFER and out["ood"]["flag"]
    for entry in out["methods"].values():
        assert entry["set"] is None and entry["accuracy"] is None and entry["refer"]


def test_a_modality_mismatch_gets_no_set_no_accuracy_and_refer():
    cal, feats = _calibration()
    out = assess_image(_probs([0.95, 0.025, 0.025]), feats[:1], cal, CLASSES, metadata={"modality": "CT"},
                       modality_reason="This image is a DICOM file of modality CT")
    assert out["checks"]["modality"]["state"] == FAILED and out["verdict"] == REFER
    assert all(e["set"] is None and e["accuracy"] is None for e in out["methods"].values())


def test_a_wide_set_and_overconfidence_fail_their_checks():
    cal, feats = _calibration()
    out = assess_image(_probs([0.95, 0.025, 0.025]), feats[:1], cal, CLASSES, answer_with="vague")
    assert out["checks"]["set_size"]["state"] == FAILED and "3 classes" in out["checks"]["set_size"]["detail"]
    out = assess_image(_probs([0.95, 0.025, 0.025]), feats[:1], cal, CLASSES, answer_with="wrongsure")
    check = out["checks"]["overconfidence"]
    # 'wrongsure' says 90 % and was right on 66 of its 200 answers at 0.9 (the 66 labels 2 among 0..199)
    assert check["state"] == FAILED and "right 33 %" in check["detail"] and "200 answers" in check["detail"]


def test_disagreement_refers_only_when_the_other_set_excludes_the_answer():
    cal, feats = _calibration()
    # 'sharp' answers benign; 'twin' (as sharp on the labelled images) says malignant at 0.95, and its
    # 90 % set {malignant} excludes benign: credible
    out = assess_image({"sharp": np.array([0.95, 0.025, 0.025]), "twin": np.array([0.025, 0.95, 0.025])},
                       feats[:1], cal, CLASSES, answer_with="sharp")
    check = out["checks"]["disagreement"]
    assert check["state"] == FAILED and "twin answers malignant" in check["detail"]
    assert out["verdict"] == REFER and out["methods"]["twin"]["verdict"] == REFER
    # 'wrongsure' says normal at 0.9, but its 90 % set holds every class: a note, not a reason
    noted = assess_image(_probs([0.95, 0.025, 0.025]), feats[:1], cal, CLASSES, answer_with="sharp")
    assert noted["checks"]["disagreement"]["state"] == PASSED
    assert any("wrongsure answers normal" in n for n in noted["notes"])
    # 'vague' disagrees with nobody credibly: its set holds every class, so a disagreement is a note
    only_vague = assess_image({"sharp": np.array([0.95, 0.025, 0.025]), "vague": np.array([0.34, 0.30, 0.36])},
                              feats[:1], cal, CLASSES, answer_with="sharp")
    assert only_vague["checks"]["disagreement"]["state"] == PASSED
    assert only_vague["notes"] and "still includes benign" in only_vague["notes"][0]
    assert only_vague["verdict"] == ANSWER


def test_typed_words_the_vocabulary_does_not_know_fail_the_vocabulary_check():
    cal, feats = _calibration()
    sure = {"sharp": np.array([0.95, 0.025, 0.025])}
    out = assess_image(sure, feats[:1], cal, CLASSES, unknown={"benign": [], "malignant": ["zzq"], "normal": []})
    assert out["checks"]["vocabulary"]["state"] == FAILED and "zzq" in out["checks"]["vocabulary"]["detail"]
    unread = assess_image(sure, feats[:1], cal, CLASSES, unknown={})
    assert unread["checks"]["vocabulary"]["state"] == NOT_RUN and unread["verdict"] == NOT_CHECKED
    known = assess_image(sure, feats[:1], cal, CLASSES, unknown={c: [] for c in CLASSES})
    assert known["checks"]["vocabulary"]["state"] == PASSED and known["verdict"] == ANSWER


def test_an_empty_bin_means_overconfidence_was_not_checked():
    labels = np.array([0, 1] * 50)
    probs = np.zeros((100, 2))
    probs[np.arange(100), labels] = 0.95
    probs[np.arange(100), 1 - labels] = 0.05
    conformal = ConformalClassifier(alpha=0.1).fit(probs, labels)
    cal = CalibrationData("x", 100, 0.1, ["a", "b"],
                          {"m": MethodCalibration(conformal, probs, labels, 1.0, 1.0, 0.05)})
    out = assess_image({"m": np.array([0.65, 0.35])}, np.ones((1, 4)), cal, ["a", "b"])
    assert out["checks"]["overconfidence"]["state"] == NOT_RUN  # no labelled answer near 0.65


def test_a_labelled_case_is_referred_on_its_sets_as_the_advice_would():
    from calibprompt.service.advice import refers_on_sets

    predictions = {"a": "x", "b": "y"}
    assert not refers_on_sets("a", predictions, {"a": ["x"], "b": ["x", "y"]})  # b's set still holds x: a note
    assert refers_on_sets("a", predictions, {"a": ["x"], "b": ["y"]})  # b credibly excludes x
    assert refers_on_sets("a", predictions, {"a": ["x", "y"], "b": ["x", "y"]})  # a cannot tell x from y
    assert refers_on_sets("a", predictions, None)  # no sets: not checked, so referred
