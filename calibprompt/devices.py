"""Choosing the torch device: ``auto`` means CUDA, then Apple's MPS, then the CPU."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["DEVICE_CHOICES", "resolve_device", "available_devices", "autocast"]

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The device names usable on this machine, best first (always ends with ``"cpu"``)."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if _mps_available():
        found.append("mps")
    return found + ["cpu"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn ``None``/``"auto"``/``"cpu"``/``"cuda"``/``"cuda:N"``/``"mps"`` into a usable device.

    Raises:
        ValueError: for an unknown name, or a device this machine does not have.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device is not None and not isinstance(device, str):
        raise ValueError(f"The device must be a name such as 'auto' or 'cpu', got {device!r}. {_choices_text()}")
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    kind, _, index = name.partition(":")
    if kind not in DEVICE_CHOICES or kind == "auto" or (index and not index.isdigit()):
        raise ValueError(f"Unknown device {device!r}. {_choices_text()}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"CUDA is not available on this machine, so {device!r} cannot be used. {_choices_text()}")
    if kind == "mps" and not _mps_available():
        raise ValueError(f"Apple MPS is not available on this machine, so {device!r} cannot be used. {_choices_text()}")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"There is no {name}: this machine has {torch.cuda.device_count()} CUDA device(s). "
                         f"{_choices_text()}")
    return torch.device(name)


def _choices_text() -> str:
    """The devices this machine offers, for an error message."""
    found = available_devices()
    cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if "cuda" in found else []
    names = ", ".join(["auto", *found, *(cuda if len(cuda) > 1 else [])])
    return f"The devices available here are: {names}."


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` in fp16/bf16 on ``device`` (``"fp16"``, ``"bf16"``); nothing for ``"fp32"``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])
