"""A trained learner on classes it was not trained on (the novel side of a base-to-novel evaluation).

What carries over is what the learner learned independently of the classes:

- the prompt learners (CoOp, KgCoOp, ProGrad, CoCoOp) learn a context shared by all classes (and CoCoOp
  its meta-net): the same context is put in front of the new class names, whose prompts are then encoded
  (Zhou et al., CoCoOp, CVPR 2022, section 4.1). A class-specific context (CSC) has nothing for a new class;
- CLIP-Adapter learns a residual MLP on the image feature; the classifier is the new classes' zero-shot
  text features;
- Tip-Adapter-F, the linear probe, LP++ and CLAP learn a weight (or cache values) per class: there is
  nothing to apply to a class they have not seen, and :func:`for_classes` says so.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch

from calibprompt.prompting.learner import PromptLearner

__all__ = ["for_classes", "transfers"]

_PER_CLASS = {"tip-adapter-f": "cache values per training class", "linear-probe": "a weight vector per class",
              "lp++": "a weight vector per class", "clap": "a weight vector per class"}


def transfers(learner) -> str | None:
    """None when ``learner`` can be applied to new classes, else why not (plain words)."""
    name = getattr(learner, "name", "coop")
    if isinstance(learner, PromptLearner) or getattr(learner, "prompt", None) is not None:
        prompt = learner if isinstance(learner, PromptLearner) else learner.prompt
        if prompt.class_specific:
            return "its context is class-specific (one per training class), so it has none for a new class"
        return None
    if name in _PER_CLASS:
        return (f"{getattr(learner, 'title', name)} learns {_PER_CLASS[name]}, so it has nothing for a class it was "
                "not trained on; the base-to-novel protocol applies to the prompt learners and clip-adapter")
    if name == "clip-adapter":
        return None
    return f"the learner {name!r} does not say how to apply it to new classes"


def _prompt_for(prompt: PromptLearner, backbone, classnames: Sequence[str]) -> PromptLearner:
    new = PromptLearner(backbone, classnames, n_ctx=prompt.n_ctx, ctx_init=prompt.ctx_init,
                        class_token_position=prompt.class_token_position, double_embedding=prompt.double_embedding)
    with torch.no_grad():
        new.ctx.copy_(prompt.ctx.detach().to(new.ctx.device, new.ctx.dtype))
    return new.to(prompt.ctx.device)


def for_classes(learner, backbone, classnames: Sequence[str], zero_shot_text: torch.Tensor | None = None):
    """``learner`` (trained) for the classes ``classnames``: a new learner holding the same learned
    parameters; ``learner`` is unchanged. ``zero_shot_text`` (K', D): the new classes' zero-shot text
    features (CLIP-Adapter's classifier, the zero-shot logits of KgCoOp / ProGrad); computed from the
    backbone when not given.

    Raises:
        ValueError: the learner has nothing for new classes (:func:`transfers` says why).
    """
    reason = transfers(learner)
    if reason is not None:
        raise ValueError(f"Cannot evaluate on the novel classes: {reason}.")
    if isinstance(learner, PromptLearner):
        return _prompt_for(learner, backbone, classnames)
    if getattr(learner, "prompt", None) is not None:  # a registry prompt learner: a shallow copy, new prompt
        new = copy.copy(learner)
        new._parameters, new._buffers, new._modules = (dict(learner._parameters), dict(learner._buffers),
                                                       dict(learner._modules))
        new._modules["prompt"] = _prompt_for(learner.prompt, backbone, classnames)
        new._zero_shot = None
        if zero_shot_text is not None:
            new._set_zero_shot(zero_shot_text)
        return new
    new = type(learner).from_backbone(backbone, classnames, zero_shot_text=zero_shot_text,
                                      **learner.hyperparameters())  # clip-adapter
    state = {**learner.state_dict(), "zero_shot_text": new.zero_shot_text}  # the new classes' classifier
    new.load_state_dict(state)
    return new.to(next(learner.parameters()).device).eval()
