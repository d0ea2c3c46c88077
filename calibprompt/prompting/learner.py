"""CoOp prompt learning (Zhou et al., 2022) over a frozen backbone's text tower.

Each class prompt is ``[SOS] ctx_1 ... ctx_M {class name} . [EOS]`` in token-embedding space, where
the M context vectors are the only parameters that learn. They are shared by all classes (or, with
``class_specific=True``, one set per class), initialised from N(0, 0.02) or from the embeddings of
words such as ``"a photo of a"``. The class name can also sit in the middle of the context or in front
of it (``class_token_position``).

The padded tail of the token sequence is cut once, at construction, to the longest prompt: this is
exact (see :mod:`calibprompt.backbones.text_tower`) and makes every training step cheaper, by about 8x for
BiomedCLIP's 256-token PubMedBERT on a CPU.

``double_embedding=True`` (Hugging Face BERT towers only) reproduces a bug of the CalibPrompt authors'
BiomedCLIP prompt learner, for the ``authors-code`` protocol: the fixed prompt tokens (and a
``ctx_init``) are taken from BERT's whole embedding module (word + position + token type, LayerNorm)
instead of its word embeddings, and BERT then embeds the assembled prompt again.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from calibprompt.backbones.text_tower import TextTower

__all__ = ["PromptLearner", "CLASS_TOKEN_POSITIONS"]

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
_PLACEHOLDER = "X"


def _clean_classname(name: str) -> str:
    name = " ".join(str(name).replace("_", " ").split())
    if not name:
        raise ValueError("Class names must not be empty.")
    return name


class PromptLearner(nn.Module):
    """Learnable context for the class prompts of one task.

    Args:
        backbone: a :class:`calibprompt.backbones.loading.Backbone` (or anything with a ``text_tower``).
        classnames: the K class names as they should appear in the prompt.
        n_ctx: number of context vectors M (ignored when ``ctx_init`` is given: M is then its token count).
        ctx_init: words to initialise the context from, e.g. ``"a photo of a"``; ``None`` for N(0, 0.02).
        class_specific: one context per class (CSC) instead of one shared by all classes.
        class_token_position: ``"end"``, ``"middle"`` or ``"front"``.
        generator: optional ``torch.Generator`` for the random initialisation.
        trim: cut the padded tail of the prompts (exact; ``False`` only to measure what it saves).
        double_embedding: take the fixed tokens from the tower's whole embedding module
            (:meth:`~calibprompt.backbones.text_tower.HFTextTower.embedding_output`) so that they are
            embedded twice, as the authors' BiomedCLIP code does (see the module docstring); ``False``
            is CoOp's correct path.

    ``forward()`` returns the prompt embeddings (K, L, W); :meth:`encode_text` the class text
    features (K, D).
    """

    def __init__(self, backbone, classnames: Sequence[str], n_ctx: int = 16, ctx_init: str | None = None,
                 class_specific: bool = False, class_token_position: str = "end",
                 generator: torch.Generator | None = None, trim: bool = True, double_embedding: bool = False):
        super().__init__()
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(
                f"class_token_position must be one of {', '.join(CLASS_TOKEN_POSITIONS)}, got {class_token_position!r}."
            )
        classnames = [_clean_classname(c) for c in classnames]
        if len(classnames) < 2:
            raise ValueError(f"A task needs at least 2 classes, got {len(classnames)}.")
        if len(set(classnames)) != len(classnames):
            raise ValueError("Class names must be distinct.")
        tower: TextTower = getattr(backbone, "text_tower", backbone)
        # Keep the frozen tower out of this module's parameters and state_dict.
        object.__setattr__(self, "tower", tower)
        self.double_embedding = bool(double_embedding)
        if self.double_embedding and not getattr(tower, "supports_double_embedding", False):
            raise ValueError("double_embedding reproduces the authors' BiomedCLIP prompt learner and needs a "
                             f"Hugging Face BERT text tower; {type(tower).__name__} has none.")
        embed = tower.embedding_output if self.double_embedding else tower.embed_tokens
        self.classnames = classnames
        self.class_specific = bool(class_specific)
        self.class_token_position = class_token_position
        self.ctx_init = " ".join(ctx_init.replace("_", " ").split()) if ctx_init else None

        n_cls = len(classnames)
        if self.ctx_init:
            init_ids = tower.tokenize([self.ctx_init])
            n_ctx = tower.content_length(init_ids) - 2  # minus the start and end tokens
            if n_ctx < 1:
                raise ValueError(f"ctx_init {ctx_init!r} has no tokens.")
            with torch.no_grad():
                ctx = embed(init_ids)[0, 1:1 + n_ctx].clone()
            if self.class_specific:
                ctx = ctx.unsqueeze(0).repeat(n_cls, 1, 1)
            prefix_text = self.ctx_init
        else:
            if n_ctx < 1:
                raise ValueError(f"n_ctx must be at least 1, got {n_ctx}.")
            shape = (n_cls, n_ctx, tower.width) if self.class_specific else (n_ctx, tower.width)
            ctx = torch.empty(shape, dtype=tower.dtype).normal_(0.0, 0.02, generator=generator).to(tower.device)
            prefix_text = " ".join([_PLACEHOLDER] * n_ctx)
        self.n_ctx = int(n_ctx)
        self.ctx = nn.Parameter(ctx)

        prompts = [f"{prefix_text} {name}." for name in classnames]
        untruncated = tower.tokenizer(prompts, context_length=tower.context_length + 64)
        if tower.content_length(untruncated) > tower.context_length:
            raise ValueError(
                f"The prompts do not fit the text encoder's context of {tower.context_length} tokens; "
                "use fewer context vectors or shorter class names."
            )
        ids = tower.tokenize(prompts)
        ids = tower.trim(ids) if trim else ids
        name_lens = [tower.content_length(tower.tokenize([name])) - 2 for name in classnames]
        with torch.no_grad():
            embedding = embed(ids)
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("token_prefix", embedding[:, :1].clone(), persistent=False)  # SOS / CLS
        self.register_buffer("token_suffix", embedding[:, 1 + self.n_ctx:].clone(), persistent=False)  # name . EOS pad
        self.name_lens = name_lens

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def _context(self) -> torch.Tensor:
        if self.ctx.dim() == 2:
            return self.ctx.unsqueeze(0).expand(self.num_classes, -1, -1)
        return self.ctx

    def forward(self) -> torch.Tensor:
        """Prompt embeddings (K, L, W) with the context in place."""
        ctx = self._context()
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.class_token_position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        half = self.n_ctx // 2
        rows = []
        for i, name_len in enumerate(self.name_lens):
            name, rest = suffix[i:i + 1, :name_len], suffix[i:i + 1, name_len:]
            if self.class_token_position == "middle":
                parts = [prefix[i:i + 1], ctx[i:i + 1, :half], name, ctx[i:i + 1, half:], rest]
            else:  # front
                parts = [prefix[i:i + 1], name, ctx[i:i + 1], rest]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)

    def encode_text(self, normalize: bool = True) -> torch.Tensor:
        """Class text features (K, D) of the learned prompts (on the backbone's device)."""
        feats = self.tower.encode_embeddings(self(), self.token_ids)
        return F.normalize(feats, dim=-1) if normalize else feats

    def config(self) -> dict:
        """What is needed, with the context tensor, to rebuild this learner (see calibprompt.prompting.checkpoint)."""
        return {
            "classnames": list(self.classnames),
            "n_ctx": self.n_ctx,
            "ctx_init": self.ctx_init,
            "class_specific": self.class_specific,
            "class_token_position": self.class_token_position,
            **({"double_embedding": True} if self.double_embedding else {}),
        }
