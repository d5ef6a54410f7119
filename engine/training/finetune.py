"""Quick fine-tuning of a planned network (FAQ / ALPS style) and the no-training estimate.

Start from the pretrained FP32 weights with calibrated step sizes, fine-tune with Adam and a
cosine-annealed learning rate (weights, step sizes and batch-norm in separate groups, as LSQ
and FAQ do), batch-norm statistics frozen during the steps. Given a validation score, the
fine-tune ends on the validation-best state it saw, the start included (see engine.training.budget).
Seeded and deterministic on CPU.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.errors import UserError
from engine.evaluation import MAX_STEPS, Settings, rates
from engine.fileio import clip
from engine.models.data import Dataset, batches
from engine.plans.apply import quant_layers
from engine.training.budget import BestState, budget_steps, val_interval
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
    budget: int = 0                      # the steps planned (the run may stop earlier on patience)
    stopped: str = "budget"              # "budget" or "patience"
    best: BestState | None = None        # the validations and the kept state, when validated
    lr: dict = field(default_factory=dict)   # the rates used and where they came from

    def summary(self) -> dict:
        """What an Evaluation's provenance records about this fine-tune."""
        out = {"budget_steps": self.budget, "steps_run": self.steps, "stopped": self.stopped, **self.lr}
        if self.best is not None:
            b = self.best
            out.update(kept_step=b.best_step, start_val=round(b.start, 6), best_val=round(b.best, 6),
                       validations=len(b.checks))
        return out


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


def _no_decay_params(model: nn.Module) -> set[int]:
    """Batch-norm parameters and biases: trained without weight decay (LSQ, FAQ)."""
    out = set()
    for m in model.modules():
        norm = isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))
        for pname, p in m.named_parameters(recurse=False):
            if norm or pname.startswith("bias"):
                out.add(id(p))
    return out


def param_groups(model: nn.Module, s: Settings, extra=()) -> list[dict]:
    """Optimiser groups named "weights" (``s.lr``, ``s.weight_decay``), "steps" (quantizer step
    sizes, ``s.lr_step``, no decay) and "norm" (batch-norm parameters and biases, ``s.lr``, no
    decay); shared parameters once; ``extra`` groups take their parameters out of these."""
    seen: set[int] = set()
    no_decay = _no_decay_params(model)
    steps, norm, rest = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (steps if is_step_param(name) else norm if id(p) in no_decay else rest).append(p)
    lr, lr_step = rates(s)
    groups = [{"name": "weights", "params": rest, "lr": lr, "weight_decay": s.weight_decay},
              {"name": "steps", "params": steps, "lr": lr_step, "weight_decay": 0.0},
              {"name": "norm", "params": norm, "lr": lr, "weight_decay": 0.0}]
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
             freeze_bn: bool = True, cosine: bool = True,
             validate: Callable[[], float] | None = None) -> TrainResult:
    """``steps`` (default: ``s.steps``, or fewer by ``s.epochs``) seeded Adam steps of ``loss_fn``
    with a cosine-annealed rate.

    ``hook(step)`` runs before each step's forward pass (e.g. to change precision),
    ``after_step(step)`` after the optimiser step (e.g. to clamp or re-quantize).
    With ``validate`` (a score, higher is better) the network is scored at the start, every
    ``s.val_every`` steps and at the end; training stops after ``s.patience`` scores without a
    better one, and the network ends on the best-scoring state (ties go to the later one).
    """
    n = s.steps if steps is None else steps
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_STEPS:
        raise UserError(f"steps={clip(n)} must be a whole number in 0..{MAX_STEPS:_}")
    if steps is None:
        n = budget_steps(s, len(data.y_train))
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.Adam(groups if groups is not None else param_groups(model, s))
    total = max(n, 1)
    lam = (lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total))) if cosine else (lambda i: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    result = TrainResult(budget=n)
    best = result.best = BestState(model, validate, s.patience) if validate is not None else None
    every = val_interval(s, n, len(data.y_train))
    model.train()
    if freeze_bn:
        _freeze_bn(model)
    ema = None
    stop = False
    while result.steps < n:
        before = result.steps
        for xb, yb in batches(data.x_train, data.y_train, s.batch_size, gen):
            if result.steps >= n or stop:
                break
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled")
            if hook is not None:
                hook(result.steps)
            loss = loss_fn(model, xb, yb, result.steps)
            if not torch.isfinite(loss):
                if best is not None:   # the network handed back is the best one seen, not a NaN one
                    best.restore()
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
            if best is not None and (result.steps % every == 0 or result.steps == n):
                stop = best.check(result.steps)
                model.train()
                if freeze_bn:
                    _freeze_bn(model)
        if stop:
            if result.steps < n:
                result.stopped = "patience"
            break
        if result.steps == before:   # a pass with no batch would repeat forever
            raise UserError(f"no training batches: the training split has {len(data.y_train)} examples")
    if best is not None:
        best.restore()
    model.eval()
    return result


def train(model: nn.Module, data: Dataset, s: Settings, teacher: nn.Module | None = None,
          progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
          freeze_bn: bool = True, validate: Callable[[], float] | None = None,
          lr_source: str = "settings") -> TrainResult:
    """Fine-tune within ``s``'s budget; with a teacher, the loss is the Apprentice KD loss. With
    ``s.lr_find`` the rates come from a short range test first; ``validate`` as in ``optimise``.
    Unset rates are the default (callers that know the baseline resolve them first: engine.training.rates)."""
    loss = default_loss(s, teacher)
    if s.lr is None or s.lr_step is None:
        from engine.training.rates import resolve
        s, lr_source = resolve(s)
    lr = {"lr": s.lr, "lr_step": s.lr_step, "lr_source": lr_source}
    if s.lr_find:
        from engine.training.lr_range import lr_range_test
        found = lr_range_test(model, data, s, loss, lambda m: param_groups(m, s))
        s = dataclasses.replace(s, lr=found["lr"], lr_step=found["lr_step"], lr_find=False)
        lr = {**found, "lr_source": "range test"}
    result = optimise(model, data, s, loss, progress=progress, should_stop=should_stop, freeze_bn=freeze_bn,
                      validate=validate)
    result.lr = lr
    return result


def has_quantizers(model: nn.Module) -> bool:
    return bool(quant_layers(model))
