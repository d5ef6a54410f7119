"""LSQ: learned step size quantization (Esser et al., ICLR 2020), as pure functions.

q(v) = round(clip(v / s, -Q_N, Q_P)) * s, with the step s learned through a straight-through
estimator and its gradient scaled by g = 1 / sqrt(N * Q_P).
"""
from __future__ import annotations

import math

import torch

from engine.quant.spec import QuantSpec
from engine.quant.ste import grad_scale, round_ste


def levels(bits: int, signed: bool) -> tuple[int, int]:
    """(Q_N, Q_P): the integer codes run from -Q_N to Q_P.

    Signed b-bit codes are two's complement (-2^(b-1)..2^(b-1)-1); 1-bit signed codes are
    the binary pair {-1, +1}, represented here as -1..1 with 0 unused (see ``fake_quant``).
    Unsigned codes run 0..2^b-1.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits} is outside 1..8")
    if signed:
        if bits == 1:
            return 1, 1
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def init_step(v: torch.Tensor, q_p: int, dim: int | None = None) -> torch.Tensor:
    """LSQ's initial step 2 * mean(|v|) / sqrt(Q_P), per tensor or per slice along ``dim``."""
    a = v.detach().abs()
    if dim is None:
        m = a.mean()
    else:
        m = a.transpose(0, dim).reshape(a.shape[dim], -1).mean(1)
    return (2 * m / math.sqrt(q_p)).clamp_min(1e-8)


def grad_scale_factor(n: int, q_p: int) -> float:
    """g = 1 / sqrt(N * Q_P), N being the number of elements sharing one step."""
    return 1.0 / math.sqrt(max(n, 1) * q_p)


def fake_quant(v: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int, g: float,
               binary: bool = False) -> torch.Tensor:
    """Quantize-dequantize ``v`` on the grid step * {-Q_N..Q_P}; differentiable in v and step.

    ``step`` broadcasts against ``v`` (a scalar, or shaped for per-channel steps).
    With ``binary`` (1-bit signed) the codes are {-1, +1}: sign(v) * s.
    """
    s = grad_scale(step, g)
    if binary:
        x = (v / s).clamp(-1, 1)
        code = (torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x)) - x).detach() + x
        return code * s
    return round_ste((v / s).clamp(-q_n, q_p)) * s


def codes(v: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int, binary: bool = False) -> torch.Tensor:
    """The integer codes fake_quant uses (no gradient): what a deployment stores."""
    if binary:
        return torch.where(v >= 0, 1, -1).to(torch.int8)
    return (v / step).clamp(-q_n, q_p).round().to(torch.int32)


@torch.no_grad()
def spec(step: torch.Tensor, q_n: int, q_p: int, g: float, bits: int, signed: bool, binary: bool = False,
         v: torch.Tensor | None = None) -> QuantSpec:
    """What ``fake_quant(v, step, q_n, q_p, g, binary)`` computes: codes -Q_N..Q_P times the step
    as the forward sees it (after ``grad_scale``, whose value can differ from ``step`` in the last bit).

    ``step`` is a scalar or shaped to broadcast over ``v`` with channels on axis 0.
    """
    s = grad_scale(step.detach(), g)
    c = None if v is None else codes(v.detach(), s, q_n, q_p, binary).to(torch.int64)
    flat = s.reshape(-1).float() if s.numel() > 1 else s.reshape(()).float()
    return QuantSpec("lsq", bits, signed, -q_n, q_p, flat, binary=binary, codes=c)


def mse_step(v: torch.Tensor, q_n: int, q_p: int, binary: bool = False, grid: int = 48) -> torch.Tensor:
    """Per-tensor step minimising the quantization MSE over a grid around the LSQ init.

    Used to calibrate before any training (the no-training estimate) and to start fine-tuning.
    """
    x = v.detach().flatten().float()
    if x.numel() > 65536:
        idx = torch.linspace(0, x.numel() - 1, 65536).long()
        x = x[idx]
    base = init_step(x, max(q_p, 1))
    if binary:
        return x.abs().mean().clamp_min(1e-8)
    amax = x.abs().max().clamp_min(1e-8)
    hi = amax / max(q_p, 1)
    cands = torch.linspace(0.05, 1.0, grid) * hi
    cands = torch.cat([cands, base.reshape(1)])
    q = (x[None, :] / cands[:, None]).clamp(-q_n, q_p).round() * cands[:, None]
    err = ((q - x[None, :]) ** 2).mean(1)
    return cands[int(err.argmin())].clamp_min(1e-8)
