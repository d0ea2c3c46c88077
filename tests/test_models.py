"""Backbone registry and loading: twins, local folders, the Hub cache, and failing fast offline."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from calibprompt.backbones import (
    BACKBONES,
    BackboneUnavailableError,
    get_backbone_spec,
    hub_reachable,
    list_backbones,
    load_backbone,
    save_backbone,
)
from calibprompt.backbones import loading  # where load_backbone looks hub_reachable up (patch it there)


def _image(seed=0, size=(40, 48)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8))


def test_registry_lists_the_paper_and_test_backbones():
    names = list_backbones()
    for required in ("biomedclip", "quiltnet-b16", "quiltnet-b32", "clip-vit-b16", "clip-vit-b32",
                     "tiny-random", "tiny-random-hf"):
        assert required in names
    assert BACKBONES["biomedclip"].context_length == 256
    assert BACKBONES["biomedclip"].model_id == "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    with pytest.raises(ValueError, match="choose one of"):
        get_backbone_spec("gpt")


def test_tiny_backbone_interface(tiny_backbone):
    b = tiny_backbone
    assert not b.model.training
    assert all(not p.requires_grad for p in b.model.parameters())
    text = b.encode_text(["a photo of debris.", "an image of mucus."])
    assert text.shape == (2, b.embed_dim) and text.dtype == torch.float32
    assert torch.allclose(text.norm(dim=1), torch.ones(2), atol=1e-5)
    img = b.encode_image([_image(0), _image(1)])
    assert img.shape == (2, b.embed_dim)
    assert torch.allclose(img.norm(dim=1), torch.ones(2), atol=1e-5)
    assert b.encode_image(_image(0), normalize=False).norm() > 0
    assert b.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)


def test_encode_text_equals_open_clip_own_encoding(tiny_backbone):
    texts = ["An H&E image of colorectal adenocarcinoma epithelium.", "A chest X-ray image of normal patient"]
    with torch.no_grad():
        expected = tiny_backbone.model.encode_text(tiny_backbone.tokenizer(texts), normalize=True)
    assert torch.allclose(tiny_backbone.encode_text(texts), expected, atol=1e-6)


def test_twins_are_deterministic():
    a, b = load_backbone("tiny-random"), load_backbone("tiny-random")
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_biomedclip_twin_has_the_real_architecture():
    from open_clip.hf_model import HFTextEncoder
    from open_clip.model import CustomTextCLIP

    twin = load_backbone("biomedclip", pretrained=False)
    assert isinstance(twin.model, CustomTextCLIP) and isinstance(twin.model.text, HFTextEncoder)
    assert twin.context_length == 256 and twin.text_tower.width == 768 and twin.embed_dim == 512
    assert twin.model.visual.trunk.patch_embed.proj.kernel_size == (16, 16)
    assert twin.pretrained is False and twin.family == "biomedclip"


def test_local_dir_round_trip(tmp_path, tiny_native):
    folder = save_backbone(tiny_native, tmp_path / "my-model")
    assert {p.name for p in folder.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors"}
    loaded = load_backbone(str(folder))
    also = load_backbone(f"local-dir:{folder}")
    img = _image(3)
    expected = tiny_native.encode_image(img)
    assert torch.allclose(loaded.encode_image(img), expected, atol=1e-6)
    assert torch.allclose(also.encode_text(["debris"]), tiny_native.encode_text(["debris"]), atol=1e-6)
    assert loaded.family == "tiny"


def test_bad_paths_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="not a registered name"):
        load_backbone("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="open_clip_config.json"):
        load_backbone(str(tmp_path / "empty"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ValueError, match="arch="):
        load_backbone(str(weights))


@pytest.fixture()
def empty_hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_offline_hub_model_fails_fast_with_instructions(empty_hf_cache, monkeypatch):
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: (False, "Name or service not known"))
    start = time.perf_counter()
    with pytest.raises(BackboneUnavailableError) as info:
        load_backbone("biomedclip")
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert "biomedclip" in message and "unreachable" in message
    assert "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" in message
    assert "internet" in message and "cache" in message and "demo" in message


def test_hf_hub_offline_is_respected_without_any_network_call(empty_hf_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_network(timeout=3.0):
        raise AssertionError("the Hub must not be probed when HF_HUB_OFFLINE is set")

    monkeypatch.setattr(loading, "hub_reachable", no_network)
    with pytest.raises(BackboneUnavailableError, match="HF_HUB_OFFLINE"):
        load_backbone("quiltnet-b32")


def test_really_unreachable_hub_fails_within_five_seconds(empty_hf_cache):
    """On this machine the Hub is unreachable for real; where it is reachable this test is moot."""
    ok, _ = hub_reachable()
    if ok:
        pytest.skip("the Hub is reachable from here")
    start = time.perf_counter()
    with pytest.raises(BackboneUnavailableError):
        load_backbone("clip-vit-b16")
    assert time.perf_counter() - start < 5.0


def _fill_hub_cache(cache, repo: str, files: dict[str, bytes], commit: str = "0" * 40):
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


def test_cached_hub_model_loads_offline_through_open_clip(empty_hf_cache, monkeypatch, tmp_path, tiny_native):
    """The real hf-hub: path of open_clip, served from a pre-filled cache with no network at all."""
    folder = save_backbone(tiny_native, tmp_path / "export")
    _fill_hub_cache(empty_hf_cache, "test-org/tiny-clip", {
        "open_clip_config.json": (folder / "open_clip_config.json").read_bytes(),
        "open_clip_model.safetensors": (folder / "open_clip_model.safetensors").read_bytes(),
    })

    def no_network(timeout=3.0):
        raise AssertionError("a fully cached model must load without probing the Hub")

    monkeypatch.setattr(loading, "hub_reachable", no_network)
    loaded = load_backbone("hf-hub:test-org/tiny-clip")
    assert loaded.name == "hf-hub:test-org/tiny-clip"
    img = _image(5)
    assert torch.allclose(loaded.encode_image(img), tiny_native.encode_image(img), atol=1e-6)
    assert torch.allclose(loaded.encode_text(["mucus"]), tiny_native.encode_text(["mucus"]), atol=1e-6)
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert config["model_cfg"]["embed_dim"] == 32


# ------------------------------------------------------------------ PLIP (issue: the paper's other Med-VLMs)
def test_plip_conversion_is_exact_against_transformers_clip():
    from open_clip.tokenizer import SimpleTokenizer

    from calibprompt.backbones.plip import hf_clip_to_openclip, tiny_hf_clip

    hf = tiny_hf_clip(seed=3)
    model, cfg = hf_clip_to_openclip(hf)
    ids = SimpleTokenizer(context_length=77)(["An H&E image of tumor.", "a photo of lymphocytes and debris"])
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text_ref = hf.get_text_features(input_ids=ids)
        image_ref = hf.get_image_features(pixel_values=pixels)
        text_ref = getattr(text_ref, "pooler_output", text_ref)
        image_ref = getattr(image_ref, "pooler_output", image_ref)
        assert torch.allclose(model.encode_text(ids), text_ref, atol=1e-5)
        assert torch.allclose(model.encode_image(pixels), image_ref, atol=1e-5)
    assert model.logit_scale.item() == pytest.approx(hf.logit_scale.item())
    assert cfg["quick_gelu"] is True and cfg["vision_cfg"]["patch_size"] == 8


def test_plip_and_medclip_are_registered_and_fail_fast_offline(empty_hf_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("CALIBPROMPT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDCLIP_CHECKPOINT", raising=False)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: (False, "offline"))
    assert {"plip", "medclip"} <= set(list_backbones())
    for name, expected in (("plip", "vinid/plip"), ("medclip", "medclip-vit-pretrained")):
        start = time.perf_counter()
        with pytest.raises(BackboneUnavailableError) as info:
            load_backbone(name)
        assert time.perf_counter() - start < 5.0
        assert name in str(info.value) and expected in str(info.value) and "demo" in str(info.value)


def test_plip_twin_runs_the_prompt_learner_exactly(tmp_path):
    from calibprompt.prompting.learner import PromptLearner

    twin = load_backbone("plip", pretrained=False)
    assert twin.family == "plip" and twin.context_length == 77
    names = ["tumor", "normal mucosa"]
    learner = PromptLearner(twin, names, ctx_init="a photo of a")
    with torch.no_grad():
        expected = twin.model.encode_text(twin.tokenizer([f"a photo of a {c}." for c in names]), normalize=True)
        assert torch.allclose(learner.encode_text(), expected, atol=1e-5)
    assert twin.encode_image([_image(1)]).shape == (1, 32)
