"""Image features of a large folder through Ray Data, written into the project's feature cache.

``read_binary_files`` reads the image files on the workers (the folder must be readable at the same
path by every worker: a shared filesystem or an object-store path), ``map_batches`` runs them through
an actor pool in which each actor loads the model once (by name: models never travel) and decodes
every image with :func:`calibprompt.imaging.load_image` (DICOM windowed as everywhere else), and the
driver writes each returned feature into the local :class:`~calibprompt.training.features.FeatureCache`
under the image's content hash, so later evaluations on this machine reuse it. Images already in the
cache are skipped. Without Ray the same cache is filled in this process (:func:`extract_features`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from calibprompt.cluster.connect import require_ray

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "list_images", "extract_features", "FeatureExtraction"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file below ``folder`` (by suffix, hidden files skipped), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of images.")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


@dataclass
class FeatureExtraction:
    """What :func:`extract_features` did."""

    images: int  # distinct images found
    cached_before: int  # already in the cache
    encoded: int  # computed now
    seconds: float
    cache_folder: str
    engine: str  # "local" or "ray"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Encoder:
    """Ray Data actor: the model loaded once; each batch of file bytes -> content hashes and features."""

    def __init__(self, model: str, device: str, precision: str, setup: Sequence[Callable[[], Any]] = ()):
        import torch

        from calibprompt.backbones import load_backbone

        for fn in setup:
            fn()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.backbone = load_backbone(model, device=device)
        self.precision = precision

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from calibprompt.imaging import load_image
        from calibprompt.training.features import encode_pixels

        blobs = [bytes(b) for b in batch["bytes"]]
        pixels = torch.stack([self.backbone.preprocess(load_image(blob)) for blob in blobs])
        feats = encode_pixels(self.backbone, pixels, self.precision, batch_size=len(blobs))
        return {"key": np.array([hashlib.sha256(b).hexdigest() for b in blobs]),
                "features": feats.numpy(),
                "fingerprint": np.array([self.backbone.fingerprint] * len(blobs))}


def extract_features(images: Sequence[str | os.PathLike], model: str, *, use_ray: bool = False, device: str = "auto",
                     precision: str = "fp32", batch_size: int = 64, actors: int | None = None,
                     cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
                     setup: Sequence[Callable[[], Any]] = (), env_vars: dict[str, str] | None = None,
                     cache_root: str | os.PathLike | None = None,
                     progress: Callable[[int, int], None] | None = None) -> FeatureExtraction:
    """Fill the feature cache of ``model`` with the plain features of ``images``.

    Args:
        images: image files (:func:`list_images` of a folder, say).
        model: a backbone name (each Ray actor loads it itself).
        use_ray: through Ray Data on the connected cluster (:func:`~calibprompt.cluster.connect.connect`
            first); otherwise in this process.
        device: where this process (and, with ``"auto"``, each actor) runs the model.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (the cache keeps each apart).
        batch_size: images per encoder call.
        actors: Ray actors (default: the cluster's CPUs, or GPUs with ``gpus_per_actor``, divided by
            what an actor asks for, keeping one CPU for the readers).
        cpus_per_actor, gpus_per_actor: what each actor asks Ray for.
        setup: functions each actor calls first (e.g. ``calibprompt.demo.register``).
        env_vars: environment of the actors' processes (Ray's ``runtime_env``).
        cache_root: the feature cache folder (default ``$CALIBPROMPT_HOME/features``).
        progress: ``progress(done, total)`` as images are stored.
    """
    from calibprompt.backbones import load_backbone
    from calibprompt.training.features import FeatureCache, file_hash

    start = time.perf_counter()
    paths = [str(p) for p in images]
    if not paths:
        raise ValueError("No images to encode (supported: " + ", ".join(IMAGE_SUFFIXES) + ").")
    backbone = load_backbone(model, device="cpu" if use_ray else device)  # with Ray: only the cache key is used
    cache = FeatureCache(backbone, root=cache_root, precision=precision, batch_size=batch_size)
    distinct = dict(zip((file_hash(p) for p in paths), paths))  # content hash -> path, each image once
    todo = [(key, path) for key, path in distinct.items() if not cache.has_plain(key)]
    if todo and not use_ray:
        cache.plain([p for _, p in todo], progress=progress)
    elif todo:
        _extract_on_ray(cache, todo, model, device, precision, batch_size, actors, cpus_per_actor, gpus_per_actor,
                        setup, env_vars or {}, progress)
    return FeatureExtraction(images=len(distinct), cached_before=len(distinct) - len(todo), encoded=len(todo),
                             seconds=time.perf_counter() - start, cache_folder=str(cache.folder),
                             engine="ray" if use_ray else "local")


def _extract_on_ray(cache, todo, model, device, precision, batch_size, actors, cpus_per_actor, gpus_per_actor,
                    setup, env_vars, progress) -> None:
    ray = require_ray()
    if not ray.is_initialized():
        raise RuntimeError("Not connected to Ray: call calibprompt.cluster.connect.connect(address) first.")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # progress is reported through ``progress``
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if actors is None:
        resources = ray.cluster_resources()
        if gpus_per_actor > 0:
            actors = max(1, int(resources.get("GPU", 0) // gpus_per_actor))
        else:
            actors = max(1, int((resources.get("CPU", 1) - 1) // max(cpus_per_actor, 1e-9)))
    wanted = {key for key, _ in todo}
    dataset = ray.data.read_binary_files([path for _, path in todo], include_paths=True)
    dataset = dataset.map_batches(
        _Encoder, fn_constructor_kwargs={"model": model, "device": "cuda" if gpus_per_actor > 0 else device,
                                         "precision": precision, "setup": tuple(setup)},
        batch_size=int(batch_size), batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=int(actors)),
        num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None,
        runtime_env={"env_vars": dict(env_vars)} if env_vars else None)
    stored = 0
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for key, feature, fingerprint in zip(batch["key"], batch["features"], batch["fingerprint"]):
            if fingerprint != cache.backbone.fingerprint:
                raise RuntimeError(f"A Ray worker loaded different weights for {model!r} than this machine "
                                   "(fingerprints differ); install the same model files on every node.")
            key = str(key)
            if key in wanted:
                cache.put_plain(key, feature)
                wanted.discard(key)
                stored += 1
        if progress is not None:
            progress(stored, len(todo))
    if wanted:
        raise RuntimeError(f"{len(wanted)} images came back without features from the Ray workers.")
