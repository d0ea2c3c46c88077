"""MedCLIP (Wang et al., 2022), the Swin-Tiny + Bio_ClinicalBERT variant, rebuilt from maintained parts.

MedCLIP's released code pins old library versions, downloads weights at import time and unzips
archives without checks. This module defines the same network from ``transformers`` building blocks
(configs only, no weights from the Hub) and loads the released checkpoint with a strict key check:

- image tower: ``transformers.SwinModel`` (``microsoft/swin-tiny-patch4-window7-224``'s config) ->
  ``pooler_output`` (mean over the last stage's tokens) -> ``Linear(768, 512, bias=False)``;
  one-channel input is repeated to three channels, as MedCLIP does.
- text tower: ``transformers.BertModel`` (``emilyalsentzer/Bio_ClinicalBERT``'s config, pooler kept
  because the checkpoint holds its weights) -> hidden states 1, 2 and the last one, each averaged
  over **all** sequence positions (padding included, exactly as the reference does), then averaged
  over the three layers -> ``Linear(768, 512, bias=False)``.
- ``logit_scale``: MedCLIP clamps the log-scale to ``[0, 4.6052]`` before ``exp()``; the clamp is
  applied when a checkpoint is loaded, so ``logit_scale.exp()`` is the scale MedCLIP uses.
- preprocessing (:func:`medclip_preprocess`): MedCLIP's feature extractor as torchvision steps:
  grayscale, black padding to a centred square, bicubic resize, centre crop, single-channel
  normalisation, repeat to three channels.

Because padding positions enter the text pooling, a MedCLIP text feature depends on the length the
prompt is padded to: :class:`MedCLIPTextTower` never trims the padded tail (see its docstring).

:func:`build_medclip` returns ``(model, preprocess, tokenizer)``; with ``twin=True`` it builds a tiny
random-weight model of the same structure offline (tests). :func:`download_medclip_checkpoint` fetches
the released ``pytorch_model.bin`` from MedCLIP's zip archive (verified by its SHA-256), extracting only that
file (:mod:`calibprompt.backbones.medclip_download`).
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from calibprompt.backbones.medclip_download import (  # the download, re-exported here
    CHECKPOINT_NAME,
    CHECKPOINT_URL,
    MedCLIPDownloadError,
    download_medclip_checkpoint,
)
from calibprompt.backbones.text_tower import TextTower

__all__ = [
    "BERT_REPO",
    "CHECKPOINT_NAME",
    "CHECKPOINT_URL",
    "CONTEXT_LENGTH",
    "HUB_FILES",
    "IMAGE_MEAN",
    "IMAGE_SIZE",
    "IMAGE_STD",
    "LOGIT_SCALE_MAX",
    "PAPER_CONTEXT_LENGTH",
    "SWIN_REPO",
    "MedCLIPDownloadError",
    "MedCLIPModel",
    "MedCLIPTextTower",
    "MedCLIPTokenizer",
    "PadToSquare",
    "RepeatChannels",
    "ToGrayscale",
    "build_medclip",
    "download_medclip_checkpoint",
    "load_medclip_checkpoint",
    "medclip_preprocess",
]

SWIN_REPO = "microsoft/swin-tiny-patch4-window7-224"
BERT_REPO = "emilyalsentzer/Bio_ClinicalBERT"
# Hub files needed (in the local Hugging Face cache) to build the real model: (repo, file names).
# Only configs and the WordPiece vocabulary (Bio_ClinicalBERT ships no tokenizer_config.json); no weights.
HUB_FILES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (SWIN_REPO, ("config.json",)),
    (BERT_REPO, ("config.json", "vocab.txt")),
)

CONTEXT_LENGTH = 77  # MedCLIP's processor sets the tokenizer's model_max_length to 77
PAPER_CONTEXT_LENGTH = 25  # the CalibPrompt authors' MedCLIP prompts are padded to max_length=25
IMAGE_SIZE = 224
IMAGE_MEAN = 0.5862785803043838
IMAGE_STD = 0.27950088968644304
PROJECTION_DIM = 512
LOGIT_SCALE_INIT = 0.07  # temperature: logit_scale = log(1 / 0.07) before training
LOGIT_SCALE_MAX = 4.6052  # MedCLIP clamps the log-scale to [0, 4.6052] (exp = 100)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
TWIN_VOCAB_DIR = ASSETS_DIR / "twins" / "bert-tiny"
TWIN_SEED = 0
# The tiny twin: the same classes and projection width as MedCLIP, small widths and depths. Swin keeps
# MedCLIP's 224-pixel input, patch 4 and window 7 (stage grids 56, 28, 14, 7), so the real preprocessing
# applies unchanged. BERT gets three layers so that hidden_states[1], [2] and [-1] are distinct.
TWIN_SWIN_CONFIG: dict[str, Any] = {
    "image_size": IMAGE_SIZE, "patch_size": 4, "num_channels": 3, "embed_dim": 16, "depths": [1, 1, 1, 1],
    "num_heads": [1, 2, 2, 4], "window_size": 7, "mlp_ratio": 2.0,
}
TWIN_BERT_CONFIG: dict[str, Any] = {
    "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 128,
    "max_position_embeddings": 512, "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
}



# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
class _Tower(nn.Module):
    """A Hugging Face encoder (``model``) and its projection (``projection_head``): the checkpoint's layout."""

    def __init__(self, model: nn.Module, hidden: int, proj_dim: int):
        super().__init__()
        self.model = model
        self.projection_head = nn.Linear(hidden, proj_dim, bias=False)


class MedCLIPModel(nn.Module):
    """MedCLIP-ViT: Swin-Tiny image tower, BERT text tower, 512-d projections and a logit scale.

    The submodule names follow the released checkpoint (``vision_model.model``,
    ``vision_model.projection_head``, ``text_model.model``, ``text_model.projection_head``,
    ``logit_scale``), so its state dict loads with a strict key check (:func:`load_medclip_checkpoint`).

    Args:
        vision_config: a ``transformers.SwinConfig``.
        text_config: a ``transformers.BertConfig``.
        proj_dim: projection width (512 in MedCLIP).
        pad_token_id: the tokenizer's padding id (default: ``text_config.pad_token_id``, else 0).

    ``encode_image`` / ``encode_text`` return unnormalised features (N, proj_dim).
    """

    def __init__(self, vision_config, text_config, proj_dim: int = PROJECTION_DIM, pad_token_id: int | None = None):
        super().__init__()
        from transformers import BertModel, SwinModel

        swin = SwinModel(vision_config, add_pooling_layer=True)
        bert = BertModel(text_config, add_pooling_layer=True)  # the checkpoint holds the pooler's weights
        self.vision_model = _Tower(swin, int(vision_config.hidden_size), proj_dim)
        self.text_model = _Tower(bert, int(text_config.hidden_size), proj_dim)
        self.logit_scale = nn.Parameter(torch.log(torch.tensor(1.0 / LOGIT_SCALE_INIT)))
        if pad_token_id is None:
            pad_token_id = getattr(text_config, "pad_token_id", None)
        self.pad_token_id = int(pad_token_id if pad_token_id is not None else 0)
        self.image_size = int(vision_config.image_size)
        self.proj_dim = int(proj_dim)

    # -- images ---------------------------------------------------------------------------
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features (N, proj_dim) of pixels (N, 1 or 3, H, W)."""
        if pixels.dim() != 4 or pixels.shape[1] not in (1, 3):
            raise ValueError(f"Expected pixels of shape (N, 1 or 3, H, W), got {tuple(pixels.shape)}.")
        if pixels.shape[1] == 1:
            pixels = pixels.repeat(1, 3, 1, 1)
        weight = self.vision_model.projection_head.weight
        out = self.vision_model.model(pixel_values=pixels.to(weight.device, weight.dtype))
        return self.vision_model.projection_head(out.pooler_output)

    # -- text -----------------------------------------------------------------------------
    def _mask(self, ids: torch.Tensor, attention_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = ids != self.pad_token_id
        return attention_mask.to(device=device, dtype=torch.long)

    def _pool(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        # MedCLIP: stack layers 1, 2 and the last -> (B, 3, L, H), mean over all L positions
        # (padding included), then over the three layers, then project.
        stacked = torch.stack([hidden_states[1], hidden_states[2], hidden_states[-1]], dim=1)
        return self.text_model.projection_head(stacked.mean(dim=2).mean(dim=1))

    def encode_text(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised text features (N, proj_dim) of token ids (N, L); mask = ``ids != pad`` by default."""
        device = self.text_model.projection_head.weight.device
        ids = ids.to(device)
        out = self.text_model.model(input_ids=ids, attention_mask=self._mask(ids, attention_mask, device),
                                    output_hidden_states=True)
        return self._pool(out.hidden_states)

    def text_from_embeddings(self, embeds: torch.Tensor, ids: torch.Tensor,
                             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`encode_text` from word embeddings (N, L, W) (before position/type embeddings) and their ids."""
        device = embeds.device
        out = self.text_model.model(inputs_embeds=embeds, attention_mask=self._mask(ids, attention_mask, device),
                                    output_hidden_states=True)
        return self._pool(out.hidden_states)

    def clamp_logit_scale_(self) -> MedCLIPModel:
        """Apply MedCLIP's clamp of the log-scale to ``[0, LOGIT_SCALE_MAX]`` (in place)."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)
        return self

    def build_text_tower(self, tokenizer: MedCLIPTokenizer) -> MedCLIPTextTower:
        """The :class:`~calibprompt.backbones.text_tower.TextTower` adapter for prompt learning."""
        return MedCLIPTextTower(self, tokenizer)


# --------------------------------------------------------------------------------------------
# Tokenizer and text tower
# --------------------------------------------------------------------------------------------
class MedCLIPTokenizer:
    """``tokenizer(texts, context_length=None) -> LongTensor (N, L)``, padded to ``L`` and truncated.

    A thin wrapper around a Hugging Face ``BertTokenizer`` (``tokenizer``); text is normalised
    (lower-cased for Bio_ClinicalBERT) by that tokenizer, as in MedCLIP. ``L`` defaults to
    ``context_length`` (77, MedCLIP's ``model_max_length``).
    """

    def __init__(self, tokenizer, context_length: int = CONTEXT_LENGTH):
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no padding token.")
        self.pad_token_id = int(tokenizer.pad_token_id)

    def __call__(self, texts: str | Iterable[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        encoded = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=length,
                                 return_tensors="pt")
        return encoded["input_ids"].long()

    def __repr__(self) -> str:
        return f"MedCLIPTokenizer({type(self.tokenizer).__name__}, context_length={self.context_length})"


class MedCLIPTextTower(TextTower):
    """MedCLIP's BERT text tower, fed with word embeddings (CoOp prompt learning).

    No trimming, on purpose: MedCLIP mean-pools its hidden states over *every* sequence position,
    padding included, and each padding position's hidden state depends on the prompt through
    attention. Cutting the padded tail would therefore change the features (the same text padded to
    77 or to 40 tokens gives different vectors), so :meth:`trim` returns the ids unchanged and every
    prompt is encoded at the full ``context_length``, as MedCLIP encodes it.

    :meth:`content_length` returns the number of non-padding tokens of the longest row ([CLS] ...
    [SEP]). That is what :class:`~calibprompt.prompting.learner.PromptLearner` counts with it (context
    and class-name token counts, whether prompts fit the context); the number of positions that
    influence the pooled features is always the full length here, which :meth:`trim` honours.
    """

    def __init__(self, model: MedCLIPModel, tokenizer: MedCLIPTokenizer):
        self.model = model
        self.pad_id = int(getattr(tokenizer, "pad_token_id", model.pad_token_id))
        self.token_embedding_module = model.text_model.model.get_input_embeddings()
        self.width = int(self.token_embedding_module.weight.shape[1])
        super().__init__(tokenizer, getattr(tokenizer, "context_length", None) or CONTEXT_LENGTH)

    def content_length(self, ids: torch.Tensor) -> int:
        return max(int((ids != self.pad_id).sum(dim=1).max().item()), 1)

    def trim(self, ids: torch.Tensor) -> torch.Tensor:
        return ids  # padding positions enter MedCLIP's mean pooling: nothing may be cut

    def encode_embeddings(self, embeds: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_from_embeddings(embeds, ids.to(embeds.device))


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------
class ToGrayscale:
    """PIL image -> single-channel ``'L'`` image (MedCLIP works on grayscale radiographs)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "L" else image.convert("L")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PadToSquare:
    """Pad a PIL image with ``fill`` to a centred square of side ``max(min_size, width, height)``.

    MedCLIP's ``pad_img``: the image is pasted at ``((side - w) // 2, (side - h) // 2)``.
    """

    def __init__(self, min_size: int = IMAGE_SIZE, fill: int = 0):
        self.min_size = int(min_size)
        self.fill = fill

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        side = max(self.min_size, width, height)
        if (width, height) == (side, side):
            return image
        canvas = Image.new(image.mode, (side, side), self.fill)
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        return canvas

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_size={self.min_size}, fill={self.fill})"


class RepeatChannels(nn.Module):
    """A (1, H, W) tensor -> (channels, H, W) by repetition (MedCLIP feeds grayscale as RGB)."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.channels = int(channels)

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.shape[-3] == self.channels:
            return tensor
        if tensor.shape[-3] != 1:
            raise ValueError(f"Expected 1 channel, got {tensor.shape[-3]}.")
        return tensor.expand(*tensor.shape[:-3], self.channels, *tensor.shape[-2:]).clone()

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def medclip_preprocess(size: int = IMAGE_SIZE) -> T.Compose:
    """MedCLIP's ``MedCLIPFeatureExtractor`` as torchvision steps: PIL image -> (3, size, size) tensor.

    Grayscale -> black padding to a centred square of side >= ``size`` -> bicubic resize of the
    shortest side to ``size`` -> centre crop -> tensor in [0, 1] -> normalise with MedCLIP's
    single-channel mean/std -> repeat to 3 channels (all equal).
    """
    return T.Compose([
        ToGrayscale(),
        PadToSquare(size, fill=0),
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean=[IMAGE_MEAN], std=[IMAGE_STD]),
        RepeatChannels(3),
    ])


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
# Buffers fully determined by the config (recomputed at construction): a checkpoint may hold them
# (older transformers saved them) or not; their stored values are ignored.
_DERIVED_BUFFERS = re.compile(r"(\.embeddings\.position_ids|\.embeddings\.token_type_ids|\.relative_position_index)$")

# transformers 5 renamed Swin's parameters; MedCLIP's checkpoint (2022) uses the 4.x names.
_LEGACY_SWIN_RENAMES = (
    (re.compile(r"\.attention\.self\.query\."), ".attention.q_proj."),
    (re.compile(r"\.attention\.self\.key\."), ".attention.k_proj."),
    (re.compile(r"\.attention\.self\.value\."), ".attention.v_proj."),
    (re.compile(r"\.attention\.self\.(relative_position_bias_table|relative_position_index)$"),
     r".attention.relative_position_bias.\1"),
    (re.compile(r"\.attention\.output\.dense\."), ".attention.o_proj."),
    (re.compile(r"(\.blocks\.\d+)\.intermediate\.dense\."), r"\1.mlp.fc1."),
    (re.compile(r"(\.blocks\.\d+)\.output\.dense\."), r"\1.mlp.fc2."),
)


def _legacy_swin_name(key: str) -> str:
    if not key.startswith("vision_model.model.encoder."):
        return key
    for pattern, replacement in _LEGACY_SWIN_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def _listing(keys: Iterable[str], limit: int = 10) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"No MedCLIP checkpoint at {path}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    elif path.suffix in (".bin", ".pt", ".pth"):
        try:
            # weights_only=True: tensors and plain containers only; arbitrary objects are never unpickled.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"{path.name} holds more than tensors (refused by torch.load(weights_only=True)): {exc}"
            ) from exc
    else:
        raise ValueError(f"{path}: expected a .bin, .pt, .pth or .safetensors checkpoint.")
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise ValueError(f"{path.name} is not a state dict (a mapping of parameter names to tensors).")
    return dict(state)


def load_medclip_checkpoint(model: MedCLIPModel, path: str | os.PathLike) -> MedCLIPModel:
    """Load a MedCLIP state dict (``.bin``/``.pt`` via ``torch.load(weights_only=True)``, or
    ``.safetensors``) into ``model`` with a strict check, then clamp the logit scale as MedCLIP does.

    Keys written by transformers 4.x for Swin (``attention.self.query``, ``intermediate.dense``,
    ...) are mapped to the current names first. Buffers derived from the config
    (``*.embeddings.position_ids``, ``*.embeddings.token_type_ids``, ``*.relative_position_index``)
    may be present or absent. Any other missing or unexpected key, or a shape mismatch, raises
    ``ValueError`` naming the keys.
    """
    path = Path(path)
    state = _read_state_dict(path)
    expected = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key not in expected:
            new_key = _legacy_swin_name(key)
            key = new_key if new_key in expected or _DERIVED_BUFFERS.search(new_key) else key
        if key in renamed:
            raise ValueError(f"{path.name}: the key {key!r} occurs twice (after mapping legacy Swin names).")
        renamed[key] = tensor
    missing = [k for k in expected if k not in renamed and not _DERIVED_BUFFERS.search(k)]
    unexpected = [k for k in renamed if k not in expected and not _DERIVED_BUFFERS.search(k)]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if problems:
        raise ValueError(f"{path.name} does not match the MedCLIP architecture: " + "; ".join(problems) + ".")
    for key, tensor in renamed.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{path.name}: shape mismatch for {key}: checkpoint {tuple(tensor.shape)}, "
                f"model {tuple(expected[key].shape)}."
            )
    loadable = {k: v for k, v in renamed.items() if k in expected}
    result = model.load_state_dict(loadable, strict=False)
    leftover = [k for k in result.missing_keys if not _DERIVED_BUFFERS.search(k)]
    if leftover or result.unexpected_keys:  # cannot happen after the checks above; kept as a guard
        raise ValueError(f"{path.name}: incomplete load ({_listing(leftover + list(result.unexpected_keys))}).")
    return model.clamp_logit_scale_()


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------
def _twin_parts():
    from transformers import BertConfig, BertTokenizer, SwinConfig

    hf_tokenizer = BertTokenizer.from_pretrained(str(TWIN_VOCAB_DIR))
    vision_config = SwinConfig(**TWIN_SWIN_CONFIG)
    text_config = BertConfig(vocab_size=len(hf_tokenizer), pad_token_id=hf_tokenizer.pad_token_id,
                             **TWIN_BERT_CONFIG)
    return vision_config, text_config, hf_tokenizer


def _real_parts(local_files_only: bool):
    from transformers import AutoConfig, AutoTokenizer

    vision_config = AutoConfig.from_pretrained(SWIN_REPO, local_files_only=local_files_only)
    text_config = AutoConfig.from_pretrained(BERT_REPO, local_files_only=local_files_only)
    hf_tokenizer = AutoTokenizer.from_pretrained(BERT_REPO, local_files_only=local_files_only)
    if vision_config.model_type != "swin" or text_config.model_type != "bert":
        raise ValueError(
            f"Unexpected configs: {SWIN_REPO} is {vision_config.model_type!r}, {BERT_REPO} is {text_config.model_type!r}."
        )
    return vision_config, text_config, hf_tokenizer


def build_medclip(checkpoint: str | os.PathLike | None, *, twin: bool = False, device: str | torch.device = "cpu",
                  context_length: int = CONTEXT_LENGTH, local_files_only: bool = False,
                  seed: int = TWIN_SEED) -> tuple[MedCLIPModel, T.Compose, MedCLIPTokenizer]:
    """Build MedCLIP-ViT: ``(model, preprocess, tokenizer)``, the model in eval mode on ``device``.

    Args:
        checkpoint: the released ``pytorch_model.bin`` (or a ``.safetensors`` copy); required unless
            ``twin``. For a twin it is optional (a state dict of the twin, e.g. saved by a test).
        twin: build the tiny random-weight architecture twin offline (``TWIN_*_CONFIG``, the bundled
            WordPiece vocabulary, weights seeded by ``seed``) instead of MedCLIP's real sizes.
        context_length: padded prompt length (77, MedCLIP's ``model_max_length``; the CalibPrompt
            authors padded MedCLIP prompts to :data:`PAPER_CONTEXT_LENGTH` = 25). Features depend on it.
        local_files_only: read the Hub configs/vocabulary from the local cache only (real model).

    The real model reads only configs and the vocabulary from the Hub (:data:`HUB_FILES`); its
    weights come from ``checkpoint``, loaded by :func:`load_medclip_checkpoint`.
    """
    if twin:
        vision_config, text_config, hf_tokenizer = _twin_parts()
    else:
        if checkpoint is None:
            raise ValueError(
                "MedCLIP needs its released checkpoint (pytorch_model.bin from "
                f"{CHECKPOINT_URL}); fetch it with download_medclip_checkpoint(folder) and pass its path."
            )
        vision_config, text_config, hf_tokenizer = _real_parts(local_files_only)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MedCLIPModel(vision_config, text_config, pad_token_id=hf_tokenizer.pad_token_id)
    if checkpoint is not None:
        load_medclip_checkpoint(model, checkpoint)
    model = model.to(torch.device(device)).eval()
    tokenizer = MedCLIPTokenizer(hf_tokenizer, context_length=context_length)
    return model, medclip_preprocess(int(vision_config.image_size)), tokenizer
