"""Dual-precision networks: one set of weights serving two precision modes.

A planned network (``engine.plans.apply.apply_plan``) gets, in every quantized layer, quantizers
that know two bit-widths and keep one learned step size per mode; ``set_mode(model, "high")``
or ``set_mode(model, "low")`` switches all of them (and, after ``reestimate_bn_dual``, the
batch-norm statistics) without retraining.

Low-mode weights come in two kinds:

- ``"nested"`` (default): the low-mode weight codes are the top ``b_low`` bit-planes of the
  high-mode codes, ``c_low = floor(c_high / 2^(b_high - b_low))``, reconstructed at the bin
  midpoint (``c_low + 1/2``, a symmetric grid; ``midpoint=False`` keeps plain truncation) and
  scaled by the low mode's own learned step. One packed model then serves both modes: the
  float-activation kernel ``engine.kernels.gemm_float_act(w, x, planes=t)`` reads only the top
  ``t`` planes (``planes_model`` runs a dual model that way).
- ``"independent"``: the low mode re-quantizes the shared float weights with its own LSQ step
  (round to nearest); two packed models are needed to deploy both modes.

Training has two phases (``train_dual``): phase 1 trains at the high precision; phase 2
optimises both modes, either jointly (the sum of both modes' losses on each batch) or
alternately (one mode per step), with the shared weights and separate step sizes (and
learning rates) per mode.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.errors import UserError
from engine.evaluation import Settings, rates
from engine.models.data import Dataset
from engine.plans.apply import Applied, apply_plan, calibrate, quant_layers
from engine.plans.layers import QuantRecurrent
from engine.plans.plan import FLOAT_BITS, Plan
from engine.training import finetune as ft
from engine.training.distill import kd_loss
from engine.training.finetune import accuracy, reestimate_bn
from engine.training.methods.dual_planes import planes_agreement, planes_model  # noqa: F401 - part of this module's face
from engine.training.methods.dual_quant import (  # noqa: F401
    LOW_WEIGHTS,
    MODES,
    DualActQuantizer,
    DualWeightQuantizer,
    _DualMixin,
    dual_quantizers,
    get_mode,
    set_mode,
)

# ============================================================================ building

def _mode_plan(p, name: str) -> Plan:
    if isinstance(p, Plan):
        return p
    if isinstance(p, (tuple, list)) and len(p) == 2:
        return Plan.uniform(int(p[0]), int(p[1]), name=name)
    raise UserError(f"{name} precision must be a Plan or a (w_bits, a_bits) pair, got {p!r}")


def _weight_slots(mod) -> list[tuple[str, torch.Tensor]]:
    if isinstance(mod, QuantRecurrent):
        return [("wq_ih", mod.masked("ih")), ("wq_hh", mod.masked("hh"))]
    return [("wq", mod.masked_weight())]


def _act_slots(mod) -> list[str]:
    return ["aq", "aq_h"] if isinstance(mod, QuantRecurrent) else ["aq"]


def make_dual(model: nn.Module, input_shape: tuple[int, ...], high=(8, 8), low=(4, 4),
              calib: Iterable[torch.Tensor] = (), low_weights: str = "nested", midpoint: bool = True,
              seed: int = 0, init: str = "mse", couple: bool = True) -> Applied:
    """A planned copy of ``model`` whose quantized layers serve both precision modes.

    ``high`` and ``low`` are Plans or (w_bits, a_bits) pairs; every layer must be quantized in
    both or in neither, with the LSQ quantizer, and (nested weights) low bits <= high bits.
    ``calib`` are input batches that set the activation steps of each mode. Returns the Applied
    of the high plan, in high mode.
    """
    if low_weights not in LOW_WEIGHTS:
        raise UserError(f"low_weights must be one of {LOW_WEIGHTS}, got {low_weights!r}")
    hp, lp = _mode_plan(high, "high"), _mode_plan(low, "low")
    torch.manual_seed(seed)
    applied = apply_plan(model, hp, input_shape, seed=seed)
    low_cfgs = lp.resolve(applied.topology.names)
    for name, hc in applied.configs.items():
        lc = low_cfgs[name]
        where = f"layer {name!r}"
        if (hc.w_bits == FLOAT_BITS) != (lc.w_bits == FLOAT_BITS) or (hc.a_bits == FLOAT_BITS) != (lc.a_bits == FLOAT_BITS):
            raise UserError(f"{where}: quantized in one mode but float in the other "
                            f"({hc.label()} high, {lc.label()} low)")
        if lc.widen != hc.widen or lc.sparsity != hc.sparsity or lc.sparsity_fraction != hc.sparsity_fraction:
            raise UserError(f"{where}: the two modes share the weights, so widening and sparsity must agree")
        if not hc.is_float and (hc.quantizer != "lsq" or lc.quantizer != "lsq"):
            raise UserError(f"{where}: dual precision needs the LSQ quantizer (got {hc.quantizer!r}/{lc.quantizer!r})")
        if low_weights == "nested" and lc.w_bits != FLOAT_BITS and lc.w_bits > hc.w_bits:
            raise UserError(f"{where}: nested low-mode weights need low w_bits <= high w_bits "
                            f"({lc.w_bits} > {hc.w_bits})")
        if low_weights == "nested" and hc.w_bits == 1:
            raise UserError(f"{where}: nested low-mode weights need high w_bits >= 2")
    calib = list(calib)
    if not calib:
        raise UserError("make_dual needs calibration batches (the activation steps of both modes)")
    calibrate(applied.model, calib, init=init)
    for name, mod in quant_layers(applied.model):
        lc = low_cfgs[name]
        for attr, _w in _weight_slots(mod):
            dq = DualWeightQuantizer(getattr(mod, attr), lc.w_bits, low_weights, midpoint, couple)
            setattr(mod, attr, dq)
        for attr in _act_slots(mod):
            setattr(mod, attr, DualActQuantizer(getattr(mod, attr), lc.a_bits))
    # the low mode's steps: weights fitted, activations calibrated on the same batches
    for _name, mod in quant_layers(applied.model):
        for attr, w in _weight_slots(mod):
            getattr(mod, attr).fit_low_step(w.detach())
    set_mode(applied.model, "low")
    calibrate(applied.model, calib, init=init)
    set_mode(applied.model, "high")
    applied.model.dual = {"high": hp.to_dict(), "low": lp.to_dict(), "low_weights": low_weights,
                          "midpoint": bool(midpoint), "couple": bool(couple)}
    return applied


def mode_bits(model: nn.Module) -> dict[str, dict[str, tuple[int, int]]]:
    """Per quantized layer and mode: (w_bits, a_bits) as the quantizers hold them."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for name, mod in quant_layers(model):
        wq = getattr(mod, _weight_slots(mod)[0][0])
        aq = getattr(mod, _act_slots(mod)[0])
        out[name] = {m: (wq.dual_bits[m], aq.dual_bits[m]) for m in MODES}
    return out


@torch.no_grad()
def reestimate_bn_dual(model: nn.Module, data: Dataset, seed: int = 0) -> None:
    """Switchable batch norm: re-estimate statistics under each mode and keep both."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was = get_mode(model)
    for mode in MODES:
        set_mode(model, mode)
        reestimate_bn(model, data, seed=seed)
        for bn in bns:
            for kind, t in (("mean", bn.running_mean), ("var", bn.running_var)):
                key = f"dual_{kind}_{mode}"
                if hasattr(bn, key):
                    getattr(bn, key).copy_(t)
                else:
                    bn.register_buffer(key, t.detach().clone())
    set_mode(model, was)


# ============================================================================ training

@dataclass
class DualResult:
    """A trained dual-precision network and its accuracy in each mode."""

    applied: Applied
    accuracy: dict[str, dict[str, float]]          # mode -> {"val", "test"}
    baseline: dict[str, float] = field(default_factory=dict)
    estimate: dict[str, float] = field(default_factory=dict)  # mode -> val accuracy before training
    loss_curves: dict[str, list[float]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "baseline": self.baseline, "estimate": self.estimate,
                "loss_curves": self.loss_curves, "settings": self.settings, "wall_s": self.wall_s,
                "modes": {m: b for m, b in _mode_summary(self.applied.model).items()}}


def _mode_summary(model) -> dict:
    mb = mode_bits(model)
    return {m: sorted({f"W{v[m][0]}A{v[m][1]}" for v in mb.values()}) for m in MODES}


def _groups(model: nn.Module, s: Settings, lr_step_low: float) -> list[dict]:
    """Shared weights at ``s.lr``; high-mode steps (and any other step) at ``s.lr_step``;
    low-mode steps at ``lr_step_low``."""
    low = {id(q.dual_steps["low"]): q.dual_steps["low"] for q in dual_quantizers(model)}
    high = {id(q.dual_steps["high"]) for q in dual_quantizers(model)}
    weights, steps, seen = [], [], set(low)
    for name, p in model.named_parameters(remove_duplicate=False):
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (steps if id(p) in high or ft.is_step_param(name) else weights).append(p)
    lr, lr_step = rates(s)
    groups = [{"params": weights, "lr": lr, "weight_decay": s.weight_decay},
              {"params": steps, "lr": lr_step, "weight_decay": 0.0},
              {"params": [p for p in low.values() if p.requires_grad], "lr": lr_step_low, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def train_dual(model: nn.Module, data: Dataset, s: Settings, phase1_steps: int, phase2_steps: int,
               schedule: str = "joint", teacher: nn.Module | None = None, low_weight: float = 1.0,
               lr_step_low: float | None = None, self_distill: bool = False, progress=None,
               should_stop=None) -> dict[str, list[float]]:
    """Two-phase training of a dual model (from ``make_dual``); returns the loss curves.

    Phase 1: ``phase1_steps`` at the high precision (CE, or KD from ``teacher``). Phase 2:
    ``phase2_steps`` over both modes: ``schedule="joint"`` minimises
    ``L_high + low_weight * L_low`` on each batch, ``"alternate"`` takes one mode per step.
    Weights are shared; each mode's step sizes get gradients from that mode only and have
    their own learning rate (``s.lr_step`` high, ``lr_step_low`` low). With ``self_distill`` the
    low mode also distils from the high mode's outputs (detached).
    """
    if schedule not in ("joint", "alternate"):
        raise UserError(f"schedule must be 'joint' or 'alternate', got {schedule!r}")
    if phase1_steps < 0 or phase2_steps < 0:
        raise UserError("phase steps must be 0 or more")
    lr_low = rates(s)[1] if lr_step_low is None else lr_step_low
    say = progress or (lambda f, m: None)
    total = max(phase1_steps + phase2_steps, 1)
    curves: dict[str, list[float]] = {"phase1": [], "phase2": []}
    base_loss = ft.default_loss(s, teacher)

    if phase1_steps:
        set_mode(model, "high")
        r = ft.optimise(model, data, s, base_loss, steps=phase1_steps, groups=_groups(model, s, lr_low),
                      hook=lambda i: set_mode(model, "high"), should_stop=should_stop,
                      progress=lambda f, m: say(f * phase1_steps / total, "phase 1 (high): " + m))
        curves["phase1"] = r.loss_curve

    def mode_loss(mode, xb, yb, ref=None):
        set_mode(model, mode)
        out = model(xb)
        if ref is not None:
            return kd_loss(out, ref, yb, s.kd_alpha, s.kd_beta, s.temperature), out
        if teacher is not None:
            with torch.no_grad():
                t_out = teacher(xb)
            return kd_loss(out, t_out, yb, s.kd_alpha, s.kd_beta, s.temperature), out
        return F.cross_entropy(out, yb), out

    def joint(m, xb, yb, step):
        if schedule == "alternate":
            mode = MODES[step % 2]
            if mode == "low" and self_distill:
                set_mode(model, "high")
                with torch.no_grad():
                    ref = model(xb)
                return low_weight * mode_loss("low", xb, yb, ref)[0]
            loss = mode_loss(mode, xb, yb)[0]
            return loss if mode == "high" else low_weight * loss
        lh, out_h = mode_loss("high", xb, yb)
        ll, _ = mode_loss("low", xb, yb, out_h.detach() if self_distill else None)
        return lh + low_weight * ll

    if phase2_steps:
        r = ft.optimise(model, data, s, joint, steps=phase2_steps, groups=_groups(model, s, lr_low),
                      should_stop=should_stop,
                      progress=lambda f, m: say((phase1_steps + f * phase2_steps) / total, "phase 2 (both): " + m))
        curves["phase2"] = r.loss_curve
    set_mode(model, "high")
    return curves


def evaluate_modes(model: nn.Module, data: Dataset) -> dict[str, dict[str, float]]:
    """Validation and test accuracy in each mode (the model is left in high mode)."""
    out = {}
    for mode in MODES:
        set_mode(model, mode)
        out[mode] = {"val": accuracy(model, data.x_val, data.y_val), "test": accuracy(model, data.x_test, data.y_test)}
    set_mode(model, "high")
    return out


def dual_finetune(model_id: str, dataset_id: str, high=(8, 8), low=(4, 4), settings: Settings | None = None,
                  phase1_steps: int | None = None, phase2_steps: int | None = None, schedule: str = "joint",
                  low_weights: str = "nested", midpoint: bool = True, low_weight: float = 1.0,
                  lr_step_low: float | None = None, self_distill: bool = False, couple: bool = True,
                  baseline: nn.Module | None = None,
                  data: Dataset | None = None, progress=None) -> DualResult:
    """Pretrained FP32 model -> dual model -> two-phase training -> accuracy per mode.

    The budget ``settings.steps`` is split in half between the phases unless given;
    ``settings.distill`` distils both modes from the FP32 teacher.
    """
    from engine.explore.pipeline import _calibration_batches, baseline_accuracy
    from engine.models.baselines import load_baseline
    from engine.models.data import load_dataset
    s = settings or Settings()
    t0 = time.perf_counter()
    data = data or load_dataset(dataset_id)
    teacher = baseline if baseline is not None else load_baseline(model_id, dataset_id, data)
    p1 = s.steps // 2 if phase1_steps is None else phase1_steps
    p2 = s.steps - p1 if phase2_steps is None else phase2_steps
    applied = make_dual(teacher, data.input_shape, high, low, _calibration_batches(data, s),
                        low_weights=low_weights, midpoint=midpoint, seed=s.seed, init=s.init, couple=couple)
    estimate = {m: v["val"] for m, v in evaluate_modes(applied.model, data).items()}
    curves = train_dual(applied.model, data, s, p1, p2, schedule, teacher if s.distill else None, low_weight,
                        lr_step_low, self_distill, progress)
    if s.bn_reestimate:
        reestimate_bn_dual(applied.model, data, seed=s.seed)
    acc = evaluate_modes(applied.model, data)
    bv, bt = baseline_accuracy(teacher, data)
    return DualResult(applied, acc, {"val": bv, "test": bt}, estimate, curves,
                      {**s.to_dict(), "phase1_steps": p1, "phase2_steps": p2, "schedule": schedule,
                       "low_weights": low_weights, "midpoint": midpoint, "low_weight": low_weight,
                       "lr_step_low": lr_step_low, "self_distill": self_distill, "couple": couple,
                       "high": _mode_plan(high, "high").to_dict(), "low": _mode_plan(low, "low").to_dict()},
                      round(time.perf_counter() - t0, 3))
