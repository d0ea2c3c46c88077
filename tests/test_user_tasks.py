"""Task files: the bundled ones at the repository's top level and a user's own in ``$CALIBPROMPT_HOME/prompts``,
found through one lookup (:func:`calibprompt.paths.bundled_dir`); ``CALIBPROMPT_PROMPTS_DIR`` still replaces
the bundled folder. tests/test_wheel.py checks the same from an installed wheel."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from calibprompt.paths import BUNDLED_FOLDERS, bundled_dir, user_prompts_dir
from calibprompt.prompting import tasks
from calibprompt.prompting.tasks import list_tasks, load_task, task_files

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = {"covid", "demo", "demo-binary", "digestpath", "kather", "pannuke", "rsna18"}


def _task_file(folder: Path, name: str, classes=("lesion", "no lesion")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"name": name, "classes": list(classes), "templates": ["A scan showing {}."]}))
    return path


@pytest.fixture()
def home(calibprompt_home, monkeypatch):
    monkeypatch.delenv("CALIBPROMPT_PROMPTS_DIR", raising=False)
    monkeypatch.setattr(tasks, "PROMPTS_DIR", bundled_dir("prompts"))
    return calibprompt_home


def test_the_bundled_folders_are_found_at_the_top_level_of_a_checkout():
    assert bundled_dir("prompts") == ROOT / "prompts" and bundled_dir("sample_images") == ROOT / "sample_images"
    assert {p.stem for p in bundled_dir("prompts").glob("*.json")} == BUNDLED
    assert (bundled_dir("prompts") / "demo" / "demo-coop.safetensors").is_file()
    with pytest.raises(ValueError, match="Unknown bundled folder 'assets'; choose one of: prompts, sample_images"):
        bundled_dir("assets")
    assert BUNDLED_FOLDERS == ("prompts", "sample_images")


def test_a_users_task_files_are_listed_and_loaded_beside_the_bundled_ones(home):
    assert user_prompts_dir() == home / "prompts" and not user_prompts_dir().exists()  # looked up, not created
    assert set(list_tasks()) == BUNDLED
    mine = _task_file(home / "prompts", "skin-lesions", ("melanoma", "naevus", "keratosis"))
    (home / "prompts" / "notes.txt").write_text("not a task")
    assert list_tasks() == sorted(BUNDLED | {"skin-lesions"})
    task = load_task("skin-lesions")
    assert task.classnames == ["melanoma", "naevus", "keratosis"] and Path(task.path) == mine
    assert task_files()["kather"] == bundled_dir("prompts") / "kather.json"
    assert task_files()["skin-lesions"] == mine


def test_a_users_file_named_like_a_bundled_task_is_refused_with_one_warning(home, caplog):
    shadow = _task_file(home / "prompts", "kather", ("a", "b"))
    with caplog.at_level(logging.WARNING, logger="calibprompt.prompting.tasks"):
        assert list_tasks() == sorted(BUNDLED)
        task = load_task("kather")
        list_tasks()
    assert task.num_classes == 9 and Path(task.path) == bundled_dir("prompts") / "kather.json"
    warnings = [r.getMessage() for r in caplog.records if r.name == "calibprompt.prompting.tasks"]
    assert len(warnings) == 1, warnings
    assert "prompts/kather.json" in warnings[0] and "kather-mine.json" in warnings[0]
    assert str(home) not in warnings[0]  # the data directory's place stays private
    assert load_task(shadow).classnames == ["a", "b"]  # still loadable by its path


def test_an_explicit_folder_lists_only_its_own_files(home, tmp_path):
    _task_file(home / "prompts", "mine")
    other = tmp_path / "other"
    _task_file(other, "theirs")
    assert list_tasks(other) == ["theirs"] and load_task("theirs", other).name == "theirs"
    with pytest.raises(ValueError, match="Unknown task 'kather'; choose one of: theirs"):
        load_task("kather", other)


def test_an_unknown_task_names_the_users_tasks_and_where_to_add_one(home):
    _task_file(home / "prompts", "mine")
    with pytest.raises(ValueError, match=r"Unknown task 'nope'; choose one of: .*kather, mine, .*prompts folder"):
        load_task("nope")
    with pytest.raises(ValueError, match="Unknown task '../prompts/kather'"):
        load_task("../prompts/kather")  # names are looked up, never joined into a path


def test_the_prompts_dir_variable_replaces_the_bundled_task_files(tmp_path):
    """``CALIBPROMPT_PROMPTS_DIR`` (read at import) replaces the bundled task files; the user's still come
    beside them, and the demo's prompt checkpoints stay the shipped ones."""
    own = tmp_path / "own"
    _task_file(own, "only-this")
    home = tmp_path / "home"
    _task_file(home / "prompts", "mine")
    code = ("from calibprompt.prompting.tasks import PROMPTS_DIR, list_tasks; "
            "from calibprompt.demo.bundle import bundled_prompt; "
            "print(PROMPTS_DIR); print(list_tasks()); print(bundled_prompt('demo', 'coop').is_file())")
    env = dict(os.environ, CALIBPROMPT_PROMPTS_DIR=str(own), CALIBPROMPT_HOME=str(home))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [str(own), "['mine', 'only-this']", "True"]


def test_the_users_folder_set_as_the_prompts_dir_is_listed_once_without_warnings(home, monkeypatch, caplog):
    _task_file(home / "prompts", "mine")
    monkeypatch.setattr(tasks, "PROMPTS_DIR", home / "prompts")
    with caplog.at_level(logging.WARNING, logger="calibprompt.prompting.tasks"):
        assert list_tasks() == ["mine"]
    assert not caplog.records
