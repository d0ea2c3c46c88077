"""A procedural world of H&E-like colorectal histology patches (the offline demo world).

The generator draws small RGB patches (default 64 x 64 px) of the nine tissue classes of the Kather
colorectal-cancer data sets, so that a tiny CLIP model can be pretrained and evaluated without internet.
It is deterministic (:func:`patch_seed`), fast (vectorised numpy, a few ms per patch) and has known,
controllable structure: per-image latent factors, nuisance parameters and a domain-shift knob.

Tissue structures (one small function per structure)
------------------------------------------------------
Each patch is first drawn as two non-negative maps, haematoxylin density ``H`` (nuclei, chromatin) and
eosin density ``E`` (cytoplasm, stroma, fibres), on a square *tissue-frame canvas* about 1.42x the patch
side; the canvas is then rotated by a random angle, cropped to the patch and optionally mirrored.
Lengths are given for a 64-px patch (one pixel ~ 1.75 um, a patch ~ 112 um wide like a Kather patch)
and scale with ``size / 64``, so a 96- or 128-px patch shows the same field of view at higher resolution.

* ``ADI``  adipose: a warped Voronoi network of jittered seeds (cells 18-36 px across) whose edges are
  thin pink membranes around empty (white) fat cells, with a few flat nuclei on the membranes.
* ``BACK`` background: near-empty glass with faint large-scale texture and occasional dust specks.
* ``MUC``  mucus: the glass plus pale bluish-pink (light H + light E) clouds and wispy strands (zero
  contours of a warped noise field), with a few floating cells.
* ``LYM``  lymphocytes: a dense jittered packing of small (about 4 px) round dark nuclei with little
  cytoplasm in between.
* ``DEB``  debris / necrosis: patchy pink-purple necrotic material, clustered nuclear dust
  (karyorrhexis: tiny dense dots) and a few intact cells.
* ``MUS``  smooth muscle: dense eosinophilic streaks (anisotropic noise) running in one direction,
  with blunt cigar-shaped nuclei aligned to the local fibre direction.
* ``STR``  cancer-associated stroma: the same fibre model, but loose (pale gaps), wavy, in bundles of
  several orientations, with thin spindle nuclei and some inflammatory cells.
* ``NORM`` normal mucosa and ``TUM`` adenocarcinoma: glands (crypts) seen in section. Each gland is an
  irregular ellipse with a lumen (white), an epithelial ring (pink cytoplasm, pale goblet vacuoles) with
  nuclei along its basement membrane, set in lamina propria (pink, with scattered small round nuclei).

Latent factors (continuous, with deliberately overlapping classes)
------------------------------------------------------------------
Confusable classes share one generator and differ only in the distribution of its latent factor, so the
classification problem has a Bayes error above zero (``LATENT_FACTORS`` lists them). With equal priors and
the latent read off perfectly, the pairwise Bayes errors are about 11 % (NORM/TUM), 12 % (MUS/STR),
3.5 % (LYM/DEB) and 3.6 % (BACK/MUC); the nuisance can only add to these.

* ``atypia`` in [0, 1], NORM ~ Beta(2, 5), TUM ~ Beta(5, 2). With atypia glands grow larger and more
  irregular (angular harmonics), crowd together and fuse, lumens shrink or vanish, cribriform secondary
  lumens appear, goblet cells disappear, nuclei become larger, darker, more pleomorphic, stratified
  through the whole epithelium and lose their perpendicular orientation (polarity); the cytoplasm turns
  more purple, the stroma less cellular and luminal necrosis appears.
* ``alignment`` in [0, 1], MUS ~ Beta(6, 2), STR ~ Beta(2, 4): fibre straightness and parallelism,
  fibre density/compactness (fewer pale gaps), nuclear elongation, bluntness and alignment.
* ``fragmentation`` in [0, 1], LYM ~ Beta(1.5, 7), DEB ~ Beta(6, 2): how much of the patch is intact
  round lymphocytes (low) versus nuclear dust and patchy necrotic eosin (high).
* ``material_density`` in [0, 1], BACK ~ Beta(1.3, 9), MUC ~ Beta(5, 2.5): amount of pale mucoid
  material (clouds, strands, floating cells) on otherwise empty glass.
* ``cell_size`` in [0, 1], ADI ~ Uniform(0, 1): fat-cell diameter from 18 to 36 px (not shared).

Everything else in a patch (gland positions, nuclei, fibres, noise fields, ...) is drawn independently of
the class given the latent factor.

Stain model
-----------
Densities are coloured by the Beer-Lambert law, ``rgb = 255 * brightness * exp(-(sH * H * vH + sE * E *
vE + residual))``, with unit optical-density stain vectors vH ~ (0.65, 0.70, 0.29) (haematoxylin,
blue-purple) and vE ~ (0.07, 0.99, 0.11) (eosin, pink), per-stain strength multipliers sH, sE and a faint
grey ``residual`` (the slide itself). Chromatin and cytoplasm get per-pixel grain before colouring.

Nuisance (drawn per image, independent of the class)
----------------------------------------------------
Rotation (uniform angle) and mirror flip; stain-vector jitter (each vector turned by about 2.5 degrees in a
random direction); stain strengths sH, sE (log-normal, sd 0.12); Gaussian blur of the RGB image (sigma
0.15-0.75 px at 64 px); Gaussian pixel noise (sd 0.8-3.2 grey levels); brightness (0.93-1.05).

Domain shift
------------
``shift`` (>= 0) moves the images away from the pretraining domain (``shift = 0``), as a different lab and
scanner would. Per unit of shift: the haematoxylin vector turns 12 degrees (in the plane towards OD
direction (0.70, 0.70, 0.10)) to a bluer, navy dye, and the eosin vector 12 degrees (towards OD direction
(0.30, 0.95, 0.06)) to a more purple-magenta (lilac) dye; sH is multiplied by exp(0.18) (darker nuclei)
and sE by exp(-0.15) (paler pink); the blur sigma grows by 0.45 px (at 64 px) and the noise sd by 2.5 grey
levels; and the scanner white point turns slightly yellow (residual OD += (0, 0.012, 0.035)). Measured
effect from shift 0 to 1 (same tissues): the mean red level falls by about 12 grey levels, blue-minus-red
rises by about 13, and mid-frequency (difference-of-Gaussians) detail drops by about 40 %.
At ``shift = 1`` the images are clearly from another lab but still easy to read for a person; shift 2
extrapolates (strongly blue-violet, blurred, noisy). The shift enters :func:`patch_seed`, so the images
of a shifted domain are new tissue, not re-stained copies of the pretraining images; re-staining the same
tissue is possible by calling :func:`render_patch` with equal generators and different shifts.

Per-image attributes
--------------------
:func:`render_patch` returns, with each image, a JSON-serialisable dict: ``cls``, ``class_name``,
``shift``, ``size``, ``rotation`` (degrees), ``flip``, and for every attribute in ``ATTRIBUTE_THRESHOLDS``
its value and ``<name>_level`` in ``ATTRIBUTE_LEVELS`` (fixed thresholds, see there): ``stain_strength``
(geometric mean of sH and sE), ``haematoxylin`` (sH), ``eosin`` (sE), ``blur`` (sigma in 64-px pixels),
``noise`` (sd in grey levels), ``brightness``, ``nucleus_density`` (fraction of the patch covered by
nuclei, H > 0.45), ``eosin_density`` (fraction with E > 0.2) and the class's latent factor (``latent``
names it). The thresholds of the nuisance attributes split their shift-0 ranges into rough thirds, so every
level occurs in the pretraining domain; shifted images mostly read "high" blur and noise.

API
---
``render_patch(cls, rng, *, shift=0.0, size=64)`` draws one patch from a ``numpy.random.Generator``;
``patch_seed(seed, cls, index, shift)`` is the 64-bit seed of image ``index`` of class ``cls`` (independent
of how many images are drawn, and in which order); ``generate_patch(cls, index, seed, *, shift, size)``
and ``generate_class(cls, n, seed, *, shift, size, start=0)`` use it. About 420 patches/s per CPU core at
64 px and 250/s at 96 px (glandular classes are the slowest: about 260/s at 64 px, 150/s at 96 px).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import scipy.fft
from scipy import ndimage

__all__ = [
    "ATTRIBUTE_LEVELS",
    "ATTRIBUTE_THRESHOLDS",
    "CLASS_IDS",
    "CLASS_NAMES",
    "LATENT_FACTORS",
    "STAIN_E",
    "STAIN_H",
    "WORLD_VERSION",
    "attribute_level",
    "generate_class",
    "generate_patch",
    "patch_seed",
    "render_patch",
    "stain_to_rgb",
]

#: Bump whenever the images drawn for a given (seed, class, index, shift, size) change.
WORLD_VERSION = 1

CLASS_IDS: tuple[str, ...] = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
CLASS_NAMES: dict[str, str] = {
    "ADI": "adipose tissue",
    "BACK": "background",
    "DEB": "debris",
    "LYM": "lymphocytes",
    "MUC": "mucus",
    "MUS": "smooth muscle",
    "NORM": "normal colon mucosa",
    "STR": "cancer-associated stroma",
    "TUM": "colorectal adenocarcinoma epithelium",
}
ATTRIBUTE_LEVELS: tuple[str, ...] = ("low", "medium", "high")

#: ``(t1, t2)`` per attribute: "low" if value < t1, "medium" if t1 <= value < t2, else "high".
ATTRIBUTE_THRESHOLDS: dict[str, tuple[float, float]] = {
    "stain_strength": (0.95, 1.05),
    "haematoxylin": (0.94, 1.06),
    "eosin": (0.94, 1.06),
    "blur": (0.35, 0.55),
    "noise": (1.6, 2.4),
    "brightness": (0.97, 1.01),
    "nucleus_density": (0.05, 0.25),
    "eosin_density": (0.3, 0.65),
    "atypia": (1 / 3, 2 / 3),
    "alignment": (1 / 3, 2 / 3),
    "fragmentation": (1 / 3, 2 / 3),
    "material_density": (1 / 3, 2 / 3),
    "cell_size": (1 / 3, 2 / 3),
}

#: The class-specific latent factor of each class: ``(name, (alpha, beta))``, drawn from Beta(alpha, beta).
LATENT_FACTORS: dict[str, tuple[str, tuple[float, float]]] = {
    "ADI": ("cell_size", (1.0, 1.0)),
    "BACK": ("material_density", (1.3, 9.0)),
    "MUC": ("material_density", (5.0, 2.5)),
    "DEB": ("fragmentation", (6.0, 2.0)),
    "LYM": ("fragmentation", (1.5, 7.0)),
    "MUS": ("alignment", (6.0, 2.0)),
    "STR": ("alignment", (2.0, 4.0)),
    "NORM": ("atypia", (2.0, 5.0)),
    "TUM": ("atypia", (5.0, 2.0)),
}


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


#: Optical-density stain vectors (unit length) of the pretraining domain.
STAIN_H = _unit([0.65, 0.70, 0.29])
STAIN_E = _unit([0.07, 0.99, 0.11])
_SHIFT_TARGET_H = _unit([0.70, 0.70, 0.10])  # a bluer (navy) haematoxylin
_SHIFT_TARGET_E = _unit([0.30, 0.95, 0.06])  # a more purple-magenta eosin
_SHIFT_ANGLE = math.radians(12.0)  # stain-vector rotation per unit of shift (both stains)
_SHIFT_LOG_H = 0.18  # log haematoxylin strength per unit of shift
_SHIFT_LOG_E = -0.15  # log eosin strength per unit of shift
_SHIFT_BLUR = 0.45  # blur sigma (64-px pixels) per unit of shift
_SHIFT_NOISE = 2.5  # noise sd (grey levels) per unit of shift
_SHIFT_TINT = np.array([0.0, 0.012, 0.035])  # residual OD per unit of shift (yellowish white point)
_RESIDUAL = np.array([0.030, 0.035, 0.025])  # the slide's own faint grey
_NUCLEUS_THRESHOLD = 0.45  # H density counted as "nucleus" in nucleus_density
_EOSIN_THRESHOLD = 0.2  # E density counted as "pink material" in eosin_density


def attribute_level(name: str, value: float) -> str:
    """The level ("low", "medium" or "high") of attribute ``name`` at ``value`` (``ATTRIBUTE_THRESHOLDS``)."""
    t1, t2 = ATTRIBUTE_THRESHOLDS[name]
    return ATTRIBUTE_LEVELS[0] if value < t1 else ATTRIBUTE_LEVELS[1] if value < t2 else ATTRIBUTE_LEVELS[2]


# ---------------------------------------------------------------------------------------------------
# Drawing primitives
# ---------------------------------------------------------------------------------------------------


def _fft_friendly(n: int) -> int:
    """The smallest integer >= n whose prime factors are 2, 3 and 5."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


@functools.lru_cache(maxsize=16)
def _canvas_size(size: int) -> int:
    """Side of the tissue-frame canvas: holds the patch at any rotation (FFT-friendly)."""
    return _fft_friendly(math.ceil(size * math.sqrt(2.0)) + 2)


@functools.lru_cache(maxsize=16)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` of an n x n canvas (read-only)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


@functools.lru_cache(maxsize=16)
def _monomials(n: int) -> np.ndarray:
    """``(n * n, 6)`` columns x**2, x*y, y**2, x, y, 1 of the pixel centres (for quadratic forms)."""
    yy, xx = _grid(n)
    x, y = xx.ravel(), yy.ravel()
    out = np.stack([x * x, x * y, y * y, x, y, np.ones_like(x)], axis=1)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=16)
def _frequencies(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies ``(fy, fx)`` of ``rfft2`` on an n x n canvas (cycles per pixel)."""
    return np.fft.fftfreq(n), np.fft.rfftfreq(n)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in blocks (of rows of ``a`` or columns of ``b``, whichever is longer) small enough that
    BLAS stays single-threaded: a large skinny product would wake BLAS threads, which cost more than
    they save here and compete with parallel workers."""
    m, k = a.shape
    n = b.shape[1]
    out = np.empty((m, n))
    if m >= n:
        step = max(1, 100_000 // (k * n))
        for i in range(0, m, step):
            np.matmul(a[i:i + step], b, out=out[i:i + step])
    else:
        step = max(1, 100_000 // (k * m))
        for j in range(0, n, step):
            out[:, j:j + step] = a @ b[:, j:j + step]
    return out


def _noise(rng: np.random.Generator, n: int, sigma: float, sigma_x: float | None = None,
           count: int | None = None) -> np.ndarray:
    """Smooth periodic Gaussian noise on an n x n canvas, zero mean and unit sd: white noise filtered by a
    Gaussian of sd ``sigma`` px along y and ``sigma_x`` (default ``sigma``) along x. ``count`` stacks
    several independent fields (shape ``(count, n, n)``).

    Drawn directly in the Fourier domain, and only for the frequencies the filter lets through (gain
    above ~1e-3), so smooth fields cost few random numbers."""
    sigma_x = sigma if sigma_x is None else sigma_x
    fy, fx = _frequencies(n)
    cut = 0.6  # exp(-2 pi^2 sigma^2 f^2) < 1e-3 for f > 0.6 / sigma
    ky = min(n // 2, int(cut * n / max(sigma, 1e-6)) + 1)
    kx = min(n // 2, int(cut * n / max(sigma_x, 1e-6)) + 1)
    rows = np.r_[0:ky + 1, n - ky:n] if ky < n // 2 else np.arange(n)
    gain = np.exp(-2.0 * math.pi ** 2 * ((sigma * fy[rows]) ** 2)[:, None]) * np.exp(
        -2.0 * math.pi ** 2 * (sigma_x * fx[:kx + 1]) ** 2)[None, :]
    k = 1 if count is None else count
    draws = rng.standard_normal((2, k, rows.size, kx + 1))
    spectrum = np.zeros((k, n, kx + 1), dtype=np.complex128)
    spectrum[:, rows] = (draws[0] + 1j * draws[1]) * gain
    # inverse transform along y on the kept columns only, then along x (irfft zero-pads the rest)
    field = scipy.fft.irfft(scipy.fft.ifft(spectrum, axis=1), n=n, axis=2).reshape(k, n * n)
    field -= field.mean(axis=1, keepdims=True)
    field /= np.sqrt(np.einsum("ij,ij->i", field, field) / (n * n))[:, None] + 1e-12
    field = field.reshape(k, n, n)
    return field[0] if count is None else field


def _bilinear(maps: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear samples of canvas maps ``(k, n, n)`` (or one ``(n, n)`` map) at pixel coordinates ``(y, x)``
    (pixel i has its centre at i), periodic at the borders."""
    single = maps.ndim == 2
    maps = maps[None] if single else maps
    n = maps.shape[-1]
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = y - y0, x - x0
    iy0 = y0.astype(np.intp) % n
    ix0 = x0.astype(np.intp) % n
    iy1, ix1 = (iy0 + 1) % n, (ix0 + 1) % n
    flat = maps.reshape(maps.shape[0], n * n)
    r0, r1 = iy0 * n, iy1 * n
    out = ((flat.take(r0 + ix0, axis=1) * (1.0 - fx) + flat.take(r0 + ix1, axis=1) * fx) * (1.0 - fy)
           + (flat.take(r1 + ix0, axis=1) * (1.0 - fx) + flat.take(r1 + ix1, axis=1) * fx) * fy)
    return out[0] if single else out


def _splat(n: int, x, y, major, minor, angle, weight, *, power: float = 2.0, rim: float = 0.0,
           edge: float = 0.7) -> np.ndarray:
    """The sum of soft-edged filled (super)ellipses on an n x n canvas.

    Ellipse i is centred at ``(x[i], y[i])`` (pixel i spans [i, i + 1)), has semi-axes ``major[i]``
    (along ``angle[i]``, radians from the x axis) and ``minor[i]``, density ``weight[i]`` and a soft
    edge about ``edge`` px wide. ``power > 2`` gives blunt (cigar-like) ends; ``rim > 0`` makes the
    centre lighter than the rim (vesicular chromatin). Vectorised over small windows, one per ellipse."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    k = x.size
    major, minor, angle, weight = (np.broadcast_to(np.asarray(a, dtype=np.float64), (k,))
                                   for a in (major, minor, angle, weight))
    reach = np.ceil(major + edge).astype(np.intp)  # window half-width of each ellipse
    visible = (x > -reach) & (x < n + reach) & (y > -reach) & (y < n + reach)
    if not visible.any():
        return np.zeros((n, n))
    pad = 2 * int(reach[visible].max()) + 1
    side = n + 2 * pad  # accumulate on a padded canvas: no bounds checks per pixel
    out = np.zeros(side * side)
    for r in np.unique(reach[visible]):  # one vectorised pass per window size
        sel = np.flatnonzero(visible & (reach == r))
        xs, ys = x[sel], y[sel]
        offsets = np.arange(-r, r + 1)
        fx, fy = np.floor(xs), np.floor(ys)
        dx = (fx - xs + 0.5)[:, None, None] + offsets[None, None, :]  # (k, 1, w)
        dy = (fy - ys + 0.5)[:, None, None] + offsets[None, :, None]  # (k, w, 1)
        c, s = np.cos(angle[sel]), np.sin(angle[sel])
        a_inv, b = 1.0 / major[sel], minor[sel]
        b_inv = 1.0 / b
        u = dx * (c * a_inv)[:, None, None] + dy * (s * a_inv)[:, None, None]
        v = dy * (c * b_inv)[:, None, None] - dx * (s * b_inv)[:, None, None]
        if power == 2.0:
            q = np.sqrt(u * u + v * v)
        else:
            q = (np.abs(u) ** power + np.abs(v) ** power) ** (1.0 / power)
        value = np.clip((1.0 - q) * (b / edge)[:, None, None] + 0.5, 0.0, 1.0)
        if rim:
            value *= 1.0 - rim * np.clip(1.0 - q * q, 0.0, 1.0)
        value *= weight[sel][:, None, None]
        base = (fy.astype(np.intp) + pad) * side + (fx.astype(np.intp) + pad)
        index = base[:, None, None] + (offsets[None, :, None] * side + offsets[None, None, :])
        out += np.bincount(index.ravel(), weights=value.ravel(), minlength=side * side)
    return out.reshape(side, side)[pad:pad + n, pad:pad + n]


def _saturate(density: np.ndarray, cap: float) -> np.ndarray:
    """Soft upper limit for overlapping nuclei: ~identity for small values, approaches ``cap``."""
    return cap * (1.0 - np.exp(-density / cap))


def _lattice(rng: np.random.Generator, n: int, spacing: float, jitter: float,
             margin: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points of a jittered hexagonal lattice (random offset) on the canvas, extended by ``margin``
    (default ``spacing``) on every side."""
    margin = spacing if margin is None else margin
    row_step = spacing * 0.8660254
    rows = np.arange(math.ceil((n + 2 * margin) / row_step) + 3)
    cols = np.arange(math.ceil((n + 2 * margin) / spacing) + 2)
    gx = (cols[None, :] + 0.5 * (rows[:, None] % 2)) * spacing
    gy = np.broadcast_to(rows[:, None] * row_step, gx.shape)
    x = gx.ravel() - margin - spacing + rng.uniform(0.0, spacing) + rng.normal(0.0, jitter * spacing, gx.size)
    y = gy.ravel() - margin - 2 * row_step + rng.uniform(0.0, 2 * row_step) + rng.normal(0.0, jitter * spacing, gx.size)
    keep = (x > -margin) & (x < n + margin) & (y > -margin) & (y < n + margin)
    return x[keep], y[keep]


def _sample_at(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Nearest-pixel values of a canvas field at points (clamped to the canvas)."""
    n = field.shape[0]
    ix = np.clip(np.floor(x).astype(np.intp), 0, n - 1)
    iy = np.clip(np.floor(y).astype(np.intp), 0, n - 1)
    return field[iy, ix]


def _area(n: int, s: float) -> float:
    """Area of the n x n canvas in units of a patch (64 x 64 px at scale 1)."""
    return (n / s) ** 2 / 4096.0


def _uniform_points(rng: np.random.Generator, n: int, mean_count: float) -> tuple[np.ndarray, np.ndarray]:
    k = rng.poisson(max(mean_count, 0.0))
    return rng.uniform(0.0, n, k), rng.uniform(0.0, n, k)


# ---------------------------------------------------------------------------------------------------
# Tissue structures: each returns (H, E) density maps on an n x n tissue-frame canvas; s = size / 64
# ---------------------------------------------------------------------------------------------------


def _adipose(rng: np.random.Generator, n: int, s: float, cell_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Fat cells: a warped Voronoi network of thin pink membranes around empty interiors."""
    diameter = (18.0 + 18.0 * cell_size) * s
    sx, sy = _lattice(rng, n, diameter, 0.22)
    yy, xx = _grid(n)
    warp = _noise(rng, n, 5.0 * s, count=2) * (1.2 * s)
    px, py = (xx + warp[0]).ravel(), (yy + warp[1]).ravel()
    # squared distance to every seed, less |p|^2 (which changes neither the order nor the differences)
    d2 = _matmul(np.stack([-2.0 * sx, -2.0 * sy, sx * sx + sy * sy], axis=1),
                 np.stack([px, py, np.ones_like(px)]))  # (seeds, pixels)
    first, second = np.full(px.size, np.inf), np.full(px.size, np.inf)
    for row in d2:  # the two smallest values per pixel
        np.minimum(second, np.maximum(first, row), out=second)
        np.minimum(first, row, out=first)
    first, second = first.reshape(n, n), second.reshape(n, n)
    to_edge = (second - first) / (2.0 * diameter)  # ~ distance to the nearest Voronoi edge
    membrane = np.exp(-((to_edge / (0.55 * s)) ** 2))
    texture = _noise(rng, n, 2.5 * s, count=2)
    membrane *= np.clip(1.0 + 0.35 * texture[0], 0.3, 1.5) * (texture[1] > -2.0)
    E = 0.015 + 0.42 * membrane
    # a few flattened nuclei lying on the membranes, oriented along them
    cand = np.flatnonzero((membrane > 0.8).ravel())
    k = min(rng.poisson(2.0 * _area(n, s)), cand.size)
    H = 0.02 + 0.05 * membrane
    if k:
        pick = rng.choice(cand, size=k, replace=False)
        ny, nx = np.divmod(pick, n)
        gy, gx = np.gradient(to_edge)
        along = np.arctan2(gy[ny, nx], gx[ny, nx]) + math.pi / 2
        H = H + _saturate(_splat(n, nx + 0.5, ny + 0.5, 2.6 * s, 0.75 * s, along, 0.9), 1.2)
    return H, E


def _mucoid(rng: np.random.Generator, n: int, s: float, density: float) -> tuple[np.ndarray, np.ndarray]:
    """Glass with a variable amount of pale mucoid material (BACK at low density, MUC at high)."""
    glass = _noise(rng, n, 10.0 * s)
    H = 0.008 + 0.004 * glass
    E = 0.012 + 0.008 * glass
    # mucus: broad pale clouds plus wispy strands along the zero contours of a warped noise field
    fields = _noise(rng, n, 7.0 * s, count=3)
    cloud = np.clip(0.55 + 0.45 * fields[0], 0.0, None)
    yy, xx = _grid(n)
    strands_src = _noise(rng, n, 3.5 * s)
    wy = yy + 4.0 * s * fields[1]
    wx = xx + 4.0 * s * fields[2]
    strand_field = _bilinear(strands_src, wy - 0.5, wx - 0.5)
    strands = np.exp(-((strand_field / 0.22) ** 2)) * np.clip(0.4 + 0.6 * fields[0], 0.0, None)
    mass = density * (0.24 * cloud + 0.4 * strands)
    H = H + 0.7 * mass
    E = E + 0.6 * mass
    # a few floating cells (more with more material) and dust specks on the glass
    cx, cy = _uniform_points(rng, n, density * 2.5 * _area(n, s))
    nuclei = _splat(n, cx, cy, 1.7 * s * rng.uniform(0.85, 1.25, cx.size), 1.5 * s, rng.uniform(0, math.pi, cx.size),
                    rng.uniform(0.6, 1.0, cx.size))
    dx, dy = _uniform_points(rng, n, rng.exponential(1.5))
    dust = _splat(n, dx, dy, rng.uniform(0.5, 1.6, dx.size) * s, 0.5 * s, rng.uniform(0, math.pi, dx.size),
                  rng.uniform(0.3, 0.9, dx.size))
    H = H + _saturate(nuclei, 1.1) + 0.7 * dust
    E = E + 0.25 * nuclei + 0.5 * dust
    return H, E


def _cells_and_debris(rng: np.random.Generator, n: int, s: float,
                      fragmentation: float) -> tuple[np.ndarray, np.ndarray]:
    """Intact lymphocytes (low fragmentation, LYM) or necrotic debris with nuclear dust (high, DEB)."""
    f = fragmentation
    radius = (1.9 - 0.4 * f) * s
    cover = 0.55 * (1.0 - f) ** 1.5 + 0.03
    lx, ly = _lattice(rng, n, radius * math.sqrt(math.pi / cover) * 1.05, 0.3)
    keep = rng.random(lx.size) < 0.93
    lx, ly = lx[keep], ly[keep]
    r = radius * np.exp(rng.normal(0.0, 0.08 + 0.1 * f, lx.size))
    lymph = _splat(n, lx, ly, r, r * rng.uniform(0.8, 1.0, lx.size), rng.uniform(0, math.pi, lx.size),
                   (1.35 - 0.2 * f) * np.exp(rng.normal(0.0, 0.1, lx.size)))
    # karyorrhexis: clustered tiny dense fragments
    clusters = rng.poisson(f * 4.5 * _area(n, s)) + 1
    per = rng.poisson(f * 45.0, clusters)
    cx = np.repeat(rng.uniform(0, n, clusters), per) + rng.normal(0.0, 4.0 * s, per.sum())
    cy = np.repeat(rng.uniform(0, n, clusters), per) + rng.normal(0.0, 4.0 * s, per.sum())
    fr = rng.uniform(0.45, 1.1, cx.size) * s
    frags = _splat(n, cx, cy, fr, fr * rng.uniform(0.6, 1.0, cx.size), rng.uniform(0, math.pi, cx.size),
                   rng.uniform(0.8, 1.4, cx.size), edge=0.5)
    # necrotic eosinophilic material (patchy, with holes) and a purple granular haze
    fields = _noise(rng, n, 4.0 * s, count=2)
    grain = _noise(rng, n, 1.0 * s)
    necrosis = np.clip(0.32 + 0.2 * fields[0], 0.0, None) * np.clip(1.3 + fields[1], 0.0, 1.0)
    E = 0.10 + 0.04 * fields[1] + f * necrosis
    H = f * np.clip(0.10 + 0.07 * grain + 0.05 * fields[0], 0.0, None)
    H = H + _saturate(lymph + frags, 1.5)
    E = np.clip(E, 0.01, None)
    return H, E


def _fibres(rng: np.random.Generator, n: int, s: float, alignment: float) -> tuple[np.ndarray, np.ndarray]:
    """Fibrous tissue: compact straight parallel fibres (high alignment, MUS) or loose wavy bundles
    in several directions (low alignment, STR), with nuclei along the local fibre direction."""
    a = alignment
    yy, xx = _grid(n)
    texture = _noise(rng, n, (0.8 + 0.3 * (1 - a)) * s, (4.0 + 14.0 * a) * s)  # streaks along x
    warps = _noise(rng, n, (9.0 + 6.0 * a) * s, count=2)
    amplitude = (1.0 - a) * 9.0 * s + 1.0 * s
    wy = yy + amplitude * warps[0]
    # a second bundle direction on part of the canvas (loose stroma)
    beta = rng.uniform(0.5, 1.4) * rng.choice([-1.0, 1.0])
    mask = np.clip(0.5 + 1.5 * warps[1] - 2.2 * a, 0.0, 1.0) if a < 0.8 else np.zeros((n, n))
    fibre = _bilinear(texture, wy - 0.5, xx - 0.5)
    if mask.any():
        c, sn = math.cos(beta), math.sin(beta)
        ry, rx = wy * c - xx * sn, xx * c + wy * sn
        other = _bilinear(texture, ry - 0.5, rx - 0.5)
        fibre = fibre * (1.0 - mask) + other * mask
    base = 0.17 + 0.35 * a
    E = np.clip(base + (0.26 - 0.10 * a) * fibre, 0.015, None)
    H = np.full((n, n), 0.025 + 0.03 * a)
    # nuclei along the local fibre direction: cigar-shaped (muscle) to thin spindles (fibroblasts)
    nx, ny = _uniform_points(rng, n, (12.0 + 12.0 * a) * _area(n, s))
    slope = -np.gradient(amplitude * warps[0], axis=1)
    angle = np.arctan(_sample_at(slope, nx, ny)) + rng.normal(0.0, 0.06 + 0.45 * (1 - a), nx.size)
    angle = np.where(_sample_at(mask, nx, ny) > 0.5, angle + beta, angle)
    major = (2.6 + 1.2 * a) * s * np.exp(rng.normal(0.0, 0.12, nx.size))
    minor = (0.55 + 0.3 * a) * s * np.exp(rng.normal(0.0, 0.1, nx.size))
    nuclei = _splat(n, nx, ny, major, minor, angle, (0.75 + 0.3 * a) * np.exp(rng.normal(0.0, 0.1, nx.size)),
                    power=2.0 + 1.5 * a)
    # scattered round inflammatory cells in loose stroma
    ix, iy = _uniform_points(rng, n, (1.0 - a) ** 2 * 6.0 * _area(n, s))
    inflam = _splat(n, ix, iy, 1.6 * s, 1.5 * s, 0.0, 1.05)
    H = H + _saturate(nuclei + inflam, 1.2)
    return H, E


class _GlandSet:
    """Gland outlines on the canvas: irregular ellipses (centre, radius, aspect, orientation, angular
    harmonics of the radius) and the lumen size of each, as fractions of its radius."""

    HARMONICS = np.arange(2, 6)
    BINS = 64  # angular resolution of the outline lookup table

    def __init__(self, rng: np.random.Generator, n: int, s: float, t: float):
        self.radius0 = (10.5 + 6.0 * t) * s
        self.cx, self.cy = _lattice(rng, n, self.radius0 * (2.5 - 0.65 * t), 0.12 + 0.22 * t,
                                    margin=1.5 * self.radius0)
        g = self.cx.size
        self.radius = self.radius0 * np.exp(np.clip(rng.normal(0.0, 0.08 + 0.2 * t, g), -0.5, 0.5))
        self.stretch = np.sqrt(1.0 + rng.uniform(0.0, 0.6 - 0.3 * t, g))  # sqrt of the aspect ratio
        self.orient = rng.uniform(0.0, math.pi, g)
        ks = self.HARMONICS
        self.harm_amp = rng.normal(0.0, 1.0, (g, ks.size)) * (0.025 + 0.17 * t) / np.sqrt(ks)
        self.harm_phase = rng.uniform(0.0, 2 * math.pi, (g, ks.size))
        self.lumen = np.clip(0.42 - 0.14 * t + rng.normal(0.0, 0.05 + 0.1 * t, g), 0.0, 0.65)

    def harmonic(self, which: np.ndarray, angle: np.ndarray) -> np.ndarray:
        """Relative radius change of glands ``which`` at polar angles ``angle`` (gland frame)."""
        waves = self.harm_amp[which] * np.cos(self.HARMONICS * angle[..., None] + self.harm_phase[which])
        return np.clip(waves.sum(axis=-1), -0.6, 0.8)  # keeps every outline star-shaped and positive

    def to_canvas(self, which: np.ndarray, angle: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canvas coordinates of points at polar angle ``angle`` and relative radius ``rel`` (1 = the
        irregular outline) of glands ``which``."""
        r = rel * (1.0 + self.harmonic(which, angle)) * self.radius[which]
        u, v = r * np.cos(angle) * self.stretch[which], r * np.sin(angle) / self.stretch[which]
        co, so = np.cos(self.orient[which]), np.sin(self.orient[which])
        return self.cx[which] + u * co - v * so, self.cy[which] + u * so + v * co

    def field(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per pixel: the owning gland (smallest normalised radius), the normalised radius ``rho`` (< 1
        inside the outline) and the owner's local radius in pixels."""
        cx, cy, radius, stretch = self.cx, self.cy, self.radius, self.stretch
        g = cx.size
        # rho**2 is a quadratic polynomial in (x, y) per gland: all glands at once as one matrix product
        co, so = np.cos(self.orient), np.sin(self.orient)
        p2, q2 = 1.0 / (stretch * radius) ** 2, (stretch / radius) ** 2
        qa, qb, qc = p2 * co ** 2 + q2 * so ** 2, 2.0 * co * so * (p2 - q2), p2 * so ** 2 + q2 * co ** 2
        coef = np.stack([qa, qb, qc, -2.0 * qa * cx - qb * cy, -qb * cx - 2.0 * qc * cy,
                         qa * cx ** 2 + qb * cx * cy + qc * cy ** 2])
        rho2 = _matmul(_monomials(n), coef)  # (n * n, g)
        owner = np.argmin(rho2, axis=1)
        rho = np.sqrt(np.maximum(rho2.take(np.arange(n * n) * g + owner), 0.0)).reshape(n, n)
        owner = owner.reshape(n, n)
        yy, xx = _grid(n)
        ox, oy = xx - cx[owner], yy - cy[owner]
        oc, osn, ost = co[owner], so[owner], stretch[owner]
        phi = np.arctan2((oy * oc - ox * osn) * ost, (ox * oc + oy * osn) / ost)
        # the irregular outline, through a lookup table over the angle (linear interpolation)
        bins = self.BINS
        table = self.harmonic(np.arange(g)[:, None], np.linspace(-math.pi, math.pi, bins + 1)[None, :])
        pos = (phi + math.pi) * (bins / (2 * math.pi))
        i0 = np.minimum(pos.astype(np.intp), bins - 1)
        frac = pos - i0
        cell = owner * (bins + 1) + i0
        harmonic = table.take(cell) * (1.0 - frac) + table.take(cell + 1) * frac
        return owner, rho / (1.0 + harmonic), radius[owner] * (1.0 + harmonic)


def _glands(rng: np.random.Generator, n: int, s: float, atypia: float) -> tuple[np.ndarray, np.ndarray]:
    """Colonic glands in lamina propria; ``atypia`` morphs normal crypts (0) into carcinoma (1)."""
    t = atypia
    glands = _GlandSet(rng, n, s, t)
    g, radius, lumen = glands.cx.size, glands.radius, glands.lumen
    owner, rho, r_px = glands.field(n)
    inside = np.clip((1.0 - rho) * r_px / 0.8 + 0.5, 0.0, 1.0)
    in_lumen = np.clip((lumen[owner] - rho) * r_px / 0.8 + 0.5, 0.0, 1.0)
    # cribriform: extra small lumens inside atypical glands
    n_crib = rng.poisson(max(t - 0.45, 0.0) * 3.5 * g)
    if n_crib:
        which = rng.integers(0, g, n_crib)
        ang = rng.uniform(0, 2 * math.pi, n_crib)
        rr = rng.uniform(0.25, 0.7, n_crib) * radius[which]
        crib = _splat(n, glands.cx[which] + rr * np.cos(ang), glands.cy[which] + rr * np.sin(ang),
                      rng.uniform(1.0, 2.6, n_crib) * s, rng.uniform(0.9, 1.8, n_crib) * s, ang, 1.0)
        in_lumen = np.maximum(in_lumen, np.clip(crib, 0.0, 1.0) * inside)
    epithelium = np.clip(inside - in_lumen, 0.0, 1.0)
    stroma = 1.0 - inside

    # nuclei along each gland's basement membrane; stratified and disordered with atypia
    per_gland = np.maximum(1, np.round(2 * math.pi * radius / ((2.7 + 0.4 * t) * s))).astype(int)
    which = np.repeat(np.arange(g), per_gland)
    offs = np.concatenate([(np.arange(k) + rng.uniform(-0.3, 0.3, k)) / k for k in per_gland])
    ang = 2 * math.pi * offs + rng.uniform(0, 2 * math.pi, g)[which]
    depth = rng.uniform(0.06, 0.2 + 0.5 * t, which.size)  # 0 = basement membrane, 1 = lumen
    nx, ny = glands.to_canvas(which, ang, 1.0 - depth * (1.0 - lumen[which]))
    radial = np.arctan2(ny - glands.cy[which], nx - glands.cx[which])
    pleo = np.exp(rng.normal(0.0, 0.06 + 0.25 * t, which.size))
    major = (1.9 + 1.3 * t) * s * pleo
    minor = major * np.clip(rng.uniform(0.42, 0.55 + 0.3 * t, which.size), 0.3, 1.0)
    angle = radial + rng.normal(0.0, 0.12 + 0.8 * t, which.size)
    darkness = (0.8 + 0.3 * t) * np.exp(rng.normal(0.0, 0.07 + 0.13 * t, which.size))
    nuclei = _splat(n, nx, ny, major, minor, angle, darkness, rim=0.35 * t)
    # goblet cells: pale mucin vacuoles on the luminal side (normal mucosa only)
    gw = np.repeat(np.arange(g), rng.poisson((1.0 - t) ** 2 * 2 * math.pi * radius / (2.6 * s)))
    gang = rng.uniform(0, 2 * math.pi, gw.size)
    gx, gy = glands.to_canvas(gw, gang, 1.0 - rng.uniform(0.4, 0.75, gw.size) * (1.0 - lumen[gw]))
    gr = rng.uniform(1.3, 2.0, gw.size) * s
    goblet = np.clip(_splat(n, gx, gy, gr, gr * 0.85, gang, 1.0), 0.0, 1.0) * epithelium
    # lamina propria cells (many in normal mucosa) and luminal necrosis (carcinoma)
    sx, sy = _uniform_points(rng, n, (40.0 * (1.0 - t) + 8.0) * _area(n, s))
    keep = _sample_at(stroma, sx, sy) > 0.5
    sx, sy = sx[keep], sy[keep]
    sr = rng.uniform(1.3, 1.8, sx.size) * s
    lp_cells = _splat(n, sx, sy, sr * (1.0 + t * rng.uniform(0.0, 1.2, sx.size)), sr * (1.0 - 0.5 * t),
                      rng.uniform(0, math.pi, sx.size), rng.uniform(0.8, 1.15, sx.size))
    fields = _noise(rng, n, 1.5 * s, count=2)
    dirty = in_lumen * (rng.random() < t ** 2) * np.clip(0.5 + 0.5 * fields[1], 0.0, None)
    E = (stroma * (0.30 + 0.12 * t) * (1.0 + 0.22 * fields[0])
         + epithelium * (0.30 + 0.06 * t) * (1.0 - 0.9 * goblet) * (1.0 + 0.1 * fields[1])
         + in_lumen * 0.02 + dirty * 0.35)
    H = (epithelium * (0.05 + 0.15 * t) + stroma * 0.03 + goblet * 0.06 + dirty * 0.25
         + _saturate(nuclei + lp_cells * stroma, 1.2))
    return H, np.clip(E, 0.01, None)


#: The structure generator of each class (confusable classes share one).
_STRUCTURES: dict[str, Callable[[np.random.Generator, int, float, float], tuple[np.ndarray, np.ndarray]]] = {
    "ADI": _adipose,
    "BACK": _mucoid,
    "MUC": _mucoid,
    "DEB": _cells_and_debris,
    "LYM": _cells_and_debris,
    "MUS": _fibres,
    "STR": _fibres,
    "NORM": _glands,
    "TUM": _glands,
}


# ---------------------------------------------------------------------------------------------------
# Orientation, nuisance and the stain model
# ---------------------------------------------------------------------------------------------------


def _orient(maps: np.ndarray, size: int, angle: float, flip: bool) -> np.ndarray:
    """Rotate the canvas maps ``(k, n, n)`` by ``angle`` (radians) about the centre, crop the central
    ``size x size`` patch (bilinear) and mirror it left-right if ``flip``."""
    n = maps.shape[-1]
    yo, xo = _grid(size)
    yo, xo = yo - size / 2.0, xo - size / 2.0
    c, s = math.cos(angle), math.sin(angle)
    centre = n / 2.0 - 0.5
    out = _bilinear(maps, c * yo - s * xo + centre, s * yo + c * xo + centre)
    return out[..., ::-1] if flip else out


def _turn(v: np.ndarray, toward: np.ndarray, angle: float) -> np.ndarray:
    """Rotate unit vector ``v`` by ``angle`` radians in the plane spanned by ``v`` and ``toward``;
    the result is kept non-negative (an optical density) and of unit length."""
    w = toward - (toward @ v) * v
    w = w / (np.linalg.norm(w) + 1e-12)
    out = np.clip(math.cos(angle) * v + math.sin(angle) * w, 0.0, None)
    return out / np.linalg.norm(out)


def _jitter(rng: np.random.Generator, v: np.ndarray, sd: float) -> np.ndarray:
    """Turn unit vector ``v`` by a small random angle (about ``sd`` radians) in a random direction."""
    return _turn(v, rng.standard_normal(3), abs(rng.normal(0.0, sd)))


def _draw_nuisance(rng: np.random.Generator, shift: float) -> dict:
    """Per-image nuisance parameters, including the domain shift (see the module docstring)."""
    vh = _turn(_jitter(rng, STAIN_H, 0.045), _SHIFT_TARGET_H, _SHIFT_ANGLE * shift)
    ve = _turn(_jitter(rng, STAIN_E, 0.045), _SHIFT_TARGET_E, _SHIFT_ANGLE * shift)
    return {
        "rotation": rng.uniform(0.0, 2 * math.pi),
        "flip": bool(rng.random() < 0.5),
        "vh": vh,
        "ve": ve,
        "haematoxylin": float(np.exp(rng.normal(0.0, 0.12) + _SHIFT_LOG_H * shift)),
        "eosin": float(np.exp(rng.normal(0.0, 0.12) + _SHIFT_LOG_E * shift)),
        "blur": float(rng.uniform(0.15, 0.75) + _SHIFT_BLUR * shift),
        "noise": float(rng.uniform(0.8, 3.2) + _SHIFT_NOISE * shift),
        "brightness": float(rng.uniform(0.93, 1.05)),
        "residual": _RESIDUAL + rng.normal(0.0, 0.006, 3) + _SHIFT_TINT * shift,
    }


def stain_to_rgb(h: np.ndarray, e: np.ndarray, vh=STAIN_H, ve=STAIN_E, *, strength_h: float = 1.0,
                 strength_e: float = 1.0, residual=_RESIDUAL, brightness: float = 1.0) -> np.ndarray:
    """Beer-Lambert colouring of haematoxylin and eosin density maps (float RGB in [0, 255]):
    ``255 * brightness * exp(-(strength_h * h * vh + strength_e * e * ve + residual))``."""
    od = (strength_h * h)[..., None] * np.asarray(vh) + (strength_e * e)[..., None] * np.asarray(ve)
    od += np.asarray(residual)
    return np.minimum(255.0 * brightness * np.exp(-od), 255.0)


def _finish(h: np.ndarray, e: np.ndarray, nuis: dict, rng: np.random.Generator, s: float) -> np.ndarray:
    """Grain, stain colouring, blur and pixel noise: the density maps become a uint8 RGB image."""
    grain = rng.random((2,) + h.shape) - 0.5  # uniform, sd 0.29
    h = h * (1.0 + 0.55 * grain[0])
    e = e * (1.0 + 0.28 * grain[1])
    rgb = stain_to_rgb(h, e, nuis["vh"], nuis["ve"], strength_h=nuis["haematoxylin"],
                       strength_e=nuis["eosin"], residual=nuis["residual"], brightness=nuis["brightness"])
    sigma = nuis["blur"] * s
    if sigma > 0.05:
        rgb = ndimage.gaussian_filter(rgb, (sigma, sigma, 0.0), mode="reflect", truncate=3.0)
    rgb += rng.normal(0.0, nuis["noise"], rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------


def _check(cls: str, shift: float, size: int) -> None:
    if cls not in _STRUCTURES:
        raise ValueError(f"Unknown class {cls!r}; choose one of: {', '.join(CLASS_IDS)}.")
    if not (math.isfinite(shift) and shift >= 0.0):
        raise ValueError(f"shift must be a finite number >= 0, got {shift!r}.")
    if int(size) != size or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}.")


def render_patch(cls: str, rng: np.random.Generator, *, shift: float = 0.0,
                 size: int = 64) -> tuple[np.ndarray, dict]:
    """Draw one ``size x size x 3`` uint8 RGB patch of class ``cls`` using only ``rng``; returns
    ``(image, attributes)`` (attributes: see the module docstring)."""
    shift = float(shift)
    _check(cls, shift, size)
    size = int(size)
    s = size / 64.0
    n = _canvas_size(size)
    nuis = _draw_nuisance(rng, shift)
    latent_name, (alpha, beta) = LATENT_FACTORS[cls]
    latent = float(rng.beta(alpha, beta))
    h, e = _STRUCTURES[cls](rng, n, s, latent)
    h, e = _orient(np.stack([h, e]), size, nuis["rotation"], nuis["flip"])
    h, e = np.clip(h, 0.0, None), np.clip(e, 0.0, None)
    image = _finish(h, e, nuis, rng, s)
    values = {
        "stain_strength": math.sqrt(nuis["haematoxylin"] * nuis["eosin"]),
        "haematoxylin": nuis["haematoxylin"],
        "eosin": nuis["eosin"],
        "blur": nuis["blur"],
        "noise": nuis["noise"],
        "brightness": nuis["brightness"],
        "nucleus_density": float(np.mean(h > _NUCLEUS_THRESHOLD)),
        "eosin_density": float(np.mean(e > _EOSIN_THRESHOLD)),
        latent_name: latent,
    }
    attrs: dict = {
        "cls": cls,
        "class_name": CLASS_NAMES[cls],
        "shift": shift,
        "size": size,
        "rotation": round(math.degrees(nuis["rotation"]), 2),
        "flip": nuis["flip"],
        "latent": latent_name,
    }
    for name, value in values.items():
        attrs[name] = round(float(value), 4)
        attrs[f"{name}_level"] = attribute_level(name, float(value))
    return image, attrs


def patch_seed(seed: int, cls: str, index: int, shift: float = 0.0) -> int:
    """A 64-bit seed for image ``index`` of class ``cls`` in world ``seed`` at domain ``shift``: depends on
    these four values only (not on how many images are drawn, or in which order)."""
    if cls not in _STRUCTURES:
        raise ValueError(f"Unknown class {cls!r}; choose one of: {', '.join(CLASS_IDS)}.")
    if int(seed) != seed or seed < 0 or int(index) != index or index < 0:
        raise ValueError(f"seed and index must be non-negative integers, got {seed!r} and {index!r}.")
    shift_bits = int(np.float64(float(shift) + 0.0).view(np.uint64))  # + 0.0 maps -0.0 to 0.0
    entropy = [0x5EED_0D11, WORLD_VERSION, int(seed), CLASS_IDS.index(cls), int(index), shift_bits]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


def generate_patch(cls: str, index: int, seed: int, *, shift: float = 0.0,
                   size: int = 64) -> tuple[np.ndarray, dict]:
    """Image ``index`` of class ``cls`` in world ``seed``: ``render_patch`` with ``patch_seed``'s generator."""
    rng = np.random.default_rng(patch_seed(seed, cls, index, float(shift)))
    return render_patch(cls, rng, shift=shift, size=size)


def generate_class(cls: str, n: int, seed: int, *, shift: float = 0.0, size: int = 64,
                   start: int = 0) -> list[tuple[np.ndarray, dict]]:
    """Images ``start .. start + n - 1`` of class ``cls`` (see :func:`generate_patch`)."""
    return [generate_patch(cls, start + i, seed, shift=shift, size=size) for i in range(int(n))]
