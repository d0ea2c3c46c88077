"""Shared fixtures: tiny random-weight backbones (built once per test session, offline)."""
from __future__ import annotations

import os

import pytest

# Tests never reach the Hugging Face Hub: an empty, private cache and no telemetry.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_native():
    from calibprompt.models import load_backbone

    return load_backbone("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def tiny_hf():
    from calibprompt.models import load_backbone

    return load_backbone("tiny-random-hf", device="cpu")


@pytest.fixture(scope="session", params=["tiny-random", "tiny-random-hf"])
def tiny_backbone(request, tiny_native, tiny_hf):
    return tiny_native if request.param == "tiny-random" else tiny_hf


@pytest.fixture()
def calibprompt_home(tmp_path, monkeypatch):
    """A private data directory for tests that write runs, caches or checkpoints."""
    home = tmp_path / "calibprompt-home"
    monkeypatch.setenv("CALIBPROMPT_HOME", str(home))
    return home
