"""A training loop shared by the methods: the quick fine-tune's recipe (Adam, cosine-annealed
learning rate, batch norm frozen, seeded) with a per-step hook and a pluggable loss."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import Dataset, batches
from ..distill import kd_loss
from ..evaluation import Settings
from ..finetune import Cancelled, Diverged, TrainResult, _freeze_bn

# loss(model, xb, yb, step) -> scalar tensor
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]
Hook = Callable[[int], None]


def is_step_param(name: str) -> bool:
    """Quantizer step sizes (LSQ steps, and the per-mode steps of ``dual``)."""
    last = name.rsplit(".", 1)[-1]
    return last == "step" or ".dual_steps." in name or name.startswith("dual_steps.")


def param_groups(model: nn.Module, s: Settings, extra: Iterable[dict] = ()) -> list[dict]:
    """Weights at ``s.lr`` (with weight decay), step sizes at ``s.lr_step``; shared parameters once."""
    seen: set[int] = set()
    steps, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (steps if is_step_param(name) else rest).append(p)
    groups = [{"params": rest, "lr": s.lr, "weight_decay": s.weight_decay}]
    if steps:
        groups.append({"params": steps, "lr": s.lr_step, "weight_decay": 0.0})
    for g in extra:
        ids = {id(p) for p in g["params"]}
        for gr in groups:
            gr["params"] = [p for p in gr["params"] if id(p) not in ids]
        groups.append(g)
    return [g for g in groups if g["params"]]


def default_loss(s: Settings, teacher: nn.Module | None = None) -> LossFn:
    """Cross-entropy, or the Apprentice KD loss with a teacher (as ``engine.finetune.train``)."""
    if teacher is not None:
        teacher.eval()

    def loss(model, xb, yb, step):
        out = model(xb)
        if teacher is None:
            return F.cross_entropy(out, yb)
        with torch.no_grad():
            t_out = teacher(xb)
        return kd_loss(out, t_out, yb, s.kd_alpha, s.kd_beta, s.temperature)
    return loss


def run(model: nn.Module, data: Dataset, s: Settings, loss_fn: LossFn, steps: int | None = None,
        hook: Hook | None = None, after_step: Hook | None = None, groups: list[dict] | None = None,
        progress=None, should_stop=None, freeze_bn: bool = True, cosine: bool = True) -> TrainResult:
    """``steps`` (default ``s.steps``) optimisation steps of ``loss_fn``.

    ``hook(step)`` runs before each step's forward pass (e.g. to change precision),
    ``after_step(step)`` after the optimiser step (e.g. to clamp or re-quantize).
    """
    n = s.steps if steps is None else steps
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.Adam(groups if groups is not None else param_groups(model, s))
    total = max(n, 1)
    lam = (lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total))) if cosine else (lambda i: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    result = TrainResult()
    model.train()
    if freeze_bn:
        _freeze_bn(model)
    while result.steps < n:
        for xb, yb in batches(data.x_train, data.y_train, s.batch_size, gen):
            if result.steps >= n:
                break
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled")
            if hook is not None:
                hook(result.steps)
            loss = loss_fn(model, xb, yb, result.steps)
            if not torch.isfinite(loss):
                raise Diverged(f"loss became {float(loss.detach())} at step {result.steps}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step(result.steps)
            result.steps += 1
            result.loss_curve.append(round(float(loss.detach()), 5))
            if progress is not None and (result.steps % 5 == 0 or result.steps == n):
                progress(result.steps / max(n, 1), f"step {result.steps}/{n} loss {result.loss_curve[-1]:.4f}")
    model.eval()
    return result
