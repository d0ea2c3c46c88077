"""Refer or answer: prediction sets, accuracy at a confidence, likeness, through the service and `/assess`."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from calibprompt.app.wording import calibration_note
from calibprompt.backbones import load_backbone
from calibprompt.defaults import DEFAULT_HEADS
from calibprompt.paths import SAMPLE_IMAGES_DIR
from calibprompt.service.advice import CHECKS
from calibprompt.service.core import Core

SAMPLE = SAMPLE_IMAGES_DIR / "demo-norm-0048.png"


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    import os

    previous = os.environ.get("CALIBPROMPT_HOME")
    os.environ["CALIBPROMPT_HOME"] = str(tmp_path_factory.mktemp("assess-home"))
    yield Core(load_backbone("demo", device="cpu"), "test")
    if previous is None:
        os.environ.pop("CALIBPROMPT_HOME", None)
    else:
        os.environ["CALIBPROMPT_HOME"] = previous


def _ct_like(tmp_path):
    """A grey disc on black, as a CT slice looks: nothing like an H&E patch."""
    y, x = np.mgrid[:224, :224]
    disc = ((x - 112) ** 2 + (y - 112) ** 2 < 90 ** 2) * (120 + 40 * np.sin(x / 9.0))
    path = tmp_path / "ct-like.png"
    Image.fromarray(disc.astype(np.uint8)).convert("RGB").save(path)
    return str(path)


def test_every_method_gets_a_set_an_accuracy_and_advice(core):
    state = core.new_session()
    result = core.assess(state, [str(SAMPLE)])
    (image,) = result["images"]
    assert image["preview"].mode == "RGB" and image["metadata"]["format"] == "PNG"
    assert set(image["methods"]) == set(DEFAULT_HEADS)
    for entry in image["methods"].values():
        assert entry["set"] and set(entry["set"]) <= set(state.task_object().classnames)
        assert entry["prediction"] == max(entry["probs"], key=entry["probs"].get)
        acc = entry["accuracy"]
        assert acc["n"] > 0 and acc["low"] <= acc["accuracy"] <= acc["high"]
        assert entry["refer"] == bool(entry["reasons"])
    assert "Calibrated on 900 test images of demo" in calibration_note(result["calibration"])
    assert image["refer"] == bool(image["reasons"])


def test_the_advice_is_for_the_method_with_the_lowest_ece_and_every_check_ran(core):
    image = core.assess(core.new_session(), [str(SAMPLE)])["images"][0]
    assert image["answering_method"] == "calibprompt"  # the lowest ECE on the demo's labelled images
    assert set(image["checks"]) == set(CHECKS)
    assert all(c["state"] in ("passed", "failed") for c in image["checks"].values())  # labelled data: all ran
    assert image["verdict"] == ("refer" if any(c["state"] == "failed" for c in image["checks"].values()) else "answer")
    assert image["refer"] == (image["verdict"] != "answer")


def test_answer_with_another_method(core):
    image = core.assess(core.new_session(), [str(SAMPLE)], answer_with="zero-shot")["images"][0]
    assert image["answering_method"] == "zero-shot"
    assert image["checks"] == image["methods"]["zero-shot"]["checks"]
    with pytest.raises(ValueError, match="Answer with"):
        core.assess(core.new_session(), [str(SAMPLE)], heads=["zero-shot"], answer_with="coop")


def test_a_ct_or_mr_slice_on_the_histology_task_gets_no_guarantee(core):
    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "MR_small.dcm"):
        image = core.assess(core.new_session(), [get_testdata_file(name)])["images"][0]
        assert image["verdict"] == "refer" and image["checks"]["modality"]["state"] == "failed", name
        for entry in image["methods"].values():
            assert entry["set"] is None and entry["accuracy"] is None and entry["refer"]


def test_one_unreadable_file_does_not_block_the_others(core, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a picture")
    found = core.assess(core.new_session(), [str(bad), str(SAMPLE)])["images"]
    assert found[0]["name"] == "broken.png" and "broken.png" in found[0]["error"]
    assert found[1]["verdict"] in ("answer", "refer")
    with pytest.raises(ValueError, match="broken.png"):
        core.assess(core.new_session(), [str(bad)])


def test_an_image_of_another_kind_is_flagged_out_of_distribution(core, tmp_path):
    image = core.assess(core.new_session(), [_ct_like(tmp_path)])["images"][0]
    assert image["ood"]["flag"] and image["refer"]
    assert any("unlike" in r for r in image["reasons"])


def test_without_labelled_data_no_sets_are_made_up(core, tmp_path):
    state = core.set_task(core.new_session(), typed="tumour, normal tissue")
    result = core.assess(state, [str(SAMPLE)])
    assert "No labelled test images" in calibration_note(result["calibration"])
    image = result["images"][0]
    assert image["verdict"] == "not checked" and image["refer"]  # never Answer when nothing was checked
    assert image["checks"]["labelled_images"]["state"] == "not run"
    for entry in image["methods"].values():
        assert entry["set"] is None and entry["accuracy"] is None and entry["verdict"] != "answer"


def test_typed_class_names_the_vocabulary_does_not_know_are_named(core):
    state = core.set_task(core.new_session(), typed="zzqxplasia, tissue")
    result = core.assess(state, [str(SAMPLE)])
    assert "zzqxplasia" in result["vocabulary"]
    checks = result["images"][0]["checks"]
    assert checks["vocabulary"]["state"] == "failed" and "zzqxplasia" in checks["vocabulary"]["detail"]


def test_review_can_list_only_referred_cases_with_their_sets(core):
    state = core.set_task(core.new_session(), "demo-binary")
    cases, _ = core.review_cases(state, "demo-binary", min_confidence=0.0, referred_only=True)
    assert cases and all(c["referred"] for c in cases)
    assert all(set(c["sets"]) == set(DEFAULT_HEADS) for c in cases)


def test_the_assess_endpoint(app_url):
    from gradio_client import Client, handle_file
    from pydicom.data import get_testdata_file

    client = Client(app_url, verbose=False)
    out = client.predict(handle_file(str(SAMPLE)), "", api_name="/assess")
    assert out["task"] == "demo" and set(out["methods"]) == set(DEFAULT_HEADS)
    assert out["verdict"] in ("answer", "refer") and out["answering_method"] == "calibprompt"
    assert set(out["checks"]) == set(CHECKS) and out["refer"] == (out["verdict"] != "answer")
    for method in out["methods"].values():
        assert set(method) == {"probs", "prediction", "confidence", "set", "accuracy_at_confidence", "verdict", "refer"}
        assert abs(sum(method["probs"].values()) - 1) < 1e-6
        assert method["set"] and method["prediction"] in method["set"]
        assert method["accuracy_at_confidence"]["n"] > 0
    assert set(out["ood"]) == {"flag", "score", "reason"}
    assert isinstance(out["refer"], bool) and isinstance(out["reasons"], list)
    binary = client.predict(handle_file(str(SAMPLE)), "demo-binary", api_name="/assess")
    assert binary["task"] == "demo-binary" and len(binary["methods"]["coop"]["probs"]) == 2
    # a task without labelled images on this model: not checked, never "refer": false
    for task in ("kather", "covid"):
        unlabelled = client.predict(handle_file(str(SAMPLE)), task, api_name="/assess")
        assert unlabelled["verdict"] == "not checked" and unlabelled["refer"] is True, task
        assert unlabelled["checks"]["labelled_images"]["state"] == "not run"
        assert all(m["set"] is None and m["accuracy_at_confidence"] is None for m in unlabelled["methods"].values())
    ct = client.predict(handle_file(get_testdata_file("CT_small.dcm")), "", api_name="/assess")
    assert ct["verdict"] == "refer" and ct["ood"]["flag"] and ct["checks"]["modality"]["state"] == "failed"
    assert all(m["set"] is None and m["accuracy_at_confidence"] is None for m in ct["methods"].values())


def test_bounds_on_images_and_typed_class_names(core):
    state = core.new_session()
    with pytest.raises(ValueError, match="at most 16 images at a time; you sent 17"):
        core.assess(state, [str(SAMPLE)] * 17)
    with pytest.raises(ValueError, match="at most 200 characters; one has 1,000,000"):
        core.set_task(state, typed="normal, " + "x" * 1_000_000)
    with pytest.raises(ValueError, match="at most 1,000 class names; you typed 1,001"):
        core.set_task(state, typed=", ".join(f"class {i}" for i in range(1001)))
    assert core.set_task(state, typed="tumour, normal").classes == ("tumour", "normal")
