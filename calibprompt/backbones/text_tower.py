"""Text towers that accept token *embeddings* instead of token ids.

CoOp-style prompt learning replaces some word embeddings of a prompt by learned context vectors,
so it needs the text encoder's forward pass from the embedding layer on. open_clip offers no such
entry point, so this module reproduces it for the two text-tower families open_clip models use:

- :class:`OpenCLIPTextTower`: open_clip's own ``TextTransformer`` (OpenAI CLIP, QuiltNet, ...),
  either folded into ``CLIP`` (attributes on the model) or held as ``CustomTextCLIP.text``.
  token embedding + positional embedding -> causal transformer -> ``ln_final`` -> pooling at the
  EOT token -> ``text_projection``.
- :class:`HFTextTower`: open_clip's ``HFTextEncoder`` around a Hugging Face model (BiomedCLIP's
  PubMedBERT): word embeddings -> ``transformer(inputs_embeds=..., attention_mask=ids != pad)``
  -> open_clip pooler -> ``proj``.

Both expose the same small interface: :meth:`tokenize`, :meth:`embed_tokens`,
:meth:`encode_embeddings` and :meth:`content_length`, the number of leading positions that can
influence the pooled output, so a caller may cut the padded tail of the sequence before the
transformer without changing the result.

:meth:`HFTextTower.embedding_output` (the whole BERT embedding module: word + position + token type,
LayerNorm) exists only to reproduce the CalibPrompt authors' BiomedCLIP prompt learner, which feeds that
output back as ``inputs_embeds`` so BERT embeds the prompt twice (the ``authors-code`` protocol,
:mod:`calibprompt.training.protocols`). The correct CoOp path uses :meth:`embed_tokens`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import nn

__all__ = ["TextTower", "OpenCLIPTextTower", "HFTextTower", "text_tower_for"]


class TextTower(ABC):
    """Interface shared by the text-tower adapters (see the module docstring)."""

    width: int  # token-embedding width W
    context_length: int
    supports_double_embedding: bool = False  # has embedding_output() (Hugging Face BERT-style towers)

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = int(context_length)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids of shape (N, context_length), padded and truncated like the backbone does."""
        ids = self.tokenizer(list(texts), context_length=self.context_length)
        return ids.to(self.device)

    @property
    def device(self) -> torch.device:
        return self.token_embedding_module.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding_module.weight.dtype

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings (N, L, W) of token ids (N, L), before positional embeddings."""
        return self.token_embedding_module(ids.to(self.device))

    @abstractmethod
    def content_length(self, ids: torch.Tensor) -> int:
        """Number of leading positions of ``ids`` (N, L) that can influence the pooled features."""

    @abstractmethod
    def encode_embeddings(self, embeds: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Unnormalised text features (N, D) from embeddings (N, L, W) and their token ids (N, L)."""

    def trim(self, ids: torch.Tensor) -> torch.Tensor:
        """Drop the padded tail that cannot influence the pooled features (exact, see subclasses)."""
        return ids[:, : self.content_length(ids)]

    def encode_ids(self, ids: torch.Tensor, trim: bool = True) -> torch.Tensor:
        """Unnormalised text features (N, D) of token ids, optionally trimmed first."""
        ids = self.trim(ids) if trim else ids
        return self.encode_embeddings(self.embed_tokens(ids), ids)


class OpenCLIPTextTower(TextTower):
    """open_clip's native causal text transformer, fed with embeddings.

    Trimming is exact: with a causal mask, positions after the last EOT token never reach the
    positions up to it, and pooling reads the EOT position (``argmax``/``eos`` pooling).
    """

    def __init__(self, model: nn.Module, tokenizer):
        holder = model.text if isinstance(getattr(model, "text", None), nn.Module) else model
        if getattr(holder, "cls_emb", None) is not None:
            raise ValueError("Text towers with a class-embedding token (CoCa-style) are not supported.")
        self.holder = holder
        # CLIP stores the pooling settings as text_pool_type/text_eos_id; TextTransformer as pool_type/eos_id.
        self.pool_type = getattr(holder, "text_pool_type", None) or getattr(holder, "pool_type", "argmax")
        self.eos_id = getattr(holder, "text_eos_id", getattr(holder, "eos_id", None))
        if self.pool_type not in ("argmax", "eos", "first", "last"):
            raise ValueError(
                f"Unsupported text pooling {self.pool_type!r}; supported: 'argmax', 'eos', 'first', 'last'."
            )
        self.token_embedding_module = holder.token_embedding
        self.width = holder.token_embedding.weight.shape[1]
        self.causal = getattr(holder, "attn_mask", None) is not None
        super().__init__(tokenizer, holder.positional_embedding.shape[0])

    def _eot_positions(self, ids: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "eos":
            return (ids == self.eos_id).int().argmax(dim=-1)
        return ids.argmax(dim=-1)  # the EOT token has the largest id in CLIP's BPE vocabulary

    def content_length(self, ids: torch.Tensor) -> int:
        if not self.causal or self.pool_type not in ("argmax", "eos"):
            return ids.shape[1]  # without a causal mask (or with 'last' pooling) every position counts
        return int(self._eot_positions(ids).max().item()) + 1

    def encode_embeddings(self, embeds: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h = self.holder
        cast_dtype = h.transformer.get_cast_dtype()
        length = embeds.shape[1]
        x = embeds.to(cast_dtype) + h.positional_embedding[:length].to(cast_dtype)
        attn_mask = h.attn_mask[:length, :length] if self.causal else None
        x = h.transformer(x, attn_mask=attn_mask)
        x = h.ln_final(x)
        if self.pool_type in ("argmax", "eos"):
            x = x[torch.arange(x.shape[0], device=x.device), self._eot_positions(ids.to(x.device))]
        elif self.pool_type == "first":
            x = x[:, 0]
        else:
            x = x[:, -1]
        proj = h.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Module) else x @ proj
        return x


class HFTextTower(TextTower):
    """open_clip's ``HFTextEncoder`` (a Hugging Face encoder such as PubMedBERT), fed with embeddings.

    Padding positions are masked out of attention, so cutting the tail that holds only padding is
    exact up to floating-point summation order (measured: <= 1e-7).
    """

    def __init__(self, model: nn.Module, tokenizer):
        self.encoder = model.text
        self.pad_id = int(self.encoder.config.pad_token_id)
        self.token_embedding_module = self.encoder.transformer.get_input_embeddings()
        self.width = self.token_embedding_module.weight.shape[1]
        context_length = getattr(tokenizer, "context_length", None) or self.encoder.context_length
        super().__init__(tokenizer, context_length)

    @property
    def supports_double_embedding(self) -> bool:
        return hasattr(self.encoder.transformer, "embeddings")

    def embedding_output(self, ids: torch.Tensor) -> torch.Tensor:
        """The output (N, L, W) of the Hugging Face model's whole embedding module for token ids: word +
        position + token-type embeddings, LayerNorm (dropout is off in eval mode).

        Feeding this to :meth:`encode_embeddings` embeds the tokens twice (the transformer adds positions
        and token types and applies the LayerNorm again): the CalibPrompt authors' BiomedCLIP bug,
        reproduced for the ``authors-code`` protocol only. Positions are absolute, so the output for a
        trimmed sequence equals the same leading positions of the untrimmed one.
        """
        if not self.supports_double_embedding:
            raise ValueError(f"{type(self.encoder.transformer).__name__} has no 'embeddings' module.")
        return self.encoder.transformer.embeddings(input_ids=ids.to(self.device))

    def content_length(self, ids: torch.Tensor) -> int:
        return max(int((ids != self.pad_id).sum(dim=1).max().item()), 1)

    def encode_embeddings(self, embeds: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        attention_mask = (ids != self.pad_id).long().to(embeds.device)
        out = enc.transformer(inputs_embeds=embeds, attention_mask=attention_mask)
        pooled = enc.pooler(out, attention_mask)
        return enc.proj(pooled)


def text_tower_for(model: nn.Module, tokenizer) -> TextTower:
    """The adapter that matches ``model``'s text tower (a model may provide its own: ``build_text_tower``)."""
    if hasattr(model, "build_text_tower"):
        return model.build_text_tower(tokenizer)
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "transformer") and hasattr(text, "pooler"):
        return HFTextTower(model, tokenizer)
    if hasattr(text if text is not None else model, "token_embedding"):
        return OpenCLIPTextTower(model, tokenizer)
    raise ValueError(
        f"Cannot drive the text tower of {type(model).__name__}: expected open_clip's TextTransformer "
        "or HFTextEncoder."
    )
