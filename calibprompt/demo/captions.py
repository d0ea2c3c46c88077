"""Captions for pretraining the demo model, and the vocabulary of its tokenizer.

Each pretraining image gets a caption that names its class (through one of several synonyms and
templates) and describes some of its own drawing parameters ("strong haematoxylin", "blurred",
"dense nuclei", ...). Describing each image individually, rather than only its class, keeps a batch
from holding dozens of identical captions (false negatives for the contrastive loss) and lets the
learnable logit scale grow as it does in real CLIP training.
"""
from __future__ import annotations

import re

import numpy as np

__all__ = ["CLASS_SYNONYMS", "TEMPLATES", "ATTRIBUTE_PHRASES", "make_caption", "vocabulary"]

CLASS_SYNONYMS: dict[str, tuple[str, ...]] = {
    "ADI": ("adipose tissue", "adipose", "fat", "fat cells", "adipocytes"),
    "BACK": ("background", "empty background", "glass", "empty slide"),
    "DEB": ("debris", "necrosis", "necrotic debris", "cell debris"),
    "LYM": ("lymphocytes", "lymphocyte infiltrate", "immune cells", "lymphoid tissue"),
    "MUC": ("mucus", "mucin", "mucinous material", "extracellular mucus"),
    "MUS": ("smooth muscle", "muscle", "muscularis", "muscle fibres"),
    "NORM": ("normal colon mucosa", "normal mucosa", "healthy colon mucosa", "normal colonic glands"),
    "STR": ("cancer-associated stroma", "stroma", "tumour stroma", "desmoplastic stroma"),
    "TUM": ("colorectal adenocarcinoma epithelium", "adenocarcinoma", "colorectal cancer", "tumour epithelium",
            "malignant glands"),
}

TEMPLATES: tuple[str, ...] = (
    "an H&E image of {}.",
    "an H&E patch of {}.",
    "a histology image of {}.",
    "a histopathology patch showing {}.",
    "a microscopy image of {}.",
    "H&E stained {}.",
    "a photo of {}.",
    "{} in an H&E slide.",
    "this patch shows {}.",
    "a tissue patch of {}.",
)

ATTRIBUTE_PHRASES: dict[str, dict[str, str]] = {
    "stain_strength": {"low": "faint staining", "medium": "moderate staining", "high": "intense staining"},
    "haematoxylin": {"low": "pale haematoxylin", "medium": "moderate haematoxylin", "high": "dark haematoxylin"},
    "eosin": {"low": "pale eosin", "medium": "moderate eosin", "high": "strong eosin"},
    "blur": {"low": "sharp focus", "medium": "slightly blurred", "high": "very blurred"},
    "noise": {"low": "clean image", "medium": "some noise", "high": "noisy image"},
    "brightness": {"low": "dark image", "medium": "normal brightness", "high": "bright image"},
    "nucleus_density": {"low": "few nuclei", "medium": "some nuclei", "high": "many nuclei"},
    "eosin_density": {"low": "little pink material", "medium": "some pink material", "high": "much pink material"},
    "atypia": {"low": "regular glands", "medium": "mildly irregular glands", "high": "highly atypical glands"},
    "alignment": {"low": "wavy disordered fibres", "medium": "loosely aligned fibres", "high": "parallel aligned fibres"},
    "fragmentation": {"low": "few fragments", "medium": "some fragments", "high": "many fragments"},
    "material_density": {"low": "sparse material", "medium": "some material", "high": "dense material"},
}

CLASS_ONLY_PROBABILITY = 0.1
KEEP_ATTRIBUTE_PROBABILITY = 0.8


def _level(attrs: dict, key: str) -> str | None:
    value = attrs.get(f"{key}_level", attrs.get(key))
    return value if value in ("low", "medium", "high") else None


def make_caption(attrs: dict, rng: np.random.Generator) -> str:
    """A caption for an image with drawing attributes ``attrs`` (``attrs["cls"]`` is its class id):
    a class phrase in a template, followed, except for 10 % of captions, by its attribute phrases,
    each kept with probability 0.8, in random order."""
    cls = attrs["cls"]
    synonyms = CLASS_SYNONYMS[cls]
    text = TEMPLATES[rng.integers(len(TEMPLATES))].format(synonyms[rng.integers(len(synonyms))])
    if rng.random() < CLASS_ONLY_PROBABILITY:
        return text
    phrases = [ATTRIBUTE_PHRASES[k][lvl] for k in ATTRIBUTE_PHRASES
               if (lvl := _level(attrs, k)) is not None and rng.random() < KEEP_ATTRIBUTE_PROBABILITY]
    rng.shuffle(phrases)
    return text[:-1] + ", " + ", ".join(phrases) + "." if phrases else text


def vocabulary() -> list[str]:
    """Every lower-case word and punctuation mark the captions and prompts use."""
    texts = [*TEMPLATES, *(s for names in CLASS_SYNONYMS.values() for s in names),
             *(p for levels in ATTRIBUTE_PHRASES.values() for p in levels.values())]
    words: dict[str, None] = {}
    for text in texts:
        for token in re.findall(r"[a-z0-9]+|[^\sa-z0-9{}]", text.lower()):
            words[token] = None
    return list(words)
