"""PLIP (Huang et al., Nature Medicine 2023): a Hugging Face ``CLIPModel`` (ViT-B/32) fine-tuned on
pathology image-text pairs from Twitter, loaded into open_clip's ``CLIP``.

PLIP is published as ``transformers`` weights (``vinid/plip``), not as an open_clip checkpoint. Its
architecture is OpenAI's CLIP ViT-B/32 exactly, so the weights are renamed into open_clip's layout at
load time (query/key/value projections concatenated into ``in_proj``, projections transposed). The
result is an ordinary open_clip model: the engine, the text-tower adapter and the prompt learner work
on it unchanged, and the conversion is exact (tested against ``CLIPModel`` on a random-weight twin).
The tokenizer is CLIP's BPE (open_clip's bundled ``SimpleTokenizer``, context 77) and the
preprocessing CLIP's (shortest side to 224, bicubic, centre crop, OpenAI mean/std), as PLIP's own
processor does.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["PLIP_REPO", "openclip_config_from_hf", "convert_hf_clip_state_dict", "hf_clip_to_openclip", "tiny_hf_clip"]

PLIP_REPO = "vinid/plip"
_LAYER_MAP = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def openclip_config_from_hf(config) -> dict[str, Any]:
    """open_clip ``model_cfg`` of a ``transformers.CLIPConfig``."""
    vision, text = config.vision_config, config.text_config
    if vision.hidden_act != text.hidden_act or vision.hidden_act not in ("quick_gelu", "gelu"):
        raise ValueError(f"Unsupported CLIP activation {vision.hidden_act!r}/{text.hidden_act!r}.")
    return {
        "embed_dim": config.projection_dim,
        "quick_gelu": vision.hidden_act == "quick_gelu",
        "vision_cfg": {"image_size": vision.image_size, "patch_size": vision.patch_size, "width": vision.hidden_size,
                       "layers": vision.num_hidden_layers, "head_width": vision.hidden_size // vision.num_attention_heads,
                       "mlp_ratio": vision.intermediate_size / vision.hidden_size},
        "text_cfg": {"context_length": text.max_position_embeddings, "vocab_size": text.vocab_size,
                     "width": text.hidden_size, "heads": text.num_attention_heads, "layers": text.num_hidden_layers,
                     "mlp_ratio": text.intermediate_size / text.hidden_size},
    }


def _convert_layers(hf: dict[str, torch.Tensor], hf_prefix: str, oc_prefix: str, n_layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(n_layers):
        src, dst = f"{hf_prefix}.encoder.layers.{i}.", f"{oc_prefix}.resblocks.{i}."
        out[dst + "attn.in_proj_weight"] = torch.cat([hf[src + f"self_attn.{p}_proj.weight"] for p in "qkv"])
        out[dst + "attn.in_proj_bias"] = torch.cat([hf[src + f"self_attn.{p}_proj.bias"] for p in "qkv"])
        for old, new in _LAYER_MAP.items():
            for kind in ("weight", "bias"):
                out[dst + f"{new}.{kind}"] = hf[src + f"{old}.{kind}"]
    return out


def convert_hf_clip_state_dict(hf: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Rename a ``CLIPModel`` state dict into open_clip ``CLIP``'s (exact; no values change)."""
    hf = {k: v for k, v in hf.items() if not k.endswith("position_ids")}
    out = {
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": hf["text_model.final_layer_norm.weight"],
        "ln_final.bias": hf["text_model.final_layer_norm.bias"],
        "text_projection": hf["text_projection.weight"].T.contiguous(),
        "logit_scale": hf["logit_scale"],
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": hf["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": hf["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": hf["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": hf["vision_model.post_layernorm.bias"],
        "visual.proj": hf["visual_projection.weight"].T.contiguous(),
    }
    out.update(_convert_layers(hf, "text_model", "transformer", config.text_config.num_hidden_layers))
    out.update(_convert_layers(hf, "vision_model", "visual.transformer", config.vision_config.num_hidden_layers))
    return out


def hf_clip_to_openclip(hf_model) -> tuple[torch.nn.Module, dict[str, Any]]:
    """An open_clip ``CLIP`` with the weights of a ``transformers.CLIPModel`` (strict load)."""
    from open_clip.model import CLIP

    cfg = openclip_config_from_hf(hf_model.config)
    model = CLIP(**cfg)
    state = convert_hf_clip_state_dict(hf_model.state_dict(), hf_model.config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"The CLIP weights do not fit open_clip's layout: missing {missing[:10]}, unexpected {unexpected[:10]}.")
    return model.eval(), cfg


def tiny_hf_clip(seed: int = 0):
    """A random-weight ``CLIPModel`` with PLIP's architecture family at a tiny size (offline twin)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                     "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1},
        vision_config={"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu"},
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config).eval()
