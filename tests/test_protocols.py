"""Training protocols (the paper's, the authors' code's) and the choices they switch: precision, warm-up
lr, MMCE scale, BiomedCLIP's double embedding, fresh augmentation; plus QuiltNet's QuickGELU."""
from __future__ import annotations

import dataclasses
import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F

import calibprompt
from calibprompt.backbones import BACKBONES, load_backbone
from calibprompt.prompting.checkpoint import read_prompt_metadata
from calibprompt.prompting.learner import PromptLearner
from calibprompt.runs.jobs import TrainJob, run_train_job
from calibprompt.runs.store import RunStore
from calibprompt.training import losses as L
from calibprompt.training.features import FreshViews
from calibprompt.training.protocols import PROTOCOLS, Protocol, get_protocol, list_protocols
from calibprompt.training.trainer import TrainConfig, learning_rate, train_prompts
from test_training import make_dataset

CLASSES = ["adipose", "lymphocytes", "stroma"]


def _features(dim, n=16, k=3, views=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    feats = torch.randn(k, dim, generator=g)[labels].unsqueeze(1) + 0.3 * torch.randn(n, views, dim, generator=g)
    return F.normalize(feats, dim=-1), labels


# ------------------------------------------------------------------ the registry
def test_registry_lookup_and_errors():
    assert list_protocols() == ["paper", "authors-code"]
    assert get_protocol("paper") is PROTOCOLS["paper"] and get_protocol("Authors_Code") is PROTOCOLS["authors-code"]
    assert get_protocol(PROTOCOLS["paper"]) is PROTOCOLS["paper"]
    with pytest.raises(ValueError, match="Unknown protocol 'nope'; choose one of: paper, authors-code"):
        get_protocol("nope")
    assert calibprompt.get_protocol is get_protocol and calibprompt.PROTOCOLS is PROTOCOLS
    assert calibprompt.Protocol is Protocol and calibprompt.list_protocols() == list_protocols()


def test_protocols_are_read_only_data():
    paper = PROTOCOLS["paper"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        paper.mmce_scale = "authors"
    with pytest.raises(TypeError):
        PROTOCOLS["authors-code"].precision_by_family["biomedclip"] = "fp16"
    with pytest.raises(ValueError, match="precision 'fp8'"):
        Protocol("x", "bad", precision_by_family={"plip": "fp8"})
    with pytest.raises(ValueError, match="mmce_scale"):
        Protocol("x", "bad", mmce_scale="half")
    assert json.loads(json.dumps(PROTOCOLS["authors-code"].to_dict()))["warmup_lr_by_family"] == {"medclip": 1e-3}


def test_docstrings_name_the_sources_in_the_authors_repository():
    doc = Protocol.__doc__
    for source in ("train.py", "vit_b32_medclip_c16_ep50_batch16.yaml", "trainers/classification/losses.py",
                   "trainers/classification/coop_biomedclip.py", "random_resized_crop", "models/clip/model.py"):
        assert source in doc, source


@pytest.mark.parametrize("family", ["plip", "quiltnet", "biomedclip", "medclip", "tiny", None])
def test_the_paper_protocol_is_the_same_for_every_family(family):
    assert PROTOCOLS["paper"].resolve(family) == {
        "protocol": "paper", "family": family or "", "precision": "fp32", "warmup_lr": 1e-5,
        "mmce_scale": "formula", "double_embedding": False, "fresh_augmentation": False}


@pytest.mark.parametrize("family, precision, warmup_lr, double", [
    ("plip", "fp16", 1e-5, False), ("quiltnet", "fp16", 1e-5, False), ("biomedclip", "fp32", 1e-5, True),
    ("medclip", "fp32", 1e-3, False), ("clip", "fp32", 1e-5, False), ("PLIP", "fp16", 1e-5, False),
])
def test_the_authors_code_protocol_per_family(family, precision, warmup_lr, double):
    settings = get_protocol("authors-code").resolve(family)
    got = (settings["precision"], settings["warmup_lr"], settings["double_embedding"])
    assert got == (precision, warmup_lr, double)
    assert settings["mmce_scale"] == "authors" and settings["fresh_augmentation"] is True


def test_train_config_validates_protocol_and_precision():
    assert (TrainConfig().protocol, TrainConfig().precision, TrainConfig().warmup_lr) == ("paper", None, None)
    assert TrainConfig(protocol="AUTHORS-CODE").protocol == "authors-code"
    with pytest.raises(ValueError, match="choose one of: paper, authors-code"):
        TrainConfig(protocol="mine")
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16"):
        TrainConfig(precision="half")
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(warmup_lr=0.0)


# ------------------------------------------------------------------ warm-up lr
def test_warmup_lr_follows_the_protocol_and_an_explicit_value_wins():
    authors, paper = TrainConfig(protocol="authors-code"), TrainConfig()
    assert learning_rate(0, authors, "medclip") == 1e-3 and learning_rate(0, authors, "plip") == 1e-5
    assert learning_rate(0, paper, "medclip") == 1e-5 and learning_rate(0, paper) == 1e-5
    assert learning_rate(1, authors, "medclip") == pytest.approx(0.002)  # the cosine part is the same
    assert learning_rate(0, TrainConfig(protocol="authors-code", warmup_lr=3e-4), "medclip") == 3e-4


@pytest.fixture(scope="module")
def medclip_twin():
    return load_backbone("medclip", device="cpu", pretrained=False)


@pytest.mark.parametrize("protocol, first_lr", [("authors-code", 1e-3), ("paper", 1e-5)])
def test_medclip_warms_up_at_the_protocols_lr(medclip_twin, protocol, first_lr):
    feats, labels = _features(medclip_twin.embed_dim)
    steps = []
    result = train_prompts(medclip_twin, CLASSES, feats, labels, TrainConfig(epochs=2, n_ctx=4, protocol=protocol),
                           on_step=steps.append)
    assert steps[0].lr == first_lr and steps[-1].lr == pytest.approx(0.002)
    assert result.history[0]["lr"] == first_lr and result.config.warmup_lr == first_lr
    assert result.settings["family"] == "medclip" and result.settings["protocol"] == protocol


# ------------------------------------------------------------------ precision
@pytest.fixture(scope="module")
def plip_twin():
    return load_backbone("plip", device="cpu", pretrained=False)


def _dtypes_inside_the_text_encoder(backbone, config):
    """Output dtypes of the first text block's MLP input projection, seen by a forward hook while training."""
    feats, labels = _features(backbone.embed_dim)
    seen = []
    layer = backbone.model.transformer.resblocks[0].mlp.c_fc
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    try:
        result = train_prompts(backbone, CLASSES, feats, labels, config)
    finally:
        handle.remove()
    return set(seen), result


def test_plip_trains_in_fp16_autocast_under_the_authors_code(plip_twin, caplog):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = plip_twin.to(device)
    try:
        with caplog.at_level(logging.WARNING, logger="calibprompt.training.trainer"):
            dtypes, result = _dtypes_inside_the_text_encoder(backbone, TrainConfig(epochs=1, n_ctx=4,
                                                                                   protocol="authors-code"))
    finally:
        backbone.to("cpu")
    assert dtypes == {torch.float16}
    assert result.config.precision == "fp16" and result.settings["precision"] == "fp16"
    assert result.learner.ctx.dtype == torch.float32  # the learned context stays fp32 (autocast)
    assert all(math.isfinite(row["loss"]) for row in result.history)
    if device == "cpu":
        assert "fp16 autocast on the CPU" in caplog.text and "slow" in caplog.text


@pytest.mark.parametrize("protocol, precision, expected", [
    ("paper", None, torch.float32), ("authors-code", "fp32", torch.float32), ("paper", "bf16", torch.bfloat16),
])
def test_precision_override(plip_twin, protocol, precision, expected):
    dtypes, result = _dtypes_inside_the_text_encoder(plip_twin, TrainConfig(epochs=1, n_ctx=4, protocol=protocol,
                                                                            precision=precision))
    assert dtypes == {expected} and result.config.precision == (precision or "fp32")


# ------------------------------------------------------------------ MMCE: the formula and the authors' scale
def _probs_logits(rows):
    return torch.log(torch.tensor(rows, dtype=torch.float64))


def test_mmce_variants_on_a_hand_worked_batch():
    # K = 2, all labels 0: confidences 0.8, 0.6 (correct: m = 2) and 0.7, 0.9 (wrong: n = 2)
    logits = _probs_logits([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    labels = torch.zeros(4, dtype=torch.long)
    e = math.exp
    a_sum = 0.2 ** 2 + 0.4 ** 2 + 2 * 0.2 * 0.4 * e(-0.2 / 0.4)  # (1-r_i)(1-r_j) k(r_i, r_j), correct pairs
    b_sum = 0.7 ** 2 + 0.9 ** 2 + 2 * 0.7 * 0.9 * e(-0.2 / 0.4)  # r_i r_j k, wrong pairs
    c_sum = (0.2 * 0.7 * e(-0.1 / 0.4) + 0.2 * 0.9 * e(-0.1 / 0.4)  # (1-r_i) r_j k, correct x wrong
             + 0.4 * 0.7 * e(-0.1 / 0.4) + 0.4 * 0.9 * e(-0.3 / 0.4))
    formula = a_sum / 4 + b_sum / 4 - 2 * c_sum / 4  # Kumar et al.: / m^2, / n^2, / (m n)
    authors = (a_sum / 4) / (4 + 1e-5) + (b_sum / 4) / (4 + 1e-5) - 2 * (c_sum / 4) / (4 + 1e-5)
    assert formula == pytest.approx(0.271652, abs=1e-6)
    assert L.MMCE(logits, labels).item() == pytest.approx(math.sqrt(formula + 1e-10), abs=1e-10)  # 0.52120
    assert L.MMCE_AUTHORS(logits, labels).item() == pytest.approx(math.sqrt(authors + 1e-10), abs=1e-10)  # 0.26060
    ratio = L.MMCE(logits, labels).item() / L.MMCE_AUTHORS(logits, labels).item()
    assert ratio == pytest.approx(2.0, rel=1e-5)  # m = n = 2: the extra division by m^2 halves the loss


def test_mmce_authors_scale_on_an_uneven_batch_and_about_8x_at_batch_16():
    # m = 3 correct (0.9, 0.8, 0.7), n = 1 wrong (0.6): the two variants do not differ by one factor
    logits = _probs_logits([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6]])
    labels = torch.zeros(4, dtype=torch.long)
    r, s = [0.9, 0.8, 0.7], [0.6]
    k = lambda x, y: math.exp(-abs(x - y) / 0.4)  # noqa: E731
    a = sum((1 - x) * (1 - y) * k(x, y) for x in r for y in r)
    b = sum(x * y * k(x, y) for x in s for y in s)
    c = sum((1 - x) * y * k(x, y) for x in r for y in s)
    authors = (a / 9) / (9 + 1e-5) + (b / 1) / (1 + 1e-5) - 2 * (c / 3) / (3 + 1e-5)
    assert L.MMCE_AUTHORS(logits, labels).item() == pytest.approx(math.sqrt(authors + 1e-10), abs=1e-10)
    assert L.MMCE(logits, labels).item() == pytest.approx(math.sqrt(a / 9 + b - 2 * c / 3 + 1e-10), abs=1e-10)
    # batch 16, 8 right and 8 wrong: the authors' MMCE is 1/8 of the formula's
    g = torch.Generator().manual_seed(0)
    conf = 0.5 + 0.5 * torch.rand(16, generator=g, dtype=torch.float64)
    logits16 = torch.log(torch.stack([conf, 1 - conf], dim=1))
    labels16 = torch.tensor([0] * 8 + [1] * 8)
    ratio = L.MMCE(logits16, labels16).item() / L.MMCE_AUTHORS(logits16, labels16).item()
    assert ratio == pytest.approx(8.0, rel=1e-4)


def test_mmce_authors_edge_cases_and_objective():
    assert L.MMCE_AUTHORS(torch.tensor([[3.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1])).item() == 0.0
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(3, (10,), generator=g)
    L.MMCE_AUTHORS(logits, labels).backward()
    assert torch.isfinite(logits.grad).all()
    objective = L.build_objective("mmce", mmce_scale="authors")
    total, parts = objective(logits, labels)
    assert set(parts) == {"CE", "MMCE"}
    assert parts["MMCE"].item() == pytest.approx(L.MMCE_AUTHORS(logits, labels).item())
    assert total.item() == pytest.approx((L.CE(logits, labels) + 2.0 * L.MMCE_AUTHORS(logits, labels)).item())
    assert L.build_objective("mmce").variants == {} and objective.variants == {"MMCE": "MMCE_AUTHORS"}
    with pytest.raises(ValueError, match="mmce_scale must be one of formula, authors"):
        L.build_objective("mmce", mmce_scale="tiny")


def test_the_trainer_uses_the_protocols_mmce(tiny_native, monkeypatch):
    calls = {"formula": 0, "authors": 0}
    for key, name in (("formula", "MMCE"), ("authors", "MMCE_AUTHORS")):
        fn = L.LOSSES[name]
        monkeypatch.setitem(L.LOSSES, name, lambda *a, _fn=fn, _key=key, **kw: calls.__setitem__(_key, calls[_key] + 1)
                            or _fn(*a, **kw))
    feats, labels = _features(32)
    result = train_prompts(tiny_native, CLASSES, feats, labels, TrainConfig(method="mmce", epochs=1, n_ctx=2,
                                                                            protocol="authors-code"))
    assert calls == {"formula": 0, "authors": result.steps} and result.settings["mmce_scale"] == "authors"
    train_prompts(tiny_native, CLASSES, feats, labels, TrainConfig(method="mmce", epochs=1, n_ctx=2))
    assert calls["formula"] == result.steps


# ------------------------------------------------------------------ BiomedCLIP's double embedding
def _by_hand_bert_embedding(emb, x):
    """BERT's embedding module on input vectors x (N, L, W), written out: + positions + token type 0, LayerNorm."""
    length = x.shape[1]
    x = x + emb.position_embeddings.weight[:length] + emb.token_type_embeddings.weight[0]
    return F.layer_norm(x, (x.shape[-1],), emb.LayerNorm.weight, emb.LayerNorm.bias, emb.LayerNorm.eps)


def test_double_embedding_reproduces_the_authors_biomedclip_prompts(tiny_hf):
    tower = tiny_hf.text_tower
    emb = tower.encoder.transformer.embeddings
    make = lambda double: PromptLearner(tiny_hf, ["lung opacity", "normal"], n_ctx=4,  # noqa: E731
                                        generator=torch.Generator().manual_seed(0), double_embedding=double)
    correct, buggy = make(False), make(True)
    assert torch.equal(correct.ctx, buggy.ctx) and torch.equal(correct.token_ids, buggy.token_ids)
    ids, n = buggy.token_ids, buggy.n_ctx
    with torch.no_grad():
        first = _by_hand_bert_embedding(emb, emb.word_embeddings(ids))  # the authors' prefix/suffix source
        assert torch.allclose(tower.embedding_output(ids), first, atol=1e-6)
        assert torch.allclose(buggy.token_prefix, first[:, :1], atol=1e-6)
        assert torch.allclose(buggy.token_suffix, first[:, 1 + n:], atol=1e-6)
        prompt = torch.cat([first[:, :1], buggy.ctx.expand(2, -1, -1), first[:, 1 + n:]], dim=1)
        seen = []
        handle = emb.register_forward_hook(lambda module, inputs, output: seen.append(output))
        try:
            feats = buggy.encode_text(normalize=False)
        finally:
            handle.remove()
        assert torch.allclose(seen[0], _by_hand_bert_embedding(emb, prompt), atol=1e-5)  # embedded a second time
        assert torch.allclose(feats, tower.encode_embeddings(prompt, ids), atol=1e-6)
        assert not torch.allclose(buggy.encode_text(), correct.encode_text(), atol=1e-4)
    assert buggy.config()["double_embedding"] is True and "double_embedding" not in correct.config()


def test_double_embedding_needs_a_bert_tower(tiny_native):
    assert not tiny_native.text_tower.supports_double_embedding
    with pytest.raises(ValueError, match="Hugging Face BERT text tower"):
        PromptLearner(tiny_native, ["a", "b"], n_ctx=2, double_embedding=True)


def test_the_trainer_embeds_twice_for_biomedclip_under_the_authors_code():
    backbone = load_backbone("tiny-random-hf", device="cpu")
    backbone.family = "biomedclip"  # a BiomedCLIP-family stand-in with a BERT tower
    feats, labels = _features(backbone.embed_dim)
    authors = train_prompts(backbone, CLASSES, feats, labels, TrainConfig(epochs=1, n_ctx=2, protocol="authors-code"))
    paper = train_prompts(backbone, CLASSES, feats, labels, TrainConfig(epochs=1, n_ctx=2))
    assert authors.learner.double_embedding and authors.settings["double_embedding"]
    assert not paper.learner.double_embedding


# ------------------------------------------------------------------ fresh augmentation
@pytest.fixture()
def dataset(tmp_path):
    return make_dataset(tmp_path / "tissue", n_train=4, n_test=2)


def test_fresh_views_are_new_each_step_seeded_and_batch_independent(tiny_native, dataset):
    paths = sorted((dataset / "train").glob("*/*.png"))
    views = FreshViews(tiny_native, paths, seed=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        before = torch.get_rng_state()
        step0, step1 = views(0, torch.tensor([0, 1, 2])), views(1, [0, 1, 2])
        assert torch.equal(torch.get_rng_state(), before)  # private generators only
    assert step0.shape == (3, 32) and step0.dtype == torch.float32
    assert torch.allclose(step0.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(step0, step1)  # a new crop and flip each step
    again = FreshViews(tiny_native, paths, seed=1)
    assert torch.allclose(again(0, [0, 1, 2]), step0, atol=1e-6)  # the same seed: the same views
    assert torch.allclose(again(0, [2]), step0[2:], atol=1e-6)  # whatever the batch holds
    assert not torch.allclose(FreshViews(tiny_native, paths, seed=2)(0, [0, 1, 2]), step0)
    assert views(5).shape == (len(paths), 32) and views.encoded == 3 + 3 + len(paths) and len(views) == len(paths)


def test_the_trainer_encodes_every_step_from_a_feature_source(tiny_native, dataset):
    paths = sorted((dataset / "train").glob("*/*.png"))
    labels = [CLASSES.index(p.parent.name) for p in paths]
    views = FreshViews(tiny_native, paths, seed=1)
    result = train_prompts(tiny_native, CLASSES, views, labels, TrainConfig(epochs=2, batch_size=4, n_ctx=2))
    assert result.steps == 2 * (12 // 4) and views.encoded == result.steps * 4
    with pytest.raises(ValueError, match="feature source has 12 images but there are 11 labels"):
        train_prompts(tiny_native, CLASSES, views, labels[:-1], TrainConfig(epochs=1))


# ------------------------------------------------------------------ jobs and the run record
def test_train_job_fields_and_validation():
    job = TrainJob(model="m", dataset="d")
    assert (job.protocol, job.precision) == ("paper", None)
    params = TrainJob(model="m", dataset="d", protocol="authors-code", precision="bf16").to_params()
    assert params["protocol"] == "authors-code" and params["precision"] == "bf16"
    config = TrainJob(model="m", dataset="d", protocol="authors-code", precision="fp16").config()
    assert (config.protocol, config.precision) == ("authors-code", "fp16")
    with pytest.raises(ValueError, match="choose one of: paper, authors-code"):
        TrainJob(model="m", dataset="d", protocol="theirs")
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16"):
        TrainJob(model="m", dataset="d", precision="fp64")


def test_an_authors_code_job_augments_fresh_and_records_the_protocol(tiny_native, dataset, calibprompt_home,
                                                                     monkeypatch):
    from calibprompt.runs import jobs

    made = []

    class Spy(FreshViews):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(jobs, "FreshViews", Spy)
    store = RunStore()
    job = TrainJob(model="tiny-random", dataset=str(dataset), shots=4, seed=1, method="coop", epochs=1, n_views=2,
                   batch_size=4, protocol="authors-code", precision="bf16")
    record = run_train_job(job, store, backbone=tiny_native, n_boot=10)
    assert record.status == "done", record.error
    assert len(made) == 1 and made[0].encoded == 3 * 4  # 12 training images, batch 4: every step encoded anew
    assert record.params["protocol"] == "authors-code" and record.params["precision"] == "bf16"
    assert record.metrics["protocol"] == "authors-code" and record.metrics["protocol_settings"]["precision"] == "bf16"
    meta = read_prompt_metadata(record.checkpoint)
    assert meta["protocol"] == "authors-code" and meta["precision"] == "bf16"
    assert meta["config"]["protocol"] == "authors-code" and meta["config"]["warmup_lr"] == 1e-5
    assert meta["protocol_settings"]["fresh_augmentation"] is True

    paper = run_train_job(TrainJob(model="tiny-random", dataset=str(dataset), shots=4, seed=1, method="coop",
                                   epochs=1, n_views=2, batch_size=4), store, backbone=tiny_native, n_boot=10)
    assert paper.status == "done" and len(made) == 1  # the cached views: no fresh source
    assert paper.params["protocol"] == "paper" and read_prompt_metadata(paper.checkpoint)["precision"] == "fp32"


# ------------------------------------------------------------------ the command line
def test_cli_train_and_compare_take_protocol_and_precision(capsys):
    from calibprompt.cli import build_parser

    parser = build_parser()
    for command in ("train", "compare"):
        args = parser.parse_args([command, "--model", "m", "--dataset", "d"])
        assert (args.protocol, args.precision) == ("paper", None)
        args = parser.parse_args([command, "--model", "m", "--dataset", "d", "--protocol", "authors-code",
                                  "--precision", "fp16"])
        assert (args.protocol, args.precision) == ("authors-code", "fp16")
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--model", "m", "--dataset", "d", "--protocol", "mine"])
        assert exit_info.value.code == 2
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "authors-code" in help_text and "fp16 on a CPU may be slow" in help_text


def test_cli_compare_records_the_protocol_with_every_run(dataset, calibprompt_home, capsys):
    from calibprompt.cli import main

    assert main(["compare", "--model", "tiny-random", "--dataset", str(dataset), "--shots", "4", "--seeds", "1",
                 "--methods", "zeroshot,coop", "--epochs", "1", "--protocol", "authors-code",
                 "--precision", "bf16"]) == 0
    assert "protocol authors-code, precision bf16" in capsys.readouterr().out
    [record] = RunStore().list_runs()
    assert record.params["protocol"] == "authors-code" and record.params["precision"] == "bf16"
    import calibprompt.runs.compare as compare

    assert compare.TrainJob is TrainJob  # restored after the call


# ------------------------------------------------------------------ QuiltNet: QuickGELU
def _activations(model):
    return {type(m).__name__ for m in model.modules() if "GELU" in type(m).__name__}


def test_quiltnet_specs_force_quickgelu():
    for name in ("quiltnet-b16", "quiltnet-b32"):
        spec = BACKBONES[name]
        assert spec.force_quick_gelu and spec.model_cfg["quick_gelu"] is True, name


def test_the_quiltnet_twin_uses_quickgelu():
    twin = load_backbone("quiltnet-b32", device="cpu", pretrained=False)
    assert twin.family == "quiltnet" and _activations(twin.model) == {"QuickGELU"}


def test_a_cached_quiltnet_without_quick_gelu_in_its_config_builds_quickgelu(tiny_native, tmp_path, monkeypatch):
    """The Hub's open_clip_config.json for QuiltNet has no quick_gelu key: the registry name forces it, and
    so does the bare hf-hub id of a registered model (it resolves to the registered spec)."""
    from huggingface_hub import constants

    from calibprompt.backbones import save_backbone
    from test_hub_offline import fill_hub_cache

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    folder = save_backbone(tiny_native, tmp_path / "export")
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert "quick_gelu" not in config["model_cfg"]  # as on the Hub
    weights = folder / "open_clip_model.safetensors"
    fill_hub_cache(cache, "wisdomik/QuiltNet-B-32", {"open_clip_config.json": json.dumps(config),
                                                      "open_clip_model.safetensors": weights})
    registered = load_backbone("quiltnet-b32", device="cpu")
    assert registered.pretrained and _activations(registered.model) == {"QuickGELU"}
    assert _activations(load_backbone("hf-hub:wisdomik/QuiltNet-B-32", device="cpu").model) == {"QuickGELU"}


def test_a_double_embedding_prompt_reloads_as_it_was_trained(tiny_hf, tmp_path):
    from calibprompt.prompting.checkpoint import load_prompt, save_prompt
    from calibprompt.prompting.learner import PromptLearner

    learner = PromptLearner(tiny_hf, ["tumour", "normal"], n_ctx=4, double_embedding=True,
                            generator=torch.Generator().manual_seed(0))
    path = save_prompt(tmp_path / "p", learner, backbone=tiny_hf.name)
    loaded, _ = load_prompt(path, tiny_hf)
    assert loaded.double_embedding
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(), learner.encode_text(), atol=1e-6)
