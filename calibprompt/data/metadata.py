"""Moved to :mod:`calibprompt.imaging.metadata` (read below every layer that uses it); this module
re-exports :func:`image_metadata` so that existing imports keep working."""
from calibprompt.imaging.metadata import image_metadata  # noqa: F401  (re-export)

__all__ = ["image_metadata"]
