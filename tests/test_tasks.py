"""Task files: the five paper datasets, their class order and hyperparameters, and user-typed tasks."""
from __future__ import annotations

import json

import pytest

from calibprompt.prompting.tasks import Task, list_tasks, load_task


def test_paper_tasks_are_shipped():
    assert {"kather", "pannuke", "digestpath", "covid", "rsna18"} <= set(list_tasks())


@pytest.mark.parametrize("name, k, template", [
    ("kather", 9, "An H&E image of {}."), ("pannuke", 2, "An H&E image of {}."),
    ("digestpath", 2, "An H&E image of {}."), ("covid", 2, "A chest X-ray image of {} patient"),
    ("rsna18", 3, "A chest X-ray image of {} patient"),
])
def test_paper_task_contents(name, k, template):
    task = load_task(name)
    assert task.num_classes == k and task.templates[0] == template
    # Labels follow the alphabetical order of the class folders, as in the reference code.
    assert task.class_ids == sorted(task.class_ids)


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
