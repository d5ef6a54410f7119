"""Fake-quantized layers: the original weights, a fixed sparsity mask, weight and activation
quantizers. They keep the original layer's name so plans and checkpoints line up.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.plans.plan import LayerConfig
from engine.plans.sparsity import mask_for
from engine.quant.modules import ActQuantizer, WeightQuantizer


class _QuantMixin:
    config: LayerConfig

    def _init_quant(self, cfg: LayerConfig, weight: torch.Tensor):
        self.config = cfg
        self.wq = WeightQuantizer(cfg.w_bits, cfg.quantizer, cfg.per_channel, weight.shape[0])
        self.aq = ActQuantizer(cfg.a_bits, cfg.quantizer)
        m = mask_for(weight.detach(), cfg.sparsity, cfg.sparsity_fraction)
        self.register_buffer("mask", m.to(weight.dtype) if m is not None else None)

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask if self.mask is not None else self.weight

    def quant_weight(self) -> torch.Tensor:
        return self.wq(self.masked_weight())


class QuantLinear(nn.Linear, _QuantMixin):
    @classmethod
    def from_float(cls, mod: nn.Linear, cfg: LayerConfig) -> "QuantLinear":
        q = cls(mod.in_features, mod.out_features, bias=mod.bias is not None)
        q.load_state_dict(mod.state_dict())
        q._init_quant(cfg, q.weight)
        q.wq.calibrate(q.masked_weight())
        return q

    def forward(self, x):
        return F.linear(self.aq(x), self.quant_weight(), self.bias)


class QuantConv2d(nn.Conv2d, _QuantMixin):
    @classmethod
    def from_float(cls, mod: nn.Conv2d, cfg: LayerConfig) -> "QuantConv2d":
        q = cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                mod.groups, mod.bias is not None, mod.padding_mode)
        q.load_state_dict(mod.state_dict())
        q._init_quant(cfg, q.weight)
        q.wq.calibrate(q.masked_weight())
        return q

    def forward(self, x):
        return self._conv_forward(self.aq(x), self.quant_weight(), self.bias)


class QuantRecurrent(nn.Module):
    """A single-layer batch-first recurrent layer with quantized input and recurrent weights, and
    quantized inputs and hidden states entering the gate matmuls (unrolled in Python)."""

    gates = 4

    def __init__(self, input_size: int, hidden_size: int, cfg: LayerConfig, bias: bool = True):
        super().__init__()
        n = self.gates * hidden_size
        self.input_size, self.hidden_size, self.config = input_size, hidden_size, cfg
        self.weight_ih = nn.Parameter(torch.empty(n, input_size))
        self.weight_hh = nn.Parameter(torch.empty(n, hidden_size))
        self.bias_ih = nn.Parameter(torch.zeros(n)) if bias else None
        self.bias_hh = nn.Parameter(torch.zeros(n)) if bias else None
        self.wq_ih = WeightQuantizer(cfg.w_bits, cfg.quantizer, cfg.per_channel, n)
        self.wq_hh = WeightQuantizer(cfg.w_bits, cfg.quantizer, cfg.per_channel, n)
        self.aq = ActQuantizer(cfg.a_bits, cfg.quantizer)
        self.aq_h = ActQuantizer(cfg.a_bits, cfg.quantizer)
        self.register_buffer("mask_ih", None)
        self.register_buffer("mask_hh", None)

    @classmethod
    def from_float(cls, mod: nn.Module, cfg: LayerConfig):
        q = cls(mod.input_size, mod.hidden_size, cfg, bias=mod.bias)
        with torch.no_grad():
            q.weight_ih.copy_(mod.weight_ih_l0)
            q.weight_hh.copy_(mod.weight_hh_l0)
            if mod.bias:
                q.bias_ih.copy_(mod.bias_ih_l0)
                q.bias_hh.copy_(mod.bias_hh_l0)
        m_ih = mask_for(q.weight_ih.detach(), cfg.sparsity, cfg.sparsity_fraction)
        m_hh = mask_for(q.weight_hh.detach(), cfg.sparsity, cfg.sparsity_fraction)
        q.mask_ih = m_ih.float() if m_ih is not None else None
        q.mask_hh = m_hh.float() if m_hh is not None else None
        q.wq_ih.calibrate(q.masked("ih"))
        q.wq_hh.calibrate(q.masked("hh"))
        return q

    def masked(self, which: str) -> torch.Tensor:
        w, m = (self.weight_ih, self.mask_ih) if which == "ih" else (self.weight_hh, self.mask_hh)
        return w * m if m is not None else w


class QuantLSTM(QuantRecurrent):
    gates = 4

    def forward(self, x, state=None):
        b, t, _ = x.shape
        w_ih, w_hh = self.wq_ih(self.masked("ih")), self.wq_hh(self.masked("hh"))
        bias = (self.bias_ih + self.bias_hh) if self.bias_ih is not None else None
        xs = F.linear(self.aq(x), w_ih, bias)  # all time steps at once
        h = x.new_zeros(b, self.hidden_size) if state is None else state[0][0]
        c = x.new_zeros(b, self.hidden_size) if state is None else state[1][0]
        outs = []
        for step in range(t):
            gates = xs[:, step] + F.linear(self.aq_h(h), w_hh)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, 1), (h.unsqueeze(0), c.unsqueeze(0))


class QuantGRU(QuantRecurrent):
    gates = 3

    def forward(self, x, state=None):
        b, t, _ = x.shape
        w_ih, w_hh = self.wq_ih(self.masked("ih")), self.wq_hh(self.masked("hh"))
        xs = F.linear(self.aq(x), w_ih, self.bias_ih)
        h = x.new_zeros(b, self.hidden_size) if state is None else state[0]
        outs = []
        for step in range(t):
            gh = F.linear(self.aq_h(h), w_hh, self.bias_hh)
            xr, xz, xn = xs[:, step].chunk(3, dim=1)
            hr, hz, hn = gh.chunk(3, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            outs.append(h)
        return torch.stack(outs, 1), h.unsqueeze(0)


QUANT_LAYERS = (QuantLinear, QuantConv2d, QuantLSTM, QuantGRU)


def weight_quantizers(mod: nn.Module):
    return [mod.wq_ih, mod.wq_hh] if isinstance(mod, QuantRecurrent) else [mod.wq]


def act_quantizers(mod: nn.Module):
    return [mod.aq, mod.aq_h] if isinstance(mod, QuantRecurrent) else [mod.aq]
