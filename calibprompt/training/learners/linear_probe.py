"""Linear probe: multinomial logistic regression on the image features.

The baseline of Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021 (CLIP's linear-probe evaluation, scikit-learn's L-BFGS logistic regression), as the few-shot
papers use it (CoOp, BiomedCoOp). With W (K, D) and b (K,):

    logits = f W^T + b                                                 (N, K)
    loss   = mean_i CE(logits_i, y_i) + ||W||_F^2 / (2 C N)            (b not penalised)

which is scikit-learn's ``LogisticRegression(C=C, solver="lbfgs")`` objective
``C sum_i CE_i + ||W||^2 / 2`` divided by ``C N`` (same minimiser). The default recipe is full-batch
L-BFGS with a strong-Wolfe line search; the features are taken as given (L2-normalised by the cache).
For K = 2 scikit-learn fits one weight vector (binary logistic), whose penalty on ``w = w_1 - w_0`` is
twice ours: our probe with C equals scikit-learn's binary fit with 2 C.

**Choosing C.** With ``C=None`` (the default) C is chosen on the training images alone, as CLIP chose
its L2 strength by a sweep on held-out data and CoOp's linear-probe baseline searches C on a few-shot
validation split: :func:`choose_C` runs stratified k-fold cross-validation (k = min(:data:`CV_FOLDS`,
the smallest class count), folds in the data's order) over the log-spaced :data:`C_GRID` with
scikit-learn's ``LogisticRegressionCV`` (lbfgs, ``scoring="neg_log_loss"``) and keeps the C of the
lowest held-out log-loss summed over the folds. For two classes the grid is searched as scikit-learn's
binary C (2 C, above) and the choice halved back. With fewer than 2 images in some class no fold can hold
it out: C is then :data:`FALLBACK_C`, and :meth:`LinearProbe.hyperparameters` says why
(``C_chosen_by``), as it says how a chosen C was chosen. An explicit ``C`` is used as given.

No text features: the angular separation (AS) does not apply; the zero-shot losses apply when
``zero_shot_text`` is given (only to compute the zero-shot logits, never for the weights).
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from calibprompt.training.learners.base import FeatureLearner

__all__ = ["LinearProbe", "LEARNERS", "C_GRID", "CV_FOLDS", "FALLBACK_C", "choose_C", "cv_folds"]

#: the values of C the cross-validation tries (our C; half-decade steps over CLIP's and CoOp's sweep range)
C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-6, 6, 25))
#: at most this many folds (fewer when the smallest class has fewer training images)
CV_FOLDS = 5
#: C when no cross-validation is possible (a class with fewer than 2 training images)
FALLBACK_C = 1.0


def cv_folds(labels: np.ndarray):
    """The folds :func:`choose_C` uses: ``StratifiedKFold(min(CV_FOLDS, smallest class count))`` over the
    labels (N,) in their order, or None when some class present has fewer than 2 images (or only one class
    is present)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    counts = counts[counts > 0]
    if counts.size < 2 or int(counts.min()) < 2:
        return None
    return StratifiedKFold(n_splits=min(CV_FOLDS, int(counts.min())))


def _cv_options(estimator: type) -> dict[str, Any]:
    """scikit-learn >= 1.8 asks for plain L2 through ``l1_ratios`` and for its new fitted attributes."""
    params = inspect.signature(estimator).parameters
    return {"l1_ratios": (0.0,), "use_legacy_attributes": False} if "use_legacy_attributes" in params else {}


def choose_C(features: torch.Tensor, labels: torch.Tensor,
             classnames: Sequence[str] | None = None) -> tuple[float, str]:
    """``(C, how)``: the C of :data:`C_GRID` whose probe has the lowest held-out log-loss
    ``-mean_i log p(y_i | f_i)`` summed over the :func:`cv_folds` of the features (N, D) and labels (N,),
    fitted by scikit-learn's ``LogisticRegressionCV`` (lbfgs, L2, ``scoring="neg_log_loss"``); for two
    classes it searches ``2 C`` (scikit-learn's binary C) and returns the choice halved. Without folds:
    ``(FALLBACK_C, why)``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    y = labels.detach().cpu().numpy().astype(np.int64)
    n = int(y.shape[0])
    folds = cv_folds(y)
    if folds is None:
        counts = np.bincount(y, minlength=int(y.max()) + 1 if n else 0)
        present = np.flatnonzero(counts)
        if present.size < 2:
            return FALLBACK_C, f"default {FALLBACK_C:g}: no cross-validation, the training images hold one class"
        k = int(present[np.argmin(counts[present])])
        name = classnames[k] if classnames is not None and k < len(classnames) else f"class {k}"
        return FALLBACK_C, (f"default {FALLBACK_C:g}: no cross-validation, {name!r} has {int(counts[k])} "
                            "training image (2 per class needed)")
    factor = 2.0 if np.unique(y).size == 2 else 1.0  # scikit-learn's binary C is twice ours
    x = features.detach().cpu().double().numpy()
    model = LogisticRegressionCV(Cs=[factor * c for c in C_GRID], cv=folds, scoring="neg_log_loss",
                                 solver="lbfgs", max_iter=1000, **_cv_options(LogisticRegressionCV))
    # one thread (BLAS, OpenMP): on these small problems more only wait on each other (several x slower on 2 cores)
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # the largest C on separable folds; scored all the same
        model.fit(x, y)
    chosen = float(np.ravel(model.C_)[0]) / factor
    edge = " (at the edge of the grid)" if chosen in (C_GRID[0], C_GRID[-1]) else ""
    return chosen, f"{folds.get_n_splits()}-fold CV on the {n} training images (log-loss){edge}"


class LinearProbe(FeatureLearner):
    """Logistic regression (N, D) -> (N, K); ``C`` > 0 is the inverse L2 strength (None: chosen by
    :func:`choose_C` in :meth:`initialise`), ``n_train`` the N of the penalty ``||W||^2 / (2 C N)`` (set by
    :meth:`initialise` from the training features); ``C_chosen_by`` says how C was chosen (kept as given,
    so a checkpoint rebuilds with its record)."""

    name = "linear-probe"
    title = "Linear probe"
    reference = "Radford et al., CLIP, ICML 2021 (logistic regression, L-BFGS)"
    description = ("Logistic regression on the image features (L-BFGS), C chosen by cross-validation "
                   "(Radford et al. 2021).")
    text_features = None
    needs_zero_shot_text = False
    defaults = {"optimizer": "lbfgs", "lr": 1.0, "epochs": 1000, "batch_size": 1_000_000, "momentum": 0.0,
                "weight_decay": 0.0}

    def __init__(self, num_classes: int, dim: int, *, zero_shot_text: torch.Tensor | None = None,
                 logit_scale: float = 100.0, classnames: Sequence[str] | None = None, C: float | None = None,
                 n_train: int = 1, C_chosen_by: str | None = None):
        super().__init__(num_classes, dim, zero_shot_text=zero_shot_text, logit_scale=logit_scale,
                         classnames=classnames)
        if C is not None and not float(C) > 0:
            raise ValueError(f"C must be > 0 (or None: chosen by cross-validation on the training images), got {C}.")
        if int(n_train) < 1:
            raise ValueError(f"n_train must be at least 1, got {n_train}.")
        self.C = None if C is None else float(C)
        self.n_train = int(n_train)
        self.C_chosen_by = C_chosen_by if C_chosen_by is not None else (None if C is None else "given")
        self.weight = nn.Parameter(torch.zeros(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def hyperparameters(self) -> dict[str, Any]:
        return {"C": self.C, "n_train": self.n_train, "C_chosen_by": self.C_chosen_by}

    def initialise(self, features: torch.Tensor, labels: torch.Tensor) -> "LinearProbe":
        """Records N for the penalty and, when C is None, chooses it (:func:`choose_C`) on these features
        (N, D) and labels (N,); W and b start at 0 (as scikit-learn's L-BFGS)."""
        self.n_train = int(features.shape[0])
        if self.C is None:
            self.C, self.C_chosen_by = choose_C(features, labels, self.classnames)
        return self

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """``f W^T + b``: (N, D) -> (N, K)."""
        return image_features @ self.weight.T + self.bias

    def penalty(self) -> torch.Tensor:
        """``||W||_F^2 / (2 C N)``."""
        if self.C is None:
            raise ValueError("C is not chosen yet: call initialise(features, labels) first, or give C.")
        return self.weight.pow(2).sum() / (2.0 * self.C * self.n_train)


LEARNERS = {LinearProbe.name: LinearProbe}
