"""Device choice and the inference precision context (bf16 autocast on CUDA)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from unsamv2_engine.errors import DeviceError, InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an explicit device must be available."""
    if isinstance(name, torch.device):
        return name
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but CUDA is not available here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name!r} requested but Apple MPS is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    return device


@contextlib.contextmanager
def inference_context(device: torch.device) -> Iterator[None]:
    """``inference_mode``, plus bfloat16 autocast on CUDA (as the authors run UnSAMv2)."""
    with torch.inference_mode():
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield


def available_devices() -> dict[str, object]:
    """What ``unsamv2 info`` reports about devices."""
    info: dict[str, object] = {"cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                               "mps": torch.backends.mps.is_available()}
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info
