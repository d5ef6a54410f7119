"""Straight-through building blocks shared by the quantizers."""
from __future__ import annotations

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return (x.round() - x).detach() + x


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """sign() forward (with sign(0) = 0), identity gradient backward."""
    return (torch.sign(x) - x).detach() + x


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Value of ``x`` forward, gradient multiplied by ``scale`` backward (LSQ's g)."""
    return (x - x * scale).detach() + x * scale
