"""Image loading: :func:`load_image` turns whatever a clinician or a dataset hands us (a path,
uploaded bytes, a file object, a numpy array, a PIL image, a DICOM file) into an 8-bit RGB
:class:`PIL.Image.Image`, or raises a :class:`ValueError` whose message says what went wrong and
what to do.

Multi-frame files (multi-page TIFF, animated GIF, multi-frame DICOM such as ultrasound cine loops or
RT dose grids) show one frame: the first by default, or the one chosen with ``frame=`` (counted
from 0). :func:`calibprompt.imaging.metadata.image_metadata` says how many frames a file has.

DICOM pixel data is decoded through pydicom's own decoders (``pydicom.pixels``), so every transfer
syntax with an installed plugin works: uncompressed, deflated, RLE (numpy or ``pylibjpeg-rle``),
JPEG baseline/extended/lossless (``pylibjpeg-libjpeg``, Pillow), JPEG-LS (``pylibjpeg-libjpeg``)
and JPEG 2000 (``pylibjpeg-openjpeg``, Pillow); these plugins are dependencies of CalibPrompt.
"""

from __future__ import annotations

import io
import logging
import numbers
import os
import pathlib
from collections.abc import Sequence
from typing import IO, Any, NamedTuple, NoReturn, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from calibprompt.paths import shown

__all__ = ["DEFAULT_MAX_PIXELS", "SUPPORTED_IMAGE_SUFFIXES", "ImageSource", "ImageLoadError", "choose_frame",
           "is_image_file", "load_image"]

logger = logging.getLogger(__name__)


# =============================================================================
# Image loading
# =============================================================================
#
# Pipeline: ``load_image`` dispatches on the type of its input, then
#   1. opening / identifying   (_load_from_path, _load_from_bytes, _open_with_pil)
#   2. DICOM decoding          (_load_dicom and helpers)
#   3. windowing to 8 bits     (_window_to_uint8, _scale_to_uint8)
#   4. mode conversion to RGB  (_pil_to_rgb, _convert_mode_to_rgb, _array_to_rgb)
# Every error a user can cause becomes an ``ImageLoadError`` (a ValueError).

#: Largest image (width * height) that :func:`load_image` accepts by default.
#: Checked from the file header, before any pixel is decoded.
DEFAULT_MAX_PIXELS = 50_000_000

#: File suffixes (lower case) that the dataset loaders treat as images.
SUPPORTED_IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".gif",
    ".webp",
    ".dcm",
    ".dicom",
)

_DICOM_SUFFIXES = (".dcm", ".dicom")
_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"

_UPLOAD_HINT = "Upload a PNG, JPEG, TIFF or DICOM image."
_ACCEPTED_SOURCES = (
    "a file path (str or pathlib.Path), bytes, a binary file object "
    "(opened with 'rb'), a numpy array or a PIL image"
)
_ACCEPTED_ARRAY_SHAPES = "(H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
_ACCEPTED_ARRAY_DTYPES = "bool, uint8, uint16, int16, int32 (or other integers), float32 or float64"

# Pillow formats tried on encoded files. An allow-list of common formats that
# are recognised by their magic bytes: unknown or junk input is rejected
# quickly (some rare plugins, e.g. IM Tools, scan a whole file line by line),
# and rarely used decoders are not exposed to uploaded files. Already opened
# PIL images of any format are accepted by ``load_image``.
_PIL_FORMATS = ("PNG", "JPEG", "JPEG2000", "TIFF", "BMP", "DIB", "GIF", "WEBP", "AVIF", "PPM")

# Lower / upper percentile used to window high-bit-depth images to 8 bits.
_WINDOW_PERCENTILES = (0.5, 99.5)

# PIL modes that carry an alpha channel (others may carry a "transparency" key).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

ImageSource = Union[
    str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], np.ndarray, Image.Image
]


class ImageLoadError(ValueError):
    """An image could not be loaded; the message explains why and what to do.

    Messages start with what was being loaded ("The file scan.dcm", "The uploaded data", "The
    image", "The array"), then say in plain words what is wrong and what to do. They never quote
    a Python exception; the original exception, if any, is kept as ``__cause__``.
    """


class _Pick(NamedTuple):
    """What :func:`load_image` was asked for besides the source: a pixel limit and a frame."""

    max_pixels: int
    frame: int | None


def choose_frame(frame: Any, frames: int, label: str = "The image") -> int:
    """Check a 0-based ``frame`` index against an image with ``frames`` frames and return it.

    None means the first frame (0). Raises :class:`ImageLoadError` (a ValueError) naming the
    allowed range when ``frame`` is not a whole number in ``0 .. frames - 1``; ``label`` (e.g.
    "The file cine.dcm") starts the message.
    """
    if frame is None:
        return 0
    if isinstance(frame, bool) or not isinstance(frame, numbers.Integral):
        shown = repr(frame)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise ImageLoadError(
            f"The frame of {label[:1].lower()}{label[1:]} must be a whole number counted from 0 "
            f"(0 is the first frame), not {shown}. Choose a frame number, or leave it unset "
            "for the first frame."
        )
    if 0 <= frame < frames:
        return int(frame)
    if frames == 1:
        raise ImageLoadError(
            f"{label} has a single frame, so there is no frame {int(frame)}. Choose frame 0 "
            "(frames are counted from 0), or leave the frame unset."
        )
    raise ImageLoadError(
        f"{label} has {frames} frames, numbered 0 to {frames - 1} (0 is the first); there is "
        f"no frame {int(frame)}. Choose a frame from 0 to {frames - 1}."
    )


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Return True if ``path`` has one of :data:`SUPPORTED_IMAGE_SUFFIXES`.

    The check is by file name only (case-insensitive); the file is not opened.
    """
    return pathlib.Path(path).suffix.lower() in SUPPORTED_IMAGE_SUFFIXES


def load_image(
    source: ImageSource, *, frame: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Load an image (one frame of it) from almost anything and return it as 8-bit RGB.

    Parameters
    ----------
    source:
        One of: a path (``str`` or :class:`pathlib.Path`); ``bytes``,
        ``bytearray`` or ``memoryview`` holding an encoded file; a binary file
        object (anything with ``.read()``, e.g. an open file, ``io.BytesIO``,
        a ``SpooledTemporaryFile``; read from its current position); a numpy
        array; or a PIL image. Encoded files may be PNG, JPEG, JPEG 2000,
        TIFF, BMP, GIF, WebP, AVIF (if Pillow supports it), PPM/PGM/PBM, or
        DICOM (recognised by the ``DICM`` marker at byte 128, or by a
        ``.dcm``/``.dicom`` suffix).
    frame:
        Which frame of a multi-frame file to show, **counted from 0**; None
        (the default) means the first. Valid: ``0 .. frames - 1`` with
        ``frames = image_metadata(source)["frames"]``; others are refused.
    max_pixels:
        Refuse images with more than this many pixels (width * height). For
        files this is checked from the header, before decoding, so
        decompression bombs are rejected quickly. Pillow's own bomb limit
        (``PIL.Image.MAX_IMAGE_PIXELS``, left untouched) also applies.

    Returns
    -------
    PIL.Image.Image
        A new, loaded ``"RGB"`` image with no open file handle (inputs are not modified).

    Conversion rules
    ----------------
    * Transparency (RGBA, LA, palette with transparency, ...) is
      alpha-composited onto a **white** background.
    * High bit depth or float grayscale (PIL modes ``I;16*``, ``I``, ``F``;
      numpy integer arrays other than uint8, float arrays outside [0, 1]) is
      windowed linearly from the 0.5th to the 99.5th percentile of the pixel
      values (min..max if that range is degenerate); a constant image becomes
      black. So a 12-bit X-ray stored in 16 bits uses the full 8-bit range.
    * numpy: uint8 maps directly, bool maps to 0/255, float arrays whose values
      all lie in [0, 1] map directly to [0, 255]. Shapes (H, W), (H, W, 1),
      (H, W, 3) and (H, W, 4) (RGBA) are accepted. NaN/inf are refused.
    * EXIF orientation is applied. Multi-frame files (multi-page TIFF,
      animated GIF, multi-frame DICOM) give the frame chosen by ``frame``.
    * DICOM: the modality LUT (rescale slope/intercept) and the VOI LUT or
      window centre/width are applied when present, otherwise the percentile
      window; MONOCHROME1 is inverted; YBR colour and palette colour are
      converted to RGB.

    Raises
    ------
    ValueError
        (as :class:`ImageLoadError`) for anything a user can cause: missing,
        empty, damaged, truncated or non-image files, too-large images, DICOM
        files without pixel data, with unreadable header values or with image
        data no installed decoder can read, a frame that does not exist, and
        unsupported input types. The message names the file (when it has a
        name), says what is wrong in plain words and what to do; it never
        quotes a Python exception, which is kept as ``__cause__``.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}.")
    pick = _Pick(max_pixels, frame)
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, "The image", pick)
    if isinstance(source, np.ndarray):
        choose_frame(frame, 1, "The array")
        return _array_to_rgb(source, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _load_from_path(pathlib.Path(source).expanduser(), pick)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_from_bytes(bytes(source), "The uploaded data", pick)
    if hasattr(source, "read"):
        return _load_from_file_object(source, pick)
    raise ImageLoadError(
        f"Cannot load an image from an object of type {type(source).__name__}. "
        f"Pass {_ACCEPTED_SOURCES}."
    )


# -----------------------------------------------------------------------------
# 1. Opening and identifying
# -----------------------------------------------------------------------------


def _load_from_path(path: pathlib.Path, pick: _Pick) -> Image.Image:
    """Load an image file from disk, refusing missing files, folders and empty files."""
    if not path.exists():
        raise ImageLoadError(
            f"Image file not found: {path}. Check the file name and folder, then try again."
        )
    if path.is_dir():
        raise ImageLoadError(
            f"{path} is a folder, not an image file. Choose a single image file "
            "(PNG, JPEG, TIFF or DICOM)."
        )
    label = f"The file {path.name}"
    try:
        if path.stat().st_size == 0:
            raise ImageLoadError(f"The file is empty (0 bytes): {shown(path)}. {_UPLOAD_HINT}")
        with path.open("rb") as stream:
            head = stream.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
            stream.seek(0)
            if _looks_like_dicom(head, path.name):
                return _load_dicom(stream, label, pick)
            return _open_with_pil(stream, label, pick)
    except PermissionError as exc:
        raise ImageLoadError(
            f"The file {path} cannot be read (permission denied). "
            "Copy it to a folder you can read, or ask your IT team for access."
        ) from exc
    except OSError as exc:  # e.g. network drive gone, I/O error
        raise ImageLoadError(
            f"The file {path} could not be read ({_read_failure(exc)}). Check that its drive "
            "or network folder is available, then try again."
        ) from exc


def _load_from_file_object(stream: Any, pick: _Pick) -> Image.Image:
    """Read a binary file object from its current position and load it."""
    name = getattr(stream, "name", None)
    if not isinstance(name, str) or not name:
        name = None
    label = f"The file {os.path.basename(name)}" if name else "The uploaded file"
    try:
        data = stream.read()
    except (OSError, ValueError) as exc:  # ValueError: I/O on a closed file
        raise ImageLoadError(
            f"{label} could not be read ({_read_failure(exc)}). Upload it again."
        ) from exc
    if isinstance(data, str):
        raise ImageLoadError(
            f"{label} was opened in text mode; open it in binary mode ('rb') and try again."
        )
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageLoadError(
            f"Reading {label.lower()} returned {type(data).__name__}, not bytes. "
            f"Pass {_ACCEPTED_SOURCES}."
        )
    if not data and _stream_position(stream):
        raise ImageLoadError(
            f"{label} has nothing left to read: the file object is at its end "
            "(it was probably read already). Call .seek(0) on it first."
        )
    return _load_from_bytes(bytes(data), label, pick, name_hint=name)


def _read_failure(exc: BaseException) -> str:
    """The reason a read failed, in words: the operating system's text, never a Python repr."""
    if isinstance(exc, ValueError):  # I/O on a closed file object
        return "the file object is already closed"
    reason = getattr(exc, "strerror", None)
    return reason.lower() if isinstance(reason, str) and reason else "a read error"


def _stream_position(stream: Any) -> int:
    """Return ``stream.tell()``, or 0 when the position is unknown."""
    try:
        return int(stream.tell())
    except (AttributeError, OSError, ValueError, TypeError):
        return 0


def _load_from_bytes(
    data: bytes, label: str, pick: _Pick, name_hint: str | None = None
) -> Image.Image:
    """Load an encoded image (PIL-readable or DICOM) held in memory."""
    if not data:
        raise ImageLoadError(f"The file is empty (0 bytes). {_UPLOAD_HINT}")
    stream = io.BytesIO(data)
    if _looks_like_dicom(data, name_hint):
        return _load_dicom(stream, label, pick)
    return _open_with_pil(stream, label, pick)


def _looks_like_dicom(head: bytes, name: str | None = None) -> bool:
    """True if ``head`` has the DICOM ``DICM`` marker or ``name`` a DICOM suffix."""
    marker = head[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC)]
    if marker == _DICOM_MAGIC:
        return True
    return bool(name) and pathlib.PurePath(name).suffix.lower() in _DICOM_SUFFIXES


def _open_with_pil(stream: IO[bytes], label: str, pick: _Pick) -> Image.Image:
    """Identify ``stream`` with Pillow (lazily, header only) and convert it to RGB.

    The pixel-count limit is checked on the header size before decoding.
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is neither read nor changed here.
    """
    try:
        image = Image.open(stream, formats=_available_pil_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own limit, checked from the header before decoding (the
        # warning only counts when a warnings filter turns it into an error).
        size = _declared_size(stream)
        raise ImageLoadError(_too_large_message(label, size, pick.max_pixels)) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(_describe_unreadable(stream, label)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow plugins raise many types on corrupt headers
        raise ImageLoadError(
            f"{label} is damaged: its header could not be read, so it could not be opened. "
            f"Re-export or re-download it. {_UPLOAD_HINT}"
        ) from exc
    with image:
        return _pil_to_rgb(image, label, pick)


def _available_pil_formats() -> list[str]:
    """The formats of ``_PIL_FORMATS`` that this Pillow build can open."""
    Image.init()
    return [format_id for format_id in _PIL_FORMATS if format_id in Image.OPEN]


def _describe_unreadable(stream: IO[bytes], label: str) -> str:
    """Message for data Pillow does not recognise, naming common non-image files."""
    try:
        stream.seek(0)
        head = stream.read(8)
    except (OSError, ValueError):
        head = b""
    if head.startswith(b"PK\x03\x04"):
        kind = "a ZIP archive; extract it and upload the images inside"
    elif head.startswith(b"%PDF"):
        kind = "a PDF document; export the page as a PNG image"
    else:
        kind = "not an image this tool can read (for example a text file or a damaged image)"
    return f"{label} is {kind}. {_UPLOAD_HINT}"


def _check_pixel_count(width: int, height: int, label: str, max_pixels: int) -> None:
    """Refuse images larger than ``max_pixels`` (width * height)."""
    if width * height > max_pixels:
        raise ImageLoadError(_too_large_message(label, (width, height), max_pixels))


def _too_large_message(label: str, size: tuple[int, int] | None, max_pixels: int) -> str:
    """Message for an image refused by our ``max_pixels`` or by Pillow's bomb limit."""
    advice = "Downscale it (for example to at most 4096 pixels on the longest side) and try again."
    if size is None:
        return (
            f"{label} is too large to open safely: its header declares more pixels than "
            f"Pillow's limit of {2 * int(Image.MAX_IMAGE_PIXELS or 0):,} pixels. {advice}"
        )
    width, height = size
    limit = max_pixels
    if width * height <= max_pixels and Image.MAX_IMAGE_PIXELS:
        limit = 2 * int(Image.MAX_IMAGE_PIXELS)  # Pillow refused it, not us
    return (
        f"{label} is too large: {width} x {height} = {width * height:,} pixels, "
        f"above the limit of {limit:,} pixels. {advice}"
    )


def _declared_size(stream: IO[bytes]) -> tuple[int, int] | None:
    """Width and height from the header of an image Pillow refused as too large.

    Used only to word the error message: it runs Pillow's format plugins on
    the header (as ``Image.open`` does) without the size check, and never
    decodes pixels. Returns None if no plugin recognises the header.
    """
    try:
        stream.seek(0)
        prefix = stream.read(16)
    except (OSError, ValueError):
        return None
    for format_id in _available_pil_formats():
        factory, accept = Image.OPEN[format_id]
        try:
            accepted = not accept or accept(prefix)
            if not accepted or isinstance(accepted, str):  # a str is Pillow's warning
                continue
            stream.seek(0)
            return tuple(factory(stream, "").size)  # type: ignore[return-value]
        except MemoryError:
            raise
        except Exception:  # not this format
            continue
    return None


# -----------------------------------------------------------------------------
# 2. DICOM
# -----------------------------------------------------------------------------

_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

_DICOM_ADVICE = (
    "Export it again from your PACS or viewer (uncompressed DICOM or PNG both work) and try again."
)

#: Image Pixel module elements read before decoding: keyword -> (tag, name as DICOM spells it).
_PIXEL_ELEMENTS = {
    "SamplesPerPixel": ("(0028,0002)", "Samples per Pixel"),
    "PhotometricInterpretation": ("(0028,0004)", "Photometric Interpretation"),
    "PlanarConfiguration": ("(0028,0006)", "Planar Configuration"),
    "NumberOfFrames": ("(0028,0008)", "Number of Frames"),
    "Rows": ("(0028,0010)", "Rows"),
    "Columns": ("(0028,0011)", "Columns"),
    "BitsAllocated": ("(0028,0100)", "Bits Allocated"),
    "BitsStored": ("(0028,0101)", "Bits Stored"),
    "PixelRepresentation": ("(0028,0103)", "Pixel Representation"),
}


def _load_dicom(stream: IO[bytes], label: str, pick: _Pick) -> Image.Image:
    """Read a DICOM file with pydicom and return the chosen frame (default the first) as RGB."""
    pydicom = _import_pydicom()
    dataset = _read_dicom_dataset(pydicom, stream, label)
    try:
        frame, photometric = _decode_dicom_frame(dataset, label, pick)
    except (ImageLoadError, MemoryError):
        raise
    except Exception as exc:  # pydicom parses elements lazily: a damaged one fails on use
        logger.debug("%s: unreadable DICOM element", label, exc_info=True)
        raise ImageLoadError(
            f"{label} is a damaged DICOM file: part of its header could not be read. "
            + _DICOM_ADVICE
        ) from exc
    try:
        return _dicom_frame_to_rgb(frame, dataset, photometric)
    except MemoryError:
        raise
    except Exception as exc:  # malformed LUT / window elements, odd bit depths
        logger.debug("%s: DICOM display settings not applied", label, exc_info=True)
        raise ImageLoadError(
            f"{label} has display settings (LUT, window or colour information) that are "
            "damaged and could not be applied. Export the image as PNG and try again."
        ) from exc


def _import_pydicom() -> Any:
    """Import pydicom (>= 3.0, which provides ``pydicom.pixels``)."""
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401  (new in pydicom 3.0)
    except ImportError as exc:
        raise ImageLoadError(
            "Reading DICOM files needs the package pydicom, version 3.0 or newer "
            "(pip install 'pydicom>=3'). Alternatively export the image as PNG."
        ) from exc
    return pydicom


def _read_dicom_dataset(pydicom: Any, stream: IO[bytes], label: str) -> Any:
    """Parse a DICOM file's header (pixel data is decoded later, one frame at a time)."""
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(stream, force=False)
    except InvalidDicomError as exc:
        raise ImageLoadError(
            f"{label} is not a standard DICOM file (the 'DICM' marker after the "
            "128-byte preamble is missing). Export it again as standard DICOM or as PNG."
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # pydicom raises many types on damaged files
        logger.debug("%s: DICOM header unreadable", label, exc_info=True)
        raise ImageLoadError(
            f"{label} is a damaged or incomplete DICOM file: its header could not be read "
            "(the file may be cut off). " + _DICOM_ADVICE
        ) from exc


def _decode_dicom_frame(dataset: Any, label: str, pick: _Pick) -> tuple[np.ndarray, str]:
    """Decode the chosen frame of ``dataset`` with pydicom's decoder for its transfer syntax.

    Returns the pixel array and the photometric interpretation the array is
    actually in (a decoder may already have converted colour to RGB).
    """
    keyword = next((k for k in _PIXEL_DATA_KEYWORDS if k in dataset), None)
    if keyword is None:
        raise ImageLoadError(
            f"{label} is a DICOM file without an image: it has no pixel data (it may "
            "be a report or other non-image object, or the file may be cut off). "
            "Upload the complete DICOM image, or export it as PNG."
        )
    transfer_syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID")
    if transfer_syntax is None:
        raise ImageLoadError(
            f"{label} is damaged: its header does not say how its pixels are encoded (no "
            "Transfer Syntax UID). Export it again as standard DICOM or as PNG."
        )
    described = _pixel_description(dataset, keyword, label)
    _check_pixel_count(described["Columns"], described["Rows"], label, pick.max_pixels)
    index = choose_frame(pick.frame, described["NumberOfFrames"], label)
    decoder = _dicom_decoder(transfer_syntax, label)
    try:
        # as_rgb=False: we do the YBR -> RGB conversion ourselves (see
        # _dicom_frame_to_rgb); ``changes`` says if a decoder already did it.
        array, changes = decoder.as_array(dataset, index=index, as_rgb=False)
    except MemoryError:
        raise
    except Exception as exc:
        logger.debug("%s: pixel data not decoded", label, exc_info=True)
        raise ImageLoadError(_undecodable_message(label, dataset, keyword, decoder)) from exc
    photometric = str(changes.get("photometric_interpretation", described["PhotometricInterpretation"]))
    return array, photometric.strip().upper()


def _pixel_description(dataset: Any, keyword: str, label: str) -> dict[str, Any]:
    """Read the Image Pixel elements pydicom needs, refusing missing or unreadable ones in words.

    Mirrors pydicom's own requirements: Bits Stored and Pixel Representation only for integer
    pixel data, Planar Configuration only for colour; Number of Frames defaults to 1 (as in
    pydicom, a 0 or empty value also means 1).
    """
    required = ["SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated"]
    if keyword == "PixelData":
        required += ["BitsStored", "PixelRepresentation"]
    described: dict[str, Any] = {}
    for name in [*required, "NumberOfFrames"]:
        read = _element_text if name == "PhotometricInterpretation" else _element_int
        described[name] = read(dataset, name, label)
    if described["SamplesPerPixel"] == 3:
        required.append("PlanarConfiguration")
        described["PlanarConfiguration"] = _element_int(dataset, "PlanarConfiguration", label)
    for name in required:
        if described[name] is None:
            tag, spelled = _PIXEL_ELEMENTS[name]
            raise ImageLoadError(
                f"{label} is incomplete: it lacks the DICOM element '{spelled}' {tag}, which "
                "says how its pixels are stored, so its image cannot be decoded. " + _DICOM_ADVICE
            )
    described["NumberOfFrames"] = described["NumberOfFrames"] or 1
    if described["NumberOfFrames"] < 0:
        _bad_element(label, "NumberOfFrames", described["NumberOfFrames"], "a count of frames")
    return described


def _element_value(dataset: Any, keyword: str, label: str) -> Any:
    """The value of ``keyword`` (the first one if several), None when absent or empty."""
    try:
        value = dataset[keyword].value if keyword in dataset else None
    except MemoryError:
        raise
    except Exception as exc:  # the element's bytes could not be parsed
        raise ImageLoadError(
            f"{label} is damaged: its DICOM element '{_PIXEL_ELEMENTS[keyword][1]}' "
            f"{_PIXEL_ELEMENTS[keyword][0]} could not be read. " + _DICOM_ADVICE
        ) from exc
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # MultiValue
        value = value[0] if len(value) else None
    return None if value is None or value == "" else value


def _element_int(dataset: Any, keyword: str, label: str) -> int | None:
    """An integer Image Pixel element; an unreadable value raises :class:`ImageLoadError`."""
    value = _element_value(dataset, keyword, label)
    if value is None:
        return None
    try:
        return int(str(value).strip()) if isinstance(value, (str, bytes)) else int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        _bad_element(label, keyword, value, "a whole number", cause=exc)


def _element_text(dataset: Any, keyword: str, label: str) -> str | None:
    """A text Image Pixel element, stripped; None when absent or empty."""
    value = _element_value(dataset, keyword, label)
    text = str(value).strip() if value is not None else ""
    return text or None


def _bad_element(
    label: str, keyword: str, value: Any, expected: str, cause: Exception | None = None
) -> NoReturn:
    """Raise :class:`ImageLoadError` for an element holding a value of the wrong kind."""
    tag, spelled = _PIXEL_ELEMENTS[keyword]
    shown = value.decode("latin-1", "replace") if isinstance(value, bytes) else str(value)
    shown = shown if len(shown) <= 24 else shown[:21] + "..."
    raise ImageLoadError(
        f"{label} is damaged: its DICOM element '{spelled}' {tag} holds '{shown}', which is "
        f"not {expected}, so its image cannot be decoded. " + _DICOM_ADVICE
    ) from cause


def _dicom_decoder(transfer_syntax: Any, label: str) -> Any:
    """pydicom's decoder for ``transfer_syntax``, refusing unknown or uninstalled ones in words."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as exc:
        raise ImageLoadError(
            f"{label} uses a pixel encoding that cannot be read here "
            f"({transfer_syntax.name}). Export it uncompressed or as PNG and try again."
        ) from exc
    if not decoder.is_available:
        raise ImageLoadError(_missing_decoder_message(label, transfer_syntax, decoder))
    return decoder


def _compression_name(transfer_syntax: Any) -> str:
    """The kind of compression a transfer syntax uses, in words (e.g. "lossless JPEG")."""
    from pydicom.uid import (
        JPEG2000TransferSyntaxes,
        JPEGLSTransferSyntaxes,
        JPEGTransferSyntaxes,
        RLELossless,
    )

    if transfer_syntax in JPEG2000TransferSyntaxes or "2000" in transfer_syntax.name:
        return "JPEG 2000"
    if transfer_syntax in JPEGLSTransferSyntaxes:
        return "JPEG-LS"
    if transfer_syntax in JPEGTransferSyntaxes:
        return "lossless JPEG" if "Lossless" in transfer_syntax.name else "JPEG"
    if transfer_syntax == RLELossless:
        return "RLE"
    return transfer_syntax.name


def _missing_decoder_message(label: str, transfer_syntax: Any, decoder: Any) -> str:
    """Plain-language message for a compressed DICOM whose decoder is not installed.

    The decoders are dependencies of CalibPrompt, so this means a broken or partial install.
    """
    # pydicom describes each missing plugin as "<plugin> - requires <packages>".
    # The gdcm bindings are published on PyPI as "python-gdcm".
    options = [
        text.split(" - requires ", 1)[-1].replace("gdcm>=", "python-gdcm>=")
        for text in decoder.missing_dependencies
    ]
    needed = " or ".join(options) if options else "an optional decoder package"
    return (
        f"{label} uses {_compression_name(transfer_syntax)} compression "
        f"({transfer_syntax.name}), which needs a package that is not installed: {needed}. "
        "Ask your IT team to install it (it comes with CalibPrompt), or export the image "
        "uncompressed or as PNG and try again."
    )


def _undecodable_message(label: str, dataset: Any, keyword: str, decoder: Any) -> str:
    """Plain-language message for pixel data that pydicom's decoder could not decode."""
    transfer_syntax = decoder.UID
    if not transfer_syntax.is_encapsulated:
        sizes = _pixel_byte_counts(dataset, keyword)
        if sizes is not None and sizes[0] < sizes[1]:
            return (
                f"{label} has damaged or incomplete image data: it holds {sizes[0]:,} bytes of "
                f"pixels where its header describes {sizes[1]:,}, so the file was probably cut "
                "off while it was copied or exported. " + _DICOM_ADVICE
            )
        return (
            f"{label} has damaged image data: its pixels do not match the image size, bit "
            "depth and encoding its header describes. " + _DICOM_ADVICE
        )
    plugins = ", ".join(sorted(decoder.available_plugins)) or "none"
    return (
        f"{label} has damaged or non-standard image data: its "
        f"{_compression_name(transfer_syntax)} compressed pixels ({transfer_syntax.name}) could "
        f"not be decoded by any installed decoder (tried: {plugins}). The file may be cut off or "
        "written by software that does not follow the DICOM standard. " + _DICOM_ADVICE
    )


def _pixel_byte_counts(dataset: Any, keyword: str) -> tuple[int, int] | None:
    """(bytes present, bytes the header describes) for uncompressed pixel data, None if unknown."""
    from pydicom.pixels.utils import get_expected_length

    try:
        return len(dataset[keyword].value), int(get_expected_length(dataset, unit="bytes"))
    except MemoryError:
        raise
    except Exception:  # the header itself is inconsistent: no sizes to compare
        return None


def _dicom_frame_to_rgb(frame: np.ndarray, dataset: Any, photometric: str) -> Image.Image:
    """Turn one decoded DICOM frame into an 8-bit RGB image."""
    from pydicom.pixels import apply_color_lut, convert_color_space

    if photometric == "PALETTE COLOR":
        colour = apply_color_lut(frame, dataset)
        return Image.fromarray(_full_range_to_uint8(colour)).convert("RGB")
    if frame.ndim == 3:  # three samples per pixel
        colour = frame if frame.dtype == np.uint8 else _window_to_uint8(frame)
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            colour = convert_color_space(colour, photometric, "RGB")
        return Image.fromarray(np.ascontiguousarray(colour[..., :3])).convert("RGB")

    gray = _dicom_grayscale_to_uint8(frame, dataset)
    if photometric == "MONOCHROME1":  # 0 means white: invert for display
        gray = 255 - gray
    return Image.fromarray(gray).convert("RGB")


def _dicom_grayscale_to_uint8(frame: np.ndarray, dataset: Any) -> np.ndarray:
    """Apply modality LUT, then VOI LUT/window if present, else the percentile window."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(frame, dataset)
    voi_range = _voi_output_range(dataset)
    if voi_range is None:
        return _window_to_uint8(values)
    values = apply_voi_lut(values, dataset, index=0)
    return _scale_to_uint8(values, *voi_range)


def _voi_output_range(dataset: Any) -> tuple[float, float] | None:
    """Output range of the dataset's VOI transform, or None if it has none.

    Mirrors pydicom: a VOI LUT sequence (preferred) outputs 0 .. 2**bits - 1;
    window centre/width outputs the (rescaled) stored-value range.
    """
    voi_sequence = dataset.get("VOILUTSequence")
    if voi_sequence and "LUTDescriptor" in voi_sequence[0] and "LUTData" in voi_sequence[0]:
        bits = int(voi_sequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if dataset.get("WindowCenter") is None or dataset.get("WindowWidth") is None:
        return None
    modality_sequence = dataset.get("ModalityLUTSequence")
    if modality_sequence:
        return 0.0, float(2 ** int(modality_sequence[0].LUTDescriptor[2]) - 1)
    bits = int(dataset.BitsStored)
    if int(dataset.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = sorted(float(v) * float(slope) + float(intercept) for v in (low, high))
    return low, high


# -----------------------------------------------------------------------------
# 3. Windowing to 8 bits
# -----------------------------------------------------------------------------


def _window_to_uint8(values: np.ndarray) -> np.ndarray:
    """Window any numeric array linearly to uint8.

    The window runs from the 0.5th to the 99.5th percentile of the (finite)
    values, falling back to min..max when that range is empty; a constant
    array maps to zeros (black). Intensity order is preserved.
    """
    data = np.asarray(values)
    finite = data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data.ravel()
    if finite.size == 0:
        return np.zeros(data.shape, dtype=np.uint8)
    low, high = (float(v) for v in np.percentile(finite, _WINDOW_PERCENTILES))
    if not high > low:
        low, high = float(finite.min()), float(finite.max())
    return _scale_to_uint8(data, low, high)


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low .. high`` linearly to ``0 .. 255`` (clipping outside); zeros if empty range."""
    if not high > low:
        return np.zeros(np.shape(values), dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - low) * (255.0 / (high - low))
    np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled).astype(np.uint8)


def _full_range_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale an unsigned/bool array from its dtype's full range to uint8 (no windowing)."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if np.issubdtype(values.dtype, np.integer):
        return _scale_to_uint8(values, 0.0, float(np.iinfo(values.dtype).max))
    return _scale_to_uint8(values, 0.0, 1.0)  # float alpha in [0, 1]


# -----------------------------------------------------------------------------
# 4. Mode conversion to RGB
# -----------------------------------------------------------------------------


def _pil_to_rgb(image: Image.Image, label: str, pick: _Pick) -> Image.Image:
    """Check size, take the chosen frame, decode, apply EXIF orientation, convert to RGB.

    Always returns a new image; ``image`` keeps its pixels and current frame.
    """
    _check_pixel_count(image.width, image.height, label, pick.max_pixels)
    try:
        frames = int(getattr(image, "n_frames", 1) or 1)
    except MemoryError:
        raise
    except Exception as exc:  # counting frames reads the whole file (GIF, TIFF)
        raise ImageLoadError(_pil_decode_failure(label)) from exc
    index = choose_frame(pick.frame, frames, label)
    try:
        frame = _select_frame(image, index)
        frame.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(_too_large_message(label, image.size, pick.max_pixels)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # truncated/corrupt data: OSError, SyntaxError, EOFError, ...
        raise ImageLoadError(_pil_decode_failure(label)) from exc
    return _convert_mode_to_rgb(_apply_exif_orientation(frame, label), label)


def _pil_decode_failure(label: str) -> str:
    """Message for a file Pillow recognised but whose image data it could not decode."""
    return (
        f"{label} is incomplete or damaged: its image data could not be decoded (the file may "
        "be cut off). Re-export or re-download it and try again."
    )


def _select_frame(image: Image.Image, index: int) -> Image.Image:
    """Return frame ``index`` (0-based) of a possibly multi-frame image.

    The caller's current frame is restored; a frame other than the current one is a copy.
    """
    current = image.tell() if getattr(image, "n_frames", 1) > 1 else 0
    if current == index:
        return image
    try:
        image.seek(index)
        return image.copy()
    finally:
        image.seek(current)


def _apply_exif_orientation(image: Image.Image, label: str) -> Image.Image:
    """Rotate/flip according to the EXIF orientation tag (a copy, never in place)."""
    try:
        return ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception as exc:  # malformed EXIF must not stop a readable image
        logger.warning("%s: ignoring unreadable EXIF orientation (%s).", label, exc)
        return image


def _convert_mode_to_rgb(image: Image.Image, label: str) -> Image.Image:
    """Convert a loaded PIL image of any mode to a new 8-bit RGB image."""
    mode = image.mode
    try:
        if mode.startswith("I") or mode == "F":  # I;16, I;16B, I;16L, I, F: window, not clip
            return Image.fromarray(_window_to_uint8(np.asarray(image))).convert("RGB")
        if mode in _ALPHA_MODES or "transparency" in image.info:
            return _composite_on_white(image.convert("RGBA"))
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, RGB (copy), ...
    except (ValueError, TypeError, OSError) as exc:
        raise ImageLoadError(
            f"{label} uses the colour mode {mode!r}, which cannot be converted to RGB "
            f"here. Save it as an ordinary RGB or grayscale image. {_UPLOAD_HINT}"
        ) from exc


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Alpha-composite an RGBA image onto a white background and drop alpha."""
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _array_to_rgb(array: np.ndarray, max_pixels: int) -> Image.Image:
    """Convert a numpy image array to RGB (see :func:`load_image` for the rules)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageLoadError(
            f"Cannot use a numpy array of shape {array.shape} as an image; accepted "
            f"shapes are {_ACCEPTED_ARRAY_SHAPES} (height, width, channels)."
        )
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ImageLoadError(f"The numpy array of shape {array.shape} has no pixels.")
    _check_pixel_count(width, height, "The array", max_pixels)

    if array.dtype == np.float16:
        array = array.astype(np.float32)
    kind = array.dtype.kind  # b: bool, i/u: integers, f: floats
    if kind not in "biuf":
        raise ImageLoadError(
            f"Cannot use a numpy array of dtype {array.dtype} as an image; accepted "
            f"dtypes are {_ACCEPTED_ARRAY_DTYPES}."
        )
    if kind == "f" and not np.isfinite(array).all():
        raise ImageLoadError(
            "The numpy array contains NaN or infinite values; replace them "
            "(e.g. with numpy.nan_to_num) before loading it as an image."
        )

    has_alpha = array.ndim == 3 and array.shape[2] == 4
    intensities = array[..., :3] if has_alpha else array
    pixels = _intensities_to_uint8(intensities)
    if has_alpha:
        alpha = _full_range_to_uint8(np.clip(array[..., 3], 0, None))
        rgba = np.ascontiguousarray(np.dstack([pixels, alpha]))
        return _composite_on_white(Image.fromarray(rgba))
    return Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")


def _intensities_to_uint8(values: np.ndarray) -> np.ndarray:
    """uint8 as is, bool to 0/255, floats in [0, 1] scaled, anything else windowed."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if np.issubdtype(values.dtype, np.floating) and values.min() >= 0.0 and values.max() <= 1.0:
        return _scale_to_uint8(values, 0.0, 1.0)
    return _window_to_uint8(values)
