"""Choosing the torch device."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return ``device`` as a :class:`torch.device`; ``None`` means CUDA when present, else CPU.

    Raises
    ------
    ValueError
        If a CUDA device is requested on a machine without CUDA.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        msg = f"device={str(device)!r} was requested but CUDA is not available here: pass device='cpu'."
        raise ValueError(msg)
    return dev
