"""Where a fine-tune runs: "cpu" (the default, what CI tests), "cuda", or "auto" (CUDA when torch sees one)."""
from __future__ import annotations

import dataclasses

import torch

from engine.errors import UserError


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``; asking for CUDA where torch sees none is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for, but torch sees no CUDA device here (use cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"device {name!r} is not one of cpu, cuda, auto")
    return torch.device(name)


def data_on(data, device: torch.device):
    """The dataset with its tensors on ``device`` (the same object when already there)."""
    if data.x_train.device == device:
        return data
    moved = {f.name: getattr(data, f.name).to(device) for f in dataclasses.fields(data)
             if isinstance(getattr(data, f.name), torch.Tensor)}
    return dataclasses.replace(data, **moved)
