"""Image metadata: what kind of file an image is, read from its header only.

:func:`calibprompt.imaging.load_image` returns just the RGB picture the model sees; :func:`image_metadata`
tells what it came from and what the model does not see (a DICOM's modality, body part examined,
window centre/width and frame count; a PNG's mode; how many frames a file has and which one is
shown), e.g. for :func:`calibprompt.evaluation.ood.modality_mismatch` or a frame picker.
"""
from __future__ import annotations

import io
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import IO, Any

import numpy as np
from PIL import Image

from calibprompt.imaging.images import (
    _DICOM_MAGIC,
    _DICOM_MAGIC_OFFSET,
    ImageLoadError,
    ImageSource,
    _available_pil_formats,
    _looks_like_dicom,
    choose_frame,
    load_image,
)

__all__ = ["image_metadata"]

logger = logging.getLogger(__name__)


def image_metadata(source: ImageSource, *, frame: int | None = None) -> dict[str, Any]:
    """Describe an image from its header, without decoding its pixels.

    ``source`` is anything :func:`~calibprompt.imaging.load_image` takes: a path, bytes, a binary file
    object (read from its current position, which is restored afterwards when the object can seek,
    so it can then be passed to ``load_image``), a PIL image or a numpy array. ``frame`` is the
    0-based frame that will be passed to ``load_image`` (None: the first); it is checked the same
    way, with the same :class:`~calibprompt.imaging.ImageLoadError` message naming the allowed range.

    Returns, for a DICOM file (read with pydicom, ``stop_before_pixels=True``)::

        {"format": "DICOM", "modality": "CT" | None, "frames": NumberOfFrames or 1,
         "frame_used": the 0-based frame load_image shows, "window": (center, width) | None,
         "photometric": "MONOCHROME2" | None, "bits": BitsStored | None,
         "size": (Columns, Rows) | None}

    plus ``"body_part": "CHEST"`` (Body Part Examined, stripped) when the file records one. ``window``
    is the first window centre/width pair (the one ``load_image`` applies), None when the file has
    none. For any other image::

        {"format": "PNG" (Pillow's format name; None for an in-memory PIL image without one),
         "size": (width, height) as stored (before EXIF rotation), "mode": the file's own mode
         ("L", "I;16", "RGBA", ...), "frames": n_frames or 1, "frame_used": 0-based frame}

    and for a numpy array ``{"format": None, "size": (w, h), "mode": dtype name, "frames": 1,
    "frame_used": 0}``.

    Raises :class:`~calibprompt.imaging.ImageLoadError` (a ValueError), the same one ``load_image``
    raises, when the header cannot be read (missing, empty, non-image or damaged file, not a standard
    DICOM, a DICOM whose pixel encoding cannot be decoded here) or ``frame`` does not exist. Only the
    header is checked: a file whose header is fine but whose pixel data is damaged gets its metadata
    here and an error from ``load_image``.
    """
    if isinstance(source, Image.Image):
        return _with_frame(_pil_metadata(source), frame, "The image")
    if isinstance(source, np.ndarray):
        height, width = (source.shape[:2] if source.ndim >= 2 else (0, 0))
        described = {"format": None, "size": (int(width), int(height)), "mode": str(source.dtype),
                     "frames": 1, "frame_used": 0}
        return _with_frame(described, frame, "The array")
    try:
        described, label = _source_metadata(source)
    except ImageLoadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # unreadable: let load_image say why, in its words
        return _fallback(source, exc, frame)
    if described is None:  # an unsupported type: load_image names the accepted ones
        return _fallback(source, None, frame)
    return _with_frame(described, frame, label)


def _source_metadata(source: Any) -> tuple[dict[str, Any] | None, str]:
    """Metadata of an encoded source (path, bytes, file object) and the label load_image uses."""
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source).expanduser()
        with path.open("rb") as stream:
            return _stream_metadata(stream, path.name), f"The file {path.name}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _stream_metadata(io.BytesIO(bytes(source)), None), "The uploaded data"
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        named = isinstance(name, str) and bool(name)
        label = f"The file {os.path.basename(name)}" if named else "The uploaded file"
        return _file_object_metadata(source), label
    return None, "The image"


def _with_frame(described: dict[str, Any], frame: Any, label: str) -> dict[str, Any]:
    """Set ``frame_used`` to ``frame`` checked against ``described["frames"]`` (as load_image does)."""
    described["frame_used"] = choose_frame(frame, int(described["frames"]), label)
    return described


def _file_object_metadata(stream: IO[bytes]) -> dict[str, Any]:
    """Metadata of a binary file object from its current position; the position is restored."""
    try:
        start = stream.tell()
    except (AttributeError, OSError, ValueError):
        start = None
    data = stream.read()
    if start is not None:
        try:
            stream.seek(start)
        except (AttributeError, OSError, ValueError):
            pass
    if not isinstance(data, (bytes, bytearray, memoryview)) or not data:
        raise ValueError("no bytes")  # load_image explains (text mode, at the end, ...)
    name = getattr(stream, "name", None)
    return _stream_metadata(io.BytesIO(bytes(data)), name if isinstance(name, str) else None)


def _fallback(source: Any, cause: Exception | None, frame: int | None = None) -> dict[str, Any]:
    """Raise load_image's ImageLoadError for ``source``; if it loads after all, describe the result."""
    image = load_image(source, frame=frame)  # raises the ImageLoadError a user would see
    logger.debug("Header of %s unreadable here (%s), but load_image read it.", type(source).__name__, cause)
    metadata = _pil_metadata(image)
    metadata["format"] = None  # the header could not be read here
    metadata["frame_used"] = 0 if frame is None else int(frame)
    return metadata


def _stream_metadata(stream: IO[bytes], name: str | None) -> dict[str, Any]:
    """Metadata of an encoded file (DICOM or anything Pillow opens) from its header."""
    head = stream.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    stream.seek(0)
    if not head:
        raise ValueError("empty")
    if _looks_like_dicom(head, name):
        return _dicom_metadata(stream)
    with Image.open(stream, formats=_available_pil_formats()) as image:
        return _pil_metadata(image)


def _pil_metadata(image: Image.Image) -> dict[str, Any]:
    """Format, stored size, mode and frame count of a PIL image (nothing is decoded)."""
    return {
        "format": image.format,
        "size": (int(image.width), int(image.height)),
        "mode": image.mode,
        "frames": int(getattr(image, "n_frames", 1) or 1),
        "frame_used": 0,
    }


def _dicom_metadata(stream: IO[bytes]) -> dict[str, Any]:
    """The DICOM tags the model does not see, read without the pixel data.

    Raises a plain exception on anything unreadable: the caller then lets load_image explain.
    """
    import pydicom  # a missing pydicom ends in load_image's "install pydicom" message
    from pydicom.pixels import get_decoder

    dataset = pydicom.dcmread(stream, force=False, stop_before_pixels=True)
    transfer_syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID")
    if transfer_syntax is None or not get_decoder(transfer_syntax).is_available:
        raise ValueError("pixels cannot be decoded")  # load_image says what to install or do
    columns, rows = dataset.get("Columns"), dataset.get("Rows")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames < 1:
        raise ValueError("negative frame count")  # load_image names the damaged element
    described = {
        "format": "DICOM",
        "modality": _text(dataset.get("Modality")),
        "frames": frames,
        "frame_used": 0,
        "window": _window(dataset),
        "photometric": _text(dataset.get("PhotometricInterpretation")),
        "bits": int(dataset.BitsStored) if dataset.get("BitsStored") is not None else None,
        "size": (int(columns), int(rows)) if columns is not None and rows is not None else None,
    }
    body_part = _text(dataset.get("BodyPartExamined"))
    if body_part is not None:  # only when recorded, so files without one keep the keys above
        described["body_part"] = body_part
    return described


def _text(value: Any) -> str | None:
    """A DICOM text value stripped, None when absent or empty."""
    text = str(value).strip() if value is not None else ""
    return text or None


def _first(value: Any) -> float:
    """The first of several values (pydicom MultiValue), as a float."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # pydicom MultiValue
        value = value[0]
    return float(value)


def _window(dataset: Any) -> tuple[float, float] | None:
    """The first window (centre, width) pair, the one load_image applies; None without one."""
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        return _first(center), _first(width)
    except (TypeError, ValueError, IndexError):  # malformed or empty values: no window
        return None
