"""One packed model serving both modes of a dual network: the float-activation bit-plane kernel
reads all planes of the high-mode codes (high mode) or only the top ``b_low`` (nested low mode).
Codes and scales come from ``DualWeightQuantizer.spec`` only."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

from engine.errors import UserError
from engine.plans.apply import quant_layers
from engine.plans.layers import QuantConv2d, QuantLinear, QuantRecurrent
from engine.training.methods.dual_quant import MODES, DualWeightQuantizer, get_mode, set_mode


class _PlanesGemm(nn.Module):
    """A dual Linear / Conv2d run through the float-activation bit-plane kernel.

    The high-mode weight codes are packed once (``layout="float"``); the mode picks how many
    top planes the kernel reads. Activations are fake-quantized in torch at the mode's
    precision and handed to the kernel as floats (exact: they are multiples of the step).
    """

    def __init__(self, name: str, mod: nn.Module):
        super().__init__()
        from engine import kernels as K
        wq = mod.wq
        if not isinstance(wq, DualWeightQuantizer) or not wq.active:
            raise UserError(f"layer {name!r}: not a dual layer with quantized weights")
        if wq.low_weights != "nested" and wq.dual_bits["low"] != wq.dual_bits["high"]:
            raise UserError(f"layer {name!r}: 'independent' low-mode weights are not the top planes of the "
                            "high-mode codes; one packed model cannot serve both modes")
        self.name, self.wq, self.aq = name, wq, mod.aq
        w = mod.masked_weight().detach()
        codes = wq.spec(w, mode="high").codes.reshape(w.shape[0], -1)
        self.conv = None
        if isinstance(mod, nn.Conv2d):
            if mod.groups != 1 or tuple(mod.dilation) != (1, 1) or isinstance(mod.padding, str) \
                    or mod.padding_mode != "zeros":
                raise UserError(f"layer {name!r}: only plain zero-padded convolutions run on the planes path")
            self.conv = (tuple(mod.kernel_size), tuple(mod.stride), tuple(mod.padding))
        self.bits = wq.dual_bits["high"]
        self.packed = K.pack_weights(codes.contiguous().numpy(), self.bits, True, "float")
        self.bias = None if mod.bias is None else mod.bias.detach().float().numpy().copy()
        self.n = w.shape[0]
        self._scales = {mode: self._mode_scale(wq.spec(w, mode=mode), mode) for mode in MODES}

    def _mode_scale(self, q, mode: str) -> tuple[np.ndarray, int, float]:
        """(per-row scale of the kernel's high-code-unit sums, planes read, code offset) of one mode."""
        s = q.scale.float()
        s = s.expand(self.n) if s.dim() == 0 else s
        if mode == "high" or not self.wq.nested:
            return s.numpy().astype(np.float32), self.bits, 0.0
        d = 2 ** self.wq.shift
        return (s / d).numpy().astype(np.float32), q.bits, -q.zero_point

    def _scale(self, mode: str) -> tuple[np.ndarray, int, float]:
        return self._scales[mode]

    def gemm(self, x2d: np.ndarray, mode: str) -> np.ndarray:
        from engine import kernels as K
        scale, planes, off = self._scale(mode)
        acc = K.gemm_float_act(self.packed, np.ascontiguousarray(x2d, dtype=np.float32), planes=planes)
        if off:  # midpoint: every low code carries +1/2, i.e. + 2^shift/2 in high-code units
            acc = acc + (off * 2 ** self.wq.shift) * x2d.sum(axis=1, dtype=np.float32)[:, None]
        y = acc * scale
        return y + self.bias if self.bias is not None else y

    def forward(self, x):
        from engine import kernels as K
        mode = self.wq.mode
        xq = self.aq(x).detach().float().numpy()
        if self.conv is None:
            lead = xq.shape[:-1]
            y = self.gemm(xq.reshape(-1, xq.shape[-1]), mode)
            return torch.from_numpy(np.ascontiguousarray(y.reshape(*lead, self.n)))
        k, st, pad = self.conv
        cols, ho, wo = K.im2col(np.ascontiguousarray(xq), k, st, pad)
        y = self.gemm(cols, mode).reshape(xq.shape[0], ho, wo, self.n).transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(y))


def planes_model(model: nn.Module) -> nn.Module:
    """A copy of a dual model whose quantized Linear/Conv2d layers run the packed bit-plane kernel.

    One set of packed high-mode codes per layer; ``set_mode(copy, "low")`` makes the kernel read
    only the top ``b_low`` planes (``gemm_float_act(w, x, planes=b_low)``), rescaled by the low
    mode's step (plus the midpoint term). Non-GEMM ops stay in torch. QuantLSTM layers and
    'independent' low-mode weights are refused (UserError naming the layer).
    """
    net = copy.deepcopy(model).eval()
    for name, mod in quant_layers(net):
        if isinstance(mod, QuantRecurrent):
            raise UserError(f"layer {name!r}: recurrent layers are not run on the planes path")
        if isinstance(mod, (QuantLinear, QuantConv2d)) and mod.wq.active:
            net.set_submodule(name, _PlanesGemm(name, mod))
    return net


@torch.no_grad()
def planes_agreement(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                     batch_size: int = 512) -> dict[str, dict]:
    """Per mode: the fake-quant model vs the one-packed-model kernels on inputs ``x``.

    Returns max |logit difference|, the fraction of equal top-1 predictions and (with labels)
    both accuracies.
    """
    net = planes_model(model)
    was = get_mode(model)
    out = {}
    model.eval()
    for mode in MODES:
        set_mode(model, mode)
        set_mode(net, mode)
        ref = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        got = torch.cat([net(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        d = {"max_abs_diff": float((ref - got).abs().max()),
             "top1_agreement": float((ref.argmax(1) == got.argmax(1)).float().mean())}
        if y is not None:
            d["fake_quant_accuracy"] = float((ref.argmax(1) == y).float().mean())
            d["packed_accuracy"] = float((got.argmax(1) == y).float().mean())
        out[mode] = d
    set_mode(model, was)
    return out
