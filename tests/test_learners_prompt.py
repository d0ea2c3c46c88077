"""The prompt learners on the text side (coop, cocoop, kgcoop, prograd) on the tiny twins."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from calibprompt.prompting.checkpoint import load_prompt
from calibprompt.prompting.learner import PromptLearner
from calibprompt.training.learners import cocoop, coop, kgcoop, prograd
from calibprompt.training.learners.cocoop import CoCoOpLearner
from calibprompt.training.learners.coop import (
    CoOpLearner, check_method, load_learner, save_learner, train_step, zero_shot_features,
)
from calibprompt.training.learners.kgcoop import KgCoOpLearner, kg_penalty
from calibprompt.training.learners.prograd import ProGradLearner, distillation_loss, project_gradient
from calibprompt.training.losses import build_objective, list_methods

CLASSES = ["normal", "pneumonia", "effusion"]
PROMPT_LEARNERS = {**coop.LEARNERS, **cocoop.LEARNERS, **kgcoop.LEARNERS, **prograd.LEARNERS}


def _features(backbone, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, backbone.embed_dim, generator=g), dim=-1)
    return x, torch.arange(n) % len(CLASSES)


def _make(name, backbone, **kwargs):
    return PROMPT_LEARNERS[name](backbone, CLASSES, n_ctx=4, generator=torch.Generator().manual_seed(1), **kwargs)


def _sgd(learner, lr=0.5):
    return torch.optim.SGD(learner.parameters(), lr=lr)


def test_modules_register_their_learners():
    assert set(PROMPT_LEARNERS) == {"coop", "cocoop", "kgcoop", "prograd"}
    for name, cls in PROMPT_LEARNERS.items():
        assert cls.name == name and cls.reference and cls.description and cls.text_features == "learned"


@pytest.mark.parametrize("name", sorted(PROMPT_LEARNERS))
def test_output_shapes_and_coop_formula(name, tiny_backbone):
    learner = _make(name, tiny_backbone)
    x, _ = _features(tiny_backbone)
    out = learner(x)
    assert out.logits.shape == (6, 3) and out.text_features.shape == (3, tiny_backbone.embed_dim)
    assert torch.allclose(out.text_features.norm(dim=-1), torch.ones(3), atol=1e-5)
    if name != "cocoop":  # CoOp's logits: s * x @ T^T with T from the plain PromptLearner
        ref = PromptLearner(tiny_backbone, CLASSES, n_ctx=4, generator=torch.Generator().manual_seed(1))
        expected = tiny_backbone.logit_scale * x @ ref.encode_text().T
        assert torch.allclose(out.logits, expected, atol=1e-4)


def test_cocoop_bias_and_instance_features(tiny_backbone):
    learner = _make("cocoop", tiny_backbone)
    d, w = tiny_backbone.embed_dim, tiny_backbone.text_tower.width
    assert learner.meta_net.linear1.weight.shape == (d // 16, d)
    assert learner.meta_net.linear2.weight.shape == (w, d // 16)
    x, _ = _features(tiny_backbone, n=2)
    bias = learner.bias(x)
    assert bias.shape == (2, w) and not torch.allclose(bias[0], bias[1])
    with torch.no_grad():  # a bias as large as the token embeddings (the tiny twins' are small)
        learner.meta_net.linear2.weight.mul_(50.0)
    out = learner(x)
    inst = out.extras["instance_text_features"]
    assert inst.shape == (2, 3, d)
    assert (inst[0] - inst[1]).abs().max() > 1e-3  # same prompt, two images: two sets of class features
    twice = learner.instance_text_features(torch.stack([x[0], x[0]]))
    assert (twice[0] - twice[1]).abs().max() < 1e-6  # (and the same image twice: one set)
    # the formula: logits_ik = s * x_i . t_ik, and t_ik = g(ctx + h(x_i)) for image i alone
    assert torch.allclose(out.logits, tiny_backbone.logit_scale * torch.einsum("nd,nkd->nk", x, inst), atol=1e-4)
    alone = learner.instance_text_features(x[1:])
    assert torch.allclose(alone[0], inst[1], atol=1e-5)
    assert torch.allclose(out.text_features, F.normalize(inst.mean(0), dim=-1), atol=1e-6)
    with torch.no_grad():  # a zero bias gives CoOp's class features
        learner.meta_net.linear2.weight.zero_()
        learner.meta_net.linear2.bias.zero_()
    assert torch.allclose(learner.instance_text_features(x)[0], learner.encode_text(), atol=1e-5)


def test_cocoop_refuses_other_layouts(tiny_native):
    with pytest.raises(ValueError, match="class_specific"):
        CoCoOpLearner(tiny_native, CLASSES, class_specific=True)
    with pytest.raises(ValueError, match="'end'"):
        CoCoOpLearner(tiny_native, CLASSES, class_token_position="front")


def test_kgcoop_penalty_by_hand(tiny_backbone):
    learner = KgCoOpLearner(tiny_backbone, CLASSES, ctx_init="a photo of a", zs_templates=["a photo of a {}."])
    assert learner.kg_lambda == 8.0
    x, y = _features(tiny_backbone)
    w0 = zero_shot_features(tiny_backbone, CLASSES, ["a photo of a {}."])
    out = learner(x)
    assert float(learner.regularizers(out)["KG"]) < 1e-8  # the learned prompt reads as the zero-shot one
    train_step(learner, build_objective("coop"), _sgd(learner, lr=5.0), x, y)
    with torch.no_grad():
        w = learner.encode_text()
        by_hand = 8.0 * sum(float(((w[k] - w0[k]) ** 2).sum()) for k in range(3)) / 3
        value = float(learner.regularizers(learner(x))["KG"])
    assert value > 1e-6 and value == pytest.approx(by_hand, rel=1e-4)
    with pytest.raises(ValueError, match="kg_lambda"):
        KgCoOpLearner(tiny_backbone, CLASSES, kg_lambda=-1.0)


def test_kgcoop_penalty_enters_the_step(tiny_native):
    learner = _make("kgcoop", tiny_native, kg_lambda=2.0)
    x, y = _features(tiny_native)
    loss, parts, out = train_step(learner, build_objective("coop"), _sgd(learner, lr=0.0), x, y)
    assert float(loss) == pytest.approx(float(parts["CE"] + parts["KG"]), rel=1e-5)
    assert float(parts["KG"]) == pytest.approx(2.0 * float(kg_penalty(out.text_features, learner.zero_shot_text)),
                                               rel=1e-5)


def test_prograd_projection_by_hand():
    g_kl = torch.tensor([1.0, 0.0])
    conflicting = torch.tensor([-1.0, 1.0])  # g . g_kl = -1 < 0
    projected = project_gradient(conflicting, g_kl)
    assert torch.allclose(projected, torch.tensor([0.0, 1.0]))
    assert float(torch.dot(projected, g_kl)) == pytest.approx(0.0)
    agreeing = torch.tensor([2.0, 3.0])  # g . g_kl = 2 > 0
    assert torch.equal(project_gradient(agreeing, g_kl), agreeing)
    g_kl2 = torch.tensor([3.0, 4.0])
    g = torch.tensor([-4.0, 1.0])  # dot -8, ||g_kl||^2 25
    assert torch.allclose(project_gradient(g, g_kl2), g + 8.0 / 25.0 * g_kl2)
    assert torch.allclose(project_gradient(g, g_kl2, lam=0.5), g + 4.0 / 25.0 * g_kl2)
    assert torch.equal(project_gradient(g, torch.zeros(2)), g)


def test_prograd_backward_projects_the_task_gradient(tiny_backbone):
    learner = _make("prograd", tiny_backbone)
    x, y = _features(tiny_backbone)
    objective = build_objective("coop")
    out = learner(x)
    loss, _ = objective(out.logits, y, out.text_features)
    kl = distillation_loss(out.logits, out.extras["zero_shot_logits"])
    g = torch.autograd.grad(loss, learner.prompt.ctx, retain_graph=True)[0]
    g_kl = torch.autograd.grad(kl, learner.prompt.ctx, retain_graph=True)[0]
    learner.backward(loss, out)
    assert torch.allclose(learner.prompt.ctx.grad, project_gradient(g, g_kl), atol=1e-7)
    dot = float(torch.dot(learner.prompt.ctx.grad.flatten(), g_kl.flatten()))
    assert dot >= -1e-6 * float(g.norm() * g_kl.norm())  # never against the zero-shot direction


@pytest.mark.parametrize("name", sorted(PROMPT_LEARNERS))
def test_only_the_context_and_meta_net_move(name, tiny_native):
    learner = _make(name, tiny_native)
    expected = {"prompt.ctx"} | ({"meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
                                  "meta_net.linear2.bias"} if name == "cocoop" else set())
    assert set(learner.trainable_names()) == expected
    frozen = {k: v.clone() for k, v in tiny_native.model.state_dict().items()}
    before = {k: v.detach().clone() for k, v in learner.named_parameters()}
    x, y = _features(tiny_native)
    train_step(learner, build_objective("calibprompt"), _sgd(learner), x, y)
    assert all(torch.equal(v, tiny_native.model.state_dict()[k]) for k, v in frozen.items())
    assert all(not torch.equal(before[k], v) for k, v in learner.named_parameters())


@pytest.mark.parametrize("name", sorted(PROMPT_LEARNERS))
def test_every_method_trains(name, tiny_native):
    learner = _make(name, tiny_native)
    x, y = _features(tiny_native)
    optimizer = _sgd(learner, lr=0.01)
    for method in list_methods():
        loss, parts, _ = train_step(learner, build_objective(method), optimizer, x, y)
        assert torch.isfinite(loss) and parts, method


def test_text_losses_are_refused_without_text_features(tiny_native):
    class NoText:
        name, has_text_features = "linear-probe", False

    with pytest.raises(ValueError, match="AS.*'linear-probe'.*mdca"):
        check_method(NoText(), "calibprompt")
    assert check_method(NoText(), "mdca").name == "mdca"
    assert check_method(_make("coop", tiny_native), "calibprompt").name == "calibprompt"


@pytest.mark.parametrize("name", sorted(PROMPT_LEARNERS))
def test_checkpoint_round_trip(name, tiny_native, tmp_path):
    learner = _make(name, tiny_native, **({"kg_lambda": 4.0} if name == "kgcoop" else {}))
    x, y = _features(tiny_native)
    train_step(learner, build_objective("coop"), _sgd(learner), x, y)
    meta_path = save_learner(tmp_path / name, learner, backbone=tiny_native.name, metadata={"seed": 1})
    loaded, meta = load_learner(meta_path, tiny_native)
    assert type(loaded) is type(learner) and meta["learner"] == name and meta["seed"] == 1
    assert loaded.learner_params() == learner.learner_params()
    for (k, a), (_, b) in zip(learner.named_parameters(), loaded.named_parameters()):
        assert torch.equal(a, b), k
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, learner(x).logits, atol=1e-5)
    if name == "cocoop":  # today's prompt loader must not drop the meta-net silently
        with pytest.raises(ValueError, match="not a CalibPrompt prompt checkpoint"):
            load_prompt(meta_path, tiny_native)
    else:  # a CoOp context at inference: the engine's loader reads it as it is
        prompt, _ = load_prompt(meta_path, tiny_native)
        assert torch.equal(prompt.ctx, learner.prompt.ctx)


def test_checkpoint_refuses_another_backbone(tiny_native, tiny_hf, tmp_path):
    for name in ("cocoop", "kgcoop"):
        path = save_learner(tmp_path / name, _make(name, tiny_native), backbone=tiny_native.name)
        with pytest.raises(ValueError, match="learned on the backbone"):
            load_learner(path, tiny_hf)


def test_todays_coop_checkpoint_loads_as_coop(tiny_native, tmp_path):
    from calibprompt.prompting.checkpoint import save_prompt

    prompt = PromptLearner(tiny_native, CLASSES, n_ctx=4)
    path = save_prompt(tmp_path / "old", prompt, backbone=tiny_native.name)
    learner, _ = load_learner(path, tiny_native)
    assert isinstance(learner, CoOpLearner) and learner.name == "coop"
    assert torch.equal(learner.prompt.ctx, prompt.ctx)


def test_the_shared_registry_builds_them(tiny_native):
    from calibprompt.training.learners import create_learner, get_learner, learner_info, list_learners

    for name, cls in PROMPT_LEARNERS.items():
        assert name in list_learners() and get_learner(name) is cls
        assert learner_info(name)["kind"] == "prompt" and learner_info(name)["text_features"] == "learned"
        learner = create_learner(name, tiny_native, CLASSES, n_ctx=2)
        assert isinstance(learner, cls) and learner.prompt.n_ctx == 2
    with pytest.raises(ValueError, match="backbone and the class names"):
        create_learner("cocoop")
