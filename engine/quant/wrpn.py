"""WRPN's quantizer (Mishra et al., ICLR 2018): fixed uniform grids, no learned scale.

Weights are clipped to [-1, 1] and use k-1 magnitude bits plus a sign; activations are
clipped to [0, 1] and use k bits. Pretrained weights are far smaller than 1, so bitscape
divides each tensor by a fixed scale (its pretrained max magnitude) before clipping.
"""
from __future__ import annotations

import torch

from .ste import round_ste, sign_ste


def quantize_weight(w: torch.Tensor, bits: int, scale: torch.Tensor) -> torch.Tensor:
    x = (w / scale).clamp(-1, 1)
    if bits == 1:
        return sign_ste(x) * scale
    n = 2 ** (bits - 1) - 1
    return round_ste(x * n) / n * scale


def quantize_activation(a: torch.Tensor, bits: int, scale: torch.Tensor, signed: bool) -> torch.Tensor:
    lo = -1.0 if signed else 0.0
    x = (a / scale).clamp(lo, 1)
    n = 2 ** (bits - 1) - 1 if signed and bits > 1 else 2 ** bits - 1
    return round_ste(x * n) / n * scale
