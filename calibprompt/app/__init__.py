"""The Gradio interface: a thin layer over :class:`calibprompt.service.core.Core`.

One module per tab (``compare_tab``, ``train_tab``, ``calibration_tab``, ``review_tab``);
:mod:`~calibprompt.app.interface` draws the header (model, task, prompts) that every tab shares and
keeps one :class:`~calibprompt.service.session.SessionState` per browser session in a ``gr.State``;
:mod:`~calibprompt.app.launch` is ``python app.py``. Importing ``calibprompt`` never imports this
package (nor Gradio), and importing this package imports Gradio only when :func:`build_demo` (or
another name of the interface) is first looked up, so ``python app.py --help`` answers at once.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["build_demo", "Shared", "upload_dir"]

if TYPE_CHECKING:
    from calibprompt.app.interface import Shared, build_demo, upload_dir


def __getattr__(name: str) -> Any:
    """The interface's names, imported from :mod:`calibprompt.app.interface` on first access (PEP 562)."""
    if name in __all__:
        value = getattr(importlib.import_module("calibprompt.app.interface"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
