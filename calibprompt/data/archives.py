"""Moved to :mod:`calibprompt.archives` (the foundation layer: every layer that unpacks a zip uses it);
this module re-exports its public names so that existing imports keep working."""
from calibprompt.archives import (  # noqa: F401  (re-exports)
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_RATIO,
    extract_zip,
)

__all__ = ["extract_zip", "DEFAULT_MAX_FILES", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_RATIO"]
