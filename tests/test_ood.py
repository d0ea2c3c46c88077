"""Out-of-distribution score (KNNDistance), modality table, unknown class-name words, image metadata."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from calibprompt.data.images import ImageLoadError, load_image
from calibprompt.data.metadata import image_metadata
from calibprompt.evaluation import ood
from calibprompt.evaluation.ood import KNNDistance, modality_mismatch, task_modality_kinds, unknown_words

# =============================================================================
# KNNDistance on the demo world
# =============================================================================

_SIZE = 96  # outside images are drawn larger than the 64-px demo patches; preprocessing resizes them


def _ct_like(rng: np.random.Generator) -> np.ndarray:
    """A grayscale disc with a smooth radial gradient and faint bands on black (an axial CT slice)."""
    yy, xx = np.mgrid[0:_SIZE, 0:_SIZE] / (_SIZE - 1)
    cx, cy = rng.uniform(0.4, 0.6, 2)
    radius = rng.uniform(0.3, 0.45)
    d = np.hypot(xx - cx, yy - cy)
    disc = 0.3 + 0.5 * (1 - d / radius) * rng.uniform(0.5, 1.0) + 0.1 * np.sin(xx * rng.uniform(5, 20))
    return (np.clip(np.where(d < radius, disc, 0.0), 0, 1) * 255).astype(np.uint8)


def _noise(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (_SIZE, _SIZE, 3), dtype=np.uint8)


def _checkerboard(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:_SIZE, 0:_SIZE] / _SIZE
    n = int(rng.integers(4, 16))
    return ((((xx * n).astype(int) + (yy * n).astype(int)) % 2) * 255).astype(np.uint8)


def _chest_xray_like(rng: np.random.Generator) -> np.ndarray:
    """Two grey lung ellipses, a bright spine, on a dark background, with grain."""
    yy, xx = np.mgrid[0:_SIZE, 0:_SIZE] / (_SIZE - 1)
    image = np.full((_SIZE, _SIZE), 20.0)
    for side in (-1, 1):
        cx = 0.5 + side * rng.uniform(0.18, 0.24)
        inside = ((xx - cx) / rng.uniform(0.14, 0.2)) ** 2 + ((yy - 0.5) / rng.uniform(0.3, 0.4)) ** 2 < 1
        image = np.where(inside, 60 + rng.uniform(0, 40), image)
    image += 120 * np.exp(-(((xx - 0.5) / 0.05) ** 2)) + rng.normal(0, 5, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _text_on_white(rng: np.random.Generator) -> np.ndarray:
    image = Image.new("RGB", (_SIZE, _SIZE), "white")
    draw = ImageDraw.Draw(image)
    for row in range(7):
        draw.text((2, 2 + row * 13), "".join(rng.choice(list("abcdefghij klmnopqrs"), 14)), fill="black")
    return np.asarray(image)


OUTSIDE_KINDS = {"ct": _ct_like, "noise": _noise, "checkerboard": _checkerboard,
                 "chest_xray": _chest_xray_like, "text": _text_on_white}


@pytest.fixture(scope="module")
def demo_backbone():
    from calibprompt.backbones import load_backbone

    return load_backbone("demo", device="cpu")


@pytest.fixture(scope="module")
def demo_features(demo_backbone):
    """Reference (30 / class), held-out (12 / class) demo patches and 12 outside images of each kind."""
    from calibprompt.demo.world import CLASS_IDS, generate_patch

    encode = demo_backbone.encode_image
    reference = encode([generate_patch(c, i, 0)[0] for c in CLASS_IDS for i in range(30)])
    held_out = encode([generate_patch(c, i, 0)[0] for c in CLASS_IDS for i in range(30, 42)])
    rng = np.random.default_rng(1234)
    outside = {kind: encode([make(rng) for _ in range(12)]) for kind, make in OUTSIDE_KINDS.items()}
    return reference, held_out, outside


def test_demo_patches_in_other_images_out(demo_features):
    from sklearn.metrics import roc_auc_score

    reference, held_out, outside = demo_features
    assert reference.shape == (270, demo_features[0].shape[1]) and held_out.shape[0] == 108
    knn = KNNDistance(k=5).fit(reference)
    assert knn.held_in_scores_.shape == (270,)
    assert knn.threshold_ == pytest.approx(np.quantile(knn.held_in_scores_, 0.99) * 1.1)

    assert knn.flag(held_out).mean() <= 0.05
    rates = {kind: float(knn.flag(feats).mean()) for kind, feats in outside.items()}
    all_outside = torch.cat(list(outside.values()))
    assert knn.flag(all_outside).mean() >= 0.90, rates
    assert min(rates.values()) >= 0.75, rates

    labels = np.r_[np.zeros(len(held_out)), np.ones(len(all_outside))]
    percentiles = np.r_[knn.percentile(held_out), knn.percentile(all_outside)]
    assert ((0 <= percentiles) & (percentiles <= 100)).all()
    assert roc_auc_score(labels, percentiles) >= 0.95
    assert roc_auc_score(labels, np.r_[knn.score(held_out), knn.score(all_outside)]) >= 0.95
    # Held-out percentiles look like draws from the held-in distribution (leave-one-out is fair).
    assert 30 <= np.median(knn.percentile(held_out)) <= 70


# =============================================================================
# KNNDistance by hand
# =============================================================================

# A = 0 deg, B = 90 deg, C = 180 deg, D = 45 deg on the unit circle.
_S = math.sqrt(0.5)
_REF = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [_S, _S]])


def test_leave_one_out_threshold_rule_by_hand():
    # k = 2, leave-one-out (cosine distances 1 - cos):
    #   A: D (1 - s), B (1)          -> (2 - s) / 2 = 0.6464
    #   B: D (1 - s), A or C (1)     -> 0.6464
    #   C: B (1), D (1 + s)          -> (2 + s) / 2 = 1.3536
    #   D: A (1 - s), B (1 - s)      -> 1 - s       = 0.2929
    knn = KNNDistance(k=2, quantile=0.5, margin=2.0).fit(_REF * [[3.0], [0.5], [2.0], [1.0]])  # any lengths
    expected = np.array([(2 - _S) / 2, (2 - _S) / 2, (2 + _S) / 2, 1 - _S])
    np.testing.assert_allclose(knn.held_in_scores_, expected, atol=1e-6)
    # median of [0.2929, 0.6464, 0.6464, 1.3536] = 0.6464, times the margin 2
    assert knn.threshold_ == pytest.approx(2 * (2 - _S) / 2, abs=1e-6)

    queries = np.array([[0.0, -1.0], [_S, _S], [-1.0, -0.01]])
    # (0, -1): A and C at distance 1 -> 1.0.  D itself: D (0), A (1 - s) -> (1 - s) / 2.
    # (-1, -0.01): next to C (~0), then B (~1) -> about 0.5.
    scores = knn.score(queries)
    np.testing.assert_allclose(scores[:2], [1.0, (1 - _S) / 2], atol=1e-6)
    assert scores[2] == pytest.approx(0.5, abs=0.01)
    np.testing.assert_allclose(knn.percentile(queries), [75.0, 0.0, 25.0])  # 100 * #(held-in <= s) / 4
    assert knn.flag(queries).tolist() == [False, False, False]
    assert KNNDistance(k=2, quantile=0.5, margin=1.0).fit(_REF).flag(queries).tolist() == [True, False, False]

    # The largest held-in score is the threshold with quantile=1, margin=1; only scores above it flag.
    top = KNNDistance(k=1, quantile=1.0, margin=1.0).fit(_REF)
    np.testing.assert_allclose(top.held_in_scores_, [1 - _S, 1 - _S, 1.0, 1 - _S], atol=1e-6)
    assert top.threshold_ == 1.0
    # (0, -1) is 90 deg from A and C: score exactly 1.0, at the threshold, so not flagged.
    assert top.score([[0.0, -1.0]]).tolist() == [1.0] and not top.flag([[0.0, -1.0]])[0]
    assert top.percentile([[0.0, -1.0], [1.0, 0.0]]).tolist() == [100.0, 0.0]


def test_leave_one_out_removes_only_the_image_itself():
    # An exact duplicate is another image: its distance 0 counts.
    reference = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    knn = KNNDistance(k=1, quantile=1.0, margin=1.0).fit(reference)
    np.testing.assert_allclose(knn.held_in_scores_, [0.0, 0.0, 1.0], atol=1e-7)


def test_chunked_distances_match_brute_force(monkeypatch):
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(37, 6))
    queries = rng.normal(size=(23, 6))
    monkeypatch.setattr(ood, "_CHUNK_ELEMS", 50)  # blocks of one query row against 37 references
    knn = KNNDistance(k=4).fit(torch.tensor(reference, dtype=torch.float64))

    r = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    dist = 1 - q @ r.T
    np.testing.assert_allclose(knn.score(queries.tolist()), np.sort(dist, axis=1)[:, :4].mean(1), atol=1e-6)
    self_dist = 1 - r @ r.T
    np.fill_diagonal(self_dist, np.inf)
    np.testing.assert_allclose(knn.held_in_scores_, np.sort(self_dist, axis=1)[:, :4].mean(1), atol=1e-6)
    assert knn.score(np.zeros((0, 6))).shape == (0,)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: KNNDistance(k=5).fit(np.eye(5)), "more than 5 reference images"),
        (lambda: KNNDistance(k=1).fit(np.eye(3)).score(np.ones((2, 4))), "dimension 4 .* have 3"),
        (lambda: KNNDistance().score(np.eye(3)), "not fitted"),
        (lambda: KNNDistance(k=1).fit(np.ones(3)), r"shape \(N, D\)"),
        (lambda: KNNDistance(k=1).fit([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), "row 1 is all zeros"),
        (lambda: KNNDistance(k=1).fit([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0]]), "NaN"),
        (lambda: KNNDistance(k=0), "`k` must be an int >= 1"),
        (lambda: KNNDistance(k=2.5), "`k` must be an int >= 1"),
        (lambda: KNNDistance(quantile=99), r"`quantile` must be a number in \(0, 1\]"),
        (lambda: KNNDistance(margin=0), "`margin` must be a finite number > 0"),
    ],
)
def test_knn_errors_say_what_to_do(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# =============================================================================
# modality_mismatch
# =============================================================================


@pytest.mark.parametrize(
    "modality, task_modality, mismatch",
    [
        ("CR", "chest X-ray", False),
        ("DX", "chest X-ray", False),
        ("dx ", "chest X-ray", False),  # case and padding are ignored
        ("CT", "chest X-ray", True),
        ("MR", "chest X-ray", True),
        ("US", "chest X-ray", True),
        ("MG", "chest X-ray", True),
        ("CT", "histopathology", True),
        ("MR", "histopathology (synthetic)", True),
        ("DX", "histopathology", True),
        ("SM", "histopathology", False),
        ("SM", "histopathology (synthetic)", False),
        ("SM", "chest X-ray", True),
        ("OT", "histopathology", False),
        ("OT", "chest X-ray", False),  # "other" says nothing
        ("CT", "abdominal CT", False),
        ("MR", "brain MRI", False),
        ("PT", "PET-CT", False),  # the text names two kinds; either fits
        ("CT", "PET-CT", False),
        ("MR", "PET-CT", True),
        ("XYZ", "chest X-ray", False),  # unknown code: no claim
        (None, "chest X-ray", False),  # absent: no claim
        ("", "histopathology", False),
        ("CT", "", False),  # unknown task modality: no claim
        ("CT", "something new", False),
    ],
)
def test_modality_table(modality, task_modality, mismatch):
    reason = modality_mismatch({"format": "DICOM", "modality": modality}, task_modality)
    assert (reason is not None) == mismatch, reason
    if mismatch:
        assert modality.strip().upper() in reason and task_modality in reason


def test_modality_mismatch_other_inputs():
    assert modality_mismatch({"format": "PNG", "size": (3, 3)}, "chest X-ray") is None
    assert modality_mismatch({"Modality": "CT"}, "histopathology") is not None
    assert task_modality_kinds("octopus slides") == {"histopathology"}  # "oct"/"ct" only as whole words
    assert task_modality_kinds("octopus") == frozenset()
    assert task_modality_kinds("chest X-ray") == {"x-ray"}
    with pytest.raises(ValueError, match="must be a mapping"):
        modality_mismatch("CT", "chest X-ray")


def test_project_task_modalities_are_recognised():
    from calibprompt.prompting.tasks import list_tasks, load_task

    kinds = {load_task(name).modality: task_modality_kinds(load_task(name).modality) for name in list_tasks()}
    assert kinds and all(len(k) == 1 for k in kinds.values()), kinds


# =============================================================================
# unknown_words
# =============================================================================


def _whole_word_known(tokenizer, word: str) -> bool:
    if hasattr(tokenizer, "encoder"):
        return word + "</w>" in tokenizer.encoder
    return word in tokenizer.tokenizer.get_vocab()


@pytest.mark.parametrize("name", ["demo", "tiny-random", "tiny-random-hf"])
def test_unknown_words_per_tokenizer_kind(name, demo_backbone, tiny_native, tiny_hf):
    backbone = {"demo": demo_backbone, "tiny-random": tiny_native, "tiny-random-hf": tiny_hf}[name]
    tokenizer = backbone.tokenizer
    kind = type(tokenizer).__name__
    assert kind == ("SimpleTokenizer" if name == "tiny-random" else "HFTokenizer")
    for word in ("tissue", "debris"):
        assert _whole_word_known(tokenizer, word), (name, word)
    assert not _whole_word_known(tokenizer, "zzqxplasia")

    result = unknown_words(["Tissue", "zzqxplasia of tissue", "debris-zzqxplasia 2 b zzqxplasia", "x 42"],
                           tokenizer)
    assert result == {
        "Tissue": [],
        "zzqxplasia of tissue": ["zzqxplasia"] if _whole_word_known(tokenizer, "of") else ["zzqxplasia", "of"],
        "debris-zzqxplasia 2 b zzqxplasia": ["zzqxplasia"],  # split on '-', digits and one letter ignored
        "x 42": [],
    }
    # The tokenizer really does take the flagged word apart (or to [UNK]) and keeps the known one whole.
    if name == "tiny-random":
        assert len(tokenizer.encode("zzqxplasia")) > 1 and len(tokenizer.encode("tissue")) == 1
    else:
        assert tokenizer.tokenizer.tokenize("zzqxplasia") != ["zzqxplasia"]
        assert tokenizer.tokenizer.tokenize("tissue") == ["tissue"]


def test_unknown_words_no_claim_for_other_tokenizers():
    class Whitespace:
        def __call__(self, texts):
            return [t.split() for t in texts]

    assert unknown_words(["zzqxplasia"], Whitespace()) == {}
    assert unknown_words(["zzqxplasia"], object()) == {}
    with pytest.raises(ValueError, match="not a single string"):
        unknown_words("tissue", object())


# =============================================================================
# image_metadata
# =============================================================================

def _dicom(pixels: np.ndarray, *, frames: bool = False, **elements) -> bytes:
    """A 12-bit MONOCHROME2 DICOM (bytes) holding ``pixels``, with no modality unless one is given."""
    from test_data_images import make_dicom

    return make_dicom(np.asarray(pixels, dtype=np.uint16), bits_stored=12, frames=frames,
                      **{"Modality": "", **elements})


def test_image_metadata_of_a_ct_dicom(tmp_path):
    pixels = (np.arange(6 * 8).reshape(6, 8) * 80).astype(np.uint16)
    data = _dicom(pixels, Modality="CT", WindowCenter=[40, 400], WindowWidth=[400, 1500],
                  RescaleSlope=1, RescaleIntercept=-1024)
    path = tmp_path / "slice.dcm"
    path.write_bytes(data)
    expected = {"format": "DICOM", "modality": "CT", "frames": 1, "frame_used": 0, "window": (40.0, 400.0),
                "photometric": "MONOCHROME2", "bits": 12, "size": (8, 6)}
    assert image_metadata(path) == expected
    assert image_metadata(str(path)) == expected
    assert image_metadata(data) == expected
    stream = io.BytesIO(data)
    assert image_metadata(stream) == expected
    assert stream.tell() == 0 and load_image(stream).size == (8, 6)  # position restored for load_image
    reason = modality_mismatch(image_metadata(path), "histopathology")
    assert reason is not None and "CT" in reason


def test_image_metadata_of_a_multiframe_dicom_without_window():
    frames = np.stack([np.full((4, 5), 100 * (i + 1), np.uint16) for i in range(3)])
    meta = image_metadata(_dicom(frames, frames=True, Modality="MR"))
    assert meta == {"format": "DICOM", "modality": "MR", "frames": 3, "frame_used": 0, "window": None,
                    "photometric": "MONOCHROME2", "bits": 12, "size": (5, 4)}
    no_modality = image_metadata(_dicom(frames[0]))
    assert no_modality["modality"] is None and no_modality["frames"] == 1
    assert modality_mismatch(no_modality, "chest X-ray") is None


def test_image_metadata_of_png_and_gif(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(np.arange(7 * 5, dtype=np.uint16).reshape(5, 7) * 1000).save(path)
    assert image_metadata(path) == {"format": "PNG", "size": (7, 5), "mode": "I;16", "frames": 1, "frame_used": 0}
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 3), (1, 2, 3, 4)).save(buffer, format="PNG")
    assert image_metadata(buffer.getvalue())["mode"] == "RGBA"

    gif = io.BytesIO()
    frames = [Image.new("L", (6, 6), 60 * i) for i in range(4)]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    meta = image_metadata(gif.getvalue())
    assert meta["format"] == "GIF" and meta["frames"] == 4 and meta["frame_used"] == 0

    assert image_metadata(Image.new("L", (2, 3)))["size"] == (2, 3)
    assert image_metadata(np.zeros((3, 2), np.uint8))["size"] == (2, 3)


@pytest.mark.parametrize(
    "source",
    [b"", b"just some text, not an image", "missing-file.png",
     b"\x00" * 128 + b"DICM" + b"\x00" * 10],  # a DICOM marker and nothing readable after it
)
def test_image_metadata_unreadable_raises_load_images_error(source, tmp_path):
    if source == "missing-file.png":
        source = tmp_path / source
    with pytest.raises(ImageLoadError) as expected:
        load_image(source)
    with pytest.raises(ImageLoadError) as raised:
        image_metadata(source)
    assert str(raised.value) == str(expected.value)


def test_image_metadata_folder_and_fake_dcm(tmp_path):
    with pytest.raises(ImageLoadError, match="is a folder"):
        image_metadata(tmp_path)
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(ImageLoadError, match="not a standard DICOM"):
        image_metadata(fake)
