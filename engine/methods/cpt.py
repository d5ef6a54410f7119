"""Cyclic precision training (CPT; Fu et al., ICLR 2021) as a fine-tuning schedule.

During fine-tuning the precision of every quantized layer cycles between a lower bound and
the plan's precision (the upper bound, which is also the precision the network ends at):
within each of ``cycles`` cycles it rises along a cosine from ``bits_min`` to ``bits_max``

    b(t) = round(b_min + (b_max - b_min) * (1 - cos(pi * (t mod T) / T)) / 2),   T = steps / cycles

(``symmetric=True`` goes min -> max -> min instead). The lower bound comes from the paper's
*precision range test*: a short run that raises the precision step by step from the lowest
candidate and picks the first precision at which the training accuracy jumps by more than a
threshold (``precision_range_test``).

Changing a quantizer's bits changes its grid; its LSQ step is rescaled so the clipping range
``Q_P * step`` stays put (``rescale="range"``, CPT's fixed-range quantizer), or each bit-width
keeps its own learned step (``rescale="memory"``; first visit: range rescaling).
For a mixed-precision plan each layer cycles between ``min(bits_min, its bits)`` and its own
bits: ``b_layer(t) = min(layer bits, b(t))`` with ``b_max`` the plan's widest layer.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from engine.errors import UserError
from engine.evaluation import Evaluation, Settings, provenance
from engine.models.data import Dataset
from engine.plans.apply import Applied, quant_layers
from engine.plans.layers import act_quantizers, weight_quantizers
from engine.plans.plan import Plan
from engine.quant import lsq
from engine.quant.modules import WeightQuantizer
from engine.training import finetune as ft
from engine.training.finetune import accuracy, reestimate_bn

WHICH = ("both", "weights", "activations")
RESCALE = ("range", "memory")


def cpt_bits(step: int, total_steps: int, bits_min: int, bits_max: int, cycles: int,
             symmetric: bool = False) -> int:
    """The cycled precision at ``step`` (0-based) of ``total_steps``."""
    if cycles < 1:
        raise UserError(f"cycles must be at least 1, got {cycles}")
    if not 1 <= bits_min <= bits_max <= 8:
        raise UserError(f"need 1 <= bits_min <= bits_max <= 8, got {bits_min}, {bits_max}")
    period = max(total_steps, 1) / cycles
    phase = (step % period) / period if period > 0 else 0.0
    frac = (1 - math.cos(2 * math.pi * phase)) / 2 if symmetric else (1 - math.cos(math.pi * phase)) / 2
    return int(math.floor(bits_min + (bits_max - bits_min) * frac + 0.5))


def cpt_schedule(total_steps: int, bits_min: int, bits_max: int, cycles: int, symmetric: bool = False) -> list[int]:
    """The whole schedule, one precision per step."""
    return [cpt_bits(t, total_steps, bits_min, bits_max, cycles, symmetric) for t in range(total_steps)]


def _q_p(q, bits: int) -> int:
    if isinstance(q, WeightQuantizer):
        return max(lsq.levels(bits, True)[1], 1)
    return max(lsq.levels(bits, bool(q.signed))[1], 1)


def _rescalable(q) -> bool:
    return q.active and q.method == "lsq" and not hasattr(q, "dual_bits")


def set_bits(q, bits: int, rescale: str = "range") -> None:
    """Change an LSQ quantizer's bits, rescaling its step (see the module docstring)."""
    if rescale not in RESCALE:
        raise UserError(f"rescale must be one of {RESCALE}, got {rescale!r}")
    if not 1 <= bits <= 8:
        raise UserError(f"bits must be in 1..8, got {bits}")
    old = q.bits
    if bits == old or not _rescalable(q):
        return
    with torch.no_grad():
        if rescale == "memory":
            mem = q.__dict__.setdefault("_cpt_steps", {})
            mem[old] = q.step.detach().clone()
            if bits in mem:
                q.step.copy_(mem[bits])
            else:
                q.step.mul_(_q_p(q, old) / _q_p(q, bits))
        else:
            q.step.mul_(_q_p(q, old) / _q_p(q, bits))
    q.bits = bits


class CPTController:
    """Sets every quantized layer's precision from the cyclic schedule; call it once per step.

    ``which`` picks weights, activations or both; the upper bound of each quantizer is the
    bits it had when the controller was made (the plan's), the lower ``min(bits_min, upper)``.
    ``finish()`` restores the plan's precision.
    """

    def __init__(self, model: nn.Module, total_steps: int, bits_min: int, cycles: int = 8,
                 which: str = "both", rescale: str = "range", symmetric: bool = False):
        if which not in WHICH:
            raise UserError(f"which must be one of {WHICH}, got {which!r}")
        if rescale not in RESCALE:
            raise UserError(f"rescale must be one of {RESCALE}, got {rescale!r}")
        self.total, self.cycles, self.which, self.rescale, self.symmetric = total_steps, cycles, which, rescale, symmetric
        qs = []
        for _, mod in quant_layers(model):
            if which in ("both", "weights"):
                qs += weight_quantizers(mod)
            if which in ("both", "activations"):
                qs += act_quantizers(mod)
        self.quantizers = [(q, q.bits) for q in qs if _rescalable(q)]
        if not self.quantizers:
            raise UserError("no LSQ-quantized layer to cycle (is every layer float, or binary/ternary/WRPN?)")
        self.bits_max = max(b for _, b in self.quantizers)
        self.bits_min = min(int(bits_min), self.bits_max)
        self.history: list[int] = []

    def bits_at(self, step: int) -> int:
        return cpt_bits(step, self.total, self.bits_min, self.bits_max, self.cycles, self.symmetric)

    def __call__(self, step: int) -> None:
        b = self.bits_at(step)
        self.history.append(b)
        for q, upper in self.quantizers:
            set_bits(q, min(upper, b), self.rescale)

    def finish(self) -> None:
        for q, upper in self.quantizers:
            set_bits(q, upper, self.rescale)


def train_cpt(model: nn.Module, data: Dataset, s: Settings, bits_min: int, cycles: int = 8,
              which: str = "both", rescale: str = "range", symmetric: bool = False,
              teacher: nn.Module | None = None, progress=None, should_stop=None) -> tuple[list[float], list[int]]:
    """Fine-tune ``s.steps`` steps with cyclic precision; ends at the plan's precision.

    Returns the loss curve and the precision used at each step."""
    ctl = CPTController(model, s.steps, bits_min, cycles, which, rescale, symmetric)
    try:
        r = ft.optimise(model, data, s, ft.default_loss(s, teacher), hook=ctl, progress=progress,
                      should_stop=should_stop)
    finally:
        ctl.finish()
    return r.loss_curve, ctl.history


# ============================================================================ range test

@dataclass
class RangeTest:
    """The precision range test: training accuracy per precision and the bounds it chose."""

    lower: int
    upper: int
    accuracies: dict[int, float]
    threshold: float
    steps_per_bits: int

    def to_dict(self) -> dict:
        return {"lower": self.lower, "upper": self.upper, "threshold": self.threshold,
                "steps_per_bits": self.steps_per_bits, "accuracies": {str(k): v for k, v in self.accuracies.items()}}


def precision_range_test(model: nn.Module, data: Dataset, s: Settings | None = None, upper: int | None = None,
                         lowest: int = 1, steps_per_bits: int = 10, threshold: float = 0.05,
                         which: str = "both", teacher: nn.Module | None = None) -> RangeTest:
    """CPT's precision range test on a copy of a planned (calibrated) ``model``.

    Starting at ``lowest`` bits, train ``steps_per_bits`` steps at each precision up to
    ``upper`` (default: the plan's widest layer), recording the mean training-batch accuracy
    over each precision's steps. The lower bound is the first precision whose accuracy exceeds
    the previous precision's by more than ``threshold`` (training "starts to converge"); when
    no precision jumps, the lowest one (already trainable) is returned.
    """
    s = s or Settings()
    if steps_per_bits < 1:
        raise UserError("steps_per_bits must be at least 1")
    net = copy.deepcopy(model)
    ctl = CPTController(net, 1, lowest, 1, which)
    upper = ctl.bits_max if upper is None else min(int(upper), ctl.bits_max)
    lowest = max(1, min(int(lowest), upper))
    order = list(range(lowest, upper + 1))
    accs: dict[int, list[float]] = {b: [] for b in order}
    current = {"b": order[0]}
    def hook(step):
        b = order[min(step // steps_per_bits, len(order) - 1)]
        current["b"] = b
        for q, up in ctl.quantizers:
            set_bits(q, min(up, b))

    def loss(m, xb, yb, step):
        out = m(xb)
        accs[current["b"]].append(float((out.argmax(1) == yb).float().mean()))
        if teacher is None:
            return nn.functional.cross_entropy(out, yb)
        with torch.no_grad():
            t_out = teacher(xb)
        from engine.training.distill import kd_loss
        return kd_loss(out, t_out, yb, s.kd_alpha, s.kd_beta, s.temperature)

    ft.optimise(net, data, s, loss, steps=steps_per_bits * len(order), hook=hook, cosine=False)
    mean = {b: (sum(v) / len(v) if v else 0.0) for b, v in accs.items()}
    lower = order[0]
    for prev, b in zip(order, order[1:]):
        if mean[b] - mean[prev] > threshold:
            lower = b
            break
    return RangeTest(lower, upper, mean, threshold, steps_per_bits)


# ============================================================================ pipeline

@dataclass
class CPTResult:
    evaluation: Evaluation
    applied: Applied | None
    range_test: RangeTest | None = None
    schedule: list[int] = field(default_factory=list)


def cpt_finetune(model_id: str, dataset_id: str, plan: Plan, settings: Settings | None = None,
                 cycles: int = 8, bits_min: int | None = None, which: str = "both", rescale: str = "range",
                 symmetric: bool = False, range_steps: int = 10, range_threshold: float = 0.05,
                 baseline: nn.Module | None = None, data: Dataset | None = None, progress=None) -> CPTResult:
    """``evaluate_plan`` with cyclic precision fine-tuning; ``bits_min=None`` runs the range test.

    Returns an Evaluation (status fine-tuned; ``provenance["method"]`` records the CPT
    parameters, the range test and the schedule) and the network.
    """
    from engine.explore.pipeline import baseline_accuracy, prepare
    s = settings or Settings()
    t0 = time.perf_counter()
    applied, teacher, data = prepare(model_id, dataset_id, plan, s, baseline, data)
    ev = Evaluation(plan=plan.to_dict(), model=model_id, dataset=dataset_id, settings=s.to_dict(),
                    provenance=provenance(plan.digest(), s.seed, model_id, dataset_id))
    ev.baseline_val_accuracy, ev.baseline_test_accuracy = baseline_accuracy(teacher, data)
    ev.estimate_val_accuracy = accuracy(applied.model, data.x_val, data.y_val)
    kd = teacher if s.distill else None
    rt = None
    if bits_min is None:
        rt = precision_range_test(applied.model, data, s, steps_per_bits=range_steps, threshold=range_threshold,
                                  which=which, teacher=kd)
        bits_min = rt.lower
    curve, hist = train_cpt(applied.model, data, s, bits_min, cycles, which, rescale, symmetric, kd, progress)
    if s.bn_reestimate:
        reestimate_bn(applied.model, data, seed=s.seed)
    ev.loss_curve, ev.steps, ev.status = curve, len(curve), "fine-tuned"
    ev.val_accuracy = accuracy(applied.model, data.x_val, data.y_val)
    ev.test_accuracy = accuracy(applied.model, data.x_test, data.y_test)
    ev.provenance["method"] = {"name": "cpt", "cycles": cycles, "bits_min": bits_min, "which": which,
                               "rescale": rescale, "symmetric": symmetric,
                               "mean_bits": round(sum(hist) / max(len(hist), 1), 4),
                               "range_test": rt.to_dict() if rt else None}
    ev.wall_s = round(time.perf_counter() - t0, 3)
    return CPTResult(ev, applied, rt, hist)
