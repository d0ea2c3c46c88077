"""CoOp prompt learner: exact reproduction of hand-written prompts, trimming, and what learns."""
from __future__ import annotations

import pytest
import torch

from calibprompt.prompting.learner import PromptLearner

CLASSES = ["adipose tissue", "debris", "colorectal adenocarcinoma epithelium"]


def _reference(backbone, texts):
    """The backbone's own open_clip text encoding (untrimmed, no adapter code)."""
    with torch.no_grad():
        return backbone.model.encode_text(backbone.tokenizer(texts), normalize=True)


@pytest.mark.parametrize(
    "position, layout",
    [("end", "a photo of a {}."), ("middle", "a photo {} of a."), ("front", "{} a photo of a.")],
)
def test_initialised_from_words_it_reproduces_the_written_prompt(tiny_backbone, position, layout):
    learner = PromptLearner(tiny_backbone, CLASSES, ctx_init="a photo of a", class_token_position=position)
    assert learner.n_ctx == 4
    with torch.no_grad():
        mine = learner.encode_text()
    expected = _reference(tiny_backbone, [layout.format(c) for c in CLASSES])
    assert torch.allclose(mine, expected, atol=1e-5), (mine - expected).abs().max()


def test_class_specific_context_reproduces_the_prompt_too(tiny_backbone):
    learner = PromptLearner(tiny_backbone, CLASSES, ctx_init="a photo of a", class_specific=True)
    assert learner.ctx.shape == (3, 4, tiny_backbone.text_tower.width)
    with torch.no_grad():
        assert torch.allclose(learner.encode_text(), _reference(tiny_backbone, [f"a photo of a {c}." for c in CLASSES]), atol=1e-5)


def test_trimming_the_padded_tail_changes_nothing(tiny_backbone):
    tower = tiny_backbone.text_tower
    ids = tower.tokenize([f"X X X X X X X X {c}." for c in CLASSES])
    trimmed = tower.trim(ids)
    assert trimmed.shape[1] < ids.shape[1] == tiny_backbone.context_length
    with torch.no_grad():
        full = tower.encode_embeddings(tower.embed_tokens(ids), ids)
        short = tower.encode_embeddings(tower.embed_tokens(trimmed), trimmed)
    assert torch.allclose(full, short, atol=1e-6)


def test_only_the_context_learns(tiny_backbone):
    learner = PromptLearner(tiny_backbone, CLASSES, n_ctx=16, generator=torch.Generator().manual_seed(0))
    assert [name for name, _ in learner.named_parameters()] == ["ctx"]
    assert list(learner.state_dict()) == ["ctx"]
    feats = learner.encode_text()
    loss = (feats @ feats.T).sum()
    loss.backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    frozen = list(tiny_backbone.model.parameters())
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)


def test_random_initialisation_is_n_0_002_and_seeded(tiny_backbone):
    a = PromptLearner(tiny_backbone, CLASSES, n_ctx=16, generator=torch.Generator().manual_seed(1))
    b = PromptLearner(tiny_backbone, CLASSES, n_ctx=16, generator=torch.Generator().manual_seed(1))
    assert a.ctx.shape == (16, tiny_backbone.text_tower.width)
    assert torch.equal(a.ctx, b.ctx)
    assert abs(a.ctx.mean().item()) < 0.005 and 0.017 < a.ctx.std().item() < 0.023


def test_prompts_are_built_with_one_placeholder_per_context_vector(tiny_backbone):
    learner = PromptLearner(tiny_backbone, CLASSES, n_ctx=8)
    x_ids = tiny_backbone.text_tower.tokenize(["X"])[0, 1]
    assert (learner.token_ids[:, 1:9] == x_ids).all()
    embeds = learner()
    assert embeds.shape[:2] == learner.token_ids.shape
    assert torch.equal(embeds[:, 1:9], learner.ctx.unsqueeze(0).expand(3, -1, -1))


def test_bad_arguments_are_refused(tiny_native):
    with pytest.raises(ValueError, match="end, middle, front"):
        PromptLearner(tiny_native, CLASSES, class_token_position="left")
    with pytest.raises(ValueError, match="at least 2 classes"):
        PromptLearner(tiny_native, ["only"])
    with pytest.raises(ValueError, match="distinct"):
        PromptLearner(tiny_native, ["a", "a"])
    with pytest.raises(ValueError, match="do not fit"):
        PromptLearner(tiny_native, CLASSES, n_ctx=80)
