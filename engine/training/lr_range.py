"""A short learning-rate range test (Smith, 2017) to choose a fine-tune's learning rate.

On a copy of the network, Adam runs ``steps`` steps while every group's rate grows
geometrically by a common factor. A pretrained network starts near a minimum, so at small rates
the loss is flat and its lowest point is noise; the choice is instead a tenth of the factor at
which the smoothed loss first rose to 1.5 times its starting value (the edge of stability), or a
tenth of the highest factor tried when it never did. It applies to ``lr`` and ``lr_step`` alike
(their ratio is kept). The network itself is not changed.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from engine.evaluation import MAX_LR, Settings, rates
from engine.models.data import Dataset, batches

LOW, HIGH, STEPS = 1e-3, 1e2, 60   # factors of the configured rates, and the test's length
START, RISE = 5, 1.5               # the step whose smoothed loss is the reference, and the rise that ends the test


def lr_range_test(model: nn.Module, data: Dataset, s: Settings, loss_fn, groups_fn, steps: int = STEPS,
                  low: float = LOW, high: float = HIGH) -> dict:
    """{"lr", "lr_step", "factor", "range_steps"}: the rates chosen for ``s``'s recipe.

    ``loss_fn(model, xb, yb, step)`` is the fine-tune's loss, ``groups_fn(model)`` its optimiser groups.
    """
    from engine.training.finetune import _freeze_bn
    net = copy.deepcopy(model)
    net.train()
    _freeze_bn(net)
    groups = groups_fn(net)
    opt = torch.optim.Adam(groups)
    bases = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(s.seed)
    seen: list[tuple[float, float]] = []
    smooth, start, edge, i = None, None, None, 0
    while i < steps and edge is None:
        before = i
        for xb, yb in batches(data.x_train, data.y_train, s.batch_size, gen):
            if i >= steps:
                break
            factor = low * (high / low) ** (i / max(steps - 1, 1))
            for g, base in zip(opt.param_groups, bases):
                g["lr"] = base * factor
            loss = loss_fn(net, xb, yb, i)
            v = float(loss.detach())
            smooth = v if smooth is None else 0.8 * smooth + 0.2 * v
            if i == START:
                start = smooth
            seen.append((factor, smooth))
            if not math.isfinite(v) or (start is not None and smooth > RISE * start):
                edge = factor
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            i += 1
        if i == before:   # no training batch at all
            break
    factor = max(low, (edge if edge is not None else high) / 10)
    lr, lr_step = rates(s)
    factor = min(factor, MAX_LR / max(lr, lr_step))
    return {"lr": lr * factor, "lr_step": lr_step * factor, "factor": round(factor, 6),
            "range_steps": len(seen), "edge_factor": None if edge is None else round(edge, 6)}
