"""Tests for calibprompt.demo.world, the procedural H&E patch generator of the offline demo."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from calibprompt.demo import world as W


def _gray(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64).mean(axis=-1)


def _band_energy(image: np.ndarray) -> float:
    """Mid-frequency (difference-of-Gaussians) energy: falls with blur, little affected by pixel noise."""
    g = _gray(image)
    return float(np.mean((ndimage.gaussian_filter(g, 1.0) - ndimage.gaussian_filter(g, 2.0)) ** 2))


# ---------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------


def test_constants():
    assert W.CLASS_IDS == ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
    assert set(W.CLASS_NAMES) == set(W.CLASS_IDS)
    assert W.CLASS_NAMES["TUM"] == "colorectal adenocarcinoma epithelium"
    assert W.CLASS_NAMES["STR"] == "cancer-associated stroma"
    assert W.ATTRIBUTE_LEVELS == ("low", "medium", "high")
    assert set(W.LATENT_FACTORS) == set(W.CLASS_IDS)
    # confusable pairs share a latent factor, with opposite-leaning distributions
    for a, b in (("NORM", "TUM"), ("MUS", "STR"), ("LYM", "DEB"), ("BACK", "MUC")):
        (name_a, (al_a, be_a)), (name_b, (al_b, be_b)) = W.LATENT_FACTORS[a], W.LATENT_FACTORS[b]
        assert name_a == name_b
        assert al_a / (al_a + be_a) != pytest.approx(al_b / (al_b + be_b), abs=0.2)
    assert np.allclose(np.linalg.norm(W.STAIN_H), 1.0) and np.allclose(np.linalg.norm(W.STAIN_E), 1.0)
    for t1, t2 in W.ATTRIBUTE_THRESHOLDS.values():
        assert t1 < t2


def test_attribute_level_thresholds():
    t1, t2 = W.ATTRIBUTE_THRESHOLDS["blur"]
    assert W.attribute_level("blur", t1 - 1e-9) == "low"
    assert W.attribute_level("blur", t1) == "medium"
    assert W.attribute_level("blur", t2 - 1e-9) == "medium"
    assert W.attribute_level("blur", t2) == "high"


def test_stain_model_colours():
    zero = np.zeros((2, 2))
    one = np.ones((2, 2))
    white = W.stain_to_rgb(zero, zero, residual=np.zeros(3))
    assert np.allclose(white, 255.0)
    nucleus = W.stain_to_rgb(one, zero, residual=np.zeros(3))[0, 0]
    stroma = W.stain_to_rgb(zero, 0.6 * one, residual=np.zeros(3))[0, 0]
    # haematoxylin: blue-purple (blue transmitted most); eosin: pink (green absorbed most)
    assert nucleus[2] > nucleus[0] > nucleus[1] - 10 and nucleus.max() < 200
    assert stroma[1] < stroma[0] and stroma[1] < stroma[2] and stroma[0] > 220


# ---------------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------------


def test_same_seed_same_bytes():
    for cls in ("NORM", "ADI"):
        a, attrs_a = W.generate_patch(cls, 7, 123)
        b, attrs_b = W.generate_patch(cls, 7, 123)
        assert a.tobytes() == b.tobytes()
        assert attrs_a == attrs_b
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert W.render_patch("MUS", rng_a)[0].tobytes() == W.render_patch("MUS", rng_b)[0].tobytes()


def test_independent_of_order_and_count():
    forward = W.generate_class("TUM", 5, seed=3, shift=0.5)
    fewer = W.generate_class("TUM", 2, seed=3, shift=0.5)
    later = W.generate_class("TUM", 2, seed=3, shift=0.5, start=3)
    backward = [W.generate_patch("TUM", i, 3, shift=0.5) for i in reversed(range(5))][::-1]
    for i in range(5):
        assert forward[i][0].tobytes() == backward[i][0].tobytes()
        assert forward[i][1] == backward[i][1]
    for i in range(2):
        assert forward[i][0].tobytes() == fewer[i][0].tobytes()
        assert forward[3 + i][0].tobytes() == later[i][0].tobytes()
    # interleaving other classes changes nothing
    W.generate_patch("LYM", 0, 3)
    assert W.generate_patch("TUM", 4, 3, shift=0.5)[0].tobytes() == forward[4][0].tobytes()


def test_different_seeds_indices_classes_and_shifts_differ():
    base = W.generate_patch("STR", 0, 0)[0]
    assert W.generate_patch("STR", 0, 1)[0].tobytes() != base.tobytes()
    assert W.generate_patch("STR", 1, 0)[0].tobytes() != base.tobytes()
    assert W.generate_patch("MUS", 0, 0)[0].tobytes() != base.tobytes()
    seeds = {W.patch_seed(s, c, i, sh) for s in (0, 1) for c in W.CLASS_IDS for i in (0, 1, 1_000_000)
             for sh in (0.0, 1.0)}
    assert len(seeds) == 2 * 9 * 3 * 2


def test_patch_seed():
    s = W.patch_seed(0, "NORM", 5, 1.0)
    assert isinstance(s, int) and 0 <= s < 2 ** 64
    assert s == W.patch_seed(0, "NORM", 5, 1.0) == W.patch_seed(0, "NORM", 5, 1)
    assert W.patch_seed(0, "NORM", 5, -0.0) == W.patch_seed(0, "NORM", 5, 0.0)
    assert W.patch_seed(0, "NORM", 5, np.float64(1.0)) == s
    with pytest.raises(ValueError):
        W.patch_seed(-1, "NORM", 0)
    with pytest.raises(ValueError):
        W.patch_seed(0, "XYZ", 0)


def test_uses_only_the_given_generator():
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    W.generate_patch("DEB", 0, 0)
    W.render_patch("ADI", np.random.default_rng(1))
    assert np.array_equal(np.random.get_state()[1], before)


# ---------------------------------------------------------------------------------------------------
# Shapes, attributes, arguments
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 96])
def test_shapes_and_dtype(size):
    for cls in W.CLASS_IDS:
        image, attrs = W.generate_patch(cls, 0, 0, size=size)
        assert image.shape == (size, size, 3)
        assert image.dtype == np.uint8
        assert image.flags.c_contiguous
        assert attrs["size"] == size and attrs["cls"] == cls
        assert 5 < image.std() or cls == "BACK"  # textured, not flat


def test_size_128_and_shifted():
    image, attrs = W.generate_patch("NORM", 0, 0, size=128, shift=1.0)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert attrs["shift"] == 1.0


def test_attributes_complete_and_serialisable():
    required = ["stain_strength", "haematoxylin", "eosin", "blur", "noise", "brightness", "nucleus_density",
                "eosin_density"]
    for cls in W.CLASS_IDS:
        for index in range(2):
            _, attrs = W.generate_patch(cls, index, 9, shift=0.3)
            assert json.loads(json.dumps(attrs)) == attrs
            assert attrs["cls"] == cls and attrs["class_name"] == W.CLASS_NAMES[cls]
            latent = W.LATENT_FACTORS[cls][0]
            assert attrs["latent"] == latent
            for name in required + [latent]:
                value = attrs[name]
                assert isinstance(value, float) and np.isfinite(value)
                assert attrs[f"{name}_level"] in W.ATTRIBUTE_LEVELS
                assert attrs[f"{name}_level"] == W.attribute_level(name, value)
            assert 0.0 <= attrs[latent] <= 1.0
            assert 0.0 <= attrs["nucleus_density"] <= 1.0 and 0.0 <= attrs["eosin_density"] <= 1.0
            assert isinstance(attrs["flip"], bool)


def test_levels_all_occur_in_pretraining_domain():
    seen = {name: set() for name in ("stain_strength", "haematoxylin", "eosin", "blur", "noise", "brightness")}
    for index in range(40):
        _, attrs = W.generate_patch("MUC", index, 2)
        for name, levels in seen.items():
            levels.add(attrs[f"{name}_level"])
    assert all(levels == set(W.ATTRIBUTE_LEVELS) for levels in seen.values()), seen


def test_invalid_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        W.render_patch("CANCER", rng)
    with pytest.raises(ValueError):
        W.render_patch("TUM", rng, shift=-0.5)
    with pytest.raises(ValueError):
        W.render_patch("TUM", rng, shift=float("nan"))
    with pytest.raises(ValueError):
        W.render_patch("TUM", rng, size=8)


# ---------------------------------------------------------------------------------------------------
# Domain shift
# ---------------------------------------------------------------------------------------------------


def test_shift_moves_colour_and_sharpness_in_documented_direction():
    """The same tissues and nuisance draws (same generator seed) rendered at shift 0, 1 and 2: red falls
    (eosin turns purple, haematoxylin navy), blue-minus-red rises, blur and noise grow and mid-frequency
    detail fades."""
    shifts = (0.0, 1.0, 2.0)
    red, blue_minus_red, band, blur, noise = ([[] for _ in shifts] for _ in range(5))
    for cls in W.CLASS_IDS:
        for k in range(3):
            for j, shift in enumerate(shifts):
                image, attrs = W.render_patch(cls, np.random.default_rng(100 + k), shift=shift)
                rgb = image.astype(np.float64)
                red[j].append(rgb[..., 0].mean())
                blue_minus_red[j].append((rgb[..., 2] - rgb[..., 0]).mean())
                band[j].append(_band_energy(image))
                blur[j].append(attrs["blur"])
                noise[j].append(attrs["noise"])
    red, blue_minus_red, band, blur, noise = map(np.array, (red, blue_minus_red, band, blur, noise))
    assert np.all(np.diff(red, axis=0) < 0)  # every image gets less red
    assert np.all(np.diff(red.mean(axis=1)) < -5)
    assert np.all(np.diff(blue_minus_red.mean(axis=1)) > 3)
    assert np.all(np.diff(band.mean(axis=1)) < 0)
    assert np.all(np.diff(blur, axis=0) > 0) and np.all(np.diff(noise, axis=0) > 0)
    # at shift 1 the images are still tissue-like, not washed out
    assert 120 < red[1].mean() < 235


# ---------------------------------------------------------------------------------------------------
# Latent factors and separability
# ---------------------------------------------------------------------------------------------------


def test_norm_tum_atypia_overlap_but_differ():
    norm = np.array([W.generate_patch("NORM", i, 0)[1]["atypia"] for i in range(60)])
    tum = np.array([W.generate_patch("TUM", i, 0)[1]["atypia"] for i in range(60)])
    assert tum.mean() - norm.mean() > 0.25
    assert norm.max() > tum.min()  # the tails overlap: some normal patches are more atypical than some tumours
    assert (norm > 0.5).any() and (tum < 0.5).any()


def test_class_features_differ():
    feats = {}
    for cls in W.CLASS_IDS:
        images = [W.generate_patch(cls, i, 4)[0] for i in range(6)]
        attrs = [W.generate_patch(cls, i, 4)[1] for i in range(2)]
        gray = np.mean([_gray(im).mean() for im in images])
        grad = np.mean([np.mean(np.abs(np.diff(_gray(im), axis=0))) + np.mean(np.abs(np.diff(_gray(im), axis=1)))
                        for im in images])
        feats[cls] = (gray, grad, np.mean([a["nucleus_density"] for a in attrs]))
    for bright in ("ADI", "BACK"):
        for dark in ("LYM", "TUM", "NORM", "DEB", "MUS"):
            assert feats[bright][0] > feats[dark][0] + 25, (bright, dark, feats)
    assert feats["MUC"][0] > max(feats[c][0] for c in ("LYM", "TUM", "NORM", "DEB")) + 15
    assert feats["BACK"][1] < feats["ADI"][1] < feats["LYM"][1]  # glass is smooth, lymphocytes busy
    assert feats["TUM"][0] < feats["NORM"][0]  # carcinoma is darker (crowded hyperchromatic nuclei)
    assert feats["LYM"][2] > 0.2 > feats["MUS"][2]
