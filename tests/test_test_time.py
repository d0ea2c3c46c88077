"""Label-free test-time prompt tuning (calibprompt.training.test_time): TPT, C-TPT, O-TPT, A-TPT.

The pure pieces are checked against hand-worked examples and independent computations (scipy, and
O-TPT's Householder computation written out as its code does); the whole procedure on the tiny random
backbone: the context is restored bit for bit, steps=0 is the plain prompt, images are independent.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax
from scipy.stats import entropy

from calibprompt.prompting.learner import PromptLearner
from calibprompt.training import test_time as tt

CLASSES = ["cat", "dog", "bird"]


# -- registry -------------------------------------------------------------------------------
def test_registry_names_weights_and_refusal():
    assert tt.list_test_time() == ["tpt", "c-tpt", "o-tpt", "a-tpt"]
    weights = {name: tt.get_test_time(name).weight for name in tt.list_test_time()}
    assert weights == {"tpt": 0.0, "c-tpt": 50.0, "o-tpt": 18.0, "a-tpt": 80.0}
    assert all(tt.get_test_time(n).needs == "no labels" for n in tt.list_test_time())
    assert tt.get_test_time("C_TPT").name == "c-tpt" and tt.get_test_time("otpt").name == "o-tpt"
    with pytest.raises(ValueError, match="tpt, c-tpt, o-tpt, a-tpt"):
        tt.get_test_time("memo")
    with pytest.raises(Exception):
        tt.get_test_time("tpt").weight = 1.0  # frozen


# -- TPT's selection and entropy ----------------------------------------------------------------
def test_select_confident_hand_worked_and_scipy():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 0.0], [0.0, 10.0]])
    # entropies fall as the margin grows: view 3 (margin 10), then 2 (5), then 1 (2), then 0 (0)
    assert tt.select_confident(logits, top=0.5).tolist() == [3, 2]
    assert tt.select_confident(logits, top=1.0).tolist() == [3, 2, 1, 0]
    assert tt.select_confident(logits, top=0.1).tolist() == [3]  # int(0.4) = 0 -> at least one
    assert len(tt.select_confident(torch.randn(10, 3), top=0.19)) == 1  # int(1.9): truncated, as TPT
    rng = np.random.default_rng(0)
    many = rng.normal(scale=3.0, size=(64, 5))
    expected = np.argsort(entropy(softmax(many, axis=1), axis=1), kind="stable")[:6]  # int(64 * 0.1)
    assert tt.select_confident(torch.tensor(many), top=0.1).tolist() == expected.tolist()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        tt.select_confident(logits, top=0.0)


def test_marginal_entropy_hand_worked_and_tpt_formula():
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    # mean prediction (0.7, 0.3): H = -(0.7 ln 0.7 + 0.3 ln 0.3)
    hand = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    assert tt.marginal_entropy(probs.log()).item() == pytest.approx(hand, abs=1e-6)
    assert hand == pytest.approx(0.6108643, abs=1e-7)
    assert tt.marginal_entropy(probs.log() + 3.0).item() == pytest.approx(hand, abs=1e-6)  # shift-invariant
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=4.0, size=(6, 7))
    reference = entropy(softmax(logits, axis=1).mean(axis=0))
    assert tt.marginal_entropy(torch.tensor(logits)).item() == pytest.approx(reference, rel=1e-6)
    mean_of_entropies = entropy(softmax(logits, axis=1), axis=1).mean()
    assert abs(reference - mean_of_entropies) > 1e-3  # the entropy of the mean, not the mean entropy


# -- the regularisers ---------------------------------------------------------------------------
E2 = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # two unit features at cos 0.6
E3 = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])


def test_atfd_hand_worked():
    assert tt.atfd(torch.eye(2)).item() == pytest.approx(math.sqrt(0.5), abs=1e-6)  # centroid (.5, .5)
    assert tt.atfd(torch.eye(3)).item() == pytest.approx(math.sqrt(6) / 3, abs=1e-6)  # centroid (1/3,)*3
    assert tt.atfd(torch.tensor([[0.6, 0.8]] * 3)).item() == pytest.approx(0.0, abs=1e-7)
    # E2: centroid (0.8, 0.4); both at distance sqrt(0.2^2 + 0.4^2) = sqrt(0.2)
    assert tt.atfd(E2).item() == pytest.approx(math.sqrt(0.2), abs=1e-6)


def _householder_term(t: torch.Tensor) -> torch.Tensor:
    """O-TPT's term computed as its code does: reflect each row of W = T T^T onto the axis and average
    the norms of the rows of (H W) - I."""
    w = t @ t.T
    k = w.shape[0]
    eye = torch.eye(k, dtype=t.dtype)
    u = w - eye * torch.linalg.norm(w, dim=0, keepdim=True)
    v = u / torch.linalg.norm(u, dim=-1, keepdim=True)
    h = eye.expand(k, k, k) - 2 * v.unsqueeze(2) @ v.unsqueeze(1)
    hx = torch.bmm(h, w.unsqueeze(2)).squeeze(2)
    return torch.linalg.norm(hx - eye, dim=-1).mean()


def test_orthogonality_hand_worked_and_householder():
    assert tt.orthogonality(torch.eye(3)).item() == pytest.approx(0.0, abs=1e-7)
    row = math.sqrt(1 + 0.6 ** 2)  # ||(1, 0.6)||
    assert tt.orthogonality(E2).item() == pytest.approx(row - 1, abs=1e-6)
    assert tt.orthogonality(E3).item() == pytest.approx(2 * (row - 1) / 3, abs=1e-6)
    gen = torch.Generator().manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen, dtype=torch.float64), dim=-1)
    assert tt.orthogonality(t).item() == pytest.approx(_householder_term(t).item(), rel=1e-6)
    assert tt.orthogonality(E2.double()).item() == pytest.approx(_householder_term(E2.double()).item(), rel=1e-6)


def test_angular_diversity_hand_worked():
    assert tt.angular_diversity(E2).item() == pytest.approx(math.acos(0.6), abs=1e-6)
    assert tt.angular_diversity(E3).item() == pytest.approx((2 * math.acos(0.6) + math.pi / 2) / 3, abs=1e-6)
    assert tt.angular_diversity(3.0 * E2).item() == pytest.approx(math.acos(0.6), abs=1e-6)  # normalised
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert tt.angular_diversity(same).item() == pytest.approx(math.acos(tt.A_TPT_TAU), rel=1e-2)  # clipped (float32)


def test_test_time_loss_adds_each_papers_term():
    logits = torch.tensor([[2.0, 0.0, -1.0], [1.0, 0.5, 0.0]])
    h = entropy(softmax(logits.numpy(), axis=1).mean(axis=0))
    assert tt.test_time_loss("tpt", logits, E3).item() == pytest.approx(h, abs=1e-6)
    assert tt.test_time_loss("c-tpt", logits, E3).item() == pytest.approx(h - 50 * tt.atfd(E3).item(), abs=1e-4)
    assert tt.test_time_loss("o-tpt", logits, E3).item() == pytest.approx(
        h + 18 * tt.orthogonality(E3).item(), abs=1e-4)
    assert tt.test_time_loss("a-tpt", logits, E3).item() == pytest.approx(
        h - 80 * tt.angular_diversity(E3).item(), abs=1e-4)


# -- the whole procedure ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)) for _ in range(2)]


@pytest.fixture()
def prompt(tiny_native):
    return PromptLearner(tiny_native, CLASSES, n_ctx=4, generator=torch.Generator().manual_seed(0))


def _plain(backbone, prompt, images) -> np.ndarray:
    with torch.no_grad():
        feats, text = backbone.encode_image(images), prompt.encode_text().float()
        return (backbone.logit_scale * feats @ text.T).softmax(dim=-1).double().numpy()


def test_context_restored_and_steps_change_the_prediction(tiny_native, prompt, images):
    before = prompt.ctx.detach().clone()
    seen = []
    plain = _plain(tiny_native, prompt, images)
    zero = tt.test_time_predict(tiny_native, prompt, images, "c-tpt", n_views=7, steps=0,
                                on_image=lambda i, n: seen.append((i, n)))
    assert torch.equal(prompt.ctx.detach(), before)
    assert seen == [(1, 2), (2, 2)]
    assert zero.probs.shape == (2, 3)
    np.testing.assert_allclose(zero.probs, plain, atol=1e-6)  # no step: the plain prompt's prediction
    for method in tt.list_test_time():
        tuned = tt.test_time_predict(tiny_native, prompt, images, method, n_views=7, steps=1)
        assert torch.equal(prompt.ctx.detach(), before), method
        assert np.abs(tuned.probs - plain).max() > 1e-3, method  # the tuning is what changes them
        np.testing.assert_allclose(tuned.probs.sum(axis=1), 1.0, atol=1e-6)
        assert tuned.method == method and tuned.n_views == 7 and tuned.steps == 1 and tuned.seconds_per_image > 0


def test_context_restored_when_an_exception_is_raised_mid_way(tiny_native, prompt, images, monkeypatch):
    before = prompt.ctx.detach().clone()
    calls = {"n": 0}
    encode = PromptLearner.encode_text

    def failing(self, normalize=True):
        calls["n"] += 1
        if calls["n"] == 2:  # after the AdamW step moved the context, before the prediction
            raise RuntimeError("boom")
        return encode(self, normalize=normalize)

    monkeypatch.setattr(PromptLearner, "encode_text", failing)
    with pytest.raises(RuntimeError, match="boom"):
        tt.test_time_predict(tiny_native, prompt, images, "c-tpt", n_views=7, steps=1)
    assert calls["n"] == 2
    assert torch.equal(prompt.ctx.detach(), before)
    assert prompt.ctx.grad is None


def test_the_callers_context_is_never_written_during_the_call(tiny_native, prompt, images, monkeypatch):
    before = prompt.ctx.detach().clone()
    seen = []
    encode = PromptLearner.encode_text

    def watching(self, normalize=True):
        seen.append(torch.equal(prompt.ctx.detach(), before))  # also between the step and the prediction
        return encode(self, normalize=normalize)

    monkeypatch.setattr(PromptLearner, "encode_text", watching)
    tt.test_time_predict(tiny_native, prompt, images, "o-tpt", n_views=7, steps=2)
    assert len(seen) == 2 * 3 and all(seen)  # two images, two steps and a prediction each


def test_no_labels_are_taken():
    params = inspect.signature(tt.test_time_predict).parameters
    assert not [p for p in params if "label" in p.lower() or p in ("y", "targets", "target")]
    assert list(params)[:4] == ["backbone", "prompt", "images", "method"]


def test_images_are_independent(tiny_native, prompt, images):
    both = tt.test_time_predict(tiny_native, prompt, images, "o-tpt", n_views=7, steps=2, seed=3)
    # copies: the views are seeded by an image's pixels, not by the object or its place in the list
    first = tt.test_time_predict(tiny_native, prompt, [images[0].copy()], "o-tpt", n_views=7, steps=2, seed=3)
    second = tt.test_time_predict(tiny_native, prompt, [images[1].copy()], "o-tpt", n_views=7, steps=2, seed=3)
    np.testing.assert_allclose(both.probs, np.vstack([first.probs, second.probs]), rtol=0, atol=1e-7)


def test_default_63_views_on_one_image(tiny_native, prompt, images):
    before = prompt.ctx.detach().clone()
    result = tt.test_time_predict(tiny_native, prompt, images[:1], "tpt")
    assert result.n_views == 63 and result.views_kept == 6 and result.steps == 1
    assert torch.equal(prompt.ctx.detach(), before)
    assert np.abs(result.probs - _plain(tiny_native, prompt, images[:1])).max() > 1e-4


def test_wrapped_prompt_learner_is_tuned_through_its_prompt(tiny_native, images):
    from calibprompt.training.learners import create_learner

    learner = create_learner("kgcoop", tiny_native, CLASSES, n_ctx=4, generator=torch.Generator().manual_seed(0))
    before = learner.prompt.ctx.detach().clone()
    wrapped = tt.test_time_predict(tiny_native, learner, images[:1], "c-tpt", n_views=7)
    direct = tt.test_time_predict(tiny_native, learner.prompt, images[:1], "c-tpt", n_views=7)
    np.testing.assert_array_equal(wrapped.probs, direct.probs)
    assert torch.equal(learner.prompt.ctx.detach(), before)


def test_learner_without_context_is_refused_in_words(tiny_native, images):
    from calibprompt.training.learners import create_learner

    probe = create_learner("linear-probe", tiny_native, CLASSES)
    with pytest.raises(ValueError, match="needs a prompt with a learned context"):
        tt.test_time_predict(tiny_native, probe, images, "c-tpt")
    cocoop = create_learner("cocoop", tiny_native, CLASSES, n_ctx=4)
    with pytest.raises(ValueError, match="meta-network"):
        tt.test_time_predict(tiny_native, cocoop, images, "tpt")


def test_arguments_are_checked(tiny_native, prompt, images):
    with pytest.raises(ValueError, match="choose one of"):
        tt.test_time_predict(tiny_native, prompt, images, "entropy")
    with pytest.raises(ValueError, match="TPT uses 0.1"):
        tt.test_time_predict(tiny_native, prompt, images, "tpt", top=1.5)
    with pytest.raises(ValueError, match="No images"):
        tt.test_time_predict(tiny_native, prompt, [], "tpt")


def test_paths_and_pil_images_give_the_same_answer(tiny_native, prompt, images, tmp_path):
    path = tmp_path / "x.png"
    images[0].save(path)
    from_path = tt.test_time_predict(tiny_native, prompt, [path], "a-tpt", n_views=7)
    from_pil = tt.test_time_predict(tiny_native, prompt, images[:1], "a-tpt", n_views=7)
    np.testing.assert_array_equal(from_path.probs, from_pil.probs)


def test_several_prompts_share_each_images_views_and_answer_as_alone(tiny_native, prompt, images, monkeypatch):
    from calibprompt.training import features

    other = PromptLearner(tiny_native, CLASSES, n_ctx=4, generator=torch.Generator().manual_seed(7))
    alone = {name: tt.test_time_predict(tiny_native, p, images, "c-tpt", n_views=5).probs
             for name, p in (("a", prompt), ("b", other))}
    calls = []
    real = features.encode_pixels
    monkeypatch.setattr(features, "encode_pixels", lambda *a, **k: calls.append(1) or real(*a, **k))
    together = tt.test_time_predict_many(tiny_native, {"a": prompt, "b": other}, images, "c-tpt", n_views=5)
    assert len(calls) == len(images)  # one encoder pass per image, not one per image and prompt
    for name in ("a", "b"):
        assert np.allclose(together[name].probs, alone[name], atol=1e-6)
