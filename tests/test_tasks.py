"""Task files: the five paper datasets, their class order and hyperparameters, and user-typed tasks."""
from __future__ import annotations

import json

import pytest

from calibprompt.prompting.tasks import Task, list_tasks, load_task


def test_paper_tasks_are_shipped():
    assert {"kather", "pannuke", "digestpath", "covid", "rsna18"} <= set(list_tasks())


#: The zero-shot templates of the authors' code (CUSTOM_TEMPLATES in trainers/classification/zsclip.py of
#: github iabh1shekbasu/CalibPrompt, keyed there by the lower-cased Dassl dataset name).
AUTHORS_TEMPLATES = {
    "kather": "An H&E image of {}.",  # "kathercolon"
    "pannuke": "An H&E image patch of {} skin tissue.",
    "digestpath": "An H&E image patch of {} tissue.",
    "covid": "A chest X-ray image of {} patient",
    "rsna18": "A chest X-ray image of {} patient",
}


@pytest.mark.parametrize("name, k", [("kather", 9), ("pannuke", 2), ("digestpath", 2), ("covid", 2), ("rsna18", 3)])
def test_paper_task_contents(name, k):
    task = load_task(name)
    assert task.num_classes == k and list(task.templates) == [AUTHORS_TEMPLATES[name]]
    # Labels follow the alphabetical order of the class folders, as in the reference code.
    assert task.class_ids == sorted(task.class_ids)


def test_histology_templates_are_the_authors_per_dataset():
    assert load_task("pannuke").prompts_for("malignant") == ["An H&E image patch of malignant skin tissue."]
    assert load_task("digestpath").prompts_for("benign") == ["An H&E image patch of benign tissue."]


def test_kather_classes_and_prompts():
    task = load_task("kather")
    assert task.class_ids == ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
    assert task.classnames[-1] == "colorectal adenocarcinoma epithelium"
    assert task.prompts_for("debris") == ["An H&E image of debris."]
    assert task.label_of("tum") == 8 and task.label_of("Smooth muscle") == 5
    with pytest.raises(ValueError, match="its classes: ADI"):
        task.label_of("bone")


def test_from_classnames_and_round_trip(tmp_path):
    task = Task.from_classnames(["  pneumonia ", "normal", ""], templates=["A chest X-ray of {}."])
    assert task.classnames == ["pneumonia", "normal"]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(task.to_dict()))
    again = load_task(path)
    assert again.classnames == task.classnames and again.templates == task.templates


def test_bad_task_files(tmp_path):
    with pytest.raises(ValueError, match="Unknown task 'nope'; choose one of: .*kather"):
        load_task("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="Cannot read the task file"):
        load_task(bad)
    bad.write_text(json.dumps({"name": "x", "classes": ["a", "b"], "templates": ["no placeholder"]}))
    with pytest.raises(ValueError, match="exactly once"):
        load_task(bad)
    bad.write_text(json.dumps({"name": "x", "classes": ["a"]}))
    with pytest.raises(ValueError, match="at least 2 classes"):
        load_task(bad)
    bad.write_text(json.dumps({"classes": ["a", "b"]}))
    with pytest.raises(ValueError, match="lacks the key 'name'"):
        load_task(bad)
