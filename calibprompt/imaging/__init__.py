"""Imaging: reading the images a clinician or a dataset hands us, below every layer that uses them.

- :mod:`~calibprompt.imaging.images`: :func:`load_image` (PNG, JPEG, TIFF, 16-bit and float arrays, DICOM
  with every installed transfer-syntax plugin) to an 8-bit RGB picture, or an :class:`ImageLoadError` in
  plain words; :func:`is_image_file`, :func:`choose_frame`.
- :mod:`~calibprompt.imaging.metadata`: :func:`image_metadata`, what a file is from its header only (a
  DICOM's modality, body part, window and frame count).

It needs only the foundation (``calibprompt.paths``); backbones, prompting, data, training and the
service read images through it. ``calibprompt.data.load_image`` and ``calibprompt.data.images`` /
``calibprompt.data.metadata`` keep working as re-exports.
"""
from calibprompt.imaging.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_IMAGE_SUFFIXES,
    ImageLoadError,
    ImageSource,
    choose_frame,
    is_image_file,
    load_image,
)
from calibprompt.imaging.metadata import image_metadata

__all__ = ["DEFAULT_MAX_PIXELS", "SUPPORTED_IMAGE_SUFFIXES", "ImageLoadError", "ImageSource", "choose_frame",
           "image_metadata", "is_image_file", "load_image"]
