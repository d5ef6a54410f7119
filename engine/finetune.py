"""Quick fine-tuning of a planned network (FAQ / ALPS style) and the no-training estimate.

Start from the pretrained FP32 weights with calibrated step sizes, fine-tune for a small
budget with Adam and a cosine-annealed learning rate, batch-norm statistics frozen during
the steps and re-estimated at the end. Seeded and deterministic on CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.errors import UserError
from engine.evaluation import MAX_STEPS, Settings
from engine.fileio import clip
from engine.models.data import Dataset, batches
from engine.plans.apply import quant_layers
from engine.training.distill import kd_loss

Progress = Callable[[float, str], None]


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


class Cancelled(RuntimeError):
    """The caller asked to stop."""


@dataclass
class TrainResult:
    loss_curve: list[float] = field(default_factory=list)
    steps: int = 0


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    was = model.training
    model.eval()
    correct = 0
    for xb, yb in batches(x, y, batch_size):
        correct += int((model(xb).argmax(1) == yb).sum())
    model.train(was)
    return correct / max(len(y), 1)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def reestimate_bn(model: nn.Module, data: Dataset, batch_size: int = 128, num_batches: int = 20, seed: int = 0) -> None:
    """Recompute batch-norm running statistics under the quantized network."""
    gen = torch.Generator().manual_seed(seed)
    bn_statistics(model, (xb for xb, _ in islice(batches(data.x_train, data.y_train, batch_size, gen), num_batches)))


@torch.no_grad()
def bn_statistics(model: nn.Module, inputs: Iterable[torch.Tensor]) -> None:
    """Batch-norm running statistics recomputed (cumulative average) over ``inputs``: after
    quantization the pretrained statistics no longer match what the layers produce."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for xb in inputs:
        model(xb)
    model.eval()
    for m, momentum in zip(bns, momenta):   # calibration runs before training: leave BN as it was
        m.momentum = momentum


# loss(model, xb, yb, step) -> scalar tensor; hook(step) -> None
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]
Hook = Callable[[int], None]


def is_step_param(name: str) -> bool:
    """Quantizer step sizes (LSQ steps, and the per-mode steps of dual-precision networks)."""
    last = name.rsplit(".", 1)[-1]
    return last == "step" or ".dual_steps." in name or name.startswith("dual_steps.")


def param_groups(model: nn.Module, s: Settings, extra=()) -> list[dict]:
    """Weights at ``s.lr`` (with weight decay), step sizes at ``s.lr_step``; shared parameters once;
    ``extra`` groups take their parameters out of the default ones."""
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
    """Cross-entropy, or with a teacher the Apprentice KD loss."""
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


def optimise(model: nn.Module, data: Dataset, s: Settings, loss_fn: LossFn, steps: int | None = None,
             hook: Hook | None = None, after_step: Hook | None = None, groups: list[dict] | None = None,
             progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
             freeze_bn: bool = True, cosine: bool = True) -> TrainResult:
    """``steps`` (default ``s.steps``) seeded Adam steps of ``loss_fn`` with a cosine-annealed rate.

    ``hook(step)`` runs before each step's forward pass (e.g. to change precision),
    ``after_step(step)`` after the optimiser step (e.g. to clamp or re-quantize).
    """
    n = s.steps if steps is None else steps
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_STEPS:
        raise UserError(f"steps={clip(n)} must be a whole number in 0..{MAX_STEPS:_}")
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
    ema = None
    while result.steps < n:
        before = result.steps
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
            v = float(loss.detach())
            ema = v if ema is None else 0.9 * ema + 0.1 * v
            result.loss_curve.append(round(v, 5))
            if progress is not None and (result.steps % 5 == 0 or result.steps == n):
                progress(result.steps / max(n, 1), f"step {result.steps}/{n} loss {ema:.4f}")
        if result.steps == before:   # a pass with no batch would repeat forever
            raise UserError(f"no training batches: the training split has {len(data.y_train)} examples")
    model.eval()
    return result


def train(model: nn.Module, data: Dataset, s: Settings, teacher: nn.Module | None = None,
          progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
          freeze_bn: bool = True) -> TrainResult:
    """Run ``s.steps`` optimisation steps; with a teacher, the loss is the Apprentice KD loss."""
    return optimise(model, data, s, default_loss(s, teacher), progress=progress, should_stop=should_stop,
                    freeze_bn=freeze_bn)


def has_quantizers(model: nn.Module) -> bool:
    return bool(quant_layers(model))
