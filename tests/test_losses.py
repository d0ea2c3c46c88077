"""Every loss against a hand-worked value or an independent computation (numpy loops, torch built-ins)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from calibprompt.training import losses as L
from calibprompt.prompting.tasks import load_task


def _batch(seed: int, b: int = 16, k: int = 4, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, k, (b,), generator=g)
    return logits, labels


def _softmax_np(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ hand-worked values
def test_ce_hand_worked():
    # logits [[2, 0], [0, 1]], labels [0, 1]: CE = mean(log(1 + e^-2), log(1 + e^-1))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2  # 0.2200948
    assert L.CE(logits, torch.tensor([0, 1])).item() == pytest.approx(expected, abs=1e-6)


def test_ls_hand_worked_three_classes():
    # One sample, logits 0 => p = 1/3 each; targets (0.8, 0.1, 0.1) sum to 1 => loss = log 3.
    logits = torch.zeros(1, 3)
    assert L.LS(logits, torch.tensor([0]), alpha=0.2).item() == pytest.approx(math.log(3), abs=1e-6)
    # logits (ln 2, 0): p = (2/3, 1/3); alpha 0.1: 0.9 * -ln(2/3) + 0.1 * -ln(1/3)
    logits = torch.tensor([[math.log(2.0), 0.0]])
    expected = 0.9 * -math.log(2 / 3) + 0.1 * -math.log(1 / 3)
    assert L.LS(logits, torch.tensor([0]), alpha=0.1).item() == pytest.approx(expected, abs=1e-6)


def test_dca_hand_worked():
    # p rows: (0.9, 0.1) label 0 correct; (0.6, 0.4) label 1 wrong. conf mean 0.75, acc 0.5 => 0.25
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.6, 0.4]]))
    assert L.DCA(logits, torch.tensor([0, 1])).item() == pytest.approx(0.25, abs=1e-6)


def test_as_extremes():
    assert L.AS(torch.eye(3)).item() == pytest.approx(0.0, abs=1e-7)  # orthogonal classes
    same = torch.ones(4, 8)
    assert L.AS(same).item() == pytest.approx(1.0, abs=1e-6)  # identical classes
    two = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert L.AS(two).item() == pytest.approx(-1.0, abs=1e-6)  # opposite directions


def test_smac_zero_when_confidence_matches_smoothed_frequency():
    # Two classes, labels (0, 1): f = (0.5, 0.5), smoothed s = (0.5, 0.5); p = (0.5, 0.5) each => 0
    logits = torch.zeros(2, 2)
    assert L.SMAC(logits, torch.tensor([0, 1]), alpha=0.2).item() == pytest.approx(0.0, abs=1e-7)
    # All labels 0, K = 3, alpha 0.3: s = (0.7, 0.15, 0.15); uniform p = 1/3 =>
    # mean(|1/3 - 0.7|, |1/3 - 0.15|, |1/3 - 0.15|) = (0.366667 + 2 * 0.183333) / 3 = 0.244444
    logits = torch.zeros(5, 3)
    assert L.SMAC(logits, torch.zeros(5, dtype=torch.long), alpha=0.3).item() == pytest.approx(0.733333 / 3, abs=1e-5)


# ------------------------------------------------------------------ independent computations
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [2, 3, 9])
@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.2])
def test_ls_matches_torch_label_smoothing(seed, k, alpha):
    logits, labels = _batch(seed, k=k)
    torch_eps = alpha * k / (k - 1)  # torch spreads eps over all K classes
    expected = F.cross_entropy(logits, labels, label_smoothing=torch_eps)
    assert L.LS(logits, labels, alpha).item() == pytest.approx(expected.item(), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [2, 3, 9])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.2])
def test_smac_against_numpy_loops(seed, k, alpha):
    logits, labels = _batch(seed, k=k)
    p, y = _softmax_np(logits), labels.numpy()
    total = 0.0
    for c in range(k):
        f = np.mean(y == c)
        s = f * (1 - alpha) + (1 - f) * alpha / (k - 1)
        total += abs(p[:, c].mean() - s)
    assert L.SMAC(logits, labels, alpha).item() == pytest.approx(total / k, abs=1e-10)
    if alpha == 0.0:
        assert L.MDCA(logits, labels).item() == pytest.approx(total / k, abs=1e-10)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gamma", [0.0, 1.0, 3.0])
def test_focal_against_numpy(seed, gamma):
    logits, labels = _batch(seed, k=5)
    p = _softmax_np(logits)[np.arange(len(labels)), labels.numpy()]
    expected = np.mean(-((1 - p) ** gamma) * np.log(p))
    assert L.FL(logits, labels, gamma).item() == pytest.approx(expected, abs=1e-9)
    if gamma == 0.0:
        assert L.FL(logits, labels, 0.0).item() == pytest.approx(L.CE(logits, labels).item(), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_dca_against_numpy(seed):
    logits, labels = _batch(seed, k=3)
    p = _softmax_np(logits)
    expected = abs(p.max(1).mean() - np.mean(p.argmax(1) == labels.numpy()))
    assert L.DCA(logits, labels).item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [2, 5])
def test_as_against_pairwise_loop(seed, k):
    t = torch.randn(k, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    tn = t.numpy() / np.linalg.norm(t.numpy(), axis=1, keepdims=True)
    rows = [sum(float(tn[i] @ tn[j]) for j in range(k) if j != i) / (k - 1) for i in range(k)]
    assert L.AS(t).item() == pytest.approx(np.mean(rows), abs=1e-10)


def _mmce_reference(logits, labels, width=0.4):
    p = _softmax_np(logits)
    r, pred = p.max(1), p.argmax(1)
    correct = pred == labels.numpy()
    ci, ii = np.where(correct)[0], np.where(~correct)[0]
    m, n = len(ci), len(ii)
    if m == 0 or n == 0:
        return 0.0
    k = lambda a, b: math.exp(-abs(r[a] - r[b]) / width)  # noqa: E731
    cc = sum((1 - r[i]) * (1 - r[j]) * k(i, j) for i in ci for j in ci) / m**2
    nn = sum(r[i] * r[j] * k(i, j) for i in ii for j in ii) / n**2
    cn = sum((1 - r[i]) * r[j] * k(i, j) for i in ci for j in ii) / (m * n)
    return math.sqrt(max(cc + nn - 2 * cn, 0.0) + 1e-10)


@pytest.mark.parametrize("seed", range(6))
def test_mmce_against_double_loop(seed):
    logits, labels = _batch(seed, b=12, k=3, scale=1.5)
    assert L.MMCE(logits, labels).item() == pytest.approx(_mmce_reference(logits, labels), abs=1e-9)


def test_mmce_zero_when_batch_is_all_correct_and_gradient_finite():
    logits = torch.tensor([[3.0, 0.0], [0.0, 2.0]], requires_grad=True)
    value = L.MMCE(logits, torch.tensor([0, 1]))
    assert value.item() == 0.0
    logits2, labels2 = _batch(3, b=10, k=3)
    logits2 = logits2.clone().requires_grad_(True)
    L.MMCE(logits2, labels2).backward()
    assert torch.isfinite(logits2.grad).all()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("margin", [0.5, 2.0, 10.0])
def test_mbls_against_numpy(seed, margin):
    logits, labels = _batch(seed, k=4, scale=4.0)
    z = logits.numpy()
    p = _softmax_np(z)
    ce = -np.mean(np.log(p[np.arange(len(z)), labels.numpy()]))
    penalty = np.maximum(z.max(1, keepdims=True) - z - margin, 0).mean()
    expected = ce + 0.1 * penalty
    assert L.MBLS(logits, labels, margin=margin, alpha=0.1).item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("t", [0.5, 1.0])
def test_logitnorm_against_numpy(seed, t):
    logits, labels = _batch(seed, k=4)
    z = logits.numpy()
    zn = z / ((np.linalg.norm(z, axis=1, keepdims=True) + 1e-7) * t)
    p = _softmax_np(zn)
    expected = -np.mean(np.log(p[np.arange(len(z)), labels.numpy()]))
    assert L.LOGITNORM(logits, labels, temperature=t).item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_zero_shot_losses_against_numpy(seed):
    logits, labels = _batch(seed, k=4, scale=5.0)
    zs, _ = _batch(seed + 100, k=4, scale=2.0)
    z, s = logits.numpy(), zs.numpy()
    unit = (z - z.min(1, keepdims=True)) / (z.max(1, keepdims=True) - z.min(1, keepdims=True))
    mapped = unit * (s.max(1, keepdims=True) - s.min(1, keepdims=True)) + s.min(1, keepdims=True)
    p = _softmax_np(mapped)
    expected_norm = -np.mean(np.log(p[np.arange(len(z)), labels.numpy()]))
    assert L.ZS_NORM(logits, labels, zs).item() == pytest.approx(expected_norm, abs=1e-9)
    expected_pen = np.maximum(z - s.max(1, keepdims=True), 0).mean() + np.maximum(s.min(1, keepdims=True) - z, 0).mean()
    assert L.ZS_PENALTY(logits, labels, zs).item() == pytest.approx(expected_pen, abs=1e-9)


def test_zero_shot_losses_on_the_zero_shot_logits_themselves():
    zs, labels = _batch(7, k=3)
    assert L.ZS_NORM(zs, labels, zs).item() == pytest.approx(L.CE(zs, labels).item(), abs=1e-6)
    assert L.ZS_PENALTY(zs, labels, zs).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="zero-shot logits"):
        L.ZS_NORM(zs, labels, None)


# ------------------------------------------------------------------ registry, methods, validation
def test_registry_names_and_lookup():
    assert set(L.LOSSES) == {"CE", "LS", "FL", "SMAC", "AS", "MDCA", "DCA", "MMCE", "MMCE_AUTHORS", "MBLS",
                             "LOGITNORM", "ZS_NORM", "ZS_PENALTY"}
    assert L.get_loss("smac") is L.SMAC and L.get_loss("zs-norm") is L.ZS_NORM
    with pytest.raises(ValueError, match="choose one of: CE, LS"):
        L.get_loss("hinge")


def test_calibprompt_objective_is_ls_plus_smac_plus_beta_as():
    logits, labels = _batch(1, k=3)
    text = torch.randn(3, 8, dtype=torch.float64)
    objective = L.build_objective("calibprompt", alpha=0.2, beta=3.0)
    total, parts = objective(logits, labels, text_features=text)
    expected = L.LS(logits, labels, 0.2) + L.SMAC(logits, labels, 0.2) + 3.0 * L.AS(text)
    assert total.item() == pytest.approx(expected.item(), abs=1e-10)
    assert set(parts) == {"LS", "SMAC", "AS"}
    assert parts["AS"].item() == pytest.approx(L.AS(text).item())


@pytest.mark.parametrize(
    "task, family, alpha, beta",
    [("kather", "plip", 0.05, 0.01), ("kather", "quiltnet", 0.01, 1.0), ("pannuke", "plip", 0.2, 0.1),
     ("pannuke", "quiltnet", 0.1, 0.001), ("digestpath", "plip", 0.03, 0.001), ("digestpath", "quiltnet", 0.05, 0.001),
     ("covid", "biomedclip", 0.1, 3.0), ("rsna18", "biomedclip", 0.1, 3.0), ("covid", "medclip", 0.2, 1.0),
     ("rsna18", "medclip", 0.2, 1.0), ("kather", "biomedclip", 0.1, 1.0), ("covid", "clip", 0.1, 1.0)],
)
def test_paper_hyperparameters_are_the_defaults(task, family, alpha, beta):
    objective = L.build_objective("calibprompt", backbone_family=family, task=load_task(task))
    assert objective.params == pytest.approx({"alpha": alpha, "beta": beta})
    assert L.build_objective("ls", backbone_family=family, task=load_task(task)).params["alpha"] == pytest.approx(alpha)


def test_overrides_win_and_unknown_parameters_are_refused():
    obj = L.build_objective("calibprompt", backbone_family="quiltnet", task=load_task("kather"), alpha=0.3, beta=None)
    assert obj.params == {"alpha": 0.3, "beta": 1.0}
    assert L.build_objective("mbls", backbone_family="plip", task=load_task("kather")).params["alpha"] == 0.1
    with pytest.raises(ValueError, match="takes no parameter 'beta'"):
        L.build_objective("coop", beta=1.0)
    with pytest.raises(ValueError, match="choose one of: coop, calibprompt"):
        L.build_objective("svm")


def test_every_method_trains_a_gradient_into_logits_and_text():
    logits, labels = _batch(5, k=3)
    zs, _ = _batch(6, k=3)
    for name in L.list_methods():
        lg = logits.clone().requires_grad_(True)
        text = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
        objective = L.build_objective(name)
        total, parts = objective(lg, labels, text_features=text, zero_shot_logits=zs if objective.method.needs_zero_shot else None)
        total.backward()
        assert torch.isfinite(total) and lg.grad is not None and torch.isfinite(lg.grad).all(), name
        assert parts, name


def test_input_validation_messages():
    with pytest.raises(ValueError, match=r"shape \(B, K\)"):
        L.CE(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have shape"):
        L.CE(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\)"):
        L.LS(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), alpha=1.0)
    with pytest.raises(ValueError, match="K >= 2"):
        L.AS(torch.zeros(1, 4))
