"""Training protocols as data: the paper's description, or what the authors' published code does.

The CalibPrompt paper describes one protocol; the authors' code (github: iabh1shekbasu/CalibPrompt,
read at commit a15f28b) departs from it in a few choices that move the numbers. Each choice is a
field of :class:`Protocol`, and :data:`PROTOCOLS` holds the two variants:

- ``"paper"`` (the default everywhere): fp32, warm-up at 1e-5 for every backbone, Kumar et al.'s
  MMCE formula, BiomedCLIP prompts embedded once, 10 cached augmented views per training image.
- ``"authors-code"``: the published code's choices, reproduced on purpose (bugs included) so that its
  numbers can be matched or the effect of each choice measured.

Choices that are plain errors for everyone (the zero-shot templates of PanNuke and DigestPath, the
QuickGELU activation of QuiltNet) are fixed in the task files and the backbone registry instead:
they are not protocol options.

:meth:`Protocol.resolve` turns a protocol into the concrete settings for one backbone family
(``backbone.family``: ``"plip"``, ``"quiltnet"``, ``"biomedclip"``, ``"medclip"``, ...), and
:func:`resolve_protocol` adds a run's explicit overrides (precision, warm-up lr): it is the one place a
run's settings are resolved. A job resolves them once, when it meets its backbone
(:meth:`calibprompt.runs.jobs.TrainJob.config`), and the trainer reads them from its
:class:`~calibprompt.training.trainer.TrainConfig`. :func:`check_choice` checks the protocol and
precision a request names (the job and the trainer's config both use it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["Protocol", "PROTOCOLS", "PRECISIONS", "MMCE_SCALES", "list_protocols", "get_protocol", "check_choice",
           "resolve_protocol"]

PRECISIONS = ("fp32", "fp16", "bf16")
MMCE_SCALES = ("formula", "authors")


@dataclass(frozen=True)
class Protocol:
    """One set of training choices. Every field is data; :meth:`resolve` reads them for a family.

    Attributes:
        name: registry key (``"paper"``, ``"authors-code"``).
        description: one line for listings and run records.
        precision_by_family: compute precision per backbone family (``"fp32"``, ``"fp16"``, ``"bf16"``);
            families not listed use ``default_precision``. fp16/bf16 mean ``torch.autocast`` around the
            text encoder and the logits. Source: CoOp's ``TRAINER.COOP.PREC`` defaults to ``"fp16"`` in
            ``train.py`` (``extend_cfg``) and is set to ``"fp16"`` in
            ``configs/trainers/CoOp/vit_b32_{plip,quiltnet}_c16_ep50_batch16.yaml``; in fp16
            ``trainers/classification/coop.py`` keeps the OpenAI-CLIP model in half precision
            (``models/clip/model.py`` ``convert_weights``), so PLIP and QuiltNet train in fp16. The
            BiomedCLIP (open_clip) and MedCLIP models load in fp32 and are never halved
            (``trainers/classification/coop_biomedclip.py``, ``coop_medclip.py``), so they train in fp32.
            Autocast approximates pure-half training: the context vector and the loss stay fp32 here.
        default_precision: the precision of the families not in ``precision_by_family``.
        warmup_lr_by_family: the constant warm-up learning rate per family; others use
            ``default_warmup_lr``. Source: ``OPTIM.WARMUP_CONS_LR`` is ``1e-3`` in
            ``configs/trainers/CoOp_MedCLIP/vit_b32_medclip_c16_ep50_batch16.yaml`` and ``1e-5`` in the
            PLIP, QuiltNet and BiomedCLIP configs.
        default_warmup_lr: the paper's 1e-5.
        mmce_scale: ``"formula"``: MMCE_w as in Kumar et al. 2018 (:func:`~calibprompt.training.losses.MMCE`);
            ``"authors"``: their implementation, which divides each kernel-weighted pair sum by m^2, n^2
            and m*n once more (:func:`~calibprompt.training.losses.MMCE_AUTHORS`). Source:
            ``MMCE_weighted.forward`` in ``trainers/classification/losses.py`` (``get_out_tensor`` takes a
            mean, then ``mmd_error`` divides by ``m*m``, ``n*n``, ``m*n`` again). Only the MMCE baseline uses it.
        biomedclip_double_embedding: ``True`` reproduces the BiomedCLIP prompt learner of
            ``trainers/classification/coop_biomedclip.py``: the fixed prompt tokens are taken from BERT's
            whole embedding module (word + position + token type, LayerNorm) and then fed back as
            ``inputs_embeds``, so BERT adds positions and token types and applies the LayerNorm a second
            time (CoOp proper, and ``coop.py`` / ``coop_medclip.py``, use the word embeddings only).
            Applies to the ``"biomedclip"`` family only.
        fresh_augmentation: ``True``: every training step augments (random resized crop, flip) and
            encodes its batch's images anew, as Dassl's data loader does in the authors' code
            (``INPUT.TRANSFORMS: ["random_resized_crop", "random_flip", "normalize"]`` in every trainer
            config); ``False``: each step picks one of the ``n_views`` augmented views cached per image
            (:class:`~calibprompt.training.features.FeatureCache`), much faster.
    """

    name: str
    description: str
    precision_by_family: Mapping[str, str] = field(default_factory=dict)
    default_precision: str = "fp32"
    warmup_lr_by_family: Mapping[str, float] = field(default_factory=dict)
    default_warmup_lr: float = 1e-5
    mmce_scale: str = "formula"
    biomedclip_double_embedding: bool = False
    fresh_augmentation: bool = False

    def __post_init__(self):
        for family, precision in {**dict(self.precision_by_family), "(default)": self.default_precision}.items():
            if precision not in PRECISIONS:
                raise ValueError(f"Protocol {self.name!r}: precision {precision!r} for {family} is not one of "
                                 f"{', '.join(PRECISIONS)}.")
        for family, lr in {**dict(self.warmup_lr_by_family), "(default)": self.default_warmup_lr}.items():
            if not float(lr) > 0:
                raise ValueError(f"Protocol {self.name!r}: the warm-up lr for {family} must be positive, got {lr}.")
        if self.mmce_scale not in MMCE_SCALES:
            raise ValueError(f"Protocol {self.name!r}: mmce_scale must be one of {', '.join(MMCE_SCALES)}.")
        # read-only views, so a registered protocol cannot be changed by accident
        object.__setattr__(self, "precision_by_family", MappingProxyType(dict(self.precision_by_family)))
        object.__setattr__(self, "warmup_lr_by_family", MappingProxyType(dict(self.warmup_lr_by_family)))

    def resolve(self, family: str | None) -> dict[str, Any]:
        """The concrete settings for a backbone family::

            {"protocol": "authors-code", "family": "plip", "precision": "fp16", "warmup_lr": 1e-05,
             "mmce_scale": "authors", "double_embedding": False, "fresh_augmentation": True}
        """
        family = (family or "").lower()
        return {
            "protocol": self.name,
            "family": family,
            "precision": self.precision_by_family.get(family, self.default_precision),
            "warmup_lr": float(self.warmup_lr_by_family.get(family, self.default_warmup_lr)),
            "mmce_scale": self.mmce_scale,
            "double_embedding": bool(self.biomedclip_double_embedding and family == "biomedclip"),
            "fresh_augmentation": bool(self.fresh_augmentation),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "precision_by_family": dict(self.precision_by_family), "default_precision": self.default_precision,
                "warmup_lr_by_family": dict(self.warmup_lr_by_family), "default_warmup_lr": self.default_warmup_lr,
                "mmce_scale": self.mmce_scale, "biomedclip_double_embedding": self.biomedclip_double_embedding,
                "fresh_augmentation": self.fresh_augmentation}


PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol(
        name="paper",
        description="The paper's protocol: fp32, warm-up lr 1e-5, Kumar et al.'s MMCE, CoOp's embedding, "
                    "cached augmented views.",
    ),
    "authors-code": Protocol(
        name="authors-code",
        description="What the authors' published code does: PLIP/QuiltNet in fp16, MedCLIP warm-up lr 1e-3, "
                    "their MMCE scale, BiomedCLIP prompts embedded twice, fresh augmentation every step.",
        precision_by_family={"plip": "fp16", "quiltnet": "fp16"},
        warmup_lr_by_family={"medclip": 1e-3},
        mmce_scale="authors",
        biomedclip_double_embedding=True,
        fresh_augmentation=True,
    ),
}


def list_protocols() -> list[str]:
    """Names of the registered protocols (``"paper"`` first)."""
    return list(PROTOCOLS)


def get_protocol(name: str | Protocol) -> Protocol:
    """The protocol called ``name`` (a :class:`Protocol` is returned as is).

    Raises:
        ValueError: an unknown name; the message names the allowed ones.
    """
    if isinstance(name, Protocol):
        return name
    key = str(name).strip().lower().replace("_", "-")
    if key not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {name!r}; choose one of: {', '.join(PROTOCOLS)}.")
    return PROTOCOLS[key]


def check_choice(protocol: str | Protocol, precision: str | None) -> tuple[str, str | None]:
    """The registered name of ``protocol`` and the ``precision`` override (``None``: the protocol's own).

    Raises:
        ValueError: an unknown protocol (naming the registered ones) or a precision not in :data:`PRECISIONS`.
    """
    name = get_protocol(protocol).name
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"The precision must be one of {', '.join(PRECISIONS)} (or unset for the protocol's); "
                         f"got {precision!r}.")
    return name, precision


def resolve_protocol(protocol: str | Protocol, family: str | None, *, precision: str | None = None,
                     warmup_lr: float | None = None) -> dict[str, Any]:
    """The concrete settings of one run on a backbone family: :meth:`Protocol.resolve` with an explicit
    ``precision`` or ``warmup_lr`` on top (both ``None``: the protocol's choice for the family). The same
    keys as :meth:`Protocol.resolve`; recorded with every run as ``protocol_settings``."""
    _, precision = check_choice(protocol, precision)
    settings = get_protocol(protocol).resolve(family)
    if precision is not None:
        settings["precision"] = precision
    if warmup_lr is not None:
        if not float(warmup_lr) > 0:
            raise ValueError(f"The warm-up learning rate must be positive; got {warmup_lr!r}.")
        settings["warmup_lr"] = float(warmup_lr)
    return settings
