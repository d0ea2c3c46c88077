"""pydicom's whole bundled test set through load_image and image_metadata ("DICOM as PACS exports it").

pydicom ships about 180 real files (``pydicom/data/test_files``, the folder behind
``pydicom.data.get_testdata_files()``) written by many vendors' software in every common transfer
syntax: uncompressed little/big endian, deflated, RLE, JPEG baseline and 12-bit extended, JPEG
lossless, JPEG-LS and JPEG 2000, plus files damaged on purpose and files that hold no image. The
folder is globbed directly: ``get_testdata_files`` with some patterns tries to download extra files.

Every file whose pixel data pydicom finds must decode to an RGB image of the size its header gives,
except the files in ``REFUSED``, which must be refused with a message that names the file, says what
is wrong in words and what to do, and quotes no Python exception. A decoder that stops working (or a
damaged file that starts "decoding") fails this module.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest
from PIL import Image

from calibprompt.data.images import ImageLoadError, load_image
from calibprompt.data.metadata import image_metadata

pydicom = pytest.importorskip("pydicom")
import pydicom.data  # noqa: E402
from pydicom import uid  # noqa: E402

TEST_FILES = pathlib.Path(pydicom.data.__file__).resolve().parent / "test_files"
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
ADVICE = "Export it again from your PACS or viewer"

#: Files with pixel data that no installed decoder can (or should) read, and the words their
#: message must contain. JPEG-lossy.dcm and JPEG2000-embedded-sequence-delimiter.dcm fail with every
#: plugin, python-gdcm included (see shared/STACK.md); the other four are damaged on purpose.
REFUSED = {
    "MR_truncated.dcm": (
        "damaged or incomplete image data", "8,130 bytes", "8,192", "cut off", ADVICE,
    ),
    "badVR.dcm": ("is damaged", "'Number of Frames' (0028,0008)", "'1A'", "not a whole number", ADVICE),
    "meta_missing_tsyntax.dcm": ("is damaged", "Transfer Syntax UID", "Export it again"),
    "nested_priv_SQ.dcm": ("is incomplete", "lacks the DICOM element", "(0028,", ADVICE),
    "JPEG-lossy.dcm": (
        "damaged or non-standard image data", "JPEG compressed pixels", "JPEG Extended",
        "could not be decoded by any installed decoder", ADVICE,
    ),
    "JPEG2000-embedded-sequence-delimiter.dcm": (
        "damaged or non-standard image data", "JPEG 2000 compressed pixels",
        "could not be decoded by any installed decoder", ADVICE,
    ),
}

#: Words of Python exception text that must never reach a user.
RAW_EXCEPTION_MARKERS = (
    "Traceback", "invalid literal", "exceptions were raised", "Error:", "Error(", "Exception",
    "object at 0x", "<class", "errno", "libjpeg error", "Missing required element", "'NoneType'",
)


def _read_header(path: pathlib.Path):
    """The dataset pydicom reads from ``path`` (force=True: odd files too), None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, force=True)
    except Exception:  # README, JSON, ICC profiles, gzip: not DICOM at all
        return None


def _inventory() -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    """(files with pixel data, all other files) in pydicom's bundled test set, sorted."""
    with_pixels, others = [], []
    for path in sorted(p for p in TEST_FILES.rglob("*") if p.is_file()):
        dataset = _read_header(path)
        has_pixels = dataset is not None and any(k in dataset for k in PIXEL_KEYWORDS)
        (with_pixels if has_pixels else others).append(path)
    return with_pixels, others


PIXEL_FILES, OTHER_FILES = _inventory()
DECODABLE = [p for p in PIXEL_FILES if p.name not in REFUSED]


def _id(path: pathlib.Path) -> str:
    return path.relative_to(TEST_FILES).as_posix()


def assert_plain_words(error: BaseException, name: str) -> None:
    """The message names the file, quotes no exception and says what to do."""
    message = str(error)
    assert isinstance(error, ImageLoadError) and isinstance(error, ValueError)
    assert f"The file {name}" in message or name in message, message
    for marker in RAW_EXCEPTION_MARKERS:
        assert marker not in message, (marker, message)
    cause = error.__cause__
    if cause is not None and len(str(cause)) > 12:
        assert str(cause) not in message, message
    advice = ("Export", "export", "Upload", "upload", "Choose", "Re-export", "Check", "Ask")
    assert any(word in message for word in advice), message


def _gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=float)


# --------------------------------------------------------------------------
# the whole corpus
# --------------------------------------------------------------------------


def test_inventory_holds_the_corpus_and_the_refused_files():
    assert len(PIXEL_FILES) >= 90, len(PIXEL_FILES)  # pydicom 3.0 ships 95 (65 + 30 in dicomdirtests)
    names = {p.name for p in PIXEL_FILES}
    assert set(REFUSED) <= names, set(REFUSED) - names
    assert len(DECODABLE) == len(PIXEL_FILES) - len(REFUSED)


@pytest.mark.parametrize("path", DECODABLE, ids=_id)
def test_every_file_with_valid_pixel_data_decodes(path):
    header = _read_header(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about padding, VR fixes, ...
        image = load_image(path)
        meta = image_metadata(path)
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert image.size == (int(header.Columns), int(header.Rows))
    assert np.asarray(image).max() > 0  # not an all-black failure
    assert meta["format"] == "DICOM" and meta["size"] == image.size
    assert meta["frames"] == int(header.get("NumberOfFrames", 1) or 1) and meta["frame_used"] == 0


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_damaged_files_are_refused_in_plain_words(name):
    path = TEST_FILES / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
    assert_plain_words(info.value, name)
    for words in REFUSED[name]:
        assert words in str(info.value), (words, str(info.value))


@pytest.mark.parametrize("path", OTHER_FILES, ids=_id)
def test_files_without_an_image_are_refused_in_plain_words(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
    assert_plain_words(info.value, path.name)


def test_bad_value_is_refused_by_image_metadata_with_load_images_words():
    path = TEST_FILES / "badVR.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageLoadError) as from_load:
            load_image(path)
        with pytest.raises(ImageLoadError) as from_meta:
            image_metadata(path.read_bytes())
    assert "'1A'" in str(from_meta.value)
    assert str(from_meta.value) == str(from_load.value).replace("The file badVR.dcm", "The uploaded data")


# --------------------------------------------------------------------------
# the transfer syntaxes PACS export: decoded, and decoded right
# --------------------------------------------------------------------------

#: One bundled file per transfer syntax named in issue 17.
SYNTAX_EXAMPLES = {
    uid.JPEGBaseline8Bit: "SC_rgb_jpeg_dcmtk.dcm",
    uid.JPEGExtended12Bit: "JPGExtended.dcm",
    uid.JPEGLosslessSV1: "SC_rgb_jpeg_gdcm.dcm",
    uid.JPEGLSLossless: "MR_small_jpeg_ls_lossless.dcm",
    uid.JPEGLSNearLossless: "JPEGLSNearLossless_16.dcm",
    uid.JPEG2000Lossless: "MR_small_jp2klossless.dcm",
    uid.JPEG2000: "693_J2KI.dcm",
    uid.RLELossless: "MR_small_RLE.dcm",
    uid.DeflatedExplicitVRLittleEndian: "image_dfl.dcm",
    uid.ExplicitVRBigEndian: "MR_small_bigendian.dcm",
}


@pytest.mark.parametrize("syntax", list(SYNTAX_EXAMPLES), ids=lambda s: s.name)
def test_each_pacs_transfer_syntax_decodes(syntax):
    path = TEST_FILES / SYNTAX_EXAMPLES[syntax]
    assert _read_header(path).file_meta.TransferSyntaxUID == syntax  # the example is what it claims
    image = load_image(path)
    assert image.mode == "RGB" and _gray(image).std() > 5  # a real picture, not a flat fill


@pytest.mark.parametrize(
    "reference, variants",
    [
        ("MR_small.dcm", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                          "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm",
                          "MR_small_padded.dcm"]),
        ("SC_rgb_rle.dcm", ["SC_rgb_jpeg_gdcm.dcm", "SC_rgb_gdcm_KY.dcm", "SC_rgb_rle_16bit.dcm"]),
    ],
)
def test_lossless_encodings_of_one_image_decode_identically(reference, variants):
    expected = np.asarray(load_image(TEST_FILES / reference))
    for name in variants:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.testing.assert_array_equal(np.asarray(load_image(TEST_FILES / name)), expected, err_msg=name)


def test_lossy_colour_jpeg_keeps_its_colours():
    """YBR JPEGs are converted to RGB exactly once: the colour bars stay within JPEG error."""
    expected = np.asarray(load_image(TEST_FILES / "SC_rgb_rle.dcm"), dtype=int)
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_lossy_gdcm.dcm"):
        decoded = np.asarray(load_image(TEST_FILES / name), dtype=int)
        assert np.abs(decoded - expected).mean() < 4, name


def test_12_bit_jpeg_extended_matches_the_jpeg_2000_copy():
    extended = _gray(load_image(TEST_FILES / "JPGExtended.dcm")).ravel()
    j2k = _gray(load_image(TEST_FILES / "JPEG2000.dcm")).ravel()
    assert np.corrcoef(extended, j2k)[0, 1] > 0.9


# --------------------------------------------------------------------------
# multi-frame files
# --------------------------------------------------------------------------


def test_frame_choice_on_a_two_frame_rgb_file():
    path = TEST_FILES / "SC_rgb_rle_2frame.dcm"
    frames = pydicom.dcmread(path).pixel_array  # (2, 100, 100, 3) RGB uint8
    first, second = (np.asarray(load_image(path, frame=i)) for i in (0, 1))
    np.testing.assert_array_equal(first, frames[0])
    np.testing.assert_array_equal(second, frames[1])
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.asarray(load_image(path)), first)  # default: the first frame
    assert image_metadata(path, frame=1)["frame_used"] == 1


@pytest.mark.parametrize("index", [0, 7, 14])
def test_each_frame_of_a_dose_grid_is_the_one_asked_for(index):
    path = TEST_FILES / "rtdose.dcm"  # 15 frames of 32-bit dose
    stored = pydicom.dcmread(path).pixel_array.astype(float)
    shown = _gray(load_image(path, frame=np.int64(index))).ravel()
    correlation = [np.corrcoef(shown, frame.ravel())[0, 1] for frame in stored]
    assert int(np.nanargmax(correlation)) == index
    assert correlation[index] > 0.99


def test_frames_of_a_cine_loop_differ_and_the_range_is_checked():
    path = TEST_FILES / "examples_ybr_color.dcm"  # 30-frame ultrasound, YBR_FULL_422 JPEG
    meta = image_metadata(path)
    assert meta["frames"] == 30 and meta["frame_used"] == 0
    first, last = (np.asarray(load_image(path, frame=i), dtype=int) for i in (0, 29))
    assert np.abs(first - last).mean() > 1
    for bad in (30, -1):
        with pytest.raises(ImageLoadError) as info:
            load_image(path, frame=bad)
        assert str(info.value) == (
            f"The file examples_ybr_color.dcm has 30 frames, numbered 0 to 29 (0 is the first); "
            f"there is no frame {bad}. Choose a frame from 0 to 29."
        )
        with pytest.raises(ImageLoadError) as from_meta:
            image_metadata(path, frame=bad)
        assert str(from_meta.value) == str(info.value)
    for bad in ("2", 1.5, True):
        with pytest.raises(ImageLoadError, match=r"examples_ybr_color\.dcm must be a whole number counted from 0"):
            load_image(path, frame=bad)


def test_single_frame_file_accepts_only_frame_zero():
    path = TEST_FILES / "CT_small.dcm"
    np.testing.assert_array_equal(np.asarray(load_image(path, frame=0)), np.asarray(load_image(path)))
    with pytest.raises(ImageLoadError, match=r"CT_small\.dcm has a single frame, so there is no frame 1\. Choose frame 0"):
        load_image(path, frame=1)


# --------------------------------------------------------------------------
# metadata the model does not see
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("CT_small.dcm", {"modality": "CT", "frames": 1, "window": None, "size": (128, 128), "bits": 16}),
        ("MR_small.dcm", {"modality": "MR", "frames": 1, "window": (600.0, 1600.0), "size": (64, 64)}),
        ("J2K_pixelrep_mismatch.dcm", {"modality": "CT", "body_part": "HEAD", "window": (40.0, 100.0)}),
        ("examples_overlay.dcm", {"modality": "MR", "body_part": "ABDOMEN", "window": (450.0, 790.0)}),
        ("JPGExtended.dcm", {"modality": "NM", "body_part": "WHOLE BODY", "bits": 12}),
        ("examples_ybr_color.dcm", {"modality": "US", "frames": 30, "photometric": "YBR_FULL_422"}),
        ("rtdose.dcm", {"modality": "RTDOSE", "frames": 15, "bits": 32}),
    ],
)
def test_metadata_of_real_files(name, expected):
    meta = image_metadata(TEST_FILES / name)
    base_keys = {"format", "modality", "frames", "frame_used", "window", "photometric", "bits", "size"}
    assert base_keys <= set(meta) and meta["format"] == "DICOM"
    assert {key: meta.get(key) for key in expected} == expected
    if "body_part" not in expected:
        assert "body_part" not in meta  # present only when the file records one
