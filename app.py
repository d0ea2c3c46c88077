"""CalibPrompt web app: can I trust this model's confidence?

    python app.py [--model auto|NAME] [--host 127.0.0.1] [--port 7860] [--share] [--data-dir DIR]
                  [--auth USER:PASSWORD ...] [--auth-file PATH]

The entry point only; the interface lives in :mod:`calibprompt.app` (one module per tab) over the
shared core :class:`calibprompt.service.core.Core`. ``build_demo`` is re-exported for tests and
Spaces, and imported (with Gradio) on first access, so ``--help`` and argument errors answer at once.
"""
from typing import Any

from calibprompt.app.launch import main


def __getattr__(name: str) -> Any:
    if name == "build_demo":
        from calibprompt.app import build_demo

        return build_demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
