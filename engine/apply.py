"""The one verb: apply a plan to a pretrained network (widen, mask, fake-quantize)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn

from engine.plans.graph import Topology, analyze
from engine.plans.layers import QUANT_LAYERS, QuantConv2d, QuantGRU, QuantLinear, QuantLSTM, act_quantizers
from engine.plans.plan import LayerConfig, Plan
from engine.plans.widen import widen_model


@dataclass
class Applied:
    """A planned network and what was applied to it."""

    model: nn.Module
    configs: dict[str, LayerConfig]
    topology: Topology
    factors: dict[int, float]


def apply_plan(model: nn.Module, plan: Plan, input_shape: tuple[int, ...], seed: int = 0,
               topology: Topology | None = None) -> Applied:
    """Return a planned copy of ``model``; the original is untouched.

    Widening replicates channels so the copy computes the same function; then every layer
    the plan quantizes or sparsifies is replaced by its fake-quantized counterpart, with
    the sparsity mask computed once from the (widened) pretrained weights.
    """
    topo = topology or analyze(model, input_shape)
    configs = plan.resolve(topo.names)
    factors = topo.check(configs)
    net = widen_model(model, topo, factors, seed) if any(k != 1.0 for k in factors.values()) else copy.deepcopy(model)
    for name, cfg in configs.items():
        if cfg.is_float and cfg.sparsity == "none":
            continue
        mod = net.get_submodule(name)
        if isinstance(mod, nn.LSTM):
            q = QuantLSTM.from_float(mod, cfg)
        elif isinstance(mod, nn.GRU):
            q = QuantGRU.from_float(mod, cfg)
        elif isinstance(mod, nn.Conv2d):
            q = QuantConv2d.from_float(mod, cfg)
        else:
            q = QuantLinear.from_float(mod, cfg)
        net.set_submodule(name, q)
    return Applied(net, configs, topo, factors)


def quant_layers(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], init: str = "mse") -> None:
    """Set activation step sizes from sample inputs (weights were set when applied)."""
    aqs = [aq for _, m in quant_layers(model) for aq in act_quantizers(m) if aq.active]
    if not aqs:
        return
    was = model.training
    model.eval()
    for aq in aqs:
        aq.observe(True)
    try:
        for x in batches:
            model(x)
    finally:
        for aq in aqs:
            aq.finish_calibration(init)
        model.train(was)
