"""What Compare shows: the advice and the cards as HTML, with every user or file text escaped."""
from __future__ import annotations

import numpy as np

from calibprompt.app.common import describe_task
from calibprompt.app.compare_view import advice_html, card_html, errors_html, metadata_text
from calibprompt.service.advice import assess_image
from calibprompt.service.session import SessionState

EVIL = "<img src=http://127.0.0.1:9/t.gif>"


def _advice(name=EVIL):
    out = assess_image({"zero-shot": np.array([0.7, 0.3])}, np.ones((1, 4)), None, [EVIL, "normal"])
    return {**out, "name": name, "metadata": {"format": "DICOM", "modality": "CT", "frames": 3}, "frame": 1}


def test_the_advice_escapes_file_and_class_names_and_says_not_checked():
    text = advice_html(_advice())
    assert "<img" not in text and "&lt;img src=http://127.0.0.1:9/t.gif&gt;" in text
    assert "data-verdict='not checked'" in text and "Not checked: refer" in text
    assert "DICOM, modality CT, frame 2 of 3" in text
    assert text.count("data-check=") == 7  # every check listed with its state


def test_a_card_without_labelled_images_shows_no_set_and_no_accuracy():
    entry = _advice()["methods"]["zero-shot"]
    text = card_html("zero-shot", entry, 90, label=EVIL)
    assert "<img" not in text and "prediction set:" not in text and "right" not in text
    assert "No prediction set and no past accuracy" in text


def test_unreadable_files_each_get_their_message_escaped():
    text = errors_html([{"name": EVIL, "error": "The file is damaged."}])
    assert "<img" not in text and "1 file(s) could not be read" in text and "The file is damaged." in text
    assert errors_html([]) == ""


def test_metadata_of_a_plain_image_and_a_windowed_dicom():
    assert metadata_text({"format": "PNG", "frames": 1}) == "PNG"
    assert metadata_text({"format": "DICOM", "modality": "MR", "body_part": "HEAD", "window": (600.0, 1600.0),
                          "frames": 1}) == "DICOM, modality MR, body part HEAD, window centre 600 / width 1600"


def test_typed_class_names_in_the_task_line_are_text():
    line = describe_task(SessionState(model="demo", task="demo", classes=(EVIL, "normal_tissue")))
    assert "<img" not in line and "normal\\_tissue" in line
