"""The :class:`Backbone` object: a frozen vision-language model with its preprocessing and tokenizer.

It wraps an open_clip model (or anything with ``encode_image`` / ``encode_text`` and a text tower
adapter, see :mod:`calibprompt.backbones.text_tower`) in eval mode with every parameter frozen, and
offers batched, normalised ``encode_image`` / ``encode_text`` plus a weights :attr:`~Backbone.fingerprint`.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from calibprompt.backbones.registry import OPENAI_MEAN, OPENAI_STD
from calibprompt.backbones.text_tower import TextTower, text_tower_for
from calibprompt.devices import resolve_device

__all__ = ["Backbone"]


class Backbone:
    """A frozen vision-language model with its preprocessing and tokenizer.

    Attributes:
        name: registry name or the path/id it was loaded from.
        family: model family (for the paper's hyperparameter defaults).
        model: the open_clip model, in eval mode with every parameter frozen.
        preprocess: PIL image -> (3, H, W) tensor, the model's own test-time transform.
        tokenizer: open_clip tokenizer (``tokenizer(texts) -> (N, context_length)`` ids).
        context_length: text context length.
        text_tower: adapter that runs the text encoder from token embeddings (prompt learning).
        pretrained: whether real weights were loaded (``False`` for random twins).
    """

    def __init__(self, name: str, model: torch.nn.Module, preprocess, tokenizer, *, family: str = "custom",
                 pretrained: bool = True, description: str = "", model_cfg: dict[str, Any] | None = None,
                 preprocess_cfg: dict[str, Any] | None = None):
        self.name = name
        self.model_cfg = model_cfg  # open_clip architecture config, when known (twins, local folders)
        self.preprocess_cfg = preprocess_cfg
        self.family = family
        self.pretrained = pretrained
        self.description = description
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.text_tower: TextTower = text_tower_for(model, tokenizer)
        self.context_length = self.text_tower.context_length

    def __repr__(self) -> str:
        return f"Backbone(name={self.name!r}, family={self.family!r}, device={self.device}, pretrained={self.pretrained})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def logit_scale(self) -> float:
        """``exp(logit_scale)``: the temperature-inverse applied to cosine similarities."""
        return float(self.model.logit_scale.detach().exp().item())

    @property
    def fingerprint(self) -> str:
        """A short hash of the name and of samples of the weights: tells caches two models apart."""
        if getattr(self, "_fingerprint", None) is None:
            import hashlib

            digest = hashlib.blake2b(self.name.encode(), digest_size=16)
            params = list(self.model.state_dict().items())
            for key, tensor in params[:3] + params[-3:]:
                digest.update(key.encode())
                digest.update(tensor.detach().flatten()[:4096].to("cpu", torch.float32).numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    @functools.cached_property
    def embed_dim(self) -> int:
        return int(self.encode_text(["a"]).shape[1])

    def to(self, device: str | torch.device | None) -> "Backbone":
        self.model.to(resolve_device(device))
        return self

    # -- images ---------------------------------------------------------------------------
    def preprocess_images(self, images: Iterable[Any]) -> torch.Tensor:
        """Stack of preprocessed images (N, 3, H, W); inputs as :func:`calibprompt.imaging.load_image` takes."""
        from calibprompt.imaging import load_image

        tensors = []
        for image in images:
            if not (isinstance(image, Image.Image) and image.mode == "RGB"):
                image = load_image(image)
            tensors.append(self.preprocess(image))
        if not tensors:
            raise ValueError("No images were given.")
        return torch.stack(tensors)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor, normalize: bool = True, batch_size: int = 64) -> torch.Tensor:
        """Image features (N, D), float32 on the CPU, of preprocessed pixels (N, 3, H, W)."""
        out = []
        for start in range(0, pixels.shape[0], batch_size):
            batch = pixels[start:start + batch_size].to(self.device, non_blocking=True)
            feats = self.model.encode_image(batch).float()
            out.append(F.normalize(feats, dim=-1) if normalize else feats)
        return torch.cat(out).cpu()

    def encode_image(self, images: Sequence[Any] | Any, normalize: bool = True, batch_size: int = 64) -> torch.Tensor:
        """Image features (N, D), float32 on the CPU. ``images``: PIL images (or paths, bytes, arrays)."""
        if isinstance(images, (Image.Image, str, Path, bytes)):
            images = [images]
        return self.encode_pixels(self.preprocess_images(images), normalize=normalize, batch_size=batch_size)

    # -- text -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str] | str, normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Text features (N, D), float32 on the CPU, for a list of strings.

        The padded tail of the token sequences is cut before the transformer; this is exact
        (see :mod:`calibprompt.backbones.text_tower`) and several times faster for 256-token BERT towers.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("No texts were given.")
        out = []
        for start in range(0, len(texts), batch_size):
            ids = self.text_tower.tokenize(texts[start:start + batch_size])
            feats = self.text_tower.encode_ids(ids, trim=True).float()
            out.append(F.normalize(feats, dim=-1) if normalize else feats)
        return torch.cat(out).cpu()


def _make_transform(image_size: int, preprocess: dict[str, Any]):
    """open_clip's test-time transform for ``image_size`` with a spec's mean/std/interpolation/resize mode."""
    import open_clip

    return open_clip.image_transform(
        image_size,
        is_train=False,
        mean=preprocess.get("mean", OPENAI_MEAN),
        std=preprocess.get("std", OPENAI_STD),
        interpolation=preprocess.get("interpolation", "bicubic"),
        resize_mode=preprocess.get("resize_mode", "shortest"),
    )
