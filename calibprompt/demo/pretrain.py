"""Pretraining the demo Med-VLM: a tiny CLIP learned contrastively on the synthetic histology world.

``calibprompt demo-build`` runs :func:`pretrain_demo_backbone`: it renders a pool of patches from
the world at shift 0 (the "pretraining domain"), then trains an open_clip ``CLIP`` (a small ViT on
64 px images, a small causal text transformer with a WordPiece tokenizer built from the captions'
vocabulary) with the symmetric contrastive loss on (image, caption) pairs, where each caption names
the class and some of the image's own drawing parameters. The learnable logit scale gets its own,
larger learning rate so it can grow into the tens, as in a real CLIP. Everything is seeded, so the
same command on the same machine writes the same model. The result is written in open_clip's
``local-dir`` layout (plus the tokenizer files) and loads with ``load_backbone("demo")``.
"""
from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from calibprompt.fileio import atomic_write, atomic_write_json, atomic_write_text
from calibprompt.demo import world
from calibprompt.demo.captions import make_caption, vocabulary

logger = logging.getLogger(__name__)

__all__ = ["PretrainConfig", "pretrain_demo_backbone", "DEMO_DIR", "build_vocab", "demo_model_cfg"]

DEMO_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo-backbone"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class PretrainConfig:
    seed: int = 0
    image_size: int = 64
    pool_per_class: int = 2000
    steps: int = 900
    batch_size: int = 128
    lr: float = 1e-3
    scale_lr: float = 2e-2
    weight_decay: float = 0.1
    warmup_steps: int = 40
    crop_scale: tuple[float, float] = (0.35, 1.0)
    embed_dim: int = 128
    vision_width: int = 128
    vision_layers: int = 4
    patch_size: int = 8
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    context_length: int = 40
    workers: int = 2


def build_vocab() -> list[str]:
    """WordPiece vocabulary: special tokens, single characters and ``##`` pieces (so any text
    tokenizes), then every word of the captions."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    punct = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    vocab = SPECIAL_TOKENS + punct + chars + ["##" + c for c in chars]
    seen = set(vocab)
    for word in vocabulary():
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    return vocab


def demo_model_cfg(config: PretrainConfig, vocab_size: int) -> dict[str, Any]:
    return {
        "embed_dim": config.embed_dim,
        "vision_cfg": {"image_size": config.image_size, "patch_size": config.patch_size,
                       "width": config.vision_width, "layers": config.vision_layers},
        "text_cfg": {"context_length": config.context_length, "vocab_size": vocab_size, "width": config.text_width,
                     "heads": config.text_heads, "layers": config.text_layers, "hf_tokenizer_name": "demo",
                     "pad_id": 0, "eos_id": SPECIAL_TOKENS.index("[SEP]"), "pool_type": "eos"},
    }


def _write_tokenizer(folder: Path, vocab: list[str], context_length: int) -> None:
    atomic_write_text(folder / "vocab.txt", "\n".join(vocab) + "\n")
    atomic_write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": context_length,
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
    })


def _render_chunk(args: tuple[str, int, int, int, int]) -> tuple[np.ndarray, list[dict]]:
    from threadpoolctl import threadpool_limits

    cls, start, stop, seed, size = args
    images, attrs = [], []
    with threadpool_limits(1):  # one BLAS thread per worker: the workers share the cores
        for index in range(start, stop):
            image, attr = world.generate_patch(cls, index, seed, shift=0.0, size=size)
            images.append(image)
            attrs.append(attr)
    return np.stack(images), attrs


def render_pool(config: PretrainConfig) -> tuple[np.ndarray, list[dict]]:
    """The pretraining images (N, H, W, 3) uint8 and their attributes, rendered in parallel."""
    chunk = 250
    jobs = [(cls, s, min(s + chunk, config.pool_per_class), config.seed, config.image_size)
            for cls in world.CLASS_IDS for s in range(0, config.pool_per_class, chunk)]
    if config.workers > 1:
        with mp.get_context("spawn").Pool(config.workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    images = np.concatenate([p[0] for p in parts])
    attrs = [a for p in parts for a in p[1]]
    return images, attrs


def _augment(batch: torch.Tensor, gen: torch.Generator, crop_scale: tuple[float, float]) -> torch.Tensor:
    """Random resized crops (square, area fraction in ``crop_scale``), flips and 90-degree rotations."""
    b = batch.shape[0]
    area = torch.empty(b).uniform_(*crop_scale, generator=gen)
    side = area.sqrt()
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - side)
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - side)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = side * flip
    theta[:, 1, 1] = side
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    k = int(torch.randint(4, (1,), generator=gen))
    return torch.rot90(out, k, dims=(2, 3))


def _to_input(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _optimizer(model: torch.nn.Module, config: "PretrainConfig") -> torch.optim.AdamW:
    """AdamW as CLIP pretrains: weight decay on the matrices only (not on embeddings, gains and biases), and
    the logit scale with its own learning rate; each group keeps its ``base_lr`` for the schedule."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if name == "logit_scale":
            continue
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return torch.optim.AdamW([
        {"params": decay, "weight_decay": config.weight_decay, "base_lr": config.lr},
        {"params": no_decay, "weight_decay": 0.0, "base_lr": config.lr},
        {"params": [model.logit_scale], "weight_decay": 0.0, "base_lr": config.scale_lr},
    ], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def pretrain_demo_backbone(out_dir: str | os.PathLike = DEMO_DIR, config: PretrainConfig | None = None,
                           on_step: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Render the pool, pretrain, and write the model to ``out_dir``; returns a summary."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import HFTokenizer
    from safetensors.torch import save_file

    config = config or PretrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)

    vocab = build_vocab()
    _write_tokenizer(out_dir, vocab, config.context_length)
    tokenizer = HFTokenizer(str(out_dir), context_length=config.context_length)
    cfg = demo_model_cfg(config, len(vocab))
    model = CLIP(**cfg)

    images, attrs = render_pool(config)
    render_seconds = time.perf_counter() - t_start
    logger.info("Rendered %d pretraining patches in %.1f s", len(images), render_seconds)

    optimizer = _optimizer(model, config)
    max_log_scale = math.log(100.0)
    history = []
    model.train()
    t_train = time.perf_counter()
    for step in range(config.steps):
        warm = min(1.0, (step + 1) / config.warmup_steps)
        decay_factor = 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * warm * decay_factor
        idx = rng.choice(len(images), config.batch_size, replace=False)
        x = _augment(_to_input(images[idx]), gen, config.crop_scale)
        ids = tokenizer([make_caption(attrs[i], rng) for i in idx])
        image_f = F.normalize(model.encode_image(x), dim=-1)
        text_f = F.normalize(model.encode_text(ids), dim=-1)
        logits = model.logit_scale.exp() * image_f @ text_f.T
        target = torch.arange(len(idx))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_log_scale)
        record = {"step": step + 1, "loss": float(loss.detach()), "logit_scale": float(model.logit_scale.detach().exp()),
                  "seconds": time.perf_counter() - t_train}
        history.append(record)
        if on_step is not None:
            on_step(record)
        if (step + 1) % 50 == 0:
            logger.info("step %d/%d loss %.3f scale %.1f (%.0f s)", step + 1, config.steps, record["loss"],
                        record["logit_scale"], record["seconds"])
    model.eval()

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out_dir / "open_clip_model.safetensors", lambda tmp: save_file(state, tmp))
    summary = {
        "seed": config.seed, "config": asdict(config), "render_seconds": render_seconds,
        "train_seconds": time.perf_counter() - t_train, "final_loss": float(np.mean([h["loss"] for h in history[-20:]])),
        "logit_scale": history[-1]["logit_scale"], "pool_images": len(images),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    atomic_write_json(out_dir / "open_clip_config.json", {
        "model_cfg": cfg,
        "preprocess_cfg": {"size": config.image_size, "mean": list(MEAN), "std": list(STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
        "calibprompt_family": "demo",
        "calibprompt_pretraining": summary,
    })
    atomic_write_json(out_dir / "pretraining_history.json", history[:: max(1, len(history) // 200)])
    return summary
