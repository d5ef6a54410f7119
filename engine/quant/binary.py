"""Binary (XNOR-Net style) and ternary (TWN) weight quantizers with straight-through gradients."""
from __future__ import annotations

import torch



def _per_channel_mean(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(1).reshape(-1, *([1] * (x.dim() - 1)))


def binarize(w: torch.Tensor) -> torch.Tensor:
    """sign(w) * alpha, alpha = mean |w| per output channel (zeros, e.g. pruned, stay zero)."""
    alpha = _per_channel_mean(w.abs()).detach()
    q = torch.sign(w) * alpha
    return (q - w).detach() + w


def ternary_threshold(w: torch.Tensor) -> torch.Tensor:
    """TWN's threshold: 0.7 * mean |w| per output channel."""
    return 0.7 * _per_channel_mean(w.abs())


def ternarize(w: torch.Tensor) -> torch.Tensor:
    """alpha * {-1, 0, +1} with TWN's threshold and alpha = mean of |w| above it."""
    delta = ternary_threshold(w).detach()
    keep = (w.abs() > delta).to(w.dtype)
    kept = (w.abs() * keep).reshape(w.shape[0], -1).sum(1)
    count = keep.reshape(w.shape[0], -1).sum(1).clamp_min(1)
    alpha = (kept / count).reshape(-1, *([1] * (w.dim() - 1))).detach()
    q = torch.sign(w) * keep * alpha
    return (q - w).detach() + w
