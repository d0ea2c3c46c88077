"""CalibPrompt web app: can I trust this model's confidence?

    python app.py [--model auto|NAME] [--host 127.0.0.1] [--port 7860] [--share] [--data-dir DIR]
                  [--auth USER:PASSWORD ...]

The entry point only; the interface lives in :mod:`calibprompt.app` (one module per tab) over the
shared core :class:`calibprompt.service.core.Core`.
"""
from calibprompt.app import build_demo  # noqa: F401  (re-exported for tests and Spaces)
from calibprompt.app.launch import main

if __name__ == "__main__":
    main()
