"""Backbones: the frozen medical vision-language models that prompts are learned for.

A registry (a plain dict, :data:`BACKBONES`) maps short names to :class:`BackboneSpec` entries;
:func:`list_backbones` lists them and :func:`load_backbone` turns a name, a ``hf-hub:`` id, an
open_clip ``local-dir:`` folder or a checkpoint file into a :class:`Backbone`: the open_clip model
(eval mode, frozen) with its preprocessing, its tokenizer and ``encode_image`` / ``encode_text``.

Hub models download on first use (users have internet). When the Hub cannot be reached and the
files are not in the local Hugging Face cache, loading fails at once with a
:class:`BackboneUnavailableError` that says what to do, instead of after huggingface_hub's retries.

Every registered architecture can also be built as a *twin*: the same classes and sizes with random
weights and no download (``load_backbone(name, pretrained=False)``), which is how the tests and
benchmarks exercise real architectures offline. ``tiny-random`` and ``tiny-random-hf`` are tiny
twins (a native open_clip CLIP, and a CustomTextCLIP with a Hugging Face BERT text tower).
"""
from __future__ import annotations

import contextlib
import functools
import copy
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .devices import resolve_device
from .text_tower import TextTower, text_tower_for

logger = logging.getLogger(__name__)

__all__ = [
    "BackboneSpec",
    "Backbone",
    "BackboneUnavailableError",
    "BACKBONES",
    "list_backbones",
    "get_backbone_spec",
    "load_backbone",
    "save_backbone",
]

ASSETS_DIR = Path(__file__).parent / "assets"
TWIN_TEXT_DIRS = {"bert-tiny": ASSETS_DIR / "twins" / "bert-tiny", "bert-base": ASSETS_DIR / "twins" / "bert-base"}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HUB_PROBE_TIMEOUT_S = 3.0


class BackboneUnavailableError(RuntimeError):
    """A backbone's weights cannot be obtained here (offline and not cached)."""


@dataclass(frozen=True)
class HubFiles:
    """Files of one Hub repository that a backbone needs; each entry lists alternatives."""

    repo: str
    files: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    Attributes:
        name: registry key, e.g. ``"biomedclip"``.
        family: model family used to look up the paper's per-dataset hyperparameters
            (``"biomedclip"``, ``"quiltnet"``, ``"clip"``, ``"tiny"``, ...).
        model_id: what open_clip is asked for (``"hf-hub:org/repo"`` or a built-in config name);
            ``None`` for twins that exist only with random weights.
        pretrained_tag: open_clip pretrained tag for built-in config names (``"openai"``).
        context_length: text context length of the tokenizer.
        model_cfg: the architecture (open_clip ``model_cfg``) used to build a random twin; an
            ``hf_model_name`` in its text config names a directory of :data:`TWIN_TEXT_DIRS`.
        preprocess: mean/std/interpolation/resize_mode of the image preprocessing.
        hub_files: Hub files needed to load the real weights (checked in the local cache first).
        seed: initialisation seed of random twins.
    """

    name: str
    family: str
    description: str
    model_id: str | None = None
    pretrained_tag: str | None = None
    context_length: int = 77
    model_cfg: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)
    hub_files: tuple[HubFiles, ...] = ()
    force_quick_gelu: bool = False
    licence: str = ""
    size: str = ""
    suits: tuple[str, ...] = ()
    seed: int = 0
    local_dir: str | None = None  # a bundled model folder (open_clip local-dir layout)
    builder: str = "open_clip"  # how the weights become a model: "open_clip", "plip" or "medclip"

    @property
    def is_twin_only(self) -> bool:
        return self.model_id is None and self.local_dir is None


def _vit_cfg(embed_dim: int, image_size: int, patch: int, width: int, layers: int, text_width: int,
             text_layers: int, text_heads: int, context_length: int = 77, vocab_size: int = 49408,
             quick_gelu: bool = False) -> dict[str, Any]:
    cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "patch_size": patch},
        "text_cfg": {"context_length": context_length, "vocab_size": vocab_size, "width": text_width,
                     "heads": text_heads, "layers": text_layers},
    }
    if quick_gelu:
        cfg["quick_gelu"] = True
    return cfg


_OPENAI_PREPROCESS = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"}
_BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
_BIOMEDBERT_REPO = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"


def _clip_files(repo: str) -> HubFiles:
    return HubFiles(repo, (("open_clip_config.json",), CLIP_WEIGHT_FILES))


BACKBONES: dict[str, BackboneSpec] = {
    "biomedclip": BackboneSpec(
        name="biomedclip",
        family="biomedclip",
        description="BiomedCLIP (ViT-B/16 + PubMedBERT), trained on 15M PubMed Central figure-caption pairs.",
        model_id=f"hf-hub:{_BIOMEDCLIP_REPO}",
        context_length=256,
        model_cfg={
            "embed_dim": 512,
            "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": 224},
            "text_cfg": {"hf_model_name": "bert-base", "hf_tokenizer_name": "bert-base",
                         "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                         "context_length": 256},
        },
        preprocess={"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"},
        hub_files=(_clip_files(_BIOMEDCLIP_REPO),
                   HubFiles(_BIOMEDBERT_REPO, (("config.json",), ("vocab.txt",)))),
        licence="MIT",
        size="196M params",
        suits=("covid", "rsna18"),
    ),
    "quiltnet-b16": BackboneSpec(
        name="quiltnet-b16",
        family="quiltnet",
        description="QuiltNet ViT-B/16: CLIP fine-tuned on Quilt-1M histopathology video frames.",
        model_id="hf-hub:wisdomik/QuiltNet-B-16",
        model_cfg=_vit_cfg(512, 224, 16, 768, 12, 512, 12, 8),
        preprocess=_OPENAI_PREPROCESS,
        hub_files=(_clip_files("wisdomik/QuiltNet-B-16"),),
        licence="MIT (research use)",
        size="150M params",
        suits=("kather", "pannuke", "digestpath"),
    ),
    "quiltnet-b32": BackboneSpec(
        name="quiltnet-b32",
        family="quiltnet",
        description="QuiltNet ViT-B/32: CLIP fine-tuned on Quilt-1M histopathology video frames (the paper's).",
        model_id="hf-hub:wisdomik/QuiltNet-B-32",
        model_cfg=_vit_cfg(512, 224, 32, 768, 12, 512, 12, 8),
        preprocess=_OPENAI_PREPROCESS,
        hub_files=(_clip_files("wisdomik/QuiltNet-B-32"),),
        licence="MIT (research use)",
        size="151M params",
        suits=("kather", "pannuke", "digestpath"),
    ),
    "plip": BackboneSpec(
        name="plip",
        family="plip",
        description="PLIP (ViT-B/32 CLIP fine-tuned on 208k pathology image-text pairs from Twitter), converted to open_clip.",
        model_id="vinid/plip (transformers CLIPModel)",
        hub_files=(HubFiles("vinid/plip", (("config.json",), ("model.safetensors", "pytorch_model.bin"))),),
        licence="research use (vinid/plip terms)",
        size="151M params",
        suits=("kather", "pannuke", "digestpath"),
        builder="plip",
    ),
    "medclip": BackboneSpec(
        name="medclip",
        family="medclip",
        description="MedCLIP-ViT (Swin-T + Bio_ClinicalBERT with projection heads), trained on chest X-rays.",
        model_id="MedCLIP-ViT release (medclip-vit-pretrained)",
        context_length=77,
        licence="MedCLIP release terms (research use)",
        size="137M params",
        suits=("covid", "rsna18"),
        builder="medclip",
    ),
    "clip-vit-b16": BackboneSpec(
        name="clip-vit-b16",
        family="clip",
        description="OpenAI CLIP ViT-B/16 (general-domain reference).",
        model_id="ViT-B-16",
        pretrained_tag="openai",
        model_cfg=_vit_cfg(512, 224, 16, 768, 12, 512, 12, 8, quick_gelu=True),
        preprocess=_OPENAI_PREPROCESS,
        hub_files=(HubFiles("timm/vit_base_patch16_clip_224.openai", (CLIP_WEIGHT_FILES,)),),
        force_quick_gelu=True,
        licence="MIT",
        size="150M params",
    ),
    "clip-vit-b32": BackboneSpec(
        name="clip-vit-b32",
        family="clip",
        description="OpenAI CLIP ViT-B/32 (general-domain reference).",
        model_id="ViT-B-32",
        pretrained_tag="openai",
        model_cfg=_vit_cfg(512, 224, 32, 768, 12, 512, 12, 8, quick_gelu=True),
        preprocess=_OPENAI_PREPROCESS,
        hub_files=(HubFiles("timm/vit_base_patch32_clip_224.openai", (CLIP_WEIGHT_FILES,)),),
        force_quick_gelu=True,
        licence="MIT",
        size="151M params",
    ),
    "demo": BackboneSpec(
        name="demo",
        family="demo",
        description="The bundled demo model: a tiny CLIP pretrained on a synthetic histology world (knows only that world).",
        local_dir=str(ASSETS_DIR / "demo-backbone"),
        context_length=40,
        licence="MIT (this project)",
        size="4M params",
        suits=("demo", "demo-binary"),
    ),
    "tiny-random": BackboneSpec(
        name="tiny-random",
        family="tiny",
        description="Tiny native open_clip CLIP with random weights (tests only; predictions are meaningless).",
        model_cfg=_vit_cfg(32, 32, 8, 64, 2, 64, 2, 2),
        preprocess=_OPENAI_PREPROCESS,
        size="3.6M params",
    ),
    "tiny-random-hf": BackboneSpec(
        name="tiny-random-hf",
        family="tiny",
        description="Tiny CustomTextCLIP with a Hugging Face BERT text tower and random weights (tests only).",
        context_length=256,
        model_cfg={
            "embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
            "text_cfg": {"hf_model_name": "bert-tiny", "hf_tokenizer_name": "bert-tiny", "hf_proj_type": "mlp",
                         "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
        },
        preprocess=_OPENAI_PREPROCESS,
        size="0.3M params",
    ),
}


def list_backbones() -> list[str]:
    """Names of the registered backbones."""
    return list(BACKBONES)


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"Unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}.") from None


# --------------------------------------------------------------------------------------------
# The Backbone object
# --------------------------------------------------------------------------------------------
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
        """Stack of preprocessed images (N, 3, H, W); inputs as :func:`calibprompt.data.load_image` takes."""
        from .data import load_image

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
        (see :mod:`calibprompt.text_tower`) and several times faster for 256-token BERT towers.
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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _resolve_twin_text_dirs(model_cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(model_cfg)
    text_cfg = cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if key in text_cfg and text_cfg[key] in TWIN_TEXT_DIRS:
            text_cfg[key] = str(TWIN_TEXT_DIRS[text_cfg[key]])
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
    return cfg


def _make_transform(image_size: int, preprocess: dict[str, Any]):
    import open_clip

    return open_clip.image_transform(
        image_size,
        is_train=False,
        mean=preprocess.get("mean", OPENAI_MEAN),
        std=preprocess.get("std", OPENAI_STD),
        interpolation=preprocess.get("interpolation", "bicubic"),
        resize_mode=preprocess.get("resize_mode", "shortest"),
    )


def build_twin(spec: BackboneSpec, device: torch.device | str | None = "cpu") -> Backbone:
    """The architecture of ``spec`` with random weights (seeded by ``spec.seed``), built offline."""
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if spec.builder != "open_clip":
        model, preprocess, tokenizer, cfg = _create_model(spec, resolve_device(device), "fp32", twin=True)
        return Backbone(f"{spec.name}-twin", model, preprocess, tokenizer, family=spec.family, pretrained=False,
                        description=f"Random-weight twin of {spec.name}.", model_cfg=cfg)

    cfg = _resolve_twin_text_dirs(spec.model_cfg)
    text_cfg = cfg["text_cfg"]
    model_class = CustomTextCLIP if "hf_model_name" in text_cfg else CLIP
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = model_class(**cfg)
    if "hf_tokenizer_name" in text_cfg:
        tokenizer = HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=text_cfg["context_length"])
    else:
        tokenizer = SimpleTokenizer(context_length=text_cfg.get("context_length", 77))
    image_size = cfg["vision_cfg"]["image_size"]
    model.to(resolve_device(device))
    return Backbone(
        spec.name if spec.is_twin_only else f"{spec.name}-twin",
        model,
        _make_transform(image_size, spec.preprocess),
        tokenizer,
        family=spec.family,
        pretrained=False,
        description=spec.description if spec.is_twin_only else f"Random-weight twin of {spec.name}.",
        model_cfg=cfg,
        preprocess_cfg={"size": image_size, **{k: list(v) if isinstance(v, tuple) else v
                                              for k, v in spec.preprocess.items()}},
    )


def save_backbone(backbone: Backbone, folder: str | os.PathLike) -> Path:
    """Write ``backbone`` in open_clip's ``local-dir:`` layout (``open_clip_config.json`` +
    ``open_clip_model.safetensors``), loadable offline with :func:`load_backbone` (folder path)."""
    from safetensors.torch import save_file

    from .fileio import atomic_write, atomic_write_json

    if backbone.model_cfg is None:
        raise ValueError(f"The architecture config of {backbone.name!r} is unknown, so it cannot be saved.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    atomic_write(folder / CLIP_WEIGHT_FILES[0], lambda tmp: save_file(state, tmp))
    config = {"model_cfg": backbone.model_cfg, "preprocess_cfg": backbone.preprocess_cfg or {},
              "calibprompt_family": backbone.family}
    atomic_write_json(folder / "open_clip_config.json", config)
    return folder


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def missing_hub_files(spec: BackboneSpec) -> list[str]:
    """The Hub files of ``spec`` that are not in the local Hugging Face cache (``repo/file``)."""
    from huggingface_hub import try_to_load_from_cache

    missing = []
    for entry in spec.hub_files:
        for alternatives in entry.files:
            if not any(isinstance(try_to_load_from_cache(entry.repo, f), str) for f in alternatives):
                missing.append(f"{entry.repo}/{alternatives[0]}")
    return missing


def hub_is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return bool(constants.HF_HUB_OFFLINE) or (value or "").strip().lower() in {"1", "true", "yes", "on"}


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """One quick request to the Hub endpoint (honours proxy variables); ``(ok, reason)``."""
    from huggingface_hub import constants

    url = constants.ENDPOINT.rstrip("/") + "/api/models?limit=1"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True, ""
    except urllib.error.HTTPError:
        return True, ""  # the server answered: the network path works
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, str(reason)


@contextlib.contextmanager
def _hub_offline():
    """Serve Hub files from the local cache only, without network calls (and without retries)."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _unavailable_message(label: str, spec: BackboneSpec, missing: list[str], why: str) -> str:
    repos = sorted({m.rsplit("/", 1)[0] for m in missing if " (from " not in m})
    fetch = "; ".join(f"hf download {r}" for r in repos)
    return (
        f"Cannot load the backbone '{label}' ({spec.model_id}): {why}, and these files are not in the local "
        f"Hugging Face cache ({_hf_cache_dir()}): {', '.join(missing)}. "
        f"To fix: connect this machine to the internet and try again; or pre-fill the cache on a connected "
        f"machine ({fetch}) and copy it here (set HF_HOME to point at it); or use the bundled demo model "
        f"('--model demo' / the 'demo' backbone), which works offline."
    )


def _create_openclip(spec: BackboneSpec, device: torch.device, precision: str):
    import open_clip

    kwargs: dict[str, Any] = {"device": device, "precision": precision}
    if spec.force_quick_gelu:
        kwargs["force_quick_gelu"] = True
    model, _, preprocess = open_clip.create_model_and_transforms(spec.model_id, pretrained=spec.pretrained_tag, **kwargs)
    tokenizer = open_clip.get_tokenizer(spec.model_id)
    return model, preprocess, tokenizer


def _create_plip(device: torch.device, twin: bool):
    from open_clip.tokenizer import SimpleTokenizer

    from .plip import PLIP_REPO, hf_clip_to_openclip, tiny_hf_clip

    if twin:
        hf = tiny_hf_clip()
    else:
        from transformers import CLIPModel

        hf = CLIPModel.from_pretrained(PLIP_REPO)
    model, cfg = hf_clip_to_openclip(hf)
    preprocess = _make_transform(cfg["vision_cfg"]["image_size"], _OPENAI_PREPROCESS)
    return model.to(device), preprocess, SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"]), cfg


def medclip_checkpoint_path() -> Path:
    """Where the released MedCLIP-ViT weights are looked for (``$MEDCLIP_CHECKPOINT``, else the data directory)."""
    from .medclip import CHECKPOINT_NAME
    from .paths import data_dir

    override = os.environ.get("MEDCLIP_CHECKPOINT")
    return Path(override).expanduser() if override else data_dir() / "models" / "medclip-vit" / CHECKPOINT_NAME


def _create_medclip(device: torch.device, twin: bool):
    from .medclip import build_medclip, download_medclip_checkpoint

    checkpoint = None
    if not twin:
        checkpoint = medclip_checkpoint_path()
        if not checkpoint.is_file():
            logger.info("Downloading the MedCLIP-ViT checkpoint into %s", checkpoint.parent)
            checkpoint = download_medclip_checkpoint(checkpoint.parent)
    model, preprocess, tokenizer = build_medclip(checkpoint, twin=twin, device=device)
    return model, preprocess, tokenizer, None


def _create_model(spec: BackboneSpec, device: torch.device, precision: str, twin: bool = False):
    """``(model, preprocess, tokenizer, model_cfg)`` for a spec's builder."""
    if spec.builder == "plip":
        return _create_plip(device, twin)
    if spec.builder == "medclip":
        return _create_medclip(device, twin)
    return (*_create_openclip(spec, device, precision), None)


def _missing_files(spec: BackboneSpec) -> list[str]:
    missing = missing_hub_files(spec)
    if spec.builder == "medclip":
        from .medclip import CHECKPOINT_URL, HUB_FILES

        missing += missing_hub_files(BackboneSpec(spec.name, spec.family, "", hub_files=tuple(
            HubFiles(repo, tuple((f,) for f in files)) for repo, files in HUB_FILES)))
        if not medclip_checkpoint_path().is_file():
            missing.append(f"{medclip_checkpoint_path()} (from {CHECKPOINT_URL})")
    return missing


def _load_hub_spec(spec: BackboneSpec, label: str, device: torch.device, precision: str) -> Backbone:
    missing = _missing_files(spec)
    if not missing:
        with _hub_offline():  # everything is cached: no network round trip at all
            model, preprocess, tokenizer, cfg = _create_model(spec, device, precision)
    else:
        if hub_is_offline():
            raise BackboneUnavailableError(_unavailable_message(label, spec, missing, "HF_HUB_OFFLINE is set"))
        ok, reason = hub_reachable()
        if not ok:
            raise BackboneUnavailableError(
                _unavailable_message(label, spec, missing, f"the Hugging Face Hub is unreachable ({reason})")
            )
        logger.info("Downloading %s from the Hugging Face Hub (missing: %s)", label, ", ".join(missing))
        model, preprocess, tokenizer, cfg = _create_model(spec, device, precision)
    return Backbone(label, model, preprocess, tokenizer, family=spec.family, description=spec.description,
                    model_cfg=cfg)


def _adhoc_hub_spec(model_id: str) -> BackboneSpec:
    """A spec for any ``hf-hub:org/repo`` open_clip model (its text-tokenizer repo is found from its config)."""
    from huggingface_hub import try_to_load_from_cache

    repo = model_id[len("hf-hub:"):]
    files = [_clip_files(repo)]
    cached_cfg = try_to_load_from_cache(repo, "open_clip_config.json")
    if isinstance(cached_cfg, str):
        text_cfg = json.loads(Path(cached_cfg).read_text()).get("model_cfg", {}).get("text_cfg", {})
        tok_repo = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
        if tok_repo:
            files.append(HubFiles(tok_repo, (("config.json",),)))
    return BackboneSpec(name=model_id, family="custom", description=f"open_clip model {model_id}",
                        model_id=model_id, hub_files=tuple(files))


def _load_local(path: Path, arch: str | None, device: torch.device, precision: str) -> Backbone:
    import open_clip

    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise ValueError(
                f"{path} is not an open_clip model folder: it needs open_clip_config.json and "
                "open_clip_model.safetensors (open_clip's local-dir layout)."
            )
        model_id = f"local-dir:{path}"
        model, _, preprocess = open_clip.create_model_and_transforms(model_id, device=device, precision=precision)
        tokenizer = open_clip.get_tokenizer(model_id)
        config = json.loads((path / "open_clip_config.json").read_text())
        return Backbone(path.name, model, preprocess, tokenizer, family=config.get("calibprompt_family", "custom"),
                        description=f"local model {path}", model_cfg=config.get("model_cfg"),
                        preprocess_cfg=config.get("preprocess_cfg"))
    if path.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise ValueError(f"{path}: expected a .safetensors, .pt, .pth or .bin checkpoint, or an open_clip model folder.")
    if not arch:
        raise ValueError(
            f"Loading the checkpoint file {path.name} needs its architecture: pass arch='ViT-B-16' (any name "
            "from open_clip.list_models()), or put it in a folder with open_clip_config.json."
        )
    # open_clip reads .safetensors with safetensors and .pt/.bin with torch.load(weights_only=True).
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path), device=device,
                                                                 precision=precision, weights_only=True)
    return Backbone(path.stem, model, preprocess, open_clip.get_tokenizer(arch), description=f"{arch} from {path}")


def _load_bundled(spec: BackboneSpec, device: torch.device, precision: str) -> Backbone:
    folder = Path(spec.local_dir)
    if not (folder / "open_clip_model.safetensors").is_file():
        raise BackboneUnavailableError(
            f"The bundled backbone '{spec.name}' is missing from {folder}; rebuild it with 'calibprompt demo-build' "
            "(or reinstall the package from its repository)."
        )
    backbone = _load_local(folder, None, device, precision)
    backbone.name, backbone.description = spec.name, spec.description
    return backbone


def load_backbone(name_or_path: str | os.PathLike, device: str | torch.device | None = None, *,
                  pretrained: bool = True, precision: str = "fp32", arch: str | None = None) -> Backbone:
    """Load a backbone.

    Args:
        name_or_path: a registered name (:func:`list_backbones`), ``"hf-hub:org/repo"`` (an open_clip
            Hub model), ``"local-dir:/folder"`` or a folder in open_clip's local-dir layout, or a
            checkpoint file (``.safetensors``/``.pt``; give ``arch``).
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        pretrained: ``False`` builds a random-weight twin of a registered architecture, offline.
        precision: open_clip precision (``"fp32"``, ``"fp16"``, ``"bf16"``, ...).
        arch: open_clip architecture name for a bare checkpoint file.

    Raises:
        ValueError: unknown name, or a path that is not a model.
        BackboneUnavailableError: Hub weights that can't be had here (offline, not cached).
    """
    device = resolve_device(device)
    name = os.fspath(name_or_path)
    if name in BACKBONES:
        spec = BACKBONES[name]
        if spec.local_dir is not None:
            return _load_bundled(spec, device, precision)
        if spec.is_twin_only or not pretrained:
            return build_twin(spec, device)
        return _load_hub_spec(spec, name, device, precision)
    if name.startswith("hf-hub:"):
        return _load_hub_spec(_adhoc_hub_spec(name), name, device, precision)
    if name.startswith("local-dir:"):
        name = name[len("local-dir:"):]
    path = Path(name).expanduser()
    if path.exists():
        return _load_local(path, arch, device, precision)
    raise ValueError(
        f"Unknown backbone {str(name_or_path)!r}: not a registered name ({', '.join(BACKBONES)}), "
        "not 'hf-hub:org/repo', and no such file or folder."
    )
