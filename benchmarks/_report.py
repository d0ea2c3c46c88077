"""What every table benchmark does with its result: print the markdown, and write it and the JSON where asked."""
from __future__ import annotations

import json
from typing import Any


def write_outputs(text: str, markdown: str | None, json_path: str | None, data: Any) -> None:
    """Print ``text``; write it to ``markdown`` and ``data`` as JSON to ``json_path`` when given."""
    print(text)
    if markdown:
        with open(markdown, "w", encoding="utf-8") as fh:
            fh.write(text)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
