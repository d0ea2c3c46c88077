"""Loading a fully cached Hub model is offline *per call*: no network, and no process-wide switch.

Earlier versions set ``huggingface_hub.constants.HF_HUB_OFFLINE`` for the whole process while a cached
model loaded, which turned a download running in another thread into a cache miss. These tests build
real Hugging Face cache layouts in ``tmp_path`` (``models--org--name/snapshots/<commit>/...`` and
``refs/main``), load from them with the network cut off, and check that neither the huggingface_hub
constant nor the environment changes during or after the load, and that the model is the same one
the old process-wide mechanism produced.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from calibprompt.backbones import BACKBONES, BackboneSpec, BackboneUnavailableError, load_backbone, save_backbone
from calibprompt.backbones import loading  # where load_backbone looks hub_reachable up
from calibprompt.backbones.registry import TWIN_TEXT_DIRS, _clip_files

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _image(seed=0, size=(40, 48)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8))


def fill_hub_cache(cache: Path, repo: str, files: dict[str, bytes | str | Path]) -> Path:
    """A Hugging Face cache entry for ``repo``: blobs, a snapshot of symlinks (copies if unsupported), refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    for i, (name, data) in enumerate(files.items()):
        if isinstance(data, Path):
            data = data.read_bytes()
        elif isinstance(data, str):
            data = data.encode()
        blob = root / "blobs" / f"{i:040x}"
        blob.write_bytes(data)
        try:
            (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
        except OSError:
            shutil.copyfile(blob, snapshot / name)
    return snapshot


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    """An empty private Hugging Face cache (huggingface_hub and transformers read the constant per call)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture()
def no_network(monkeypatch):
    """Every DNS lookup or socket connection fails (and is recorded); the Hub must not even be probed."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access is disabled in this test")

    def probe(timeout=3.0):
        raise AssertionError("a fully cached model must load without probing the Hub")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(loading, "hub_reachable", probe)
    return attempts


def _offline_state():
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE, dict(os.environ)


@contextmanager
def watch_offline_state(monkeypatch):
    """Records the offline constant and the environment while the block runs.

    From another thread, polling (as a concurrent download would see them), and at fixed points of
    the load: each cache look-up and open_clip's weight loading.
    """
    import huggingface_hub
    import open_clip.factory

    seen: list[tuple[bool, dict]] = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            seen.append(_offline_state())
            stop.wait(0.001)

    def recording(function):
        def wrapper(*args, **kwargs):
            seen.append(_offline_state())
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", recording(huggingface_hub.try_to_load_from_cache))
    monkeypatch.setattr(open_clip.factory, "load_checkpoint", recording(open_clip.factory.load_checkpoint))
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def _assert_untouched(seen, before):
    assert seen, "nothing was observed during the load"
    assert all(offline == before[0] for offline, _ in seen), "HF_HUB_OFFLINE changed during the load"
    assert all(env == before[1] for _, env in seen), "the environment changed during the load"
    assert _offline_state() == before, "HF_HUB_OFFLINE or the environment changed after the load"


def _assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _old_mechanism_load(model_id, monkeypatch):
    """What the loader did before: open_clip's own hf-hub: path with the process-wide offline switch on."""
    import open_clip
    from huggingface_hub import constants

    with monkeypatch.context() as m:
        m.setattr(constants, "HF_HUB_OFFLINE", True)
        model, _, preprocess = open_clip.create_model_and_transforms(model_id, device="cpu", precision="fp32")
        tokenizer = open_clip.get_tokenizer(model_id)
    return model.eval(), preprocess, tokenizer


def _cache_open_clip_model(cache, tmp_path, backbone, repo, text_repo=None):
    folder = save_backbone(backbone, tmp_path / "export")
    config = json.loads((folder / "open_clip_config.json").read_text())
    if text_repo is not None:  # name the text tower and tokenizer by a Hub repo, as real models do
        text_cfg = config["model_cfg"]["text_cfg"]
        text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = text_repo
        text_cfg.pop("hf_model_pretrained", None)
    fill_hub_cache(cache, repo, {"open_clip_config.json": json.dumps(config),
                                 "open_clip_model.safetensors": folder / "open_clip_model.safetensors"})


def test_cached_native_clip_loads_without_touching_the_offline_switch(hf_cache, no_network, tmp_path, monkeypatch,
                                                                       tiny_native):
    _cache_open_clip_model(hf_cache, tmp_path, tiny_native, "test-org/tiny-clip")
    before = _offline_state()
    with watch_offline_state(monkeypatch) as seen:
        loaded = load_backbone("hf-hub:test-org/tiny-clip", device="cpu")
    _assert_untouched(seen, before)
    assert no_network == []

    _assert_same_model(loaded.model, tiny_native.model)
    old_model, old_preprocess, old_tokenizer = _old_mechanism_load("hf-hub:test-org/tiny-clip", monkeypatch)
    _assert_same_model(loaded.model, old_model)
    assert repr(loaded.preprocess) == repr(old_preprocess)
    texts = ["mucus", "an H&E image of tumor epithelium"]
    assert torch.equal(loaded.tokenizer(texts), old_tokenizer(texts))
    img = _image(5)
    assert torch.allclose(loaded.encode_image(img), tiny_native.encode_image(img), atol=1e-6)
    assert torch.allclose(loaded.encode_text(texts), tiny_native.encode_text(texts), atol=1e-6)


def test_cached_hf_text_tower_is_read_from_its_own_cached_repo(hf_cache, no_network, tmp_path, monkeypatch, tiny_hf):
    """A CustomTextCLIP whose BERT text tower and tokenizer are named by a Hub repo (as BiomedCLIP's are)."""
    bert = TWIN_TEXT_DIRS["bert-tiny"]
    fill_hub_cache(hf_cache, "test-org/tiny-bert", {p.name: p for p in sorted(bert.iterdir())})
    _cache_open_clip_model(hf_cache, tmp_path, tiny_hf, "test-org/tiny-hf-clip", text_repo="test-org/tiny-bert")
    spec = BackboneSpec(name="tiny-hub-hf", family="tiny", description="cached test model",
                        model_id="hf-hub:test-org/tiny-hf-clip", context_length=256,
                        hub_files=(_clip_files("test-org/tiny-hf-clip"),))
    monkeypatch.setitem(BACKBONES, "tiny-hub-hf", spec)
    before = _offline_state()
    with watch_offline_state(monkeypatch) as seen:
        by_name = load_backbone("tiny-hub-hf", device="cpu")
        by_id = load_backbone("hf-hub:test-org/tiny-hf-clip", device="cpu")
    _assert_untouched(seen, before)
    assert no_network == []

    for loaded in (by_name, by_id):
        _assert_same_model(loaded.model, tiny_hf.model)
        texts = ["a photo of debris.", "An H&E image of adipose tissue"]
        assert torch.equal(loaded.tokenizer(texts), tiny_hf.tokenizer(texts))
        assert torch.allclose(loaded.encode_text(texts), tiny_hf.encode_text(texts), atol=1e-6)
    assert by_name.name == "tiny-hub-hf" and by_name.family == "tiny" and by_name.context_length == 256
    old_model, old_preprocess, old_tokenizer = _old_mechanism_load("hf-hub:test-org/tiny-hf-clip", monkeypatch)
    _assert_same_model(by_id.model, old_model)
    assert repr(by_id.preprocess) == repr(old_preprocess)
    assert torch.equal(by_id.tokenizer(["debris"]), old_tokenizer(["debris"]))


def test_an_uncached_text_repo_counts_as_missing(hf_cache, tmp_path, monkeypatch, tiny_hf):
    """The text repo the cached config names is checked too, so the load never half-works offline."""
    _cache_open_clip_model(hf_cache, tmp_path, tiny_hf, "test-org/tiny-hf-clip", text_repo="test-org/not-cached")
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: (False, "offline"))
    with pytest.raises(BackboneUnavailableError, match="test-org/not-cached/config.json"):
        load_backbone("hf-hub:test-org/tiny-hf-clip")


def test_cached_plip_loads_with_local_files_only(hf_cache, no_network, tmp_path, monkeypatch):
    from calibprompt.backbones.plip import PLIP_REPO, hf_clip_to_openclip, tiny_hf_clip

    hf = tiny_hf_clip(seed=4)
    hf.save_pretrained(tmp_path / "plip")
    fill_hub_cache(hf_cache, PLIP_REPO, {p.name: p for p in sorted((tmp_path / "plip").iterdir()) if p.is_file()})
    before = _offline_state()
    with watch_offline_state(monkeypatch) as seen:
        loaded = load_backbone("plip", device="cpu")
    _assert_untouched(seen, before)
    assert no_network == []
    expected, _ = hf_clip_to_openclip(hf)
    _assert_same_model(loaded.model, expected)
    assert loaded.name == "plip" and loaded.pretrained


def test_cached_medclip_loads_with_local_files_only(hf_cache, no_network, tmp_path, monkeypatch):
    from transformers import BertConfig, SwinConfig

    from calibprompt.backbones.medclip import (
        BERT_REPO,
        SWIN_REPO,
        TWIN_SWIN_CONFIG,
        TWIN_VOCAB_DIR,
        MedCLIPModel,
        build_medclip,
    )

    bert = {"model_type": "bert", "vocab_size": 203, "hidden_size": 64, "num_hidden_layers": 3,
            "num_attention_heads": 2, "intermediate_size": 128, "pad_token_id": 0}
    fill_hub_cache(hf_cache, SWIN_REPO, {"config.json": json.dumps({"model_type": "swin", **TWIN_SWIN_CONFIG})})
    fill_hub_cache(hf_cache, BERT_REPO, {"config.json": json.dumps(bert), "vocab.txt": TWIN_VOCAB_DIR / "vocab.txt"})
    torch.manual_seed(7)
    state = MedCLIPModel(SwinConfig(**TWIN_SWIN_CONFIG), BertConfig(**bert)).state_dict()
    checkpoint = tmp_path / "medclip" / "pytorch_model.bin"
    checkpoint.parent.mkdir()
    torch.save(state, checkpoint)
    monkeypatch.setenv("MEDCLIP_CHECKPOINT", str(checkpoint))
    before = _offline_state()
    with watch_offline_state(monkeypatch) as seen:
        loaded = load_backbone("medclip", device="cpu")
    _assert_untouched(seen, before)
    assert no_network == []
    expected, _, tokenizer = build_medclip(checkpoint, local_files_only=True)
    _assert_same_model(loaded.model, expected)
    assert torch.equal(loaded.tokenizer(["A chest X-ray"]), tokenizer(["A chest X-ray"]))


def test_a_pretrained_tag_loads_its_cached_weights_file(hf_cache, no_network, monkeypatch):
    """Built-in names with a tag (the CLIP references): the tag's cached file and preprocessing, no Hub call."""
    import open_clip

    from calibprompt.backbones import builders

    snapshot = fill_hub_cache(hf_cache, "timm/vit_base_patch16_clip_224.openai",
                              {"open_clip_pytorch_model.bin": b"weights"})
    calls = []

    def fake_create(model_name, pretrained=None, **kwargs):
        calls.append((model_name, pretrained, kwargs))
        return torch.nn.Linear(1, 1), None, "preprocess"

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    spec = BACKBONES["clip-vit-b16"]
    model, preprocess, tokenizer = builders._create_openclip(spec, torch.device("cpu"), "fp32", local_files_only=True)
    [(name, pretrained, kwargs)] = calls
    assert name == "ViT-B-16" and Path(pretrained) == snapshot / "open_clip_pytorch_model.bin"
    tag = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    assert kwargs["image_mean"] == tag["mean"] and kwargs["image_std"] == tag["std"]
    assert kwargs["image_interpolation"] == "bicubic" and kwargs["image_resize_mode"] == "shortest"
    assert kwargs["force_quick_gelu"] is True and "text_cfg" not in kwargs
    assert preprocess == "preprocess" and isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer)
    assert no_network == []
