"""Where training runs: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

Shared by every trainer, so that the same command trains on a laptop's CPU and on a GPU machine: a malformed name
is refused when the configuration is made, and a GPU that is not there when training starts, each with a clear
message in the trainer's own error class instead of deep inside torch.
"""

from __future__ import annotations

import torch


def check_device_name(name: str) -> str | None:
    """None when ``name`` is a device a training configuration may ask for, else what is wrong with it."""
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return None
    return f"device must be auto, cpu, cuda or cuda:N, got {name!r}"


def resolve_device(name: str, error: type[Exception] = ValueError) -> torch.device:
    """The torch device for ``name`` (see :func:`check_device_name`); ``error`` if it is invalid or absent."""
    if problem := check_device_name(name):
        raise error(problem)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise error(f"device {name} asked for, but CUDA is not available")
    return torch.device(name)
