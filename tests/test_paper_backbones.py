"""The same battery for the architecture twins of the paper's backbones (random weights, real
classes, offline): BiomedCLIP (open_clip + PubMedBERT), PLIP (transformers CLIP converted to
open_clip) and MedCLIP (Swin-T + Bio_ClinicalBERT)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from calibprompt.runs.jobs import TrainJob, run_train_job
from calibprompt.backbones import load_backbone
from calibprompt.prompting.learner import PromptLearner
from calibprompt.runs.store import RunStore
from test_training import make_dataset

CLASSES = ["lung opacity", "normal"]


@pytest.fixture(scope="module", params=["biomedclip", "plip", "medclip"])
def twin(request):
    return load_backbone(request.param, device="cpu", pretrained=False)


def _own_encoding(backbone, texts):
    with torch.no_grad():
        feats = backbone.model.encode_text(backbone.tokenizer(texts))
    return torch.nn.functional.normalize(feats.float(), dim=-1)


def test_twin_encodes_images_and_text(twin):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)) for _ in range(2)]
    feats = twin.encode_image(images)
    text = twin.encode_text(["A chest X-ray image of normal patient"])
    assert feats.shape[0] == 2 and feats.shape[1] == text.shape[1]
    assert torch.allclose(feats.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not twin.pretrained and all(not p.requires_grad for p in twin.model.parameters())


def test_encode_text_equals_the_models_own(twin):
    texts = ["A chest X-ray image of lung opacity patient", "An H&E image of tumor."]
    assert torch.allclose(twin.encode_text(texts), _own_encoding(twin, texts), atol=1e-5)


def test_prompt_learner_reproduces_the_written_prompt_and_learns_only_the_context(twin):
    learner = PromptLearner(twin, CLASSES, ctx_init="a photo of a")
    with torch.no_grad():
        assert torch.allclose(learner.encode_text(), _own_encoding(twin, [f"a photo of a {c}." for c in CLASSES]),
                              atol=1e-5)
    learner = PromptLearner(twin, CLASSES, n_ctx=4, generator=torch.Generator().manual_seed(0))
    feats = learner.encode_text()
    (feats[0] @ feats[1]).backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in twin.model.parameters())


def test_two_epoch_training_job(twin, tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBPROMPT_HOME", str(tmp_path / "home"))
    data = make_dataset(tmp_path / "cxr", n_train=4, n_test=2, size=48)
    job = TrainJob(model=twin.name, dataset=str(data), shots=2, seed=1, method="calibprompt", epochs=2, n_views=2)
    record = run_train_job(job, RunStore(), backbone=twin, n_boot=20)
    assert record.status == "done", record.error
    assert record.metrics["test_images"] == 6 and 0 <= record.metrics["ece"] <= 1
