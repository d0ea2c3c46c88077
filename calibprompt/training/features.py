"""Image features computed once and kept on disk.

The encoders are frozen, so an image's features never change for a given backbone. For training
images the cache holds a fixed number of augmented views (the paper's random resized crop, scale
0.08-1, and horizontal flip, then the model's own normalisation), each view seeded by the image's
content hash and its index, so view ``v`` of an image is the same picture on every run and machine;
for test images it holds the plain preprocessed view. Prompt-tuning steps then run only the text
side, and every method and seed reuses the same features.

:class:`FreshViews` is the slow alternative the ``authors-code`` protocol uses: no cache, every
training step augments and encodes its batch's images anew, as a data loader does.

Layout: ``<features_dir>/<backbone key>/<hash[:2]>/<hash>.safetensors`` with tensors ``plain``
(D,) and ``aug`` (V, D), where the backbone key names the backbone, a fingerprint of its weights, a
hash of its kinds of modules (so a change of activation is a new key) and the augmentation recipe,
and ``hash`` is the SHA-256 of the image file's bytes. Files are written atomically; a damaged file
is recomputed.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from calibprompt.data import load_image
from calibprompt.devices import autocast
from calibprompt.fileio import atomic_write, file_sha256
from calibprompt.paths import features_dir
from calibprompt.training.protocols import PRECISIONS

logger = logging.getLogger(__name__)

__all__ = ["FeatureCache", "FreshViews", "encode_pixels", "train_transform", "file_hash", "AUGMENTATION"]

AUGMENTATION = {"crop_scale": (0.08, 1.0), "flip": True, "version": 1}


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (the cache key of an image): :func:`calibprompt.fileio.file_sha256`."""
    return file_sha256(path)


def train_transform(preprocess) -> T.Compose:
    """The paper's training augmentation built around a backbone's own test-time ``preprocess``: its
    resize and centre crop are replaced by a random resized crop (scale 0.08-1, bicubic) to the same
    size and a horizontal flip; the steps before them (e.g. MedCLIP's grayscale and square padding)
    and after them (tensor conversion, the model's normalisation) are kept."""
    steps = list(getattr(preprocess, "transforms", [preprocess]))
    crop_at = next((i for i, t in enumerate(steps) if isinstance(t, T.CenterCrop)), None)
    if crop_at is None or not any(isinstance(t, T.Normalize) for t in steps):
        raise ValueError("Cannot derive a training augmentation: the backbone's preprocessing lacks CenterCrop/Normalize.")
    resize_at = next((i for i, t in enumerate(steps[:crop_at]) if isinstance(t, T.Resize)), crop_at)
    crop = steps[crop_at]
    size = crop.size if isinstance(crop.size, (tuple, list)) else (crop.size, crop.size)
    augment = [T.RandomResizedCrop(tuple(size), scale=AUGMENTATION["crop_scale"], interpolation=T.InterpolationMode.BICUBIC),
               T.RandomHorizontalFlip()]
    return T.Compose(steps[:resize_at] + augment + steps[crop_at + 1:])


def _view_seed(key: str, view: int) -> int:
    return int(hashlib.blake2b(f"{key}:{view}".encode(), digest_size=8).hexdigest(), 16) & 0x7FFF_FFFF_FFFF_FFFF


def _crop_params(step: T.RandomResizedCrop, image, generator: torch.Generator) -> tuple[int, int, int, int]:
    """:meth:`torchvision.transforms.RandomResizedCrop.get_params`, drawing from ``generator``: the same
    draws in the same order, so a generator seeded with ``s`` gives the crop ``torch.manual_seed(s)`` gave."""
    _, height, width = TF.get_dimensions(image)
    area = height * width
    scale, ratio = step.scale, step.ratio
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)  # fallback: central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _SeededAugment:
    """The steps of a :func:`train_transform`, run with a private ``torch.Generator`` per view: the global
    torch RNG is neither read nor reseeded (so calls from several threads cannot disturb each other or
    their callers), and view ``v`` is the same picture the global-RNG recipe gave for the same seed."""

    def __init__(self, compose: T.Compose):
        self.steps = list(compose.transforms)

    def __call__(self, image, seed: int):
        generator = torch.Generator().manual_seed(int(seed))
        for step in self.steps:
            if isinstance(step, T.RandomResizedCrop):
                i, j, h, w = _crop_params(step, image, generator)
                image = TF.resized_crop(image, i, j, h, w, step.size, step.interpolation, antialias=step.antialias)
            elif isinstance(step, T.RandomHorizontalFlip):
                if torch.rand(1, generator=generator) < step.p:
                    image = TF.hflip(image)
            else:
                image = step(image)
        return image


def _architecture_tag(backbone) -> str:
    """A short hash of the kinds of modules in the model: the same weights built with another activation
    (QuiltNet with GELU before QuickGELU was forced, say) get features of their own."""
    kinds = sorted({type(m).__qualname__ for m in backbone.model.modules()})
    return hashlib.blake2b("|".join(kinds).encode(), digest_size=4).hexdigest()


class _Pictures(torch.utils.data.Dataset):
    """Item ``i``: the preprocessed pixels of image ``i`` of a feature pass, (len(views), 3, H, W) for
    its seeded augmented ``views`` or (1, 3, H, W) for its plain view (``views`` None). Decoding and
    augmentation happen here, so a DataLoader's workers can do them while the encoder runs."""

    def __init__(self, items: Sequence[tuple[str, str, Sequence[int] | None]], preprocess, augment: _SeededAugment):
        self.items = list(items)
        self.preprocess = preprocess
        self.augment = augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        key, path, views = self.items[index]
        image = load_image(path)
        if views is None:
            return self.preprocess(image).unsqueeze(0)
        return torch.stack([self.augment(image, _view_seed(key, v)) for v in views])


def encode_pixels(backbone, pixels: torch.Tensor, precision: str = "fp32", batch_size: int = 64) -> torch.Tensor:
    """L2-normalised image features (N, D), float32 on the CPU, of preprocessed pixels (N, 3, H, W):
    the image encoder under ``torch.inference_mode`` and the ``precision``'s autocast. What every
    feature pass (this cache's, a Ray Data actor's) runs."""
    with torch.inference_mode(), autocast(backbone.device, precision):
        feats = backbone.encode_pixels(pixels, normalize=True, batch_size=batch_size)
    return feats.float().clone()  # a normal tensor again (inference tensors cannot enter autograd)


def _default_workers(device: torch.device, n_items: int) -> int:
    """Decoding workers for a feature pass: none on a CPU (the encoder needs every core, and decoding a
    view costs ~1/50 of encoding it), up to 8 on an accelerator for passes of more than 64 images
    (the encoder is then faster than one core decodes)."""
    if device.type == "cpu" or n_items <= 64:
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class FeatureCache:
    """Image features of one backbone, cached on disk (see the module docstring).

    Args:
        backbone: a :class:`calibprompt.backbones.loading.Backbone`.
        root: cache folder (default ``$CALIBPROMPT_HOME/features``).
        batch_size: views per image-encoder call (default 64 on a CPU, 256 on an accelerator).
        precision: ``"fp32"`` (default), or ``"bf16"`` / ``"fp16"`` to run the image encoder under
            ``torch.autocast`` (faster on GPUs and on CPUs with bf16 units; the features move by about
            1e-2 in cosine terms, see the README's benchmarks). Each precision has its own cache folder.
        num_workers: DataLoader worker processes that decode and augment images while the encoder runs
            (``None``: :func:`_default_workers`). Workers are spawned, never forked, so a server's threads
            are safe.

    Encoding runs under ``torch.inference_mode``. ``encoded`` counts the images (or views) that went
    through the image encoder, ``hits`` those served from disk, so callers and tests can see that a
    second run computes nothing.
    """

    def __init__(self, backbone, root: str | os.PathLike | None = None, batch_size: int | None = None,
                 precision: str = "fp32", num_workers: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
        self.backbone = backbone
        self.batch_size = int(batch_size or (64 if backbone.device.type == "cpu" else 256))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.precision = precision
        self.num_workers = num_workers
        safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", backbone.name).strip("_")[:60] or "backbone"
        key = f"{safe_name}-{backbone.fingerprint[:12]}-{_architecture_tag(backbone)}-aug{AUGMENTATION['version']}"
        if precision != "fp32":
            key += f"-{precision}"
        self.folder = Path(root or features_dir()) / key
        self._augment = _SeededAugment(train_transform(backbone.preprocess))
        self.encoded = 0
        self.hits = 0

    def _file(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def _read(self, key: str) -> dict[str, torch.Tensor]:
        path = self._file(key)
        if not path.is_file():
            return {}
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            logger.warning("Recomputing the damaged feature file %s (%s)", path, exc)
            return {}

    def _write(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        data = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
        atomic_write(self._file(key), lambda tmp: save_file(data, tmp))

    def _pictures(self, items: list[tuple[str, str, Sequence[int] | None]]):
        """The pixels of each item, in order: decoded in worker processes when there are any."""
        dataset = _Pictures(items, self.backbone.preprocess, self._augment)
        workers = _default_workers(self.backbone.device, len(items)) if self.num_workers is None else self.num_workers
        if workers > 0:
            try:
                pickle.dumps(dataset)
            except Exception as exc:  # a preprocessing step that cannot travel to a worker: decode here
                logger.info("Decoding images in the main process (%s cannot be sent to workers: %s).",
                            type(self.backbone.preprocess).__name__, exc)
                workers = 0
        if workers == 0:
            return (dataset[i] for i in range(len(dataset)))
        return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=int(workers),
                                                multiprocessing_context="spawn", prefetch_factor=4))

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_pixels(self.backbone, pixels, self.precision, self.batch_size)

    def _run(self, items: list[tuple[str, str, Sequence[int] | None]], done: Callable[[int, torch.Tensor], None],
             progress: Callable[[int, int], None] | None) -> None:
        """Encode every item's views in batches of about ``batch_size`` views; ``done(i, feats)`` gets
        item ``i``'s features (V, D) as soon as its batch is encoded."""
        pending: list[tuple[int, torch.Tensor]] = []
        count, finished = 0, 0

        def flush() -> None:
            nonlocal count, finished
            feats = self._encode(torch.cat([pixels for _, pixels in pending]))
            self.encoded += feats.shape[0]
            offset = 0
            for index, pixels in pending:
                done(index, feats[offset:offset + pixels.shape[0]])
                offset += pixels.shape[0]
            finished += len(pending)
            pending.clear()
            count = 0
            if progress:
                progress(finished, len(items))

        for index, pixels in enumerate(self._pictures(items)):
            pending.append((index, pixels))
            count += pixels.shape[0]
            if count >= self.batch_size:
                flush()
        if pending:
            flush()

    def has_plain(self, key: str) -> bool:
        """Whether the plain features of the image whose SHA-256 is ``key`` are cached (reads only the
        file's header; a damaged file counts as missing)."""
        path = self._file(key)
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as handle:
                return "plain" in handle.keys()
        except (SafetensorError, OSError, ValueError):
            return False

    def put_plain(self, key: str, feature: torch.Tensor) -> None:
        """Store the plain features (D,) computed elsewhere for the image whose SHA-256 is ``key``
        (atomically; the image's cached views are kept)."""
        if not re.fullmatch(r"[0-9a-f]{64}", str(key)):
            raise ValueError(f"A feature key is the SHA-256 hex digest of the image file, got {key!r}.")
        feature = torch.tensor(np.asarray(feature), dtype=torch.float32).reshape(-1)  # a copy
        stored = self._read(key)
        stored["plain"] = feature
        self._write(key, stored)

    def plain(self, paths: Sequence[str | os.PathLike], progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Features (N, D) of the plain preprocessed images (test-time view)."""
        keys = [file_hash(p) for p in paths]
        stored = {k: self._read(k) for k in dict.fromkeys(keys)}
        todo = [(k, str(p), None) for k, p in dict(zip(keys, paths)).items() if "plain" not in stored[k]]
        self.hits += len(keys) - len(todo)

        def done(index: int, feats: torch.Tensor) -> None:
            key = todo[index][0]
            stored[key]["plain"] = feats[0]
            self._write(key, stored[key])

        self._run(todo, done, progress)
        return torch.stack([stored[k]["plain"] for k in keys])

    def augmented(self, paths: Sequence[str | os.PathLike], n_views: int,
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Features (N, n_views, D) of ``n_views`` seeded augmented views of each image."""
        if n_views < 1:
            raise ValueError(f"n_views must be at least 1, got {n_views}.")
        keys = [file_hash(p) for p in paths]
        stored = {k: self._read(k) for k in dict.fromkeys(keys)}
        have = {k: (stored[k]["aug"].shape[0] if "aug" in stored[k] else 0) for k in stored}
        todo = [(k, str(p), list(range(have[k], n_views))) for k, p in dict(zip(keys, paths)).items()
                if have[k] < n_views]
        self.hits += sum(min(have[k], n_views) for k in keys)

        def done(index: int, feats: torch.Tensor) -> None:
            key = todo[index][0]
            old = stored[key].get("aug")
            stored[key]["aug"] = feats if old is None else torch.cat([old, feats])
            self._write(key, stored[key])

        self._run(todo, done, progress)
        return torch.stack([stored[k]["aug"][:n_views] for k in keys])


class FreshViews:
    """Training-image features augmented anew at every step (the ``authors-code`` protocol's
    ``fresh_augmentation``): ``views(step, indices)`` decodes images ``indices`` (0-based positions in
    ``paths``), draws a new random resized crop and flip for each from a generator seeded by
    ``(seed, step, image content hash)``, and encodes them through the frozen image encoder under
    ``no_grad``; it returns L2-normalised features (len(indices), D), float32 on the CPU.

    The trainer calls it with each step's batch (``indices=None``: every image), so over an epoch each
    image is augmented once, as Dassl's data loader does in the authors' code. Given the seed, the
    views are the same on every run and do not depend on how images are grouped into batches. Decoded
    images are kept in memory (decoding is deterministic, so this changes no result); nothing is
    written to disk. ``encoded`` counts the views that went through the image encoder.

    Args:
        backbone: a :class:`calibprompt.backbones.loading.Backbone`.
        paths: the training images, in label order.
        seed: the run's seed.
        batch_size: images per image-encoder call.
    """

    def __init__(self, backbone, paths: Sequence[str | os.PathLike], seed: int = 0, batch_size: int = 64):
        self.backbone = backbone
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("No training images.")
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self._augment = _SeededAugment(train_transform(backbone.preprocess))
        self._keys: list[str | None] = [None] * len(self.paths)
        self._images: dict[int, object] = {}
        self.encoded = 0

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, index: int):
        if index not in self._images:
            self._keys[index] = file_hash(self.paths[index])
            self._images[index] = load_image(self.paths[index])
        return self._images[index]

    def view_seed(self, step: int, index: int) -> int:
        """The seed of image ``index``'s view at ``step``."""
        self._image(index)
        return _view_seed(f"{self._keys[index]}:fresh:{self.seed}", int(step))

    @torch.no_grad()
    def __call__(self, step: int, indices: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        if indices is None:
            indices = range(len(self.paths))
        elif isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().tolist()
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("No image indices were given.")
        pixels = torch.stack([self._augment(self._image(i), self.view_seed(step, i)) for i in indices])
        feats = self.backbone.encode_pixels(pixels, normalize=True, batch_size=self.batch_size)
        self.encoded += len(indices)
        return feats
