"""WRPN widening initialised from the pretrained network (Net2Net-style function preservation).

A channel space of c channels widened by k gets c' = round(c * k) channels. New channel j
replicates old channel j mod c in every producer (and its batch norms); every consumer
splits the replicated channel's outgoing weights between the copies with random
proportions that sum to one. The widened network computes the same function as before,
and the uneven split breaks the symmetry between copies so fine-tuning can move them apart.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from engine.plans.graph import Topology, widened


def replica_map(size: int, new_size: int) -> torch.Tensor:
    """For each new channel, the old channel it copies."""
    return torch.arange(new_size) % size


def split_ratios(mapping: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Per new channel, its share of the old channel's outgoing weights (shares sum to 1)."""
    w = 0.5 + torch.rand(mapping.numel(), generator=generator)
    total = torch.zeros(size).index_add_(0, mapping, w)
    return w / total[mapping]


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))
    else:
        setattr(module, name, value.contiguous())


def _widen_out(mod: nn.Module, g: torch.Tensor) -> None:
    if isinstance(mod, (nn.LSTM, nn.GRU)):
        h, h2 = mod.hidden_size, g.numel()
        gates = 4 if isinstance(mod, nn.LSTM) else 3
        rows = torch.cat([k * h + g for k in range(gates)])
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            if hasattr(mod, name) and getattr(mod, name) is not None:
                _set(mod, name, getattr(mod, name).data[rows])
        mod.hidden_size = h2
        return
    _set(mod, "weight", mod.weight.data[g])
    if getattr(mod, "bias", None) is not None:
        _set(mod, "bias", mod.bias.data[g])
    if isinstance(mod, nn.Conv2d):
        mod.out_channels = g.numel()
    else:
        mod.out_features = g.numel()


def _widen_norm(bn: nn.Module, g: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(bn, name, None)
        if t is not None:
            _set(bn, name, t.data[g])
    bn.num_features = g.numel()


def _widen_in(mod: nn.Module, g: torch.Tensor, r: torch.Tensor, repeat: int, recurrent: bool = False) -> None:
    if isinstance(mod, (nn.LSTM, nn.GRU)):
        name = "weight_hh_l0" if recurrent else "weight_ih_l0"
        w = getattr(mod, name).data
        _set(mod, name, w[:, g] * r[None, :])
        if not recurrent:
            mod.input_size = g.numel()
        return
    w = mod.weight.data
    if isinstance(mod, nn.Conv2d):
        _set(mod, "weight", w[:, g] * r[None, :, None, None])
        mod.in_channels = g.numel()
        return
    cols = (g[:, None] * repeat + torch.arange(repeat)[None, :]).flatten()
    scale = r.repeat_interleave(repeat)
    _set(mod, "weight", w[:, cols] * scale[None, :])
    mod.in_features = g.numel() * repeat


def widen_model(model: nn.Module, topo: Topology, factors: dict[int, float], seed: int = 0) -> nn.Module:
    """A widened copy of ``model`` that computes the same function (up to float rounding)."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    mods = dict(model.named_modules())
    for sid, sp in topo.spaces.items():
        k = factors.get(sid, 1.0)
        new = widened(sp.size, k)
        if new == sp.size:
            continue
        g = replica_map(sp.size, new)
        r = split_ratios(g, sp.size, gen)
        for p in sp.producers:
            _widen_out(mods[p], g)
        for n in sp.norms:
            _widen_norm(mods[n], g)
        for c, repeat in sp.consumers:
            mod = mods[c]
            recurrent = isinstance(mod, (nn.LSTM, nn.GRU)) and c in sp.producers
            _widen_in(mod, g, r, repeat, recurrent=recurrent)
    return model
