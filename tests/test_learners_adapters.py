"""The feature learners (adapters and linear probes on cached image features): each forward against its
paper's formula by hand, that only its own parameters move, checkpoint round-trips, the linear probe
against scikit-learn, and which loss combinations exist."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from calibprompt.training.learners import create_learner, get_learner, learner_info, list_learners
from calibprompt.training.learners.base import FeatureLearner, check_combination, train_learner
from calibprompt.training.learners.feature_checkpoint import load_feature_learner, save_feature_learner
from calibprompt.training.losses import build_objective, list_methods

FEATURE_LEARNERS = ["clip-adapter", "tip-adapter-f", "linear-probe", "lp++", "clap"]
K, D, N = 3, 8, 12


def _data(seed: int = 0, n: int = N, k: int = K, d: int = D, noise: float = 0.7):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g)
    labels = torch.arange(n) % k
    feats = F.normalize(centers[labels] + noise * torch.randn(n, d, generator=g), dim=-1)
    zs = F.normalize(centers + 0.5 * torch.randn(k, d, generator=g), dim=-1)
    return feats, labels, zs


def _build(name: str, zs: torch.Tensor, n: int = N, **params) -> FeatureLearner:
    extra = {"cache_size": n} if name == "tip-adapter-f" else {}
    return create_learner(name, num_classes=zs.shape[0], dim=zs.shape[1], zero_shot_text=zs, logit_scale=50.0,
                          **extra, **params)


def _quick(name: str) -> dict:
    """A few steps, whatever the learner's own recipe."""
    return {"epochs": 3, "batch_size": 4} if name != "linear-probe" else {"epochs": 20}


# -- registry ----------------------------------------------------------------------------------
def test_registry_lists_and_refuses_unknown_names():
    names = list_learners()
    assert set(FEATURE_LEARNERS) <= set(names)
    for name in FEATURE_LEARNERS:
        cls = get_learner(name)
        assert cls.name == name and cls.reference and cls.__module__.startswith("calibprompt.training.learners.")
        assert cls.__doc__ and get_learner(name.upper()) is cls
        assert learner_info(name)["kind"] == "feature"
        module_doc = __import__(cls.__module__, fromlist=["x"]).__doc__ or ""
        assert cls.reference.split()[0].rstrip(",") in module_doc  # the paper's first author
    assert get_learner("lpp") is get_learner("lp++")
    with pytest.raises(ValueError, match="choose one of: .*clip-adapter.*clap"):
        get_learner("adapter-x")


def test_bad_settings_name_the_allowed_values():
    feats, labels, zs = _data()
    with pytest.raises(ValueError, match="zero_shot_text"):
        create_learner("clap", num_classes=K, dim=D)
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\]"):
        _build("clip-adapter", zs, ratio=1.5)
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adamw, lbfgs"):
        train_learner(_build("clap", zs), feats, labels, "coop", optimizer="rmsprop")
    with pytest.raises(ValueError, match="Unknown training setting 'steps'"):
        train_learner(_build("clap", zs), feats, labels, "coop", steps=3)
    with pytest.raises(ValueError, match=r"image features must have shape \(N, 8\)"):
        train_learner(_build("clap", zs), feats[:, :4], labels, "coop")


# -- forwards by hand --------------------------------------------------------------------------
def test_clip_adapter_forward_by_hand():
    feats, labels, zs = _data()
    learner = _build("clip-adapter", zs)
    w1, w2 = learner.adapter[0].weight.detach(), learner.adapter[2].weight.detach()
    f = feats[:2]
    a = torch.relu(torch.relu(f @ w1.T) @ w2.T)
    mixed = 0.2 * a + 0.8 * f
    expected = 50.0 * (mixed / mixed.norm(dim=-1, keepdim=True)) @ zs.T
    torch.testing.assert_close(learner(f), expected)
    assert w1.shape == (D // 4, D) and learner.ratio == 0.2


def test_tip_adapter_forward_by_hand():
    feats, labels, zs = _data()
    learner = _build("tip-adapter-f", zs, alpha=1.5, beta=5.0).initialise(feats, labels)
    f = feats[:3]
    keys, values = feats, F.one_hot(labels, K).float()
    expected = 1.5 * torch.exp(-5.0 * (1 - f @ keys.T)) @ values + 50.0 * f @ zs.T
    torch.testing.assert_close(learner(f), expected)
    # a training image's own key has affinity exp(0) = 1
    entry = [float(math.exp(-5.0 * (1.0 - float(feats[0] @ feats[j])))) for j in range(N)]
    assert abs(entry[0] - 1.0) < 1e-6
    assert float(learner.cache_values.sum()) == N


def test_linear_probe_forward_and_penalty_by_hand():
    feats, labels, _ = _data()
    learner = create_learner("linear-probe", num_classes=K, dim=D, C=0.5).initialise(feats, labels)
    with torch.no_grad():
        learner.weight.copy_(torch.arange(K * D, dtype=torch.float32).view(K, D) / 10)
        learner.bias.copy_(torch.tensor([1.0, -1.0, 0.5]))
    torch.testing.assert_close(learner(feats), feats @ learner.weight.T + learner.bias)
    w2 = float((learner.weight ** 2).sum())
    assert math.isclose(float(learner.penalty()), w2 / (2 * 0.5 * N), rel_tol=1e-6)
    assert learner.class_text_features() is None


def test_lp_plus_plus_init_and_forward_by_hand():
    feats, labels, zs = _data()
    learner = _build("lp++", zs).initialise(feats, labels)
    centroids = torch.stack([feats[labels == k].mean(0) for k in range(K)])
    torch.testing.assert_close(learner.visual.detach(), centroids)
    text_means = [float((feats[labels == k] @ zs[k]).mean()) for k in range(K)]
    assert math.isclose(float(learner.alpha[0]), 250.0 * float(np.mean(text_means)), rel_tol=1e-5)
    with torch.no_grad():
        learner.alpha.copy_(torch.tensor([1.0, 2.0, 3.0]))
        learner.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    f = feats[:4]
    expected = f @ centroids.T + learner.bias + torch.tensor([1.0, 2.0, 3.0]) * (f @ zs.T)
    torch.testing.assert_close(learner(f), expected)
    blended = centroids + torch.tensor([[1.0], [2.0], [3.0]]) * zs
    torch.testing.assert_close(learner.class_text_features(), blended / blended.norm(dim=-1, keepdim=True))


def test_clap_init_forward_and_penalty_by_hand():
    feats, labels, zs = _data()
    learner = _build("clap", zs).initialise(feats, labels)
    probs = torch.softmax(50.0 * feats @ zs.T, dim=-1)
    lam = torch.stack([probs[labels == k, k].mean() for k in range(K)])
    torch.testing.assert_close(learner.multipliers, lam)
    torch.testing.assert_close(learner(feats), 50.0 * feats @ zs.T)  # W = T_zs at the start
    assert float(learner.penalty()) == 0.0
    with torch.no_grad():
        learner.prototypes.add_(0.1)
    expected_penalty = (lam * (learner.prototypes.detach() - zs).pow(2).sum(-1)).mean()
    torch.testing.assert_close(learner.penalty(), expected_penalty)
    w = learner.prototypes.detach()
    torch.testing.assert_close(learner(feats), 50.0 * feats @ (w / w.norm(dim=-1, keepdim=True)).T)


# -- what moves --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FEATURE_LEARNERS)
def test_only_the_learners_own_parameters_move(name, tiny_native):
    classnames = ["adenoma", "carcinoma", "normal"]
    learner = create_learner(name, tiny_native, classnames, **({"cache_size": N} if name == "tip-adapter-f" else {}))
    dim = learner.dim
    feats, labels, _ = _data(d=dim)
    backbone_before = {k: v.clone() for k, v in tiny_native.model.state_dict().items()}
    zs_before = None if learner.zero_shot_text is None else learner.zero_shot_text.clone()
    learner.initialise(feats, labels)
    start = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    train_learner(learner, feats, labels, "coop", **_quick(name))
    trainable = set(learner.trainable_names())
    assert trainable, name
    for key, value in learner.state_dict().items():
        if key not in trainable:  # buffers: the zero-shot text, Tip-Adapter's values, CLAP's multipliers
            assert torch.equal(value, start[key]), (name, key)
    assert any(not torch.equal(learner.state_dict()[k], start[k]) for k in trainable)
    if zs_before is not None:
        torch.testing.assert_close(learner.zero_shot_text, zs_before, rtol=0, atol=0)
    for key, value in tiny_native.model.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    assert learner(feats).shape == (N, K)


# -- checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FEATURE_LEARNERS)
def test_checkpoint_round_trip(name, tmp_path):
    feats, labels, zs = _data()
    learner = _build(name, zs) if name != "linear-probe" else create_learner(name, num_classes=K, dim=D, C=2.0)
    train_learner(learner, feats, labels, "coop", **_quick(name))
    path = save_feature_learner(tmp_path / "run", learner, backbone="tiny-random", metadata={"method": "coop"})
    loaded, meta = load_feature_learner(tmp_path / "run.json", backbone="tiny-random")
    assert type(loaded) is type(learner) and meta["learner"] == name and meta["method"] == "coop"
    assert meta["trainable"] == learner.trainable_names() and path.exists()
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats), learner(feats))
    assert loaded.config() == learner.config()
    with pytest.raises(ValueError, match="trained on the backbone 'tiny-random'"):
        load_feature_learner(tmp_path / "run", backbone="demo")


def test_damaged_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="No learner checkpoint"):
        load_feature_learner(tmp_path / "missing")
    (tmp_path / "other.json").write_text('{"format": "calibprompt-prompt/1"}')
    with pytest.raises(ValueError, match="not a feature-learner checkpoint"):
        load_feature_learner(tmp_path / "other")


# -- the linear probe against scikit-learn -----------------------------------------------------
@pytest.mark.parametrize("C", [0.5, 4.0])
def test_linear_probe_matches_scikit_learn(C):
    from sklearn.linear_model import LogisticRegression

    feats, labels, _ = _data(seed=3, n=40, k=4, d=16, noise=0.9)
    test, test_labels, _ = _data(seed=3, n=200, k=4, d=16, noise=0.9)
    reference = LogisticRegression(C=C, solver="lbfgs", tol=1e-10, max_iter=10_000)
    reference.fit(feats.double().numpy(), labels.numpy())
    probe = create_learner("linear-probe", num_classes=4, dim=16, C=C)
    train_learner(probe, feats, labels, "coop")
    with torch.no_grad():
        ours = torch.softmax(probe(test).double(), dim=-1).numpy()
    theirs = reference.predict_proba(test.double().numpy())
    assert np.abs(ours - theirs).max() < 1e-3
    ours_acc = float((ours.argmax(1) == test_labels.numpy()).mean())
    theirs_acc = float((theirs.argmax(1) == test_labels.numpy()).mean())
    assert abs(ours_acc - theirs_acc) < 1e-3


# -- losses ------------------------------------------------------------------------------------
def _exists(name: str, method: str) -> bool:
    text = get_learner(name).text_features == "learned"
    return text or "AS" not in {t.loss for t in build_objective(method).method.terms}


@pytest.mark.parametrize("name", FEATURE_LEARNERS)
def test_every_existing_loss_trains_and_the_others_are_refused(name):
    feats, labels, zs = _data()
    for method in list_methods():
        learner = _build(name, zs)
        if _exists(name, method):
            result = train_learner(learner, feats, labels, method, epochs=2, batch_size=6)
            assert math.isfinite(result.history[-1]["loss"]), (name, method)
        else:
            with pytest.raises(ValueError, match=rf"needs learned class text features.*learner '{re_escape(name)}'"):
                train_learner(learner, feats, labels, method, epochs=1)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_zero_shot_losses_need_zero_shot_text():
    feats, labels, _ = _data()
    probe = create_learner("linear-probe", num_classes=K, dim=D)
    with pytest.raises(ValueError, match="zs_norm.*needs zero-shot logits.*linear-probe"):
        check_combination(probe, build_objective("zs_norm"))
    with pytest.raises(ValueError, match="calibprompt.*has no class text features"):
        check_combination(probe, build_objective("calibprompt"))


def test_clap_penalty_and_calibprompt_terms_are_reported():
    feats, labels, zs = _data()
    result = train_learner(_build("clap", zs), feats, labels, "calibprompt", epochs=2, batch_size=6)
    assert {"LS", "SMAC", "AS", "penalty"} <= set(result.history[-1])


def test_cached_augmented_views_train_and_initialise_from_their_mean():
    feats, labels, zs = _data()
    g = torch.Generator().manual_seed(5)
    views = F.normalize(feats[:, None, :] + 0.1 * torch.randn(N, 3, D, generator=g), dim=-1)  # (N, V, D)
    learner = _build("tip-adapter-f", zs)
    result = train_learner(learner, views, labels, "ls", epochs=2, batch_size=4)
    assert result.steps == 2 * (N // 4)
    mean = F.normalize(views.mean(dim=1), dim=-1)
    fresh = _build("tip-adapter-f", zs).initialise(mean, labels)
    assert torch.equal(learner.cache_values, fresh.cache_values)
    assert not torch.equal(learner.cache_keys.detach(), fresh.cache_keys.detach())  # fine-tuned from there
    assert float((learner.cache_keys.detach() - fresh.cache_keys.detach()).abs().max()) < 0.5


def test_the_registry_saves_and_loads_feature_learners(tmp_path, tiny_native):
    from calibprompt.training.learners import load_learner, save_learner

    learner = create_learner("clap", tiny_native, ["adenoma", "carcinoma", "normal"])
    feats, labels, _ = _data(d=learner.dim)
    train_learner(learner, feats, labels, "calibprompt", epochs=2, batch_size=6)
    save_learner(tmp_path / "clap", learner, backbone=tiny_native.name, metadata={"seed": 1})
    loaded, meta = load_learner(tmp_path / "clap.json", tiny_native)
    assert meta["learner"] == "clap" and meta["classnames"] == ["adenoma", "carcinoma", "normal"]
    assert meta["kind"] == "feature" and meta["trainable"] == ["prototypes"] and meta["seed"] == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats), learner(feats))
        torch.testing.assert_close(loaded.class_text_features(), learner.class_text_features())
