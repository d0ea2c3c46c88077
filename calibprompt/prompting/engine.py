"""The shared inference core: one backbone, many prediction heads, one image pass.

A *head* is a set of class text features (K, D): zero-shot (the class prompts of a task's templates,
averaged) or learned (a CoOp / CalibPrompt prompt checkpoint). Text features are computed once, when a
head is added. A *learner head* (:meth:`Engine.add_learner`) carries a few-shot learner of
:mod:`calibprompt.training.learners` whose logits are not one product with fixed text features (CoCoOp's
per-image prompts, the adapters and linear probes on image features): its prediction calls the learner on
the image features. Image features are cached by image content, so :meth:`Engine.predict` runs the image
encoder once per new image, whatever the number of heads, and a head's prediction is a single matrix
product: ``logits = logit_scale * normalize(image) @ normalize(text).T``.

The app and the CLI both predict through this class.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from calibprompt import defaults
from calibprompt.prompting.checkpoint import LEARNER_FORMAT, checkpoint_format, load_prompt
from calibprompt.prompting.learner import PromptLearner
from calibprompt.prompting.tasks import Task

__all__ = ["Head", "Prediction", "Engine", "image_key", "learner_head", "learner_logits", "is_text_learner"]


@dataclass
class Head:
    """Class text features for one way of prompting (zero-shot templates, or a learned prompt)."""

    name: str
    classnames: list[str]
    text_features: torch.Tensor  # (K, D), L2-normalised, float32, CPU
    kind: str = "zero-shot"  # or "prompt", or "learner"
    metadata: dict[str, Any] = field(default_factory=dict)
    #: a learner head's learner: ``learner(image_features (N, D))`` gives logits (N, K) or an output with
    #: ``.logits``; None for a text head (the prediction is then one product with ``text_features``)
    learner: Any = None

    def fingerprint(self) -> str:
        """A content digest of what predicts: the text features, and a learner head's whole state too
        (two adapters may share their frozen zero-shot text features)."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(self.text_features.detach().cpu().contiguous().numpy().tobytes())
        if self.learner is not None:
            for key, value in self.learner.state_dict().items():
                digest.update(key.encode())
                digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


@dataclass
class Prediction:
    """One head's output for N images: ``logits`` and ``probs`` of shape (N, K)."""

    head: str
    classnames: list[str]
    logits: np.ndarray
    probs: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)

    def as_dicts(self) -> list[dict[str, float]]:
        """Per image, ``{class name: probability}``."""
        return [{c: float(p) for c, p in zip(self.classnames, row)} for row in self.probs]

    def top(self, i: int, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.probs[i])[:k]
        return [(self.classnames[j], float(self.probs[i, j])) for j in order]


def is_text_learner(learner: Any) -> bool:
    """Whether a prompt learner predicts through fixed class text features (CoOp, KgCoOp, ProGrad: CoOp
    contexts at inference) rather than per image (CoCoOp) or on image features (the adapters)."""
    return getattr(learner, "kind", None) == "prompt" and not hasattr(learner, "instance_text_features")


def _learner_device(learner: Any) -> torch.device:
    first = next(iter(learner.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def learner_logits(learner: Any, image_features: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """A learner's logits (N, K), float32 on the CPU, for L2-normalised image features (N, D), ``batch``
    images at a time (default: ``defaults.MAX_BATCH_PROMPTS // K``, as CoCoOp encodes K prompts per image),
    without gradients (a :class:`LearnerOutput`'s ``.logits``, or the tensor itself)."""
    if batch is None:
        batch = max(1, defaults.MAX_BATCH_PROMPTS // max(1, int(getattr(learner, "num_classes", 1))))
    device, parts = _learner_device(learner), []
    with torch.no_grad():
        for start in range(0, image_features.shape[0], max(1, int(batch))):
            out = learner(image_features[start:start + batch].to(device, torch.float32))
            parts.append(getattr(out, "logits", out).detach().float().cpu())
    return torch.cat(parts) if parts else image_features.new_zeros((0, 0))


def learner_head(name: str, learner: Any, metadata: Mapping[str, Any] | None = None,
                 classnames: Sequence[str] | None = None) -> Head:
    """A :class:`Head` for a few-shot learner (see :mod:`calibprompt.training.learners`).

    CoOp, KgCoOp and ProGrad give a plain prompt head (their class text features, exactly as
    :meth:`Engine.add_prompt`); the others (CoCoOp, the adapters, the linear probes) a ``"learner"`` head
    whose prediction calls the learner, with ``text_features`` its class text features where it has them
    (CoCoOp's bare context, the learned prototypes, the frozen zero-shot ones), else zeros (K, D).

    Raises:
        ValueError: a learner without class names (give ``classnames``).
    """
    meta = dict(metadata or {})
    names = list(classnames or getattr(learner, "classnames", None) or meta.get("classnames") or [])
    if not names:
        raise ValueError(f"The learner {getattr(learner, 'name', '?')!r} has no class names; give classnames=[...].")
    learner.eval()
    with torch.no_grad():
        text = learner.class_text_features()
    if is_text_learner(learner):
        return Head(name, names, text.float().cpu(), kind="prompt", metadata=meta)
    if text is None:
        text = torch.zeros(len(names), int(getattr(learner, "dim", 1)))
    meta.setdefault("learner", getattr(learner, "name", ""))
    return Head(name, names, text.detach().float().cpu(), kind="learner", metadata=meta, learner=learner)


def _is_prompt_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is not a learner checkpoint (an unreadable one counts as a prompt checkpoint, so
    :func:`load_prompt` says what is wrong)."""
    return checkpoint_format(path) != LEARNER_FORMAT


def image_key(image: Image.Image) -> str:
    """Content hash of an image's decoded pixels (same picture, same key, whatever the file)."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class Engine:
    """Predictions of several heads over one frozen backbone.

    Args:
        backbone: a :class:`calibprompt.backbones.loading.Backbone`.
        cache_size: how many image feature vectors to keep (least recently used are dropped).
    """

    def __init__(self, backbone, cache_size: int = 4096):
        self.backbone = backbone
        self.cache_size = int(cache_size)
        self.heads: dict[str, Head] = {}
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.RLock()
        self.images_encoded = 0  # how many images went through the image encoder
        self.encoder_calls = 0  # how many times the image encoder ran (batches)

    # -- heads ----------------------------------------------------------------------------
    def add_head(self, head: Head) -> Head:
        with self._lock:
            self.heads[head.name] = head
        return head

    def remove_head(self, name: str) -> None:
        with self._lock:
            self.heads.pop(name, None)

    def add_zero_shot(self, name: str, task: Task | Sequence[str], templates: Sequence[str] | None = None) -> Head:
        """A zero-shot head: each class's text feature is the normalised mean over the templates."""
        task = task if isinstance(task, Task) else Task.from_classnames(task, templates)
        templates = list(templates or task.templates)
        texts = [t.format(c) for c in task.classnames for t in templates]
        feats = self.backbone.encode_text(texts, normalize=True).view(task.num_classes, len(templates), -1)
        text_features = F.normalize(feats.mean(dim=1), dim=-1)
        meta = {"task": task.name, "templates": templates}
        return self.add_head(Head(name, task.classnames, text_features, kind="zero-shot", metadata=meta))

    def add_prompt(self, name: str, prompt: PromptLearner | str | os.PathLike,
                   metadata: Mapping[str, Any] | None = None) -> Head:
        """A head from a learned prompt (a :class:`PromptLearner`, or a checkpoint path)."""
        meta: dict[str, Any] = {}
        if not isinstance(prompt, PromptLearner):
            prompt, meta = load_prompt(prompt, self.backbone)
        with torch.no_grad():
            text_features = prompt.encode_text(normalize=True).float().cpu()
        meta.update(metadata or {})
        return self.add_head(Head(name, list(prompt.classnames), text_features, kind="prompt", metadata=meta))

    def add_learner(self, name: str, learner: Any, metadata: Mapping[str, Any] | None = None, *,
                    loader: Any = None, classnames: Sequence[str] | None = None) -> Head:
        """A head from a few-shot learner (:func:`learner_head`), or from its checkpoint path.

        A prompt checkpoint (``calibprompt-prompt/1``: CoOp, KgCoOp, ProGrad) loads as :meth:`add_prompt`
        does. Any other checkpoint (``calibprompt-learner/1``: CoCoOp, the adapters) needs ``loader``,
        ``loader(path, backbone) -> (learner, metadata)``: pass
        :func:`calibprompt.training.learners.load_learner` (the engine sits below the training layer).

        Raises:
            ValueError: a learner checkpoint without ``loader``, or a damaged checkpoint.
        """
        meta: dict[str, Any] = {}
        if isinstance(learner, (str, os.PathLike)):
            path = learner
            if _is_prompt_checkpoint(path):
                return self.add_prompt(name, path, metadata)
            if loader is None:
                raise ValueError(f"{os.fspath(path)} is a learner checkpoint (calibprompt-learner/1): load it with "
                                 "loader=calibprompt.training.learners.load_learner.")
            learner, meta = loader(path, self.backbone)
        meta.update(metadata or {})
        return self.add_head(learner_head(name, learner, meta, classnames))

    # -- images ---------------------------------------------------------------------------
    def clear_image_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def image_features(self, images: Iterable[Any]) -> torch.Tensor:
        """L2-normalised image features (N, D) on the CPU; only images not seen before are encoded."""
        from calibprompt.imaging import load_image

        pil = [im if isinstance(im, Image.Image) and im.mode == "RGB" else load_image(im) for im in images]
        if not pil:
            raise ValueError("No images were given.")
        keys = [image_key(im) for im in pil]
        with self._lock:
            todo = {k: im for k, im in zip(keys, pil) if k not in self._cache}
            if todo:
                feats = self.backbone.encode_image(list(todo.values()), normalize=True)
                self.encoder_calls += 1
                self.images_encoded += len(todo)
                for key, feat in zip(todo, feats):
                    self._cache[key] = feat
            for key in keys:
                self._cache.move_to_end(key)
            out = torch.stack([self._cache[k] for k in keys])
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    # -- predictions ----------------------------------------------------------------------
    def _scale_and_bias(self) -> tuple[float, float]:
        bias = getattr(self.backbone.model, "logit_bias", None)
        return self.backbone.logit_scale, (float(bias.detach().item()) if bias is not None else 0.0)

    def predict_features(self, image_features: torch.Tensor, heads: Sequence[str] | None = None) -> dict[str, Prediction]:
        """Predictions of the named heads (all by default) for precomputed image features (N, D)."""
        names = list(heads) if heads is not None else list(self.heads)
        missing = [n for n in names if n not in self.heads]
        if missing:
            raise ValueError(f"Unknown head(s) {', '.join(missing)}; available: {', '.join(self.heads) or 'none'}.")
        return self.predict_with(image_features, {name: self.heads[name] for name in names})

    def predict_with(self, image_features: torch.Tensor, heads: Mapping[str, Head]) -> dict[str, Prediction]:
        """Predictions of the given heads (not necessarily added to this engine) for image features (N, D):
        ``logits = logit_scale * normalize(image) @ text.T + logit_bias``, ``probs = softmax(logits)``."""
        scale, bias = self._scale_and_bias()
        feats = F.normalize(image_features.float(), dim=-1)
        out = {}
        for name, head in heads.items():
            if head.learner is not None:  # its own logits (scale and any bias are the learner's)
                logits = learner_logits(head.learner, feats)
                out[name] = Prediction(name, head.classnames, logits.numpy().astype(np.float64),
                                       torch.softmax(logits.double(), dim=1).numpy())
                continue
            logits = scale * feats @ head.text_features.T + bias
            out[name] = Prediction(name, head.classnames, logits.numpy().astype(np.float64),
                                   torch.softmax(logits.double(), dim=1).numpy())
        return out

    def predict(self, images: Iterable[Any], heads: Sequence[str] | None = None) -> dict[str, Prediction]:
        """Class probabilities of each head for each image; the image encoder runs once per new image."""
        return self.predict_features(self.image_features(images), heads)
