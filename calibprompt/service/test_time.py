"""Compare's label-free answer: each chosen prompt tuned on each image at test time (TPT, C-TPT, O-TPT, A-TPT).

For a task without labelled images nothing can check the advice, and nothing makes the confidence itself
better; test-time prompt tuning (:mod:`calibprompt.training.test_time`) needs no label: per image it tunes
the prompt's context on augmented views of that image alone (C-TPT and O-TPT with a calibration term), then
answers. A chosen learned prompt starts from its context; zero-shot starts from TPT's hand-written
context ("a photo of a", :data:`calibprompt.runs.evaluation.TPT_INIT`). A learner without a context (an
adapter, a linear probe) or CoCoOp is skipped with its reason. The tuned answers are extra methods named
``"<prompt> + <method title>"``; their advice is "not checked" unless labelled images checked them, which
they never do here (no labelled image was used), and they say so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from calibprompt.service.core import Core
    from calibprompt.service.session import SessionState

__all__ = ["TestTimeAnswers", "test_time_answers", "test_time_choices", "OFF"]

OFF = "off"  #: no test-time tuning


def test_time_choices() -> list[tuple[str, str]]:
    """The menu of Compare's test-time calibration: ``[("Off", "off"), (title, name), ...]``."""
    from calibprompt.training.test_time import get_test_time, list_test_time

    return [("Off", OFF)] + [(get_test_time(n).title, n) for n in list_test_time()]


@dataclass
class TestTimeAnswers:
    """``probs[name]`` (N, K) for each tuned prompt ``"<prompt> + <title>"``; ``skipped[prompt]``: why a chosen
    prompt was not tuned; ``seconds_per_image`` per tuned prompt; ``note``: what was done, in words."""

    __test__ = False

    probs: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds_per_image: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _prompt_of(core: Core, state: SessionState, name: str):
    """The PromptLearner test-time tuning starts from for the chosen head ``name`` (ValueError: none)."""
    from calibprompt.runs.evaluation import test_time_prompt
    from calibprompt.service.heads import checkpoint_for

    task, backbone = state.task_object(), core.loaded(state).backbone
    return test_time_prompt(backbone, task, None if name == "zero-shot" else checkpoint_for(core, state, name, task))


def test_time_answers(core: Core, state: SessionState, heads: Sequence[str], images: Sequence[Any],
                      method: str | None) -> TestTimeAnswers:
    """Each chosen prompt of ``heads`` tuned without labels on each of ``images`` (PIL) by ``method``
    (:func:`calibprompt.training.test_time.list_test_time`; None or :data:`OFF`: nothing). ValueError naming
    the methods for an unknown one."""
    from calibprompt.training.test_time import get_test_time, resolve_prompt, test_time_predict_many

    out = TestTimeAnswers()
    if not method or method == OFF:
        return out
    spec = get_test_time(method)
    prompts = {}
    for name in heads:
        try:
            prompts[f"{name} + {spec.title}"] = resolve_prompt(_prompt_of(core, state, name))
        except ValueError as exc:
            out.skipped[name] = str(exc)
    views = None
    if prompts:  # each image's views encoded once for every prompt
        results = test_time_predict_many(core.loaded(state).backbone, prompts, list(images), spec.name)
        for label, result in results.items():
            out.probs[label], out.seconds_per_image[label] = result.probs, result.seconds_per_image
            views = result.n_views
    done = ", ".join(f"{n} ({s:.1f} s per image)" for n, s in out.seconds_per_image.items())
    if not out.probs:
        out.note = f"{spec.title}: none of the chosen prompts can be tuned at test time ({'; '.join(out.skipped.values())})."
        return out
    out.note = (f"{spec.title} tuned each prompt on each image alone, from {views} augmented views of it, without "
                f"labels: {done}. No labelled image checked these tuned answers.")
    if out.skipped:
        out.note += " Not tuned: " + "; ".join(f"{n} ({why.rstrip('.')})" for n, why in out.skipped.items()) + "."
    return out
