"""Image loading: :func:`load_image` turns whatever a clinician or a dataset hands us (a path,
uploaded bytes, a file object, a numpy array, a PIL image, a DICOM file) into an 8-bit RGB
:class:`PIL.Image.Image`, or raises a :class:`ValueError` whose message says what went wrong and
what to do.
"""

from __future__ import annotations

import io
import logging
import os
import pathlib
from typing import IO, Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
    """An image could not be loaded; the message explains why and what to do."""


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Return True if ``path`` has one of :data:`SUPPORTED_IMAGE_SUFFIXES`.

    The check is by file name only (case-insensitive); the file is not opened.
    """
    return pathlib.Path(path).suffix.lower() in SUPPORTED_IMAGE_SUFFIXES


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load an image from almost anything and return it as 8-bit RGB.

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
    max_pixels:
        Refuse images with more than this many pixels (width * height). For
        files this is checked from the header, before decoding, so
        decompression bombs are rejected quickly. Pillow's own bomb limit
        (``PIL.Image.MAX_IMAGE_PIXELS``, left untouched) also applies.

    Returns
    -------
    PIL.Image.Image
        A new, fully loaded image in mode ``"RGB"`` with no open file handle.
        A PIL image passed in is not modified.

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
    * EXIF orientation is applied; for multi-frame files (multi-page TIFF,
      animated GIF, multi-frame DICOM) the first frame is used.
    * DICOM: the modality LUT (rescale slope/intercept) and the VOI LUT or
      window centre/width are applied when present, otherwise the percentile
      window; MONOCHROME1 is inverted; YBR colour and palette colour are
      converted to RGB.

    Raises
    ------
    ValueError
        (as :class:`ImageLoadError`) for anything a user can cause: missing,
        empty, damaged, truncated or non-image files, too-large images, DICOM
        files without pixel data or needing an uninstalled decoder, and
        unsupported input types. The original exception is kept as
        ``__cause__``.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}.")

    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, "The image", max_pixels)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _load_from_path(pathlib.Path(source).expanduser(), max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_from_bytes(bytes(source), "The uploaded data", max_pixels)
    if hasattr(source, "read"):
        return _load_from_file_object(source, max_pixels)
    raise ImageLoadError(
        f"Cannot load an image from an object of type {type(source).__name__}. "
        f"Pass {_ACCEPTED_SOURCES}."
    )


# -----------------------------------------------------------------------------
# 1. Opening and identifying
# -----------------------------------------------------------------------------


def _load_from_path(path: pathlib.Path, max_pixels: int) -> Image.Image:
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
            raise ImageLoadError(f"The file is empty (0 bytes): {path}. {_UPLOAD_HINT}")
        with path.open("rb") as stream:
            head = stream.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
            stream.seek(0)
            if _looks_like_dicom(head, path.name):
                return _load_dicom(stream, label, max_pixels)
            return _open_with_pil(stream, label, max_pixels)
    except PermissionError as exc:
        raise ImageLoadError(
            f"The file {path} cannot be read (permission denied). "
            "Copy it to a folder you can read, or ask your IT team for access."
        ) from exc
    except OSError as exc:  # e.g. network drive gone, I/O error
        raise ImageLoadError(f"The file {path} could not be read ({exc}). Try again.") from exc


def _load_from_file_object(stream: Any, max_pixels: int) -> Image.Image:
    """Read a binary file object from its current position and load it."""
    name = getattr(stream, "name", None)
    if not isinstance(name, str) or not name:
        name = None
    label = f"The file {os.path.basename(name)}" if name else "The uploaded file"
    try:
        data = stream.read()
    except (OSError, ValueError) as exc:  # ValueError: I/O on a closed file
        raise ImageLoadError(f"{label} could not be read ({exc}). Upload it again.") from exc
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
    return _load_from_bytes(bytes(data), label, max_pixels, name_hint=name)


def _stream_position(stream: Any) -> int:
    """Return ``stream.tell()``, or 0 when the position is unknown."""
    try:
        return int(stream.tell())
    except (AttributeError, OSError, ValueError, TypeError):
        return 0


def _load_from_bytes(
    data: bytes, label: str, max_pixels: int, name_hint: str | None = None
) -> Image.Image:
    """Load an encoded image (PIL-readable or DICOM) held in memory."""
    if not data:
        raise ImageLoadError(f"The file is empty (0 bytes). {_UPLOAD_HINT}")
    stream = io.BytesIO(data)
    if _looks_like_dicom(data, name_hint):
        return _load_dicom(stream, label, max_pixels)
    return _open_with_pil(stream, label, max_pixels)


def _looks_like_dicom(head: bytes, name: str | None = None) -> bool:
    """True if ``head`` has the DICOM ``DICM`` marker or ``name`` a DICOM suffix."""
    marker = head[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC)]
    if marker == _DICOM_MAGIC:
        return True
    return bool(name) and pathlib.PurePath(name).suffix.lower() in _DICOM_SUFFIXES


def _open_with_pil(stream: IO[bytes], label: str, max_pixels: int) -> Image.Image:
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
        raise ImageLoadError(_too_large_message(label, size, max_pixels, exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(_describe_unreadable(stream, label)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow plugins raise many types on corrupt headers
        raise ImageLoadError(
            f"{label} is damaged and could not be opened ({exc}). "
            f"Re-export or re-download it. {_UPLOAD_HINT}"
        ) from exc
    with image:
        return _pil_to_rgb(image, label, max_pixels)


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


def _too_large_message(
    label: str, size: tuple[int, int] | None, max_pixels: int, pil_error: Exception | None = None
) -> str:
    """Message for an image refused by our ``max_pixels`` or by Pillow's bomb limit."""
    advice = "Downscale it (for example to at most 4096 pixels on the longest side) and try again."
    if size is None:
        return f"{label} is too large to open safely ({pil_error}). {advice}"
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


def _load_dicom(stream: IO[bytes], label: str, max_pixels: int) -> Image.Image:
    """Read a DICOM file with pydicom and return its first frame as RGB."""
    pydicom = _import_pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(stream, force=False)
    except InvalidDicomError as exc:
        raise ImageLoadError(
            f"{label} is not a standard DICOM file (the 'DICM' marker after the "
            "128-byte preamble is missing). Export it again as standard DICOM or as PNG."
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # pydicom raises many types on damaged files
        raise ImageLoadError(
            f"{label} is a damaged or incomplete DICOM file ({exc}). "
            "Export it again from your PACS or viewer, or export it as PNG."
        ) from exc

    frame, photometric = _decode_dicom_first_frame(dataset, label, max_pixels)
    try:
        return _dicom_frame_to_rgb(frame, dataset, photometric)
    except MemoryError:
        raise
    except Exception as exc:  # malformed LUT / window elements, odd bit depths
        raise ImageLoadError(
            f"{label} has display settings (LUT, window or colour information) that "
            f"could not be applied ({exc}). Export the image as PNG and try again."
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


def _decode_dicom_first_frame(dataset: Any, label: str, max_pixels: int) -> tuple[np.ndarray, str]:
    """Decode the first frame of ``dataset``.

    Returns the pixel array and the photometric interpretation the array is
    actually in (a decoder may already have converted colour to RGB).
    """
    from pydicom.pixels import get_decoder

    if not any(keyword in dataset for keyword in _PIXEL_DATA_KEYWORDS):
        raise ImageLoadError(
            f"{label} is a DICOM file without an image: it has no pixel data (it may "
            "be a report or other non-image object, or the file may be cut off). "
            "Upload the complete DICOM image, or export it as PNG."
        )
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    _check_pixel_count(columns, rows, label, max_pixels)

    transfer_syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID")
    if transfer_syntax is None:
        raise ImageLoadError(
            f"{label} does not say how its pixels are encoded (no Transfer Syntax UID). "
            "Export it again as standard DICOM or as PNG."
        )
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as exc:
        raise ImageLoadError(
            f"{label} uses a pixel encoding that cannot be read here "
            f"({transfer_syntax.name}). Export it uncompressed or as PNG and try again."
        ) from exc
    if not decoder.is_available:
        raise ImageLoadError(_missing_decoder_message(label, transfer_syntax, decoder))

    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        logger.info("%s has %d frames; using the first one.", label, frames)
    try:
        # as_rgb=False: we do the YBR -> RGB conversion ourselves (see
        # _dicom_frame_to_rgb); ``changes`` says if a decoder already did it.
        array, changes = decoder.as_array(dataset, index=0, as_rgb=False)
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageLoadError(
            f"{label} has damaged or incomplete image data that could not be decoded "
            f"({exc}). Export it again from your PACS or viewer, or export it as PNG."
        ) from exc
    stored = dataset.get("PhotometricInterpretation", "MONOCHROME2")
    photometric = str(changes.get("photometric_interpretation", stored))
    return array, photometric.strip().upper()


def _missing_decoder_message(label: str, transfer_syntax: Any, decoder: Any) -> str:
    """Plain-language message for a compressed DICOM whose decoder is not installed."""
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

    if transfer_syntax in JPEG2000TransferSyntaxes or "2000" in transfer_syntax.name:
        compression = "JPEG 2000"
    elif transfer_syntax in JPEGLSTransferSyntaxes:
        compression = "JPEG-LS"
    elif transfer_syntax in JPEGTransferSyntaxes:
        compression = "lossless JPEG" if "Lossless" in transfer_syntax.name else "JPEG"
    else:
        compression = transfer_syntax.name
    # pydicom describes each missing plugin as "<plugin> - requires <packages>".
    # The gdcm bindings are published on PyPI as "python-gdcm".
    options = [
        text.split(" - requires ", 1)[-1].replace("gdcm>=", "python-gdcm>=")
        for text in decoder.missing_dependencies
    ]
    needed = " or ".join(options) if options else "an optional decoder package"
    return (
        f"{label} uses {compression} compression ({transfer_syntax.name}), which needs "
        f"an optional package that is not installed: {needed}. Ask your IT team to "
        "install it, or export the image uncompressed or as PNG and try again."
    )


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


def _pil_to_rgb(image: Image.Image, label: str, max_pixels: int) -> Image.Image:
    """Check size, take the first frame, decode, apply EXIF orientation, convert to RGB.

    Always returns a new image; ``image`` keeps its pixels and current frame.
    """
    _check_pixel_count(image.width, image.height, label, max_pixels)
    try:
        frame = _first_frame(image)
        frame.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(_too_large_message(label, image.size, max_pixels, exc)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # truncated/corrupt data: OSError, SyntaxError, EOFError, ...
        raise ImageLoadError(
            f"{label} is incomplete or damaged and could not be decoded ({exc}). "
            "Re-export or re-download it and try again."
        ) from exc
    return _convert_mode_to_rgb(_apply_exif_orientation(frame, label), label)


def _first_frame(image: Image.Image) -> Image.Image:
    """Return the first frame of a multi-frame image (restoring the caller's frame)."""
    current = image.tell() if getattr(image, "n_frames", 1) > 1 else 0
    if current == 0:
        return image
    try:
        image.seek(0)
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
