"""Moved to :mod:`calibprompt.imaging.images` (images are read below every layer that uses them); this
module re-exports its public names so that existing imports keep working."""
from calibprompt.imaging.images import (  # noqa: F401  (re-exports)
    DEFAULT_MAX_PIXELS,
    SUPPORTED_IMAGE_SUFFIXES,
    ImageLoadError,
    ImageSource,
    choose_frame,
    is_image_file,
    load_image,
)

__all__ = ["DEFAULT_MAX_PIXELS", "SUPPORTED_IMAGE_SUFFIXES", "ImageSource", "ImageLoadError", "choose_frame",
           "is_image_file", "load_image"]
