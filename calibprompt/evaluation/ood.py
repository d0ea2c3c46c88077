""""Is this image like what the model knows?": an out-of-distribution score and two cheap rules.

Three independent checks, each a pure function or a small fitted object:

* :class:`KNNDistance`: how far an image's features lie from the task's labelled (reference) images,
  as the mean cosine distance to its ``k`` nearest reference images, with a threshold chosen on the
  reference images themselves (leave-one-out), so no out-of-distribution examples are needed.
* :func:`modality_mismatch`: a DICOM's ``Modality`` tag (CT, MR, DX, ...) against the task's modality
  text ("histopathology", "chest X-ray", ...), from a small table (:data:`DICOM_MODALITY_FITS`).
* :func:`unknown_words`: the words of the class names that the text tokenizer does not know as whole
  words (it splits them into pieces or maps them to ``[UNK]``), so zero-shot prompts built from them
  may mean little to the model.

Conventions
-----------
* Features have shape ``(N, D)``: one row per image, as :meth:`calibprompt.Backbone.encode_image`,
  :meth:`calibprompt.FeatureCache.plain` and the engine return them. Rows are L2-normalised here
  (again), so unnormalised features are accepted too. numpy arrays, torch tensors and nested lists work.
* Cosine distance ``d(x, y) = 1 - <x, y> / (|x| |y|)``, in ``[0, 2]`` (0: same direction).
* Invalid input raises ``ValueError`` naming what is wrong and what to do.
"""
from __future__ import annotations

import math
import numbers
import re
import unicodedata
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "KNNDistance",
    "DICOM_MODALITY_FITS",
    "TASK_MODALITY_KINDS",
    "task_modality_kinds",
    "modality_mismatch",
    "unknown_words",
]

#: Largest number of similarity-matrix entries held at once (float32: 64 MiB). The (M, N) distance
#: matrix is computed in row blocks of ``max(1, _CHUNK_ELEMS // N)`` query rows, so scoring 50 000
#: images against 50 000 reference images needs about 64 MiB of scratch, not 10 GB.
_CHUNK_ELEMS = 1 << 24


# =============================================================================
# k-nearest-neighbour feature distance
# =============================================================================


def _as_features(x: Any, name: str) -> torch.Tensor:
    """``x`` as a float32 CPU tensor (N, D) with L2-normalised rows; ValueError on bad input."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu")
    else:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"`{name}` could not be converted to a numeric array ({exc}); pass a numpy array, "
                "a torch tensor or a rectangular nested list of numbers of shape (N, D)."
            ) from None
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"`{name}` must hold numbers, got an array of dtype {arr.dtype}.")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if t.ndim != 2:
        raise ValueError(
            f"`{name}` must have shape (N, D) (one row of image features per image), got shape "
            f"{tuple(t.shape)}. For a single image pass features[None] or reshape(1, -1)."
        )
    if t.shape[1] == 0:
        raise ValueError(f"`{name}` has shape {tuple(t.shape)}: the feature dimension D is 0.")
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"`{name}` contains NaN or infinite values; recompute the features.")
    norms = torch.linalg.vector_norm(t, dim=1, keepdim=True)
    if t.shape[0] and bool((norms == 0).any()):
        bad = int(torch.nonzero(norms[:, 0] == 0)[0, 0])
        raise ValueError(
            f"`{name}` row {bad} is all zeros, so it has no direction and no cosine distance; "
            "remove it or recompute its features."
        )
    return (t / norms).contiguous()


def _knn_mean_distance(queries: torch.Tensor, reference: torch.Tensor, k: int,
                       exclude_self: bool = False) -> np.ndarray:
    """Mean cosine distance of each query row to its ``k`` nearest reference rows, (M,) float64.

    With ``exclude_self`` (queries is reference), row ``i`` never counts itself: its own entry is
    removed by index, so an exact duplicate elsewhere in the reference set still counts (distance 0).
    Computed in row blocks (see :data:`_CHUNK_ELEMS`).
    """
    m, n = queries.shape[0], reference.shape[0]
    out = np.empty(m, dtype=np.float64)
    rows = max(1, _CHUNK_ELEMS // max(n, 1))
    ref_t = reference.T
    for start in range(0, m, rows):
        stop = min(start + rows, m)
        sims = queries[start:stop] @ ref_t  # (rows, N) cosine similarities
        if exclude_self:
            idx = torch.arange(start, stop)
            sims[idx - start, idx] = -math.inf
        top = torch.topk(sims, k, dim=1, largest=True, sorted=False).values
        dist = (1.0 - top.double()).clamp_(0.0, 2.0)  # float32 round-off can give -1e-7
        out[start:stop] = dist.mean(dim=1).numpy()
    return out


class KNNDistance:
    """Out-of-distribution score: mean cosine distance to the ``k`` nearest reference images.

    ``score(x) = (1 / k) * sum_{j in kNN(x)} (1 - cos(x, r_j))`` over the ``k`` reference features
    ``r_j`` most similar to ``x``. Small: ``x`` looks like the task's labelled images; large: it lies
    away from everything the task was shown (another organ, another modality, a photo, noise).

    Threshold rule (chosen on the reference images alone)
    -----------------------------------------------------
    :meth:`fit` computes *held-in* scores with leave-one-out: each reference image is scored against
    the other ``N - 1`` reference images (its own entry removed by index). A held-in score is what a new
    in-distribution image would get, up to having one reference image fewer. Then::

        threshold_ = quantile(held_in_scores_, quantile) * margin

    (numpy's default linear-interpolation quantile). The 99th percentile alone would flag about 1 % of
    new in-distribution images, and more in practice, because the 99th percentile of a few dozen or a
    few hundred scores is noisy; the default ``margin=1.1`` absorbs that. Measured on the demo world
    (demo backbone, 30 reference patches per class, 540 held-out patches): 1.9 % of held-out patches
    flagged with ``margin=1.0``, 0.7 % with 1.1, while noise, checkerboards, CT- and X-ray-like
    pictures and text scored 2.5x the threshold or more.

    Parameters
    ----------
    k: number of neighbours (int >= 1). Fitting needs more than ``k`` reference images.
    quantile: held-in quantile in (0, 1] for the threshold (1.0: the largest held-in score).
    margin: factor (> 0) applied to that quantile (1.0: the plain quantile).

    Attributes (after :meth:`fit`)
    ------------------------------
    reference_: (N, D) float32 tensor of the L2-normalised reference features.
    held_in_scores_: (N,) float64 leave-one-out scores of the reference images.
    threshold_: float, see the rule above.
    n_features_: D.

    Example::

        ood = KNNDistance(k=5).fit(cache.plain(train_paths))
        ood.flag(backbone.encode_image(images))   # bool (M,), True: unlike the task's images
    """

    def __init__(self, k: int = 5, *, quantile: float = 0.99, margin: float = 1.1):
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or int(k) < 1:
            raise ValueError(f"`k` must be an int >= 1 (the number of neighbours), got {k!r}.")
        if isinstance(quantile, bool) or not isinstance(quantile, numbers.Real) or not 0.0 < float(quantile) <= 1.0:
            raise ValueError(f"`quantile` must be a number in (0, 1] (e.g. 0.99), got {quantile!r}.")
        if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not (
                math.isfinite(float(margin)) and float(margin) > 0.0):
            raise ValueError(f"`margin` must be a finite number > 0 (e.g. 1.0 or 1.1), got {margin!r}.")
        self.k = int(k)
        self.quantile = float(quantile)
        self.margin = float(margin)
        self.reference_: torch.Tensor | None = None
        self.held_in_scores_: np.ndarray | None = None
        self.threshold_: float | None = None
        self.n_features_: int | None = None
        self._sorted_held_in: np.ndarray | None = None

    def __repr__(self) -> str:
        fitted = "" if self.reference_ is None else (
            f", n_reference={self.reference_.shape[0]}, threshold={self.threshold_:.4g}")
        return f"KNNDistance(k={self.k}, quantile={self.quantile}, margin={self.margin}{fitted})"

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, reference_features: Any) -> "KNNDistance":
        """Store the reference features (N, D), compute held-in scores and the threshold; returns self."""
        reference = _as_features(reference_features, "reference_features")
        n = reference.shape[0]
        if n <= self.k:
            raise ValueError(
                f"KNNDistance(k={self.k}) needs more than {self.k} reference images (each is compared "
                f"with its {self.k} nearest other ones), got {n}. Add labelled images or lower k."
            )
        held_in = _knn_mean_distance(reference, reference, self.k, exclude_self=True)
        self.reference_ = reference
        self.n_features_ = int(reference.shape[1])
        self.held_in_scores_ = held_in
        self._sorted_held_in = np.sort(held_in)
        self.threshold_ = float(np.quantile(held_in, self.quantile) * self.margin)
        return self

    def _check_fitted(self) -> torch.Tensor:
        if self.reference_ is None:
            raise ValueError("This KNNDistance is not fitted yet; call .fit(reference_features) first.")
        return self.reference_

    # -- scoring ---------------------------------------------------------------------------
    def score(self, features: Any) -> np.ndarray:
        """Mean cosine distance (M,) float64 of each row of ``features`` (M, D) to its k nearest references."""
        reference = self._check_fitted()
        queries = _as_features(features, "features")
        if queries.shape[1] != reference.shape[1]:
            raise ValueError(
                f"`features` have dimension {queries.shape[1]} but the reference features have "
                f"{reference.shape[1]}; encode both with the same backbone."
            )
        if queries.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        return _knn_mean_distance(queries, reference, self.k)

    def percentile(self, features: Any) -> np.ndarray:
        """Percentile (M,) in [0, 100] of each score among the held-in scores.

        ``100 * #{held-in scores <= score} / N``: 0 closer than every reference image is to the others,
        100 at or beyond the farthest of them (so ``> 99`` means "further out than 99 % of the task's
        own images").
        """
        return self.percentile_of(self.score(features))

    def percentile_of(self, scores: Any) -> np.ndarray:
        """:meth:`percentile` for scores already computed with :meth:`score` (no second neighbour search)."""
        held_in = self._sorted_held_in
        return 100.0 * np.searchsorted(held_in, np.asarray(scores, dtype=np.float64), side="right") / held_in.size

    def flag(self, features: Any) -> np.ndarray:
        """``score > threshold_`` (M,) bool: True for images unlike the reference images."""
        scores = self.score(features)
        return scores > self.threshold_


# =============================================================================
# DICOM Modality against the task's modality
# =============================================================================

#: What a task's free-text modality means, as ``(kind, words)``: the text names every kind one of whose
#: words occurs in it (lower-cased); text naming none makes no claim. A word matches as a whole word,
#: or, when it ends in ``*``, as a word prefix ("histopath*" matches "histopathology (synthetic)").
TASK_MODALITY_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("histopathology", ("histopath*", "histolog*", "patholog*", "h&e", "whole slide*", "whole-slide*",
                        "slide", "slides", "microscop*", "cytolog*", "biops*")),
    ("mammography", ("mammogra*",)),
    ("x-ray", ("x-ray*", "xray*", "x ray*", "radiograph*", "cxr")),
    ("ct", ("ct", "computed tomograph*", "cat scan*")),
    ("mr", ("mr", "mri", "magnetic resonance")),
    ("ultrasound", ("ultrasound*", "ultrasonograph*", "sonograph*", "echocardiograph*")),
    ("pet", ("pet", "positron*")),
    ("nuclear medicine", ("scintigra*", "spect", "nuclear medicine")),
    ("angiography", ("angiogra*",)),
    ("fluoroscopy", ("fluoroscop*",)),
    ("endoscopy", ("endoscop*", "colonoscop*", "gastroscop*")),
    ("ophthalmology", ("fundus", "retina*", "ophthalm*", "oct")),
    ("dermatology", ("dermatoscop*", "dermoscop*", "dermatolog*", "skin")),
)

#: DICOM ``Modality`` code -> (what it is, the task kinds it fits). Codes not listed, an empty tag
#: and the catch-all ``OT`` ("other", typical of secondary captures and scanned slides) make no claim.
DICOM_MODALITY_FITS: dict[str, tuple[str, frozenset[str]]] = {
    "CR": ("computed radiography, an X-ray", frozenset({"x-ray"})),
    "DX": ("digital radiography, an X-ray", frozenset({"x-ray"})),
    "RG": ("a radiographic image", frozenset({"x-ray"})),
    "PX": ("a panoramic dental X-ray", frozenset({"x-ray"})),
    "MG": ("mammography", frozenset({"mammography"})),
    "CT": ("computed tomography", frozenset({"ct"})),
    "MR": ("magnetic resonance imaging", frozenset({"mr"})),
    "US": ("ultrasound", frozenset({"ultrasound"})),
    "IVUS": ("intravascular ultrasound", frozenset({"ultrasound"})),
    "PT": ("positron emission tomography", frozenset({"pet"})),
    "NM": ("nuclear medicine", frozenset({"nuclear medicine"})),
    "XA": ("X-ray angiography", frozenset({"angiography"})),
    "RF": ("radio-fluoroscopy", frozenset({"fluoroscopy"})),
    "SM": ("slide microscopy", frozenset({"histopathology"})),
    "GM": ("general microscopy", frozenset({"histopathology"})),
    "ES": ("endoscopy", frozenset({"endoscopy"})),
    "OP": ("ophthalmic photography", frozenset({"ophthalmology"})),
    "OPT": ("ophthalmic tomography (OCT)", frozenset({"ophthalmology"})),
    "XC": ("an external-camera photograph", frozenset({"dermatology"})),
}

_WORD_PATTERNS: dict[str, re.Pattern] = {}


def _mentions(text: str, word: str) -> bool:
    """Whether lower-case ``text`` contains ``word`` (whole word; a word prefix if it ends in ``*``)."""
    pattern = _WORD_PATTERNS.get(word)
    if pattern is None:
        body, prefix = (word[:-1], True) if word.endswith("*") else (word, False)
        pattern = re.compile(r"(?<![a-z0-9])" + re.escape(body) + ("" if prefix else r"(?![a-z0-9])"))
        _WORD_PATTERNS[word] = pattern
    return pattern.search(text) is not None


def task_modality_kinds(task_modality: str) -> frozenset[str]:
    """The kinds (see :data:`TASK_MODALITY_KINDS`) a task's modality text names; empty if none.

    E.g. "histopathology (synthetic)" -> {"histopathology"}, "chest X-ray" -> {"x-ray"},
    "Brain MRI" -> {"mr"}, "PET-CT" -> {"pet", "ct"}; "CT" must be a whole word ("octopus" is not CT).
    """
    text = str(task_modality or "").lower()
    return frozenset(kind for kind, words in TASK_MODALITY_KINDS if any(_mentions(text, w) for w in words))


def modality_mismatch(image_metadata: Mapping[str, Any], task_modality: str) -> str | None:
    """A plain-language reason when an image's DICOM ``Modality`` does not fit the task, else None.

    ``image_metadata`` is what :func:`calibprompt.data.metadata.image_metadata` returns (its
    ``"modality"`` entry; a raw ``"Modality"`` key is read too). ``task_modality`` is a task's
    :attr:`~calibprompt.Task.modality` text. The rule: look the code up in
    :data:`DICOM_MODALITY_FITS` and the text up in :data:`TASK_MODALITY_KINDS`; a mismatch is reported
    only when both are known and none of the kinds the text names is one the code fits. So CR/DX fit
    "chest X-ray", SM fits "histopathology", CT and MR fit neither; ``OT``, unknown or absent codes
    (every non-DICOM image) and unrecognised task text give None (no claim).
    """
    if not isinstance(image_metadata, Mapping):
        raise ValueError(
            f"`image_metadata` must be a mapping such as image_metadata(path) returns, got "
            f"{type(image_metadata).__name__}."
        )
    raw = image_metadata.get("modality", image_metadata.get("Modality"))
    code = str(raw).strip().upper() if raw is not None else ""
    if code not in DICOM_MODALITY_FITS:
        return None
    kinds = task_modality_kinds(task_modality)
    what, fits = DICOM_MODALITY_FITS[code]
    if not kinds or kinds & fits:
        return None
    return (
        f"This image is a DICOM file of modality {code} ({what}), but the task is for "
        f"{task_modality} images; the model has not learned this kind of image, so its answer "
        "would not mean anything. Check that the right file or the right task was chosen."
    )


# =============================================================================
# Class-name words the tokenizer does not know
# =============================================================================

_WORD_RE = re.compile(r"[^\W\d_]+")  # runs of letters (any script); digits, '_' and punctuation split


def _words(text: str) -> list[str]:
    """The words of ``text`` worth checking: letter runs of 2+ letters, de-duplicated, in order."""
    seen: dict[str, None] = {}
    for word in _WORD_RE.findall(str(text)):
        if len(word) > 1:
            seen.setdefault(word, None)
    return list(seen)


def _known_word_test(tokenizer: Any):
    """A ``word -> bool`` test for the tokenizer's kind, or None for a kind not supported."""
    encoder = getattr(tokenizer, "encoder", None)
    if isinstance(encoder, Mapping) and hasattr(tokenizer, "bpe"):  # open_clip SimpleTokenizer (BPE)
        # It lowercases text, then byte-encodes it (printable ASCII maps to itself); a whole word
        # is the single token "word</w>".
        byte_encoder = getattr(tokenizer, "byte_encoder", None) or {}

        def known_bpe(word: str) -> bool:
            data = word.lower().encode("utf-8")
            token = "".join(byte_encoder.get(b, chr(b)) for b in data)
            return token + "</w>" in encoder

        return known_bpe
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip HFTokenizer wraps a HF tokenizer
    if inner is None or not hasattr(inner, "get_vocab") or not _is_wordpiece(inner):
        return None
    vocab = inner.get_vocab()
    normalise = _hf_normaliser(inner)
    return lambda word: normalise(word) in vocab


def _is_wordpiece(hf_tokenizer: Any) -> bool:
    """True for a WordPiece (BERT-style) HF tokenizer, slow or fast."""
    if hasattr(hf_tokenizer, "wordpiece_tokenizer"):  # slow BertTokenizer and relatives
        return True
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)  # fast tokenizers
    model = getattr(backend, "model", None)
    return type(model).__name__ == "WordPiece"


def _hf_normaliser(hf_tokenizer: Any):
    """The text normalisation a WordPiece tokenizer applies before looking words up (``str -> str``).

    A fast tokenizer's own normaliser when it has one (BERT's lowercases and strips accents), else
    the slow tokenizer's ``do_lower_case`` (default True), with accents stripped when lowercasing.
    """
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None) if backend is not None else None
    if backend is not None:
        if normalizer is None:
            return lambda word: word
        return normalizer.normalize_str
    lower = getattr(hf_tokenizer, "do_lower_case", None)
    if lower is None:
        lower = (getattr(hf_tokenizer, "init_kwargs", None) or {}).get("do_lower_case", True)
    strip = (getattr(hf_tokenizer, "init_kwargs", None) or {}).get("strip_accents")
    strip = bool(lower) if strip is None else bool(strip)

    def normalise(word: str) -> str:
        if lower:
            word = word.lower()
        if strip:
            word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
        return word

    return normalise


def unknown_words(classnames: Sequence[str], tokenizer: Any) -> dict[str, list[str]]:
    """For each class name, the words ``tokenizer`` does not know as whole words.

    A word is a run of letters (split on anything else: spaces, hyphens, digits, punctuation);
    one-letter words and numbers are ignored. A word is *known* when the tokenizer has it as one
    token, so it is neither split into sub-word pieces nor mapped to ``[UNK]``:

    * open_clip ``SimpleTokenizer`` (CLIP's byte-level BPE, used by e.g. ``tiny-random``): known if
      ``word.lower() + '</w>'`` is in ``tokenizer.encoder``;
    * open_clip ``HFTokenizer`` around a WordPiece tokenizer (BERT-style, used by e.g. ``demo`` and
      ``tiny-random-hf``): known if the word (lowercased when the tokenizer lowercases) is an entry of
      ``tokenizer.tokenizer.get_vocab()`` (entries starting with ``##`` are continuation pieces and
      never match a whole word).

    Returns ``{class name: [unknown words, in order, without repeats]}`` with an entry (possibly an
    empty list) for every class name; ``{}`` (no claim) for any other kind of tokenizer.
    """
    if isinstance(classnames, str):
        raise ValueError("`classnames` must be a list of class names, not a single string; wrap it in [].")
    names = [str(name) for name in classnames]
    known = _known_word_test(tokenizer)
    if known is None:
        return {}
    return {name: [word for word in _words(name) if not known(word)] for name in names}
