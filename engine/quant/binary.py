"""Binary (XNOR-Net style) and ternary (TWN) weight quantizers with straight-through gradients."""
from __future__ import annotations

import torch

from engine.quant.spec import QuantSpec


def _per_channel_mean(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(1).reshape(-1, *([1] * (x.dim() - 1)))


def _binary_parts(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes sign(w), alpha = mean |w| per output channel shaped to broadcast)."""
    return torch.sign(w), _per_channel_mean(w.abs()).detach()


def binarize(w: torch.Tensor) -> torch.Tensor:
    """sign(w) * alpha, alpha = mean |w| per output channel (zeros, e.g. pruned, stay zero)."""
    codes, alpha = _binary_parts(w)
    q = codes * alpha
    return (q - w).detach() + w


def ternary_threshold(w: torch.Tensor) -> torch.Tensor:
    """TWN's threshold: 0.7 * mean |w| per output channel."""
    return 0.7 * _per_channel_mean(w.abs())


def _ternary_parts(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes sign(w) * keep in {-1, 0, +1}, alpha = mean of the kept |w| shaped to broadcast)."""
    delta = ternary_threshold(w).detach()
    keep = (w.abs() > delta).to(w.dtype)
    kept = (w.abs() * keep).reshape(w.shape[0], -1).sum(1)
    count = keep.reshape(w.shape[0], -1).sum(1).clamp_min(1)
    alpha = (kept / count).reshape(-1, *([1] * (w.dim() - 1))).detach()
    return torch.sign(w) * keep, alpha


def ternarize(w: torch.Tensor) -> torch.Tensor:
    """alpha * {-1, 0, +1} with TWN's threshold and alpha = mean of |w| above it."""
    codes, alpha = _ternary_parts(w)
    q = codes * alpha
    return (q - w).detach() + w


@torch.no_grad()
def spec(w: torch.Tensor, method: str, bits: int) -> QuantSpec:
    """Codes {-1, 0, +1} and the per-output-channel alpha of ``binarize`` / ``ternarize``.

    The forward is the straight-through ``(q - w) + w`` of ``q = codes * alpha``, i.e. ``q`` to
    within one float rounding. A channel of zeros (alpha 0, codes 0) gets scale 1.
    """
    codes, alpha = (_binary_parts if method == "binary" else _ternary_parts)(w.detach())
    a = alpha.reshape(-1).float()
    a = torch.where(a > 0, a, torch.ones_like(a))
    return QuantSpec(method, bits, True, -1, 1, a, codes=codes.to(torch.int64))
