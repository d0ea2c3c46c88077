"""The CUDA paths: batched training, the feature pass (workers, mixed precision) and a whole job on a GPU.

These run wherever CUDA exists (``benchmarks/gpu_check.sh`` runs them on a GPU machine) and skip
with a reason elsewhere.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                   reason="needs a CUDA GPU (run benchmarks/gpu_check.sh on one)")]

CLASSES = ["tumour", "stroma", "necrosis"]


@pytest.fixture(scope="module", params=["tiny-random", "tiny-random-hf"])
def gpu_backbone(request):
    from calibprompt.backbones import load_backbone

    return load_backbone(request.param, device="cuda")


def test_batched_training_on_the_gpu_equals_each_run_alone(gpu_backbone):
    from calibprompt.training.batched import RunInputs, train_many
    from calibprompt.training.trainer import TrainConfig, train_prompts

    zs = gpu_backbone.encode_text([f"a photo of {c}" for c in CLASSES])
    runs = []
    for i, (method, seed) in enumerate([("coop", 1), ("calibprompt", 1), ("zs-norm", 2), ("mdca", 3)]):
        g = torch.Generator().manual_seed(seed)
        feats = torch.nn.functional.normalize(torch.randn(12, 3, gpu_backbone.embed_dim, generator=g), dim=-1)
        runs.append(RunInputs(TrainConfig(method=method, seed=seed, epochs=3, batch_size=4, n_ctx=4, warmup_epochs=0,
                                          lr=0.01 if gpu_backbone.name == "tiny-random" else 2.0),
                              feats, torch.arange(12) % 3, zero_shot_text=zs))
    together = train_many(gpu_backbone, CLASSES, runs)
    for run, batched in zip(runs, together):
        assert batched.learner.ctx.device.type == "cuda"
        alone = train_prompts(gpu_backbone, CLASSES, run.features, run.labels, run.config, zero_shot_text=zs)
        assert torch.allclose(batched.learner.ctx, alone.learner.ctx, atol=1e-5, rtol=0), run.config.method


def test_feature_pass_with_workers_and_mixed_precision_on_the_gpu(gpu_backbone, tmp_path):
    import numpy as np
    from PIL import Image

    from calibprompt.backbones import load_backbone
    from calibprompt.training.features import FeatureCache

    paths = []
    rng = np.random.default_rng(0)
    for i in range(70):  # more than 64 images: the default pass uses workers on an accelerator
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    gpu = FeatureCache(gpu_backbone, root=tmp_path / "gpu").augmented(paths, 2)
    cpu_backbone = load_backbone(gpu_backbone.name, device="cpu")
    cpu = FeatureCache(cpu_backbone, root=tmp_path / "cpu", num_workers=0).augmented(paths, 2)
    assert torch.allclose(gpu, cpu, atol=1e-4)  # the same views, whichever device and decoding
    for precision in ("bf16", "fp16"):
        half = FeatureCache(gpu_backbone, root=tmp_path / precision, precision=precision).plain(paths)
        full = FeatureCache(gpu_backbone, root=tmp_path / "gpu").plain(paths)
        cosine = torch.nn.functional.cosine_similarity(half, full, dim=-1)
        assert cosine.min() > 0.99, precision


def test_a_job_and_a_batched_table_run_on_the_gpu(calibprompt_home, tmp_path):
    from test_training import make_dataset

    from calibprompt.runs.compare import run_comparison
    from calibprompt.runs.store import RunStore

    dataset = make_dataset(tmp_path / "tissue", n_train=6, n_test=4)
    store = RunStore()
    rows = run_comparison("tiny-random", str(dataset), ["zeroshot", "coop", "calibprompt"], [1, 2], shots=4, epochs=2,
                          device="cuda", store=store, n_boot=20)
    for row in rows[1:]:
        if row["method"] != "zeroshot":
            assert store.get_run(row["run_id"]).device.startswith("cuda")
    alone = run_comparison("tiny-random", str(dataset), ["coop"], [1], shots=4, epochs=2, device="cuda", store=store,
                           n_boot=20, batched=False)
    assert alone[0]["accuracy"] == rows[1]["accuracy"]
    assert alone[0]["ece"] == pytest.approx(rows[1]["ece"], rel=1e-5, abs=1e-6)
