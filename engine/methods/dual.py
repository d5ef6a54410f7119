"""Dual-precision networks: one set of weights serving two precision modes.

A planned network (``engine.apply.apply_plan``) gets, in every quantized layer, quantizers
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

import copy
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..apply import Applied, apply_plan, calibrate, quant_layers
from ..data import Dataset
from ..distill import kd_loss
from ..errors import UserError
from ..evaluation import Settings
from ..finetune import accuracy, reestimate_bn
from ..layers import QuantConv2d, QuantLinear
from ..layers import QuantRecurrent
from ..plan import FLOAT_BITS, Plan
from ..quant import lsq
from ..quant.modules import ActQuantizer, WeightQuantizer
from ..quant.ste import grad_scale, round_ste
from .. import finetune as ft

MODES = ("high", "low")
LOW_WEIGHTS = ("nested", "independent")


def _floor_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.floor() - x).detach() + x


class _DualMixin:
    """Per-mode bits and step sizes; ``.bits`` and ``.step`` always show the current mode's."""

    def _init_dual(self, step: nn.Parameter, high_bits: int, low_bits: int) -> None:
        self.dual_bits = {"high": int(high_bits), "low": int(low_bits)}
        low = nn.Parameter(step.detach().clone(), requires_grad=step.requires_grad)
        self.dual_steps = nn.ParameterDict({"high": step, "low": low})
        self.mode = "high"

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.bits = self.dual_bits[mode]
        self._parameters["step"] = self.dual_steps[mode]


class DualWeightQuantizer(_DualMixin, WeightQuantizer):
    """A WeightQuantizer with a high and a low mode (LSQ only)."""

    def __init__(self, base: WeightQuantizer, low_bits: int, low_weights: str = "nested", midpoint: bool = True,
                 couple: bool = True):
        WeightQuantizer.__init__(self, base.bits, base.method, base.per_channel, base.step.numel())
        with torch.no_grad():
            self.step.copy_(base.step)
        self.low_weights, self.midpoint, self.couple = low_weights, bool(midpoint), bool(couple)
        self._init_dual(self.step, base.bits, low_bits)

    @property
    def nested(self) -> bool:
        return (self.low_weights == "nested" and self.active and self.dual_bits["low"] < self.dual_bits["high"])

    @property
    def shift(self) -> int:
        """How many low bit-planes of the high-mode codes the low mode drops."""
        return self.dual_bits["high"] - self.dual_bits["low"]

    def high_codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer high-mode codes (no gradient): what one packed model stores."""
        q_n, q_p = lsq.levels(self.dual_bits["high"], signed=True)
        s = self._mode_step("high", w).detach()
        return (w.detach() / s).clamp(-q_n, q_p).round()

    def _mode_step(self, mode: str, w: torch.Tensor) -> torch.Tensor:
        s = self.dual_steps[mode].abs().clamp_min(1e-8)
        return s.reshape(-1, *([1] * (w.dim() - 1))) if s.numel() > 1 else s

    def low_codes(self, w: torch.Tensor) -> torch.Tensor:
        """Nested low-mode codes floor(c_high / 2^shift) (+ 1/2 with ``midpoint``), with STE."""
        hb = self.dual_bits["high"]
        q_n, q_p = lsq.levels(hb, signed=True)
        per = w.numel() // self.step.numel()
        s_h = grad_scale(self._mode_step("high", w), lsq.grad_scale_factor(per, max(q_p, 1)))
        c = round_ste((w / (s_h if self.couple else s_h.detach())).clamp(-q_n, q_p))
        t = c / float(2 ** self.shift)
        cl = _floor_ste(t)
        return cl + 0.5 if self.midpoint else cl

    def fit_low_step(self, w: torch.Tensor) -> None:
        """Low-mode step: least squares fit of the nested codes to the weights; MSE search otherwise."""
        with torch.no_grad():
            if self.nested:
                cl = self.low_codes(w.detach())
                if self.per_channel and self.step.numel() > 1:
                    r, c = w.reshape(w.shape[0], -1), cl.reshape(w.shape[0], -1)
                    s = (r * c).sum(1) / (c * c).sum(1).clamp_min(1e-12)
                else:
                    s = (w * cl).sum() / (cl * cl).sum().clamp_min(1e-12)
                self.dual_steps["low"].copy_(s.abs().clamp_min(1e-8).reshape(self.dual_steps["low"].shape))
            else:
                was = self.mode
                self.set_mode("low")
                self.calibrate(w)
                self.set_mode(was)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mode == "high" or not self.nested:
            return WeightQuantizer.forward(self, w)
        _, q_p = lsq.levels(self.dual_bits["low"], signed=True)
        per = w.numel() // self.step.numel()
        g = lsq.grad_scale_factor(per, max(q_p, 1))
        return self.low_codes(w) * grad_scale(self._mode_step("low", w), g)


class DualActQuantizer(_DualMixin, ActQuantizer):
    """An ActQuantizer with a high and a low mode; signedness is shared (found at calibration)."""

    def __init__(self, base: ActQuantizer, low_bits: int):
        ActQuantizer.__init__(self, base.bits, base.method)
        self.load_state_dict(base.state_dict())
        self._init_dual(self.step, base.bits, low_bits)


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
        for attr, w in _weight_slots(mod):
            dq = DualWeightQuantizer(getattr(mod, attr), lc.w_bits, low_weights, midpoint, couple)
            setattr(mod, attr, dq)
        for attr in _act_slots(mod):
            setattr(mod, attr, DualActQuantizer(getattr(mod, attr), lc.a_bits))
    # the low mode's steps: weights fitted, activations calibrated on the same batches
    for name, mod in quant_layers(applied.model):
        for attr, w in _weight_slots(mod):
            getattr(mod, attr).fit_low_step(w.detach())
    set_mode(applied.model, "low")
    calibrate(applied.model, calib, init=init)
    set_mode(applied.model, "high")
    applied.model.dual = {"high": hp.to_dict(), "low": lp.to_dict(), "low_weights": low_weights,
                          "midpoint": bool(midpoint), "couple": bool(couple)}
    return applied


def dual_quantizers(model: nn.Module) -> list[_DualMixin]:
    return [m for m in model.modules() if isinstance(m, _DualMixin)]


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every dual quantizer (and per-mode batch-norm statistics, if stored) to ``mode``."""
    if mode not in MODES:
        raise UserError(f"mode must be 'high' or 'low', got {mode!r}")
    qs = dual_quantizers(model)
    if not qs:
        raise UserError("this model has no dual-precision quantizers (build it with make_dual)")
    for q in qs:
        q.set_mode(mode)
    for bn in model.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and hasattr(bn, f"dual_mean_{mode}"):
            bn.running_mean.copy_(getattr(bn, f"dual_mean_{mode}"))
            bn.running_var.copy_(getattr(bn, f"dual_var_{mode}"))
    return model


def get_mode(model: nn.Module) -> str:
    qs = dual_quantizers(model)
    if not qs:
        raise UserError("this model has no dual-precision quantizers")
    return qs[0].mode


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
    groups = [{"params": weights, "lr": s.lr, "weight_decay": s.weight_decay},
              {"params": steps, "lr": s.lr_step, "weight_decay": 0.0},
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
    lr_low = s.lr_step if lr_step_low is None else lr_step_low
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
    from ..baselines import load_baseline
    from ..data import load_dataset
    from ..pipeline import _calibration_batches, baseline_accuracy
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


# ============================================================================ one packed model

class _PlanesGemm(nn.Module):
    """A dual Linear / Conv2d run through the float-activation bit-plane kernel.

    The high-mode weight codes are packed once (``layout="float"``); the mode picks how many
    top planes the kernel reads. Activations are fake-quantized in torch at the mode's
    precision and handed to the kernel as floats (exact: they are multiples of the step).
    """

    def __init__(self, name: str, mod: nn.Module):
        super().__init__()
        from .. import kernels as K
        wq = mod.wq
        if not isinstance(wq, DualWeightQuantizer) or not wq.active:
            raise UserError(f"layer {name!r}: not a dual layer with quantized weights")
        if wq.low_weights != "nested" and wq.dual_bits["low"] != wq.dual_bits["high"]:
            raise UserError(f"layer {name!r}: 'independent' low-mode weights are not the top planes of the "
                            "high-mode codes; one packed model cannot serve both modes")
        self.name, self.wq, self.aq = name, wq, mod.aq
        w = mod.masked_weight().detach()
        codes = wq.high_codes(w).reshape(w.shape[0], -1).to(torch.int64)
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

    def _scale(self, mode: str) -> tuple[np.ndarray, int, float]:
        s = self.wq.dual_steps[mode].detach().abs().clamp_min(1e-8).float().reshape(-1)
        s = s.expand(self.n) if s.numel() == 1 else s
        if mode == "high" or not self.wq.nested:
            return s.numpy().astype(np.float32), self.bits, 0.0
        d = 2 ** self.wq.shift
        return (s / d).numpy().astype(np.float32), self.wq.dual_bits["low"], 0.5 if self.wq.midpoint else 0.0

    def gemm(self, x2d: np.ndarray, mode: str) -> np.ndarray:
        from .. import kernels as K
        scale, planes, off = self._scale(mode)
        acc = K.gemm_float_act(self.packed, np.ascontiguousarray(x2d, dtype=np.float32), planes=planes)
        if off:  # midpoint: every low code carries +1/2, i.e. + 2^shift/2 in high-code units
            acc = acc + (off * 2 ** self.wq.shift) * x2d.sum(axis=1, dtype=np.float32)[:, None]
        y = acc * scale
        return y + self.bias if self.bias is not None else y

    def forward(self, x):
        from .. import kernels as K
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
