"""Label-free test-time prompt tuning: TPT and its calibrated variants C-TPT, O-TPT and A-TPT.

Per test image ``x`` (no label is ever read):

1. views: the original (the backbone's own ``preprocess``) and ``n_views`` (default 63) augmented views,
   encoded in one batch by the frozen image encoder, L2-normalised: ``F`` (1 + n_views, D);
2. logits of every view under the current context, ``z = s * F @ T^T`` (V, K), with ``T = normalize(g(ctx))``
   the class text features (K, D) and ``s`` the backbone's logit scale;
3. confidence selection (TPT's ``select_confident_samples``): keep the ``int(V * top)`` views (at least
   one) of lowest entropy; chosen at the first step and kept for the later steps, as TPT's code does;
4. ``steps`` (default 1) AdamW steps (lr 5e-3, torch's default weight decay 0.01, a fresh optimizer per
   image) on the context only, minimising

   ``L = H(mean_v softmax(z_v)) + lambda * R(T)``  over the kept views v, with

   ====== =========================================================== =====================
   method R(T)                                                        lambda (default)
   ====== =========================================================== =====================
   tpt    none                                                        0
   c-tpt  ``-ATFD(T)``, ``ATFD = 1/K sum_k ||t_k - mean_j t_j||_2``   50
   o-tpt  ``1/K sum_k | ||(T T^T)_k||_2 - 1 |``                       18
   a-tpt  ``-1/K sum_k arccos(clip(max_{j!=k} t_k.t_j, -tau, tau))``  80 (tau = 0.99999)
   ====== =========================================================== =====================

5. the prediction: ``softmax(s * F_0 @ T'^T)`` of the original view under the tuned context ``T'``;
6. the tuned context (a private copy: the caller's prompt is never written) is reset to the learned one
   before the next image, so each image starts from the learned prompt.

The lambdas are those of the authors' scripts for the fine-grained (class-name) datasets, the setting
closest to a medical task: C-TPT ``scripts/test_tpt_ctpt_fg.sh`` (50; 20 for the ImageNet shifts),
O-TPT ``scripts/test_tpt_otpt_fg.sh`` (18; 2), A-TPT ``scripts/test_tpt_atpt_fg.sh`` (80; 10).

Augmentation: TPT's recipe for its ImageNet-style sets (``data/datautils.py``: ``RandomResizedCrop(224)``,
scale 0.08-1, and a horizontal flip, no AugMix), here :func:`calibprompt.training.features.train_transform`
(the same crop and flip around the backbone's own preprocessing; bicubic where TPT uses bilinear). TPT
uses AugMix on its fine-grained sets; that is not reproduced. View ``v`` of an image is seeded by
``(seed, the image's pixels, v)``, so a prediction does not depend on the other images of the call.

References (code read, not copied):

* TPT: M. Shu et al., "Test-Time Prompt Tuning for Zero-Shot Generalization in Vision-Language
  Models", NeurIPS 2022; github azshue/TPT ``tpt_classification.py`` (``select_confident_samples``,
  ``avg_entropy``, ``test_time_tuning``, ``test_time_adapt_eval``) and ``data/datautils.py``.
* C-TPT: H. S. Yoon et al., "C-TPT: Calibrated Test-Time Prompt Tuning for Vision-Language Models via
  Text Feature Dispersion", ICLR 2024; github hee-suk-yoon/C-TPT ``clip/custom_clip.py``
  (``l2_norm_mean``) and ``tpt_classification.py`` (``loss += -lambda * l2_norm_mean``).
* O-TPT: A. Sharifdeen et al., "O-TPT: Orthogonality Constraints for Calibrating Test-time Prompt
  Tuning in Vision-Language Models", CVPR 2025; github ashshaksharifdeen/O-TPT ``otpt_classification.py``
  (the Householder block). That code reflects each row ``w_k`` of ``W = T T^T`` with the Householder
  matrix ``H_k = I - 2 v v^T``, ``v = (w_k - ||w_k|| e_k) / ||w_k - ||w_k|| e_k||``, which maps it to
  ``||w_k|| e_k``, and averages ``||H_k w_k - e_k||_2``; that is exactly ``| ||w_k||_2 - 1 |``, the closed
  form used here (no division by zero when a row is already orthogonal; the test checks it against the
  Householder computation).
* A-TPT: S. A. Ahamed et al., "A-TPT: Angular Diversity Calibration Properties for Test-Time Prompt
  Tuning of Vision-Language Models", ICLR 2026 (arXiv:2510.26441); github MB-Shihab-Aaqil-Ahamed/A-TPT
  ``clip/custom_clip.py`` (``min_ang_norm``). The paper maximises the minimum pairwise angle; the sign of
  the term in that repository's ``atpt_classification.py`` changed between commits (8e8f0fd and its
  ``tpt_classification.py`` maximise the angle, d76ecf6 minimises it); this module follows the paper.
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from calibprompt.prompting.learner import PromptLearner

__all__ = ["TestTimeMethod", "TestTimeResult", "TEST_TIME_METHODS", "list_test_time", "get_test_time",
           "select_confident", "marginal_entropy", "atfd", "orthogonality", "angular_diversity",
           "test_time_loss", "test_time_predict", "test_time_predict_many", "resolve_prompt"]

#: A-TPT's clamp of the cosine before arccos (``--tau_term`` in the authors' scripts)
A_TPT_TAU = 0.99999


@dataclass(frozen=True)
class TestTimeMethod:
    """A label-free test-time method: TPT's entropy plus ``weight`` (lambda) times its regulariser."""

    __test__ = False  # not a pytest class

    name: str
    title: str
    reference: str
    weight: float
    needs: str = "no labels"
    regularizer: str | None = None  # "atfd", "orthogonality", "angular_diversity" or None
    code: str = ""  # the reference implementation followed
    description: str = ""
    cost: str = ("per image: one image-encoder pass over 1 + n_views views, and per step one text-encoder "
                 "forward and backward pass over the K class prompts")


TEST_TIME_METHODS: dict[str, TestTimeMethod] = {
    "tpt": TestTimeMethod(
        "tpt", "TPT", "Shu et al., Test-Time Prompt Tuning for Zero-Shot Generalization in Vision-Language "
        "Models, NeurIPS 2022", 0.0, code="github azshue/TPT tpt_classification.py",
        description="Entropy of the averaged prediction over the 10 % most confident augmented views."),
    "c-tpt": TestTimeMethod(
        "c-tpt", "C-TPT", "Yoon et al., C-TPT: Calibrated Test-Time Prompt Tuning for Vision-Language Models "
        "via Text Feature Dispersion, ICLR 2024", 50.0, regularizer="atfd",
        code="github hee-suk-yoon/C-TPT clip/custom_clip.py, scripts/test_tpt_ctpt_fg.sh",
        description="TPT minus lambda times the dispersion (ATFD) of the class text features."),
    "o-tpt": TestTimeMethod(
        "o-tpt", "O-TPT", "Sharifdeen et al., O-TPT: Orthogonality Constraints for Calibrating Test-time Prompt "
        "Tuning in Vision-Language Models, CVPR 2025", 18.0, regularizer="orthogonality",
        code="github ashshaksharifdeen/O-TPT otpt_classification.py, scripts/test_tpt_otpt_fg.sh",
        description="TPT plus lambda times the deviation of the class text features from orthogonality."),
    "a-tpt": TestTimeMethod(
        "a-tpt", "A-TPT", "Ahamed et al., A-TPT: Angular Diversity Calibration Properties for Test-Time Prompt "
        "Tuning of Vision-Language Models, ICLR 2026 (arXiv:2510.26441)", 80.0, regularizer="angular_diversity",
        code="github MB-Shihab-Aaqil-Ahamed/A-TPT clip/custom_clip.py, scripts/test_tpt_atpt_fg.sh",
        description="TPT minus lambda times the mean angle from each class text feature to its nearest class."),
}


def list_test_time() -> list[str]:
    """The test-time methods' names: ``tpt``, ``c-tpt``, ``o-tpt``, ``a-tpt``."""
    return list(TEST_TIME_METHODS)


def get_test_time(name: str | TestTimeMethod) -> TestTimeMethod:
    """The method called ``name`` (case-insensitive; ``ctpt``, ``c_tpt`` and ``c-tpt`` alike).

    Raises:
        ValueError: an unknown name, naming the allowed ones.
    """
    if isinstance(name, TestTimeMethod):
        return name
    key = str(name).strip().lower().replace("_", "-")
    key = {"ctpt": "c-tpt", "otpt": "o-tpt", "atpt": "a-tpt"}.get(key, key)
    if key not in TEST_TIME_METHODS:
        raise ValueError(f"Unknown test-time method {name!r}; choose one of: {', '.join(TEST_TIME_METHODS)}.")
    return TEST_TIME_METHODS[key]


# -- pure pieces ----------------------------------------------------------------------------
def _check_2d(x: torch.Tensor, what: str, shape: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] < 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} must be a 2-D tensor {shape} with at least one row, got {got}.")


def select_confident(logits: torch.Tensor, top: float = 0.1) -> torch.Tensor:
    """Indices (V',) of the ``V' = max(1, int(V * top))`` views of lowest prediction entropy
    ``H_v = -sum_k p_vk log p_vk``, ``p_v = softmax(logits_v)``, most confident first (TPT's
    ``select_confident_samples``; ``int(64 * 0.1) = 6``). ``logits``: (V, K)."""
    _check_2d(logits, "logits", "(V views, K classes)")
    if not 0.0 < float(top) <= 1.0:
        raise ValueError(f"top is the fraction of views kept and must be in (0, 1], got {top}; TPT uses 0.1.")
    logits = logits.detach().float()
    entropy = -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)
    keep = max(1, int(logits.shape[0] * float(top)))
    return torch.argsort(entropy, descending=False, stable=True)[:keep]


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean prediction, ``H(pbar)``, ``pbar = 1/V' sum_v softmax(logits_v)``: TPT's
    ``avg_entropy``, computed in log space, ``log pbar = logsumexp_v(log_softmax(logits_v)) - log V'``.
    ``logits``: (V', K); returns a scalar tensor (differentiable)."""
    _check_2d(logits, "logits", "(V' views, K classes)")
    log_p = logits.float().log_softmax(dim=-1)
    log_mean = torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])
    log_mean = log_mean.clamp(min=torch.finfo(log_mean.dtype).min)
    return -(log_mean.exp() * log_mean).sum()


def atfd(text_features: torch.Tensor) -> torch.Tensor:
    """Average text feature dispersion (C-TPT): ``1/K sum_k ||t_k - c||_2``, ``c = 1/K sum_k t_k``, of the
    (L2-normalised) class text features (K, D); a scalar tensor."""
    _check_2d(text_features, "text_features", "(K classes, D)")
    t = text_features.float()
    return torch.linalg.vector_norm(t - t.mean(dim=0, keepdim=True), dim=-1).mean()


def orthogonality(text_features: torch.Tensor) -> torch.Tensor:
    """O-TPT's orthogonality term on the (L2-normalised) class text features T (K, D):
    ``1/K sum_k | ||w_k||_2 - 1 |`` with ``w_k`` the k-th row of ``W = T T^T`` (K, K), i.e. the mean over
    classes of ``||H_k w_k - e_k||_2`` with ``H_k`` the Householder reflection that maps ``w_k`` to
    ``||w_k|| e_k`` (see the module docstring). 0 for orthonormal features; for unit features
    ``||w_k|| = sqrt(1 + sum_{j!=k} cos^2(t_k, t_j))``. A scalar tensor."""
    _check_2d(text_features, "text_features", "(K classes, D)")
    t = text_features.float()
    gram = t @ t.T
    return (torch.linalg.vector_norm(gram, dim=-1) - 1.0).abs().mean()


def angular_diversity(text_features: torch.Tensor, tau: float = A_TPT_TAU) -> torch.Tensor:
    """A-TPT's angular diversity: the mean over classes of the angle (radians) to the nearest other
    class, ``1/K sum_k arccos(clip(max_{j!=k} cos(t_k, t_j), -tau, tau))``; T (K, D), K >= 2, normalised
    here. The clip keeps arccos differentiable. A scalar tensor (larger: more diverse)."""
    _check_2d(text_features, "text_features", "(K classes, D)")
    if text_features.shape[0] < 2:
        raise ValueError("angular_diversity needs at least 2 class text features.")
    t = F.normalize(text_features.float(), dim=-1)
    cos = t @ t.T
    eye = torch.eye(cos.shape[0], dtype=torch.bool, device=cos.device)
    nearest = cos.masked_fill(eye, -2.0).max(dim=1).values
    return torch.arccos(nearest.clamp(-tau, tau)).mean()


_SIGNED_TERMS = {"atfd": (-1.0, atfd), "orthogonality": (1.0, orthogonality),
                 "angular_diversity": (-1.0, angular_diversity)}


def test_time_loss(name: str | TestTimeMethod, logits: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """The method's loss on the kept views: ``marginal_entropy(logits) + weight * R(text_features)``,
    with ``R = -atfd`` (c-tpt), ``+orthogonality`` (o-tpt), ``-angular_diversity`` (a-tpt), none (tpt).
    ``logits`` (V', K), ``text_features`` (K, D); a scalar tensor."""
    method = get_test_time(name)
    loss = marginal_entropy(logits)
    if method.regularizer is not None and method.weight != 0:
        sign, term = _SIGNED_TERMS[method.regularizer]
        loss = loss + sign * float(method.weight) * term(text_features)
    return loss


test_time_loss.__test__ = False  # not a pytest function


# -- the whole thing ------------------------------------------------------------------------
@dataclass
class TestTimeResult:
    """What :func:`test_time_predict` gives: ``probs`` (N, K) of the original images after tuning."""

    __test__ = False

    probs: np.ndarray
    seconds_per_image: float
    method: str
    n_views: int
    steps: int
    top: float = 0.1
    lr: float = 5e-3
    weight: float = 0.0
    views_kept: int = 0
    needs: str = "no labels"


def resolve_prompt(learner) -> PromptLearner:
    """The :class:`PromptLearner` whose context test-time tuning changes: ``learner`` itself, or the
    ``.prompt`` of a registry prompt learner whose prediction is its context (coop, kgcoop, prograd).

    Raises:
        ValueError: a learner without a learned context (adapters, linear probes), or CoCoOp.
    """
    if isinstance(learner, PromptLearner):
        return learner
    name = getattr(learner, "name", type(learner).__name__)
    if hasattr(learner, "meta_net"):
        raise ValueError(f"Learner {name!r} shifts its context by a meta-network for each image; test-time "
                         "prompt tuning here tunes a shared context: use a coop, kgcoop or prograd prompt.")
    prompt = getattr(learner, "prompt", None)
    if isinstance(prompt, PromptLearner):
        return prompt
    raise ValueError(f"Test-time prompt tuning needs a prompt with a learned context, and learner {name!r} has "
                     "none (it learns on image features); use a prompt learner (coop, kgcoop, prograd).")


def _private_copy(prompt: PromptLearner) -> PromptLearner:
    """A shallow copy of ``prompt`` that shares its frozen tower and buffers but owns a copy of the
    context: tuning it never writes to ``prompt``, so concurrent calls on one prompt cannot disturb
    each other (an app serves several users from one loaded prompt)."""
    tuned = copy.copy(prompt)
    tuned._parameters = dict(prompt._parameters)
    tuned._parameters["ctx"] = torch.nn.Parameter(prompt.ctx.detach().clone(), requires_grad=True)
    return tuned


def _image_key(image) -> str:
    """A content hash of a decoded image (mode, size and pixels): seeds its views."""
    digest = hashlib.blake2b(f"{image.mode}:{image.size}".encode(), digest_size=16)
    digest.update(image.tobytes())
    return digest.hexdigest()


def _view_features(backbone, image, augment, n_views: int, seed: int) -> torch.Tensor:
    """L2-normalised features (1 + n_views, D): the original view first, then the seeded augmented
    views, encoded in one batch."""
    from calibprompt.training.features import _view_seed, encode_pixels

    key = f"{_image_key(image)}:tpt:{int(seed)}"
    pixels = [backbone.preprocess(image)] + [augment(image, _view_seed(key, v)) for v in range(n_views)]
    return encode_pixels(backbone, torch.stack(pixels), batch_size=len(pixels))


def _tune_and_predict(prompt: PromptLearner, feats: torch.Tensor, scale: float, method: TestTimeMethod,
                      top: float, steps: int, lr: float) -> torch.Tensor:
    """TPT's ``test_time_tuning`` then its prediction of view 0; leaves the context tuned (the caller
    restores it). ``feats`` (V, D) on the prompt's device; returns probabilities (K,)."""
    optimizer = torch.optim.AdamW([prompt.ctx], lr=lr)  # a fresh state per image, as TPT's reset
    kept = None
    for _ in range(steps):
        text = prompt.encode_text(normalize=True).float()
        logits = scale * feats @ text.T
        if kept is None:
            kept = select_confident(logits, top)
        loss = test_time_loss(method, logits[kept], text)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        text = prompt.encode_text(normalize=True).float()
        return (scale * feats[:1] @ text.T).softmax(dim=-1)[0]


def _check_args(n_views: int, top: float, steps: int, lr: float) -> None:
    if int(n_views) < 0:
        raise ValueError(f"n_views (augmented views per image) must be at least 0, got {n_views}; TPT uses 63.")
    if int(steps) < 0:
        raise ValueError(f"steps must be at least 0, got {steps}; TPT uses 1.")
    if not 0.0 < float(top) <= 1.0:
        raise ValueError(f"top is the fraction of views kept and must be in (0, 1], got {top}; TPT uses 0.1.")
    if not float(lr) > 0:
        raise ValueError(f"lr must be positive, got {lr}; TPT uses 5e-3.")


def test_time_predict(backbone, prompt, images: Sequence, method: str = "c-tpt", *, n_views: int = 63,
                      top: float = 0.1, steps: int = 1, lr: float = 5e-3, seed: int = 0,
                      on_image: Callable[[int, int], None] | None = None) -> TestTimeResult:
    """Test-time prompt tuning of ``prompt`` on each of ``images``, without labels (module docstring).

    Args:
        backbone: the frozen backbone (``preprocess``, ``logit_scale``, its image encoder).
        prompt: a :class:`PromptLearner`, or a registry prompt learner holding one (``.prompt``).
        images: N PIL images or paths (anything :func:`calibprompt.imaging.load_image` reads).
        method: one of :func:`list_test_time`.
        n_views: augmented views per image besides the original (TPT: 63, i.e. a batch of 64).
        top: fraction of the 1 + n_views views kept for the loss (TPT: 0.1, i.e. 6 of 64).
        steps: AdamW steps per image (0: the plain prompt's prediction).
        lr: AdamW learning rate (TPT: 5e-3).
        seed: seeds the views (with each image's pixels).
        on_image: called as ``on_image(done, N)`` after each image.

    Returns a :class:`TestTimeResult`. The caller's context is never written (a private copy of it is
    tuned and reset to the learned values before each image), so it is bit-identical afterwards, even on
    an exception, and concurrent calls on one prompt are safe. Several prompts on the same images:
    :func:`test_time_predict_many` (each image's views encoded once for all of them).
    """
    return test_time_predict_many(backbone, {"prompt": prompt}, images, method, n_views=n_views, top=top,
                                  steps=steps, lr=lr, seed=seed, on_image=on_image)["prompt"]


def test_time_predict_many(backbone, prompts: Mapping[str, Any], images: Sequence, method: str = "c-tpt", *,
                           n_views: int = 63, top: float = 0.1, steps: int = 1, lr: float = 5e-3, seed: int = 0,
                           on_image: Callable[[int, int], None] | None = None) -> dict[str, TestTimeResult]:
    """:func:`test_time_predict` for several prompts (``{name: prompt}``) on the same images: each image's
    1 + ``n_views`` views are encoded once and every prompt is tuned on them (the image encoder runs once per
    view, whatever the number of prompts). Each result's ``seconds_per_image`` is its tuning plus its share
    of the encoding."""
    spec = get_test_time(method)
    _check_args(n_views, top, steps, lr)
    learned = {name: resolve_prompt(p) for name, p in prompts.items()}
    images = list(images)
    if not images or not learned:
        raise ValueError("No images were given." if not images else "No prompt was given.")
    from calibprompt.imaging import load_image
    from calibprompt.training.features import _SeededAugment, train_transform

    augment = _SeededAugment(train_transform(backbone.preprocess))
    scale = float(backbone.logit_scale)
    originals = {n: p.ctx.detach().clone() for n, p in learned.items()}
    tuned = {n: _private_copy(p) for n, p in learned.items()}  # the callers' prompts are only read
    rows: dict[str, list] = {n: [] for n in learned}
    seconds = dict.fromkeys(learned, 0.0)
    try:
        for index, image in enumerate(images):
            start = time.perf_counter()
            image = image if getattr(image, "mode", None) == "RGB" else load_image(image)
            feats = _view_features(backbone, image, augment, int(n_views), seed)
            shared = (time.perf_counter() - start) / len(learned)
            for name, prompt in tuned.items():
                start = time.perf_counter()
                ctx = prompt.ctx
                rows[name].append(_tune_and_predict(prompt, feats.to(ctx.device), scale, spec, top, int(steps),
                                                    lr).cpu().double())
                with torch.no_grad():  # the next image starts from the learned prompt
                    ctx.copy_(originals[name])
                ctx.grad = None
                seconds[name] += shared + time.perf_counter() - start
            if on_image is not None:
                on_image(index + 1, len(images))
    finally:
        for name, prompt in learned.items():
            assert torch.equal(prompt.ctx.detach(), originals[name]), "the prompt's context changed"
    kept = max(1, int((1 + int(n_views)) * float(top)))
    return {name: TestTimeResult(torch.stack(rows[name]).numpy(), seconds[name] / len(images), spec.name,
                                 int(n_views), int(steps), float(top), float(lr), float(spec.weight), kept)
            for name in learned}


test_time_predict.__test__ = False
test_time_predict_many.__test__ = False
