"""Refer or answer: prediction sets, accuracy at a confidence, likeness, through the service and `/assess`."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from calibprompt.backbones import load_backbone
from calibprompt.defaults import DEFAULT_HEADS
from calibprompt.paths import SAMPLE_IMAGES_DIR
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
    assert "Calibrated on 900 test images of demo" in result["calibration"]
    assert image["refer"] == bool(image["reasons"])


def test_the_confidently_wrong_sample_is_referred_with_reasons(core):
    # the bundled normal-mucosa patch all three methods call adenocarcinoma
    image = core.assess(core.new_session(), [str(SAMPLE)])["images"][0]
    assert image["refer"] and image["reasons"]


def test_an_image_of_another_kind_is_flagged_out_of_distribution(core, tmp_path):
    image = core.assess(core.new_session(), [_ct_like(tmp_path)])["images"][0]
    assert image["ood"]["flag"] and image["refer"]
    assert any("unlike" in r for r in image["reasons"])


def test_without_labelled_data_no_sets_are_made_up(core, tmp_path):
    state = core.set_task(core.new_session(), typed="tumour, normal tissue")
    result = core.assess(state, [str(SAMPLE)])
    assert "No labelled test images" in result["calibration"]
    for entry in result["images"][0]["methods"].values():
        assert entry["set"] is None and entry["accuracy"] is None


def test_typed_class_names_the_vocabulary_does_not_know_are_named(core):
    state = core.set_task(core.new_session(), typed="zzqxplasia, tissue")
    result = core.assess(state, [str(SAMPLE)])
    assert "zzqxplasia" in result["vocabulary"]
    assert any("zzqxplasia" in r for r in result["images"][0]["reasons"])


def test_review_can_list_only_referred_cases_with_their_sets(core):
    state = core.set_task(core.new_session(), "demo-binary")
    cases, _ = core.review_cases(state, "demo-binary", min_confidence=0.0, referred_only=True)
    assert cases and all(c["referred"] for c in cases)
    assert all(set(c["sets"]) == set(DEFAULT_HEADS) for c in cases)


def test_the_assess_endpoint(app_url):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    out = client.predict(handle_file(str(SAMPLE)), "", api_name="/assess")
    assert out["task"] == "demo" and set(out["methods"]) == set(DEFAULT_HEADS)
    for method in out["methods"].values():
        assert set(method) == {"probs", "prediction", "confidence", "set", "refer"}
        assert abs(sum(method["probs"].values()) - 1) < 1e-6
        assert not method["set"] or method["prediction"] in method["set"]
    assert set(out["ood"]) == {"flag", "score", "reason"}
    assert isinstance(out["refer"], bool) and isinstance(out["reasons"], list)
    binary = client.predict(handle_file(str(SAMPLE)), "demo-binary", api_name="/assess")
    assert binary["task"] == "demo-binary" and len(binary["methods"]["coop"]["probs"]) == 2
