"""Prompt interpretation: the nearest vocabulary tokens of each context vector (CoOp, section 4.4)."""
from __future__ import annotations

import pytest
import torch

from calibprompt.prompting.interpret import interpret_prompt
from calibprompt.prompting.learner import PromptLearner


def _words(tower, text):
    ids = tower.tokenize([text])
    n = tower.content_length(ids) - 2
    return [int(i) for i in ids[0, 1:1 + n]]


@pytest.mark.parametrize("class_specific", [False, True])
def test_an_untrained_ctx_init_prompt_decodes_back_to_its_words(tiny_backbone, class_specific):
    learner = PromptLearner(tiny_backbone, ["tumour", "normal"], ctx_init="a photo of a", class_specific=class_specific)
    found = interpret_prompt(learner, top_k=2)
    expected = _words(learner.tower, "a photo of a")
    groups = 2 if class_specific else 1
    assert len(found) == groups * len(expected)
    for entry in found:
        nearest = entry["tokens"][0]
        assert nearest["id"] == expected[entry["position"]] and nearest["distance"] == pytest.approx(0.0, abs=1e-5)
        assert entry["tokens"][1]["distance"] > 0
        assert entry["class"] in ((None,) if not class_specific else ("tumour", "normal"))
    decoded = [e["tokens"][0]["token"].strip().lower().lstrip("#") for e in found[:len(expected)]]
    assert decoded == ["a", "photo", "of", "a"]


def test_a_checkpoint_is_interpreted_and_bad_arguments_are_refused(tiny_native, tmp_path):
    from calibprompt.prompting.checkpoint import save_prompt

    learner = PromptLearner(tiny_native, ["a", "b"], n_ctx=4, generator=torch.Generator().manual_seed(0))
    path = save_prompt(tmp_path / "p", learner, backbone=tiny_native.name)
    found = interpret_prompt(str(path), top_k=3, backbone=tiny_native)
    assert len(found) == 4 and all(len(e["tokens"]) == 3 for e in found)
    assert all(e["tokens"][0]["distance"] <= e["tokens"][1]["distance"] for e in found)
    with pytest.raises(ValueError, match="backbone"):
        interpret_prompt(str(path))
    with pytest.raises(ValueError, match="top_k"):
        interpret_prompt(learner, top_k=0)


def test_runs_show_prints_a_runs_prompt_interpretation(calibprompt_home, capsys):
    import json

    from calibprompt.cli import main
    from calibprompt.runs.jobs import TrainJob, run_train_job
    from calibprompt.runs.store import RunStore
    from test_training import make_dataset

    folder = make_dataset(calibprompt_home / "datasets" / "tissue", n_train=4, n_test=2)
    record = run_train_job(TrainJob(model="tiny-random", dataset=str(folder), shots=2, epochs=1, n_views=1,
                                    method="coop", device="cpu"), RunStore())
    assert record.status == "done", record.error
    assert main(["runs", "--show", record.id, "--top-k", "2"]) == 0
    text = capsys.readouterr().out
    assert record.id in text and "nearest vocabulary tokens" in text
    assert main(["runs", "--show", record.id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["interpretation"]) == 16 and all(len(e["tokens"]) == 3 for e in shown["interpretation"])
