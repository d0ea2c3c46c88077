"""What a learned prompt "says": the vocabulary tokens nearest to each context vector.

CoOp's interpretation (Zhou et al. 2022, section 4.4): for each learned context vector c_i (W,), the
tokens t whose input embeddings e_t (rows of the text encoder's token-embedding table, (V, W)) are
nearest in Euclidean distance ``||c_i - e_t||_2``. A prompt initialised from words and barely trained
decodes back to those words; a prompt learned from random noise usually decodes to unrelated tokens,
which is the point the CoOp paper makes: learned vectors need not be words.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from calibprompt.prompting.learner import PromptLearner

__all__ = ["interpret_prompt", "decode_token"]


def decode_token(tokenizer, token_id: int) -> str:
    """One vocabulary entry as text, for open_clip's BPE tokenizer and for Hugging Face tokenizers."""
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers tokenizer
    if inner is not None and hasattr(inner, "convert_ids_to_tokens"):
        return str(inner.convert_ids_to_tokens(int(token_id)))
    decoder = getattr(tokenizer, "decoder", None)  # open_clip's SimpleTokenizer: id -> BPE string
    if isinstance(decoder, dict):
        text = decoder.get(int(token_id), f"<{token_id}>")
        byte_decoder = getattr(tokenizer, "byte_decoder", None)
        if byte_decoder:
            text = bytearray(byte_decoder.get(ch, ord("?")) for ch in text).decode("utf-8", errors="replace")
        return text.replace("</w>", "")
    if hasattr(tokenizer, "decode"):
        return str(tokenizer.decode([int(token_id)]))
    return f"<{token_id}>"


def interpret_prompt(prompt: PromptLearner | str | os.PathLike, top_k: int = 3, *,
                     backbone=None) -> list[dict[str, Any]]:
    """The ``top_k`` nearest vocabulary tokens of each context vector.

    Args:
        prompt: a :class:`PromptLearner`, or a prompt checkpoint (then ``backbone`` is required).
        top_k: tokens per context vector (1 to the vocabulary size).
        backbone: the backbone the checkpoint was trained on.

    Returns:
        one entry per context vector, in order: ``{"position": i, "class": name or None (class-specific
        contexts only), "tokens": [{"token": str, "id": int, "distance": float}, ...]}`` (nearest first).
    """
    if not isinstance(prompt, PromptLearner):
        if backbone is None:
            raise ValueError("Give the backbone the checkpoint was trained on to interpret it.")
        from calibprompt.prompting.checkpoint import load_prompt

        prompt, _ = load_prompt(prompt, backbone)
    table = prompt.tower.token_embedding_module.weight.detach().float()  # (V, W)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= table.shape[0]:
        raise ValueError(f"top_k must be a whole number from 1 to {table.shape[0]}, got {top_k!r}.")
    ctx = prompt.ctx.detach().float().to(table.device)
    groups = [(None, ctx)] if ctx.dim() == 2 else list(zip(prompt.classnames, ctx))
    out = []
    for name, vectors in groups:
        distances = torch.cdist(vectors, table, compute_mode="donot_use_mm_for_euclid_dist")  # (n_ctx, V), exact
        values, ids = distances.topk(top_k, dim=1, largest=False)
        for i in range(vectors.shape[0]):
            out.append({"position": i, "class": name, "tokens": [
                {"token": decode_token(prompt.tower.tokenizer, int(t)), "id": int(t), "distance": float(d)}
                for d, t in zip(values[i], ids[i])]})
    return out
