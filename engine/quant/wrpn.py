"""WRPN's quantizer (Mishra et al., ICLR 2018): fixed uniform grids, no learned scale.

Weights are clipped to [-1, 1] and use k-1 magnitude bits plus a sign; activations are
clipped to [0, 1] and use k bits. Pretrained weights are far smaller than 1, so bitscape
divides each tensor by a fixed scale (its pretrained max magnitude) before clipping.
"""
from __future__ import annotations

import torch

from engine.quant.spec import QuantSpec
from engine.quant.ste import round_ste, sign_ste


def quantize_weight(w: torch.Tensor, bits: int, scale: torch.Tensor) -> torch.Tensor:
    x = (w / scale).clamp(-1, 1)
    if bits == 1:
        return sign_ste(x) * scale
    n = weight_levels(bits)
    return round_ste(x * n) / n * scale


def quantize_activation(a: torch.Tensor, bits: int, scale: torch.Tensor, signed: bool) -> torch.Tensor:
    lo = -1.0 if signed else 0.0
    x = (a / scale).clamp(lo, 1)
    n = act_levels(bits, signed)
    return round_ste(x * n) / n * scale


def weight_levels(bits: int) -> int:
    """n: weight codes run -n..n (1 bit: sign, codes -1..1 with sign(0) = 0)."""
    return 1 if bits == 1 else 2 ** (bits - 1) - 1


def act_levels(bits: int, signed: bool) -> int:
    """n: activation codes run 0..n (signed: -n..n)."""
    return 2 ** (bits - 1) - 1 if signed and bits > 1 else 2 ** bits - 1


@torch.no_grad()
def weight_spec(w: torch.Tensor, bits: int, scale: torch.Tensor) -> QuantSpec:
    """Codes of ``quantize_weight``: value = codes / n * scale (1 bit: sign(x) * scale, x = w / scale clipped)."""
    s = scale.detach().float().reshape(-1)[0]
    x = (w.detach() / s).clamp(-1, 1)
    n = weight_levels(bits)
    codes = torch.sign(x) if bits == 1 else torch.round(x * n)
    return QuantSpec("wrpn", bits, True, -n, n, s, divisor=n if bits > 1 else 1, codes=codes.to(torch.int64))


@torch.no_grad()
def act_spec(bits: int, scale: torch.Tensor, signed: bool, a: torch.Tensor | None = None) -> QuantSpec:
    """Codes of ``quantize_activation``: value = codes / n * scale, codes 0..n (signed -n..n)."""
    s = scale.detach().float().reshape(-1)[0]
    n = act_levels(bits, signed)
    lo = -1.0 if signed else 0.0
    codes = None if a is None else torch.round((a.detach() / s).clamp(lo, 1) * n).to(torch.int64)
    return QuantSpec("wrpn", bits, signed, -n if signed else 0, n, s, divisor=n, codes=codes)
