"""The backbone registry: :data:`BACKBONES`, a plain dict of short names to :class:`BackboneSpec`.

Only data lives here (no loading): what each registered model is, where its weights come from
(:class:`HubFiles`), how a random-weight twin of it is built (``model_cfg``) and how images are
preprocessed. :func:`calibprompt.backbones.load_backbone` turns a name into a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "BackboneUnavailableError",
    "HubFiles",
    "get_backbone_spec",
    "list_backbones",
]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
TWIN_TEXT_DIRS = {"bert-tiny": ASSETS_DIR / "twins" / "bert-tiny", "bert-base": ASSETS_DIR / "twins" / "bert-base"}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's order of preference


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


# QuiltNet B-32 and B-16 (GPT77 text tower) are OpenAI CLIP fine-tuned on Quilt-1M with open_clip
# (github wisdomikezogwo/quilt1m: README "QuiltNet finetuned models", issue #11 "we leverage OpenClip to
# train"). open_clip builds OpenAI-pretrained models with QuickGELU whatever the config says, so the
# weights were trained with QuickGELU; but the open_clip_config.json published with the weights on the Hub
# (wisdomik/QuiltNet-B-32 commit 88c3e9f, still the same 469-byte file at 32b1fec; QuiltNet-B-16 commit
# 42d3269) has no "quick_gelu" key, so open_clip builds nn.GELU (the mismatch of open_clip issue #771). The
# CalibPrompt authors run QuiltNet through OpenAI's CLIP code (models/clip/model.py: always QuickGELU).
# Hence force_quick_gelu, and quick_gelu in the twins' configs.


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
        model_cfg=_vit_cfg(512, 224, 16, 768, 12, 512, 12, 8, quick_gelu=True),
        preprocess=_OPENAI_PREPROCESS,
        hub_files=(_clip_files("wisdomik/QuiltNet-B-16"),),
        force_quick_gelu=True,  # the Hub config omits it (see the QuiltNet note above)
        licence="MIT (research use)",
        size="150M params",
        suits=("kather", "pannuke", "digestpath"),
    ),
    "quiltnet-b32": BackboneSpec(
        name="quiltnet-b32",
        family="quiltnet",
        description="QuiltNet ViT-B/32: CLIP fine-tuned on Quilt-1M histopathology video frames (the paper's).",
        model_id="hf-hub:wisdomik/QuiltNet-B-32",
        model_cfg=_vit_cfg(512, 224, 32, 768, 12, 512, 12, 8, quick_gelu=True),
        preprocess=_OPENAI_PREPROCESS,
        hub_files=(_clip_files("wisdomik/QuiltNet-B-32"),),
        force_quick_gelu=True,  # the Hub config omits it (see the QuiltNet note above)
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
    """The spec registered as ``name`` (``ValueError`` naming the choices otherwise)."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"Unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}.") from None
