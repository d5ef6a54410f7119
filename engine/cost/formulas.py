"""Closed-form pieces of the cost model (costmodel.md sections 1.4, 1.11, 2.4, 2.5).

Small pure functions on plain numbers; the scalar and vectorised paths both build on them.
"""
from __future__ import annotations

import math

FLOAT = 32                       # the plan's bit-width for "not quantised"
E_MUL8_PJ = 0.2                  # Horowitz ISSCC'14, 45 nm: 8-bit integer multiply
E_ADD_BIT_PJ = 0.1 / 32          # Horowitz ISSCC'14, 45 nm: 32-bit add / 32


def bitfusion_perf_factor(a_bits: int, w_bits: int, pmax: int = 8, pmin: int = 2) -> float:
    """Bit Fusion rate multiplier over 8x8: floor(8/max(a,2)) * floor(8/max(w,2)) (hsharma35/bitfusion).

    Operands wider than ``pmax`` take temporal passes: 16x16 runs at a quarter of the 8x8 rate.
    """
    if a_bits > pmax or w_bits > pmax:
        return 1.0 / (math.ceil(a_bits / pmax) * math.ceil(w_bits / pmax))
    return float((pmax // max(a_bits, pmin)) * (pmax // max(w_bits, pmin)))


def round_up_to(bits: int, widths) -> int:
    """Smallest supported width >= bits (the widest one if none is wide enough)."""
    ws = sorted(widths)
    for w in ws:
        if w >= bits:
            return w
    return ws[-1]


def mac_energy_pj(w_bits: float, a_bits: float, k: int, scale: float = 1.0) -> float:
    """Two-term MAC energy: multiplier ~ w*a plus an accumulator/operand term ~ (w + a + log2 K).

    e = scale * [0.2 pJ * w*a/64 + 0.1/32 pJ * (w + a + ceil(log2 K))]  (costmodel.md 1.11).
    """
    return scale * (E_MUL8_PJ * w_bits * a_bits / 64.0
                    + E_ADD_BIT_PJ * (w_bits + a_bits + math.ceil(math.log2(max(k, 1)))))


def nm_bits_per_weight(w_bits: float, n: int, m: int) -> float:
    """Stored bits per dense weight under N:M: n/m kept values, each with a log2(m)-bit index."""
    return n / m * (w_bits + math.ceil(math.log2(m)))


def bitmap_bits_per_weight(w_bits: float, density: float) -> float:
    """Stored bits per dense weight with a 1-bit occupancy map plus the kept values."""
    return 1.0 + density * w_bits


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def k_tiles(cin_g: int, kh: int, kw: int, tile_k: int, mode: str) -> int:
    """Reduction tiles of one output: 'reduction' tiles K = kh*kw*cin; 'cin' tiles the input channels
    per kernel position (Bit Fusion), or the whole reduction at once (im2col) when that needs fewer."""
    if mode == "cin":
        return min(kh * kw * ceil_div(cin_g, tile_k), ceil_div(kh * kw * cin_g, tile_k))
    return ceil_div(kh * kw * cin_g, tile_k)
