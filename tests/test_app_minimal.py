"""The app builds and its compare handler answers (the full app is tested with the app issue)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


def test_app_builds_and_compares(tiny_native, tmp_path):
    import app

    service = app.CompareService(tiny_native)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    out = service.compare(str(image), "covid")
    assert set(out) == {"zero-shot"} and set(out["zero-shot"]) == {"covid", "normal"}
    assert sum(out["zero-shot"].values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="Upload an image"):
        service.compare(None, "covid")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError):
        service.compare(str(bad), "covid")
    demo = app.build_demo(tiny_native, "test banner")
    assert demo is not None
