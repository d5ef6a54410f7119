"""Dual-precision quantizers: one set of weights, a high and a low mode, one learned step per mode.

``set_mode(model, "high" | "low")`` switches every dual quantizer (and per-mode batch-norm
statistics, if stored). ``DualWeightQuantizer.spec`` says what each mode computes; nested low-mode
codes are the top bit-planes of the high-mode codes (see ``engine.training.methods.dual``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from engine.errors import UserError
from engine.quant import lsq
from engine.quant.modules import ActQuantizer, WeightQuantizer
from engine.quant.spec import QuantSpec
from engine.quant.ste import grad_scale, round_ste

MODES = ("high", "low")
LOW_WEIGHTS = ("nested", "independent")


def _floor_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.floor() - x).detach() + x


class _DualMixin:
    """Per-mode bits and step sizes; ``.bits`` and ``.step`` always show the current mode's."""

    def _init_dual(self, step: nn.Parameter, high_bits: int, low_bits: int) -> None:
        self.dual_bits = {"high": int(high_bits), "low": int(low_bits)}
        low = nn.Parameter(step.detach().clone(), requires_grad=step.requires_grad)
        self.dual_steps = nn.ParameterDict({"high": step, "low": low})
        self.mode = "high"

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.bits = self.dual_bits[mode]
        self._parameters["step"] = self.dual_steps[mode]


class DualWeightQuantizer(_DualMixin, WeightQuantizer):
    """A WeightQuantizer with a high and a low mode (LSQ only)."""

    def __init__(self, base: WeightQuantizer, low_bits: int, low_weights: str = "nested", midpoint: bool = True,
                 couple: bool = True):
        WeightQuantizer.__init__(self, base.bits, base.method, base.per_channel, base.step.numel())
        with torch.no_grad():
            self.step.copy_(base.step)
        self.low_weights, self.midpoint, self.couple = low_weights, bool(midpoint), bool(couple)
        self._init_dual(self.step, base.bits, low_bits)

    @property
    def nested(self) -> bool:
        return (self.low_weights == "nested" and self.active and self.dual_bits["low"] < self.dual_bits["high"])

    @property
    def shift(self) -> int:
        """How many low bit-planes of the high-mode codes the low mode drops."""
        return self.dual_bits["high"] - self.dual_bits["low"]

    def high_codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer high-mode codes (no gradient): what one packed model stores."""
        q_n, q_p = lsq.levels(self.dual_bits["high"], signed=True)
        s = self._mode_step("high", w).detach()
        return (w.detach() / s).clamp(-q_n, q_p).round()

    def _mode_step(self, mode: str, w: torch.Tensor) -> torch.Tensor:
        s = self.dual_steps[mode].abs().clamp_min(1e-8)
        return s.reshape(-1, *([1] * (w.dim() - 1))) if s.numel() > 1 else s

    def low_codes(self, w: torch.Tensor) -> torch.Tensor:
        """Nested low-mode codes floor(c_high / 2^shift) (+ 1/2 with ``midpoint``), with STE."""
        hb = self.dual_bits["high"]
        q_n, q_p = lsq.levels(hb, signed=True)
        per = w.numel() // self.step.numel()
        s_h = grad_scale(self._mode_step("high", w), lsq.grad_scale_factor(per, max(q_p, 1)))
        c = round_ste((w / (s_h if self.couple else s_h.detach())).clamp(-q_n, q_p))
        t = c / float(2 ** self.shift)
        cl = _floor_ste(t)
        return cl + 0.5 if self.midpoint else cl

    def fit_low_step(self, w: torch.Tensor) -> None:
        """Low-mode step: least squares fit of the nested codes to the weights; MSE search otherwise."""
        with torch.no_grad():
            if self.nested:
                cl = self.low_codes(w.detach())
                if self.per_channel and self.step.numel() > 1:
                    r, c = w.reshape(w.shape[0], -1), cl.reshape(w.shape[0], -1)
                    s = (r * c).sum(1) / (c * c).sum(1).clamp_min(1e-12)
                else:
                    s = (w * cl).sum() / (cl * cl).sum().clamp_min(1e-12)
                self.dual_steps["low"].copy_(s.abs().clamp_min(1e-8).reshape(self.dual_steps["low"].shape))
            else:
                was = self.mode
                self.set_mode("low")
                self.calibrate(w)
                self.set_mode(was)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mode == "high" or not self.nested:
            return WeightQuantizer.forward(self, w)
        _, q_p = lsq.levels(self.dual_bits["low"], signed=True)
        per = w.numel() // self.step.numel()
        g = lsq.grad_scale_factor(per, max(q_p, 1))
        return self.low_codes(w) * grad_scale(self._mode_step("low", w), g)

    def spec(self, x: torch.Tensor | None = None, mode: str | None = None) -> QuantSpec | None:
        """The spec of weight ``x`` in ``mode`` (default: the current one). Nested low mode: codes
        ``floor(c_high / 2^shift)`` (the top planes of the high-mode codes) with zero point -1/2 under
        ``midpoint``, so ``dequantize`` gives ``(c_low + 1/2) * step`` as the forward does."""
        mode = self.mode if mode is None else mode
        if mode != self.mode:
            was = self.mode
            self.set_mode(mode)
            try:
                return self.spec(x)
            finally:
                self.set_mode(was)
        if mode == "high" or not self.nested:
            return WeightQuantizer.spec(self, x)
        if x is None:
            raise ValueError("a weight quantizer's spec needs the weight tensor (its codes and scale depend on it)")
        with torch.no_grad():
            q_n, q_p = lsq.levels(self.dual_bits["low"], signed=True)
            g = lsq.grad_scale_factor(x.numel() // self.step.numel(), max(q_p, 1))
            s = grad_scale(self._mode_step("low", x), g)
            codes = (self.low_codes(x) - (0.5 if self.midpoint else 0.0)).round().to(torch.int64)
        return QuantSpec("nested", self.dual_bits["low"], True, -q_n, q_p,
                         s.reshape(-1).float() if s.numel() > 1 else s.reshape(()).float(),
                         zero_point=-0.5 if self.midpoint else 0.0, codes=codes)


class DualActQuantizer(_DualMixin, ActQuantizer):
    """An ActQuantizer with a high and a low mode; signedness is shared (found at calibration)."""

    def __init__(self, base: ActQuantizer, low_bits: int):
        ActQuantizer.__init__(self, base.bits, base.method)
        self.load_state_dict(base.state_dict())
        self._init_dual(self.step, base.bits, low_bits)


def dual_quantizers(model: nn.Module) -> list[_DualMixin]:
    return [m for m in model.modules() if isinstance(m, _DualMixin)]


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every dual quantizer (and per-mode batch-norm statistics, if stored) to ``mode``."""
    if mode not in MODES:
        raise UserError(f"mode must be 'high' or 'low', got {mode!r}")
    qs = dual_quantizers(model)
    if not qs:
        raise UserError("this model has no dual-precision quantizers (build it with make_dual)")
    for q in qs:
        q.set_mode(mode)
    for bn in model.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and hasattr(bn, f"dual_mean_{mode}"):
            bn.running_mean.copy_(getattr(bn, f"dual_mean_{mode}"))
            bn.running_var.copy_(getattr(bn, f"dual_var_{mode}"))
    return model


def get_mode(model: nn.Module) -> str:
    qs = dual_quantizers(model)
    if not qs:
        raise UserError("this model has no dual-precision quantizers")
    return qs[0].mode
