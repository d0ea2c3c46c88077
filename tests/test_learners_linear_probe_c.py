"""The linear probe's L2 strength chosen on the training images (``C=None``): the C of a stratified k-fold
cross-validation by held-out log-loss, checked against scikit-learn (``LogisticRegressionCV`` and a
cross-validation written out here: ``LogisticRegression`` per fold, the log-loss by hand), the binary case's 2 C,
the fallback when a class has one image, the record a checkpoint carries, and that the chosen C is not
underconfident the way C = 1 is (measured on held-out synthetic features)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from calibprompt.training.learners import create_learner
from calibprompt.training.learners.base import train_learner
from calibprompt.training.learners.feature_checkpoint import load_feature_learner, save_feature_learner
from calibprompt.training.learners.linear_probe import C_GRID, CV_FOLDS, FALLBACK_C, LinearProbe


def _blobs(seed: int, n: int, k: int, d: int, noise: float, centers: torch.Tensor | None = None):
    """L2-normalised Gaussian blobs: ``n`` features (n, d) with labels ``i % k``, and the centres (k, d)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) if centers is None else centers
    labels = torch.arange(n) % k
    return F.normalize(centers[labels] + noise * torch.randn(n, d, generator=g), dim=-1), labels, centers


def _cv_by_hand(features, labels, n_splits: int, factor: float = 1.0) -> float:
    """The C of :data:`C_GRID` with the lowest held-out log-loss ``-mean log p(y | f)`` (p clipped at float64's
    eps, as scikit-learn's scorer), averaged over ``StratifiedKFold(n_splits)``, of scikit-learn's
    ``LogisticRegression(C=factor * C)`` (each fold warm-started along the grid); labels 0..K-1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x, y = features.double().numpy(), labels.numpy()
    losses = np.zeros(len(C_GRID))
    for train, test in StratifiedKFold(n_splits=n_splits).split(x, y):
        model = LogisticRegression(tol=1e-6, max_iter=1000, warm_start=True)
        for i, c in enumerate(C_GRID):
            with warnings.catch_warnings(), threadpool_limits(limits=1):
                warnings.simplefilter("ignore")  # the largest C on separable folds
                model.set_params(C=factor * c).fit(x[train], y[train])
            p = np.clip(model.predict_proba(x[test])[np.arange(len(test)), y[test]], np.finfo(float).eps, 1.0)
            losses[i] -= np.log(p).mean() / n_splits
    return C_GRID[int(np.argmin(losses))]


def _chosen(features, labels, **params):
    probe = LinearProbe(int(labels.max()) + 1, features.shape[1], **params)
    return probe.initialise(features, labels)


@pytest.mark.parametrize("n, folds", [(40, 5), (12, 3)])  # 10 and 3 images a class: min(5, smallest count) folds
def test_chosen_C_is_scikit_learns_cross_validated_C(n, folds):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    feats, labels, _ = _blobs(3, n, 4, 16, 0.9)
    probe = _chosen(feats, labels)
    assert probe.C == _cv_by_hand(feats, labels, folds)
    with warnings.catch_warnings(), threadpool_limits(limits=1):  # (one thread: seconds faster on 2 cores)
        warnings.simplefilter("ignore")
        reference = LogisticRegressionCV(Cs=list(C_GRID), cv=StratifiedKFold(folds), scoring="neg_log_loss",
                                         max_iter=1000).fit(feats.double().numpy(), labels.numpy())
    assert probe.C == pytest.approx(float(np.ravel(reference.C_)[0]), rel=1e-12)
    assert probe.hyperparameters() == {"C": probe.C, "n_train": n,
                                       "C_chosen_by": f"{folds}-fold CV on the {n} training images (log-loss)"}
    assert CV_FOLDS == 5 and C_GRID[0] < probe.C < C_GRID[-1]


def test_binary_C_is_half_of_scikit_learns():
    """Our C is scikit-learn's binary 2 C: the grid is searched as 2 C, the trained probe equals the binary fit."""
    from sklearn.linear_model import LogisticRegression

    feats, labels, _ = _blobs(7, 30, 2, 8, 2.0)
    probe = _chosen(feats, labels)
    assert probe.C == _cv_by_hand(feats, labels, 5, factor=2.0) == 10 ** 0.5
    train_learner(probe, feats, labels, "coop")
    test, _, _ = _blobs(8, 200, 2, 8, 2.0)
    reference = LogisticRegression(C=2.0 * probe.C, tol=1e-10, max_iter=10_000)
    with threadpool_limits(limits=1):
        reference.fit(feats.double().numpy(), labels.numpy())
    with torch.no_grad():
        ours = torch.softmax(probe(test).double(), dim=-1).numpy()
    assert np.abs(ours - reference.predict_proba(test.double().numpy())).max() < 1e-3


def test_one_image_in_a_class_falls_back_to_C_1_and_says_why():
    feats, labels, _ = _blobs(2, 5, 3, 8, 0.5)  # labels 0 1 2 0 1: one image of class 2 ("normal")
    probe = _chosen(feats, labels, classnames=["adenoma", "carcinoma", "normal"])
    assert probe.C == FALLBACK_C == 1.0
    assert "no cross-validation" in probe.C_chosen_by and "'normal' has 1 training image" in probe.C_chosen_by
    one_shot = _chosen(feats[:3], labels[:3])  # one image per class
    assert one_shot.C == 1.0 and "'class 0' has 1" in one_shot.hyperparameters()["C_chosen_by"]
    train_learner(probe, feats, labels, "coop")
    given = create_learner("linear-probe", num_classes=3, dim=8, C=1.0)  # today's explicit C
    train_learner(given, feats, labels, "coop")
    torch.testing.assert_close(probe(feats), given(feats))
    assert given.hyperparameters()["C_chosen_by"] == "given"


def test_chosen_C_is_not_underconfident_as_C_1_is():
    """9 classes, 8 shots, 900 held-out images of the same blobs: mean confidence against accuracy."""
    feats, labels, centers = _blobs(1, 72, 9, 64, 2.0)
    test, test_labels, _ = _blobs(11, 900, 9, 64, 2.0, centers)
    gaps = {}
    for C in (1.0, None):
        probe = create_learner("linear-probe", num_classes=9, dim=64, C=C)
        train_learner(probe, feats, labels, "coop")
        with torch.no_grad():
            probs = torch.softmax(probe(test), dim=-1)
        accuracy = float((probs.argmax(1) == test_labels).float().mean())
        gaps[C] = float(probs.max(1).values.mean()) - accuracy
    assert gaps[1.0] < -0.3  # C = 1: confidence ~0.25 at accuracy ~0.9 (measured)
    assert abs(gaps[None]) < 0.1 and abs(gaps[None]) < abs(gaps[1.0]) / 4


def test_a_chosen_C_checkpoint_loads_back_with_its_record(tmp_path):
    feats, labels, _ = _blobs(3, 40, 4, 16, 0.9)
    probe = create_learner("linear-probe", num_classes=4, dim=16)
    assert probe.C is None
    with pytest.raises(ValueError, match="call initialise"):
        probe.penalty()
    train_learner(probe, feats, labels, "coop")
    save_feature_learner(tmp_path / "probe", probe, backbone="tiny-random")
    loaded, meta = load_feature_learner(tmp_path / "probe.json")
    assert meta["learner_params"]["C"] == probe.C and meta["C_chosen_by"].startswith("5-fold CV on the 40")
    assert loaded.config() == probe.config() and loaded.C == probe.C
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats), probe(feats))
    with pytest.raises(ValueError, match="C must be > 0 .or None"):
        create_learner("linear-probe", num_classes=4, dim=16, C=0.0)
