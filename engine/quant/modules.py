"""nn.Module faces of the quantizers: they hold the learned (or fixed) scales as state."""
from __future__ import annotations

import torch
import torch.nn as nn

from engine.quant import binary, lsq, wrpn
from engine.quant.spec import QuantSpec, Uncalibrated

FLOAT = 32


class WeightQuantizer(nn.Module):
    """Quantize-dequantize a weight tensor per the layer config (identity at 32 bits)."""

    def __init__(self, bits: int, method: str = "lsq", per_channel: bool = False, channels: int = 1):
        super().__init__()
        self.bits, self.method, self.per_channel = bits, method, per_channel
        n = channels if (per_channel and method == "lsq") else 1
        self.step = nn.Parameter(torch.ones(n), requires_grad=(method == "lsq" and bits != FLOAT))

    @property
    def active(self) -> bool:
        return self.bits != FLOAT

    def levels(self) -> tuple[int, int]:
        return lsq.levels(self.bits, signed=True)

    def calibrate(self, w: torch.Tensor, init: str = "mse") -> None:
        """Set the step (or WRPN scale) from the weights: ``mse`` search or LSQ's paper init."""
        if not self.active or self.method in ("binary", "ternary"):
            return
        with torch.no_grad():
            if self.method == "wrpn":
                self.step.fill_(float(w.abs().max().clamp_min(1e-8)))
                return
            q_n, q_p = self.levels()
            binary_codes = self.bits == 1
            if self.step.numel() > 1:
                rows = w.reshape(w.shape[0], -1)
                if init == "lsq":
                    self.step.copy_(lsq.init_step(rows, max(q_p, 1), dim=0))
                else:
                    self.step.copy_(torch.stack([lsq.mse_step(r, q_n, q_p, binary_codes) for r in rows]))
            elif init == "lsq":
                self.step.fill_(float(lsq.init_step(w, max(q_p, 1))))
            else:
                self.step.fill_(float(lsq.mse_step(w, q_n, q_p, binary_codes)))

    def _step(self, w: torch.Tensor) -> torch.Tensor:
        s = self.step.abs().clamp_min(1e-8)
        return s.reshape(-1, *([1] * (w.dim() - 1))) if s.numel() > 1 else s

    def _g(self, w: torch.Tensor) -> float:
        per = w.numel() // self.step.numel()
        return lsq.grad_scale_factor(per, max(self.levels()[1], 1))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return w
        if self.method == "binary":
            return binary.binarize(w)
        if self.method == "ternary":
            return binary.ternarize(w)
        if self.method == "wrpn":
            return wrpn.quantize_weight(w, self.bits, self.step.detach())
        q_n, q_p = self.levels()
        return lsq.fake_quant(w, self._step(w), q_n, q_p, self._g(w), binary=self.bits == 1)

    def spec(self, x: torch.Tensor | None = None) -> QuantSpec | None:
        """The codes of weight ``x`` and their scale, range and signedness; None at 32 bits.

        ``spec(w).dequantize()`` equals ``self(w)`` bit for bit for LSQ (2+ bits) and WRPN (2+ bits);
        for the sign-based kinds (binary, ternary, 1-bit) the forward adds a straight-through
        ``(q - x) + x`` whose value is ``q`` to within one float rounding.
        """
        if not self.active:
            return None
        if x is None:
            raise ValueError("a weight quantizer's spec needs the weight tensor (its codes and scale depend on it)")
        if self.method in ("binary", "ternary"):
            return binary.spec(x, self.method, self.bits)
        if self.method == "wrpn":
            return wrpn.weight_spec(x, self.bits, self.step)
        q_n, q_p = self.levels()
        return lsq.spec(self._step(x), q_n, q_p, self._g(x), self.bits, True, binary=self.bits == 1, v=x)


class ActQuantizer(nn.Module):
    """Quantize-dequantize the activation entering a layer: LSQ (default) or WRPN's fixed grid.

    Signedness is decided at calibration: unsigned when the calibration inputs are all >= 0
    (after ReLU), signed otherwise (e.g. normalised images, LSTM hidden states).
    """

    def __init__(self, bits: int, method: str = "lsq"):
        super().__init__()
        self.bits, self.method = bits, ("wrpn" if method == "wrpn" else "lsq")
        self.step = nn.Parameter(torch.ones(1), requires_grad=(self.method == "lsq" and bits != FLOAT))
        self.register_buffer("signed", torch.tensor(False))
        self.register_buffer("ready", torch.tensor(False))
        self._observed: list[torch.Tensor] | None = None

    @property
    def active(self) -> bool:
        return self.bits != FLOAT

    def levels(self) -> tuple[int, int]:
        return lsq.levels(self.bits, signed=bool(self.signed))

    def observe(self, on: bool) -> None:
        """While observing, inputs pass through unquantized and a sample is kept."""
        self._observed = [] if on else None

    def finish_calibration(self, init: str = "mse") -> None:
        if not self.active or not self._observed:
            self._observed = None
            return
        x = torch.cat([t.flatten() for t in self._observed])
        self._observed = None
        self._calibrate(x, init)

    def _calibrate(self, x: torch.Tensor, init: str) -> None:
        with torch.no_grad():
            self.signed.fill_(bool((x < 0).any()))
            if self.method == "wrpn":
                self.step.fill_(float(x.abs().max().clamp_min(1e-8)))
            else:
                q_n, q_p = self.levels()
                if init == "lsq":
                    self.step.fill_(float(lsq.init_step(x, max(q_p, 1))))
                else:
                    self.step.fill_(float(lsq.mse_step(x, q_n, q_p, binary=self.bits == 1 and bool(self.signed))))
            self.ready.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        if self._observed is not None:
            flat = x.detach().flatten()
            if flat.numel() > 16384:
                # a seeded sample with replacement: randperm of millions of elements cost more than the pass
                flat = flat[torch.randint(flat.numel(), (16384,), generator=torch.Generator().manual_seed(0))]
            self._observed.append(flat)
            return x
        if not bool(self.ready):
            self._calibrate(x.detach().flatten(), "lsq")
        if self.method == "wrpn":
            return wrpn.quantize_activation(x, self.bits, self.step.detach(), bool(self.signed))
        q_n, q_p = self.levels()
        g = lsq.grad_scale_factor(_per_sample(x), max(q_p, 1))
        return lsq.fake_quant(x, self.step.abs().clamp_min(1e-8), q_n, q_p, g,
                              binary=self.bits == 1 and bool(self.signed))

    def spec(self, x: torch.Tensor | None = None, per_sample: int | None = None) -> QuantSpec | None:
        """Codes, scale, range and signedness of this quantizer on batches of ``per_sample``
        elements per example (LSQ's gradient scale, hence the step's last bit, depends on it);
        with ``x`` (a batch) also its codes, and ``per_sample`` taken from it. None at 32 bits.

        Raises ``Uncalibrated`` if no calibration batch ever set the step.
        """
        if not self.active:
            return None
        if not bool(self.ready):
            raise Uncalibrated("its activation quantizer was never calibrated")
        signed = bool(self.signed)
        if self.method == "wrpn":
            return wrpn.act_spec(self.bits, self.step, signed, x)
        if x is not None:
            per_sample = _per_sample(x)
        if per_sample is None:
            raise ValueError("an LSQ activation spec needs x or per_sample (its step depends on the sample size)")
        q_n, q_p = self.levels()
        g = lsq.grad_scale_factor(per_sample, max(q_p, 1))
        return lsq.spec(self.step.detach().abs().clamp_min(1e-8), q_n, q_p, g, self.bits, signed,
                        binary=self.bits == 1 and signed, v=x)


def _per_sample(x: torch.Tensor) -> int:
    """Elements per example of a batch (LSQ's N for activations)."""
    return x[0].numel() if x.dim() > 1 else x.numel()
