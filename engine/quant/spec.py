"""What a quantizer computes, as data: the one place deploy, ONNX export and dual precision read.

A ``QuantSpec`` says which integer codes a quantizer uses and how they map back to reals:
``value = (codes - zero_point) / divisor * step``. ``divisor`` is 1 except for WRPN, whose
forward divides by its level count before multiplying by the clip scale; keeping that order
lets ``dequantize`` reproduce the fake-quant forward bit for bit. ``scale`` (``step / divisor``)
is the real value of one code step, per tensor (shape ()) or per output channel (shape (C,)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


class Uncalibrated(ValueError):
    """The quantizer has no scale yet (an activation quantizer that never saw a calibration batch)."""


@dataclass(frozen=True)
class QuantSpec:
    """Codes, scale, range and signedness of one quantizer (for weights: of one weight tensor)."""

    method: str                      # "lsq" | "wrpn" | "binary" | "ternary" | "nested" (dual low mode)
    bits: int                        # the plan's bit-width
    signed: bool                     # signed codes (weights; activations seen below zero at calibration)
    qmin: int                        # smallest code
    qmax: int                        # largest code
    step: torch.Tensor               # float32, shape () or (C,): what codes / divisor are multiplied by
    divisor: int = 1                 # WRPN's level count (codes / divisor * step), else 1
    zero_point: float = 0.0          # the code of real zero (-0.5: dual's midpoint reconstruction)
    binary: bool = False             # codes are {-1, +1} only: sign(0) is +1, code 0 is never used
    codes: torch.Tensor | None = None  # integer codes (int64) of the tensor the spec was taken on

    @property
    def per_channel(self) -> bool:
        return self.step.dim() == 1

    @property
    def scale(self) -> torch.Tensor:
        """The real value of one code step (float32, shape () or (C,))."""
        return self.step / self.divisor if self.divisor != 1 else self.step

    def broadcast(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """``t`` (shape () or (C,)) shaped to broadcast over a tensor of ``ndim`` dims, channels on axis 0."""
        return t.reshape(-1, *([1] * (ndim - 1))) if t.dim() == 1 and ndim > 1 else t

    def dequantize(self, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Real values of ``codes`` (default: the spec's own) with the forward's own float32 operations."""
        c = self.codes if codes is None else codes
        if c is None:
            raise ValueError("this spec carries no codes; pass some")
        c = c.to(torch.float32)
        if self.zero_point:
            c = c - self.zero_point
        if self.divisor != 1:
            c = c / self.divisor
        return c * self.broadcast(self.step, c.dim())
