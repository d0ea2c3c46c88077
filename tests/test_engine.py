"""The shared inference engine: one image pass for all heads, content-hash caching, prompt heads."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from calibprompt.prompting.checkpoint import load_prompt, read_prompt_metadata, save_prompt
from calibprompt.prompting.engine import Engine, image_key
from calibprompt.prompting.learner import PromptLearner
from calibprompt.prompting.tasks import load_task


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, size=(36, 36, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture()
def engine(tiny_backbone):
    engine = Engine(tiny_backbone)
    task = load_task("kather")
    engine.add_zero_shot("zero-shot", task)
    engine.add_prompt("coop", PromptLearner(tiny_backbone, task.classnames, generator=torch.Generator().manual_seed(1)))
    engine.add_prompt("calibprompt", PromptLearner(tiny_backbone, task.classnames, generator=torch.Generator().manual_seed(2)))
    return engine


def test_zero_shot_head_is_the_template_average_of_the_backbone(tiny_backbone):
    engine = Engine(tiny_backbone)
    templates = ["An H&E image of {}.", "a histology slide showing {}."]
    head = engine.add_zero_shot("zs", ["debris", "mucus", "adipose tissue"], templates)
    expected = []
    for c in ["debris", "mucus", "adipose tissue"]:
        feats = tiny_backbone.encode_text([t.format(c) for t in templates])
        mean = feats.mean(dim=0)
        expected.append(mean / mean.norm())
    assert torch.allclose(head.text_features, torch.stack(expected), atol=1e-6)

    images = _images(3)
    pred = engine.predict(images)["zs"]
    img = tiny_backbone.encode_image(images)
    logits = tiny_backbone.logit_scale * img @ torch.stack(expected).T
    assert np.allclose(pred.logits, logits.numpy(), atol=1e-4)
    assert np.allclose(pred.probs, torch.softmax(logits.double(), 1).numpy(), atol=1e-5)
    assert np.allclose(pred.probs.sum(1), 1.0)


def test_all_heads_share_one_image_pass(engine):
    images = _images(5)
    out = engine.predict(images)
    assert set(out) == {"zero-shot", "coop", "calibprompt"}
    assert engine.encoder_calls == 1 and engine.images_encoded == 5
    for pred in out.values():
        assert pred.probs.shape == (5, 9)
    engine.predict(images, heads=["coop"])  # cached: no new encoder call
    assert engine.encoder_calls == 1
    copies = [im.copy() for im in images]  # same pixels, different objects: still cached
    engine.predict(copies)
    assert engine.encoder_calls == 1
    engine.clear_image_cache()
    engine.predict(images)
    assert engine.encoder_calls == 2 and engine.images_encoded == 10


def test_only_new_images_are_encoded(engine):
    first, second = _images(2, seed=1), _images(2, seed=2)
    engine.predict(first)
    engine.predict(first + second)
    assert engine.images_encoded == 4


def test_image_key_depends_on_pixels_not_on_the_file():
    img = _images(1)[0]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert image_key(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")) == image_key(img)
    other = img.copy()
    other.putpixel((0, 0), (0, 0, 1) if img.getpixel((0, 0)) != (0, 0, 1) else (0, 0, 2))
    assert image_key(other) != image_key(img)


def test_engine_accepts_files_and_bytes(engine, tmp_path):
    img = _images(1, seed=9)[0]
    path = tmp_path / "patch.png"
    img.save(path)
    by_path = engine.predict([path])["coop"].probs
    by_bytes = engine.predict([path.read_bytes()])["coop"].probs
    by_pil = engine.predict([img])["coop"].probs
    assert np.allclose(by_path, by_pil) and np.allclose(by_bytes, by_pil)
    assert engine.images_encoded == 1


def test_cache_is_bounded(tiny_native):
    engine = Engine(tiny_native, cache_size=3)
    engine.add_zero_shot("zs", ["a", "b"])
    engine.predict(_images(5))
    assert len(engine._cache) == 3


def test_prompt_checkpoint_round_trip(tiny_backbone, tmp_path):
    task = load_task("covid")
    learner = PromptLearner(tiny_backbone, task.classnames, n_ctx=8, generator=torch.Generator().manual_seed(3))
    meta_path = save_prompt(tmp_path / "ckpt" / "coop-seed1", learner, backbone=tiny_backbone.name,
                            metadata={"method": "coop", "seed": 1, "metrics": {"ece": 0.05}})
    assert meta_path.suffix == ".json" and (tmp_path / "ckpt" / "coop-seed1.safetensors").is_file()
    meta = read_prompt_metadata(meta_path)
    assert meta["method"] == "coop" and meta["classnames"] == task.classnames and meta["n_ctx"] == 8
    reloaded, _ = load_prompt(tmp_path / "ckpt" / "coop-seed1.safetensors", tiny_backbone)
    assert torch.equal(reloaded.ctx, learner.ctx)

    engine = Engine(tiny_backbone)
    head = engine.add_prompt("coop", meta_path)
    with torch.no_grad():
        assert torch.allclose(head.text_features, learner.encode_text(), atol=1e-6)
    assert head.metadata["seed"] == 1 and head.kind == "prompt"


def test_checkpoint_errors_are_clear(tiny_native, tiny_hf, tmp_path):
    learner = PromptLearner(tiny_native, ["a", "b"], n_ctx=4)
    path = save_prompt(tmp_path / "p", learner, backbone=tiny_native.name)
    with pytest.raises(ValueError, match="learned on the backbone 'tiny-random'"):
        load_prompt(path, tiny_hf)
    with pytest.raises(ValueError, match="No prompt checkpoint"):
        load_prompt(tmp_path / "missing", tiny_native)
    (tmp_path / "p.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="Cannot read the context vectors"):
        load_prompt(path, tiny_native)
    (tmp_path / "q.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a CalibPrompt prompt checkpoint"):
        read_prompt_metadata(tmp_path / "q.json")


def test_unknown_heads_and_empty_input(engine):
    with pytest.raises(ValueError, match="Unknown head"):
        engine.predict(_images(1), heads=["nope"])
    with pytest.raises(ValueError, match="No images"):
        engine.predict([])
    with pytest.raises(ValueError):
        engine.predict([b"not an image"])
