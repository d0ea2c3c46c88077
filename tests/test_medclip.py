"""MedCLIP-ViT rebuilt from transformers parts: pooling, text tower, checkpoints, preprocessing, download.

Everything runs offline on the tiny architecture twin (``build_medclip(None, twin=True)``).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import types
import zipfile

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from calibprompt.backbones.medclip import (
    CHECKPOINT_NAME,
    IMAGE_MEAN,
    IMAGE_STD,
    LOGIT_SCALE_MAX,
    MedCLIPDownloadError,
    MedCLIPModel,
    MedCLIPTextTower,
    MedCLIPTokenizer,
    build_medclip,
    download_medclip_checkpoint,
    load_medclip_checkpoint,
    medclip_preprocess,
)
from calibprompt.backbones.medclip_download import CHECKPOINT_SHA256, CHECKPOINT_SHA256_ENV, CHECKPOINT_URL
from calibprompt.prompting.learner import PromptLearner

CLASSES = ["normal lung", "pneumonia", "covid opacity"]
TEXTS = ["a chest x-ray with pneumonia.", "no acute cardiopulmonary process"]


@pytest.fixture(scope="module")
def twin():
    model, preprocess, tokenizer = build_medclip(None, twin=True)
    model.eval().requires_grad_(False)  # as calibprompt.backbones.Backbone does
    return model, preprocess, tokenizer


@pytest.fixture()
def other_twin():
    """A twin with different random weights (seed 1), to load checkpoints into."""
    model, _, _ = build_medclip(None, twin=True, seed=1)
    return model.eval()


def _outputs(model, tokenizer):
    torch.manual_seed(123)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(tokenizer(TEXTS))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
def test_twin_architecture_and_shapes(twin):
    from transformers import BertModel, SwinModel

    model, _, tokenizer = twin
    assert isinstance(model, MedCLIPModel)
    assert isinstance(model.vision_model.model, SwinModel) and isinstance(model.text_model.model, BertModel)
    assert model.text_model.model.pooler is not None
    assert model.vision_model.projection_head.bias is None and model.text_model.projection_head.bias is None
    assert model.vision_model.projection_head.weight.shape == (512, model.vision_model.model.config.hidden_size)
    assert model.text_model.projection_head.weight.shape == (512, model.text_model.model.config.hidden_size)
    assert model.text_model.model.config.num_hidden_layers == 3  # hidden_states[2] != hidden_states[-1]
    assert float(model.logit_scale.exp()) == pytest.approx(1 / 0.07, rel=1e-5)

    gray = torch.randn(2, 1, 224, 224)
    with torch.no_grad():
        image = model.encode_image(gray)
        image_rgb = model.encode_image(gray.repeat(1, 3, 1, 1))
        text = model.encode_text(tokenizer(TEXTS))
    assert image.shape == (2, 512) and text.shape == (2, 512)
    assert torch.equal(image, image_rgb)  # one channel is repeated to three, as MedCLIP does
    assert not torch.allclose(image.norm(dim=-1), torch.ones(2))  # unnormalised


def test_twin_is_seeded_and_leaves_the_global_rng_alone(twin):
    state = torch.random.get_rng_state()
    again, _, _ = build_medclip(None, twin=True)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (key, a), b in zip(twin[0].state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), key


def test_encode_text_is_medclips_pooling(twin):
    model, _, tokenizer = twin
    ids = tokenizer(TEXTS)
    mask = (ids != tokenizer.tokenizer.pad_token_id).long()
    with torch.no_grad():
        out = model.text_model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hs = out.hidden_states
        assert len(hs) == 4
        # (B, 3, L, H): layers 1, 2 and the last; mean over every position (padding too), then over layers.
        layers = torch.stack([hs[1], hs[2], hs[-1]], dim=1)
        pooled = layers.sum(dim=2) / ids.shape[1]
        pooled = (pooled[:, 0] + pooled[:, 1] + pooled[:, 2]) / 3
        expected = pooled @ model.text_model.projection_head.weight.T
        mine = model.encode_text(ids)
    assert torch.allclose(mine, expected, atol=1e-6), (mine - expected).abs().max()
    # An explicit attention mask equal to the default gives the same result.
    with torch.no_grad():
        assert torch.equal(model.encode_text(ids, attention_mask=mask), mine)


def test_padding_positions_change_the_features(twin):
    """MedCLIP averages over all positions, padding included: the padded length matters (no trimming)."""
    model, _, tokenizer = twin
    tower = model.build_text_tower(tokenizer)
    ids77 = tokenizer(TEXTS)
    ids40 = tokenizer(TEXTS, context_length=40)
    assert ids77.shape == (2, 77) and ids40.shape == (2, 40)
    assert torch.equal(ids77[:, :40], ids40)
    with torch.no_grad():
        f77, f40 = model.encode_text(ids77), model.encode_text(ids40)
    assert (f77 - f40).abs().max() > 1e-3
    assert 1 - F.cosine_similarity(f77, f40).min() > 1e-5
    assert tower.trim(ids77) is ids77  # hence the tower never cuts the padded tail
    with torch.no_grad():
        assert torch.equal(tower.encode_ids(ids77, trim=True), tower.encode_ids(ids77, trim=False))


def test_tokenizer_pads_truncates_and_lowercases(twin):
    _, _, tokenizer = twin
    assert isinstance(tokenizer, MedCLIPTokenizer) and tokenizer.context_length == 77
    ids = tokenizer(["A PHOTO of Pneumonia.", "a photo of pneumonia."])
    assert ids.dtype == torch.long and ids.shape == (2, 77)
    assert torch.equal(ids[0], ids[1])
    hf = tokenizer.tokenizer
    assert ids[0, 0] == hf.cls_token_id and ids[0, -1] == hf.pad_token_id
    long_ids = tokenizer(["x " * 200])
    assert long_ids.shape == (1, 77) and long_ids[0, -1] == hf.sep_token_id  # truncated, still ends with [SEP]
    assert tokenizer("single").shape == (1, 77)


# --------------------------------------------------------------------------------------------
# The text tower and prompt learning
# --------------------------------------------------------------------------------------------
def test_text_tower_matches_encode_text(twin):
    model, _, tokenizer = twin
    tower = model.build_text_tower(tokenizer)
    assert isinstance(tower, MedCLIPTextTower)
    assert tower.token_embedding_module is model.text_model.model.embeddings.word_embeddings
    assert tower.width == 64 and tower.context_length == 77
    assert tower.dtype == torch.float32 and tower.device.type == "cpu"
    ids = tower.tokenize(TEXTS)
    assert ids.shape == (2, 77)
    assert tower.content_length(ids) == int((ids != tokenizer.pad_token_id).sum(1).max())
    with torch.no_grad():
        mine = tower.encode_embeddings(tower.embed_tokens(ids), ids)
        expected = model.encode_text(ids)
    assert torch.allclose(mine, expected, atol=1e-6)


@pytest.mark.parametrize(
    "position, layout",
    [("end", "a photo of a {}."), ("middle", "a photo {} of a."), ("front", "{} a photo of a.")],
)
def test_prompt_learner_reproduces_the_written_prompt(twin, position, layout):
    model, _, tokenizer = twin
    holder = types.SimpleNamespace(text_tower=model.build_text_tower(tokenizer))
    learner = PromptLearner(holder, CLASSES, ctx_init="a photo of a", class_token_position=position)
    assert learner.n_ctx == 4
    assert learner.token_ids.shape == (3, 77)  # not trimmed
    with torch.no_grad():
        mine = learner.encode_text(normalize=False)
        expected = model.encode_text(tokenizer([layout.format(c) for c in CLASSES]))
    assert torch.allclose(mine, expected, atol=1e-5), (mine - expected).abs().max()


def test_only_the_context_learns(twin):
    model, _, tokenizer = twin
    holder = types.SimpleNamespace(text_tower=model.build_text_tower(tokenizer))
    learner = PromptLearner(holder, CLASSES, n_ctx=8, generator=torch.Generator().manual_seed(0))
    assert [name for name, _ in learner.named_parameters()] == ["ctx"]
    feats = learner.encode_text()
    (feats @ feats.T).sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    params = list(model.parameters())
    assert params and all(not p.requires_grad and p.grad is None for p in params)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def _save(state, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_checkpoint_round_trip(twin, other_twin, tmp_path, suffix):
    model, _, tokenizer = twin
    before = _outputs(other_twin, tokenizer)
    assert not torch.allclose(before[1], _outputs(model, tokenizer)[1])
    path = _save(model.state_dict(), tmp_path / f"medclip{suffix}")
    assert load_medclip_checkpoint(other_twin, path) is other_twin
    for mine, expected in zip(_outputs(other_twin, tokenizer), _outputs(model, tokenizer)):
        assert torch.equal(mine, expected)


def _to_legacy_swin(key: str) -> str:
    """transformers 4.x Swin names, as in MedCLIP's released checkpoint."""
    if not key.startswith("vision_model.model.encoder."):
        return key
    key = key.replace(".attention.q_proj.", ".attention.self.query.")
    key = key.replace(".attention.k_proj.", ".attention.self.key.")
    key = key.replace(".attention.v_proj.", ".attention.self.value.")
    key = key.replace(".attention.o_proj.", ".attention.output.dense.")
    key = key.replace(".attention.relative_position_bias.relative_position_bias_table",
                      ".attention.self.relative_position_bias_table")
    key = key.replace(".mlp.fc1.", ".intermediate.dense.")
    return key.replace(".mlp.fc2.", ".output.dense.")


def test_checkpoint_in_the_legacy_transformers_layout_loads(twin, other_twin, tmp_path):
    model, _, tokenizer = twin
    state = {_to_legacy_swin(k): v for k, v in model.state_dict().items()}
    assert any(".attention.self.query." in k for k in state) and any(".intermediate.dense." in k for k in state)
    blocks = sorted({m.group(1) for k in state if (m := re.match(r"(vision_model\.model\.encoder\.layers\.\d+\.blocks\.\d+)\.", k))})
    for block in blocks:  # older transformers saved these buffers
        state[f"{block}.attention.self.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    state["text_model.model.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    load_medclip_checkpoint(other_twin, _save(state, tmp_path / "legacy.bin"))
    for mine, expected in zip(_outputs(other_twin, tokenizer), _outputs(model, tokenizer)):
        assert torch.equal(mine, expected)


@pytest.mark.parametrize("breakage", ["missing", "unexpected", "shape"])
def test_checkpoint_mismatches_are_refused(twin, tmp_path, breakage):
    model, _, _ = twin
    state = dict(model.state_dict())
    key = "text_model.projection_head.weight"
    if breakage == "missing":
        del state[key]
        name = key
    elif breakage == "unexpected":
        name = "text_model.extra_head.weight"
        state[name] = torch.zeros(3)
    else:
        state[key] = torch.zeros(512, 63)
        name = key
    with pytest.raises(ValueError, match=re.escape(name)) as info:
        load_medclip_checkpoint(model, _save(state, tmp_path / "broken.bin"))
    assert breakage.replace("shape", "shape mismatch") in str(info.value)


def test_position_ids_may_be_present_or_absent(twin, other_twin, tmp_path):
    model, _, tokenizer = twin
    state = dict(model.state_dict())
    assert not any(k.endswith("position_ids") for k in state)  # non-persistent in current transformers
    state["text_model.model.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    load_medclip_checkpoint(other_twin, _save(state, tmp_path / "with.bin"))
    del state["text_model.model.embeddings.position_ids"]
    load_medclip_checkpoint(other_twin, _save(state, tmp_path / "without.safetensors"))
    assert torch.equal(_outputs(other_twin, tokenizer)[1], _outputs(model, tokenizer)[1])


def test_many_problems_are_listed_briefly(twin, tmp_path):
    model, _, _ = twin
    state = {f"bogus.{i}": torch.zeros(1) for i in range(25)}
    with pytest.raises(ValueError, match=r"unexpected keys \(25\).*and 15 more"):
        load_medclip_checkpoint(model, _save({**model.state_dict(), **state}, tmp_path / "bogus.bin"))


@pytest.mark.parametrize("stored, loaded", [(5.3, LOGIT_SCALE_MAX), (-1.0, 0.0), (3.0, 3.0)])
def test_logit_scale_is_clamped_on_load(twin, other_twin, tmp_path, stored, loaded):
    state = dict(twin[0].state_dict())
    state["logit_scale"] = torch.tensor(stored)
    load_medclip_checkpoint(other_twin, _save(state, tmp_path / "scale.bin"))
    assert float(other_twin.logit_scale.detach()) == pytest.approx(loaded)


class _Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickled_objects_are_never_unpickled(twin, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    torch.save({"logit_scale": torch.tensor(1.0), "payload": _Malicious(str(marker))}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_medclip_checkpoint(twin[0], path)
    assert not marker.exists()


def test_non_state_dicts_and_unknown_suffixes_are_refused(twin, tmp_path):
    torch.save({"logit_scale": 1.5}, tmp_path / "numbers.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        load_medclip_checkpoint(twin[0], tmp_path / "numbers.pt")
    (tmp_path / "weights.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a"):
        load_medclip_checkpoint(twin[0], tmp_path / "weights.ckpt")
    with pytest.raises(FileNotFoundError):
        load_medclip_checkpoint(twin[0], tmp_path / "absent.bin")


def test_build_from_a_checkpoint_and_the_real_model_needs_one(twin, tmp_path):
    model, _, tokenizer = twin
    path = _save(model.state_dict(), tmp_path / "twin.safetensors")
    rebuilt, _, _ = build_medclip(path, twin=True, seed=7)
    assert torch.equal(_outputs(rebuilt, tokenizer)[0], _outputs(model, tokenizer)[0])
    with pytest.raises(ValueError, match="download_medclip_checkpoint"):
        build_medclip(None)  # refused before any Hub access


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------
def test_preprocess_is_medclips_feature_extractor(twin):
    preprocess = twin[1]
    steps = preprocess.transforms
    assert any(isinstance(t, T.CenterCrop) for t in steps) and any(isinstance(t, T.Normalize) for t in steps)
    assert all("object at 0x" not in repr(t) for t in steps)
    image = Image.new("RGB", (256, 256), (200, 30, 90))
    x = preprocess(image)
    assert x.shape == (3, 224, 224)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    gray = image.convert("L").getpixel((0, 0)) / 255
    assert torch.allclose(x[0], torch.full((224, 224), (gray - IMAGE_MEAN) / IMAGE_STD), atol=1e-5)


def test_non_square_images_are_padded_with_black():
    preprocess = medclip_preprocess()
    black = (0 - IMAGE_MEAN) / IMAGE_STD
    white = (1 - IMAGE_MEAN) / IMAGE_STD
    wide = preprocess(Image.new("RGB", (448, 150), (255, 255, 255)))  # padded to 448x448, content in rows 149..298
    assert wide.shape == (3, 224, 224)
    assert torch.allclose(wide[:, 0], torch.full((3, 224), black), atol=1e-5)  # top border row
    assert torch.allclose(wide[:, -1], torch.full((3, 224), black), atol=1e-5)  # bottom border row
    assert torch.allclose(wide[:, 112], torch.full((3, 224), white), atol=1e-4)  # the image itself
    small = preprocess(Image.new("L", (100, 60), 255))  # padded to 224x224 (MedCLIP's min_size), not upscaled first
    assert torch.allclose(small[:, :, 0], torch.full((3, 224), black), atol=1e-5)
    assert torch.allclose(small[:, 112, 112], torch.full((3,), white), atol=1e-4)
    assert (small[0] > 0).sum() == 100 * 60  # exactly the pasted pixels are bright


def test_training_augmentation_can_be_derived():
    from calibprompt.training.features import train_transform

    augment = train_transform(medclip_preprocess())
    names = [type(t).__name__ for t in augment.transforms]
    assert names[:2] == ["ToGrayscale", "PadToSquare"] and "RandomResizedCrop" in names
    assert names[-3:] == ["ToTensor", "Normalize", "RepeatChannels"]
    assert augment(Image.new("RGB", (300, 200), (10, 20, 30))).shape == (3, 224, 224)


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------
def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_extracts_only_the_checkpoint(tmp_path):
    payload = io.BytesIO()
    torch.save({"logit_scale": torch.tensor(2.0)}, payload)
    archive = _zip(tmp_path / "medclip-vit-pretrained.zip", {
        "medclip-vit-pretrained/pytorch_model.bin": payload.getvalue(),
        "medclip-vit-pretrained/config.json": b"{}",
        "README.md": b"hello",
    })
    dest = tmp_path / "weights"
    got = download_medclip_checkpoint(dest, url=archive.as_uri(), timeout=5, sha256=_sha(archive))
    assert got == dest / CHECKPOINT_NAME
    assert sorted(p.name for p in dest.iterdir()) == [CHECKPOINT_NAME]  # nothing else, no temporary files
    assert got.read_bytes() == payload.getvalue()
    # Present already: kept without a download (the URL is not even read).
    assert download_medclip_checkpoint(dest, url=(tmp_path / "absent.zip").as_uri()) == got


@pytest.mark.parametrize("members", [
    {"../pytorch_model.bin": b"x"},
    {"pytorch_model.bin": b"x", "../../escape.txt": b"y"},
    {"/abs/pytorch_model.bin": b"x"},
])
def test_download_refuses_unsafe_archives(tmp_path, members):
    archive = _zip(tmp_path / "evil.zip", members)
    dest = tmp_path / "weights"
    with pytest.raises(MedCLIPDownloadError, match="unsafe"):
        download_medclip_checkpoint(dest, url=archive.as_uri(), sha256=_sha(archive))
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "pytorch_model.bin").exists()


def test_download_errors_are_clear(tmp_path):
    dest = tmp_path / "weights"
    with pytest.raises(MedCLIPDownloadError, match="offline"):
        download_medclip_checkpoint(dest, url=(tmp_path / "absent.zip").as_uri(), sha256="0" * 64)
    (tmp_path / "notzip.zip").write_bytes(b"plain text")
    with pytest.raises(MedCLIPDownloadError, match="not a zip"):
        download_medclip_checkpoint(dest, url=(tmp_path / "notzip.zip").as_uri(), sha256=_sha(tmp_path / "notzip.zip"))
    archive = _zip(tmp_path / "empty.zip", {"other.bin": b"x"})
    with pytest.raises(MedCLIPDownloadError, match="exactly one"):
        download_medclip_checkpoint(dest, url=archive.as_uri(), sha256=_sha(archive))
    archive = _zip(tmp_path / "two.zip", {"a/pytorch_model.bin": b"x", "b/pytorch_model.bin": b"y"})
    with pytest.raises(MedCLIPDownloadError, match="exactly one pytorch_model.bin in the archive, found 2"):
        download_medclip_checkpoint(dest, url=archive.as_uri(), sha256=_sha(archive))
    assert list(dest.iterdir()) == []


def test_download_refuses_a_wrong_hash_and_leaves_nothing(tmp_path):
    archive = _zip(tmp_path / "medclip.zip", {"pytorch_model.bin": b"weights"})
    dest = tmp_path / "weights"
    wrong = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(MedCLIPDownloadError, match="does not match the expected SHA-256"):
        download_medclip_checkpoint(dest, url=archive.as_uri(), sha256=wrong)
    assert list(dest.iterdir()) == []  # no archive, no temporary file, no checkpoint
    # the right hash, given as pooch writes it, is accepted
    got = download_medclip_checkpoint(dest, url=archive.as_uri(), sha256="sha256:" + _sha(archive).upper())
    assert got.read_bytes() == b"weights" and sorted(p.name for p in dest.iterdir()) == [CHECKPOINT_NAME]


def test_download_refuses_an_unverified_archive(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "medclip.zip", {"pytorch_model.bin": b"weights"})
    dest = tmp_path / "weights"
    monkeypatch.delenv(CHECKPOINT_SHA256_ENV, raising=False)
    with pytest.raises(MedCLIPDownloadError, match=f"unverified download.*{CHECKPOINT_SHA256_ENV}"):
        download_medclip_checkpoint(dest, url=archive.as_uri())
    assert not dest.exists()  # refused before anything was fetched or created
    monkeypatch.setenv(CHECKPOINT_SHA256_ENV, "not-a-hash")
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        download_medclip_checkpoint(dest, url=archive.as_uri())
    monkeypatch.setenv(CHECKPOINT_SHA256_ENV, _sha(archive))  # the environment names the expected hash
    assert download_medclip_checkpoint(dest, url=archive.as_uri()).read_bytes() == b"weights"


def test_download_of_the_release_uses_its_known_hash(tmp_path, monkeypatch):
    import pooch

    monkeypatch.delenv(CHECKPOINT_SHA256_ENV, raising=False)
    seen = {}

    def fake_retrieve(url, known_hash, fname, path, downloader, progressbar):  # no network here
        seen.update(url=url, known_hash=known_hash, downloader=downloader)
        return str(_zip(path / fname, {"medclip-vit-pretrained/pytorch_model.bin": b"weights"}))

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    dest = tmp_path / "models" / "medclip-vit"
    assert download_medclip_checkpoint(dest, timeout=3).read_bytes() == b"weights"
    assert seen["url"] == CHECKPOINT_URL and seen["known_hash"] == f"sha256:{CHECKPOINT_SHA256}"
    assert isinstance(seen["downloader"], pooch.HTTPDownloader) and seen["downloader"].kwargs == {"timeout": 3}
    assert sorted(p.name for p in dest.iterdir()) == [CHECKPOINT_NAME]


# --------------------------------------------------------------------------------------------
# The real build path, from a Hugging Face cache holding only HUB_FILES (small configs, offline)
# --------------------------------------------------------------------------------------------
_REAL_PATH_SCRIPT = """
import sys, torch
from transformers import AutoConfig
from calibprompt.backbones.medclip import BERT_REPO, SWIN_REPO, MedCLIPModel, build_medclip
state = MedCLIPModel(AutoConfig.from_pretrained(SWIN_REPO), AutoConfig.from_pretrained(BERT_REPO)).state_dict()
torch.save(state, sys.argv[1])
model, preprocess, tokenizer = build_medclip(sys.argv[1], local_files_only=True)
ids = tokenizer(["A Chest X-Ray"])
with torch.no_grad():
    print(tuple(ids.shape), tuple(model.encode_text(ids).shape), tuple(model.encode_image(torch.zeros(1, 1, 224, 224)).shape))
"""


def test_real_build_path_needs_only_the_hub_files(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from calibprompt.backbones.medclip import (
        BERT_REPO,
        HUB_FILES,
        SWIN_REPO,
        TWIN_SWIN_CONFIG,
        TWIN_VOCAB_DIR,
    )

    assert all(isinstance(repo, str) and all(isinstance(f, str) for f in files) for repo, files in HUB_FILES)
    contents = {
        (SWIN_REPO, "config.json"): json.dumps({"model_type": "swin", **TWIN_SWIN_CONFIG}),
        (BERT_REPO, "config.json"): json.dumps({"model_type": "bert", "vocab_size": 203, "hidden_size": 64,
                                                "num_hidden_layers": 3, "num_attention_heads": 2,
                                                "intermediate_size": 128, "pad_token_id": 0}),
        (BERT_REPO, "vocab.txt"): (TWIN_VOCAB_DIR / "vocab.txt").read_text(),
    }
    cache = tmp_path / "hub"
    commit = "0" * 40
    for repo, files in HUB_FILES:
        folder = cache / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(commit)
        (folder / "snapshots" / commit).mkdir(parents=True)
        for name in files:
            (folder / "snapshots" / commit / name).write_text(contents[(repo, name)])
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", _REAL_PATH_SCRIPT, str(tmp_path / "ck.bin")], check=False,
                            env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "(1, 77) (1, 512) (1, 512)"
