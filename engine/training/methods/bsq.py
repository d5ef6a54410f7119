"""BSQ: bit-level sparsity quantization (Yang et al., ICLR 2021) as a mixed-precision search.

Every weight of a layer is written in sign-magnitude with ``N = max_bits - 1`` magnitude
bit-planes, each bit a trainable variable relaxed to [0, 2] (a positive and a negative part):

    W = scale / (2^N - 1) * round_ste( sum_b 2^b (Wp_b - Wn_b) )

trained with the task loss plus a bit-level group-Lasso regulariser that drives whole
bit-planes of a layer to zero:

    R = sum_l alpha_l * sum_b sqrt(mean(Wp_b^2 + Wn_b^2)),
    alpha_l = params_l * bits_l / sum_j params_j * bits_j     (memory-aware reweighting)

(the per-plane norm is an RMS so that ``strength`` does not depend on layer sizes). Every
``requant_every`` steps the relaxed bits are re-quantized to exact binary (carries included)
and the precision adjusted: planes above the highest and below the lowest non-zero plane
are dropped (frozen at zero). A layer's precision is then ``hi - lo + 1`` magnitude bits plus
a sign bit; the result is an ``engine.plans.plan.Plan`` (per-layer ``w_bits``, activations at a
fixed ``a_bits``) to be fine-tuned and evaluated like any other plan.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as P

from engine.errors import UserError
from engine.evaluation import Settings, rates
from engine.models.data import Dataset
from engine.plans.apply import apply_plan, calibrate
from engine.plans.layers import QuantRecurrent
from engine.plans.plan import FLOAT_BITS, LayerConfig, Plan
from engine.quant.ste import round_ste
from engine.training import finetune as ft
from engine.training.finetune import accuracy


class BitWeight(nn.Module):
    """A parametrization: the weight rebuilt from trainable relaxed bit-planes and a scale."""

    def __init__(self, w: torch.Tensor, planes: int):
        super().__init__()
        self.n = int(planes)
        levels = 2 ** self.n - 1
        w = w.detach().float()
        s = w.abs().max().clamp_min(1e-8)
        v = torch.round(w.abs() / s * levels).to(torch.int64)
        b = torch.arange(self.n).reshape(-1, *([1] * w.dim()))
        bits = ((v.unsqueeze(0) >> b) & 1).float()
        self.wp = nn.Parameter(bits * (w > 0).float())
        self.wn = nn.Parameter(bits * (w < 0).float())
        self.scale = nn.Parameter(s.reshape(1))
        self.register_buffer("active", torch.ones(self.n))
        self.register_buffer("pow2", (2.0 ** torch.arange(self.n)).reshape(-1, *([1] * w.dim())))

    def _mask(self) -> torch.Tensor:
        return self.active.reshape(-1, *([1] * (self.wp.dim() - 1)))

    def integer_value(self) -> torch.Tensor:
        return ((self.wp - self.wn) * self._mask() * self.pow2).sum(0)

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        return round_ste(self.integer_value()) * (self.scale / (2 ** self.n - 1))

    def plane_norms(self) -> torch.Tensor:
        """RMS of each plane (positive and negative parts together), shape (n,)."""
        sq = (self.wp ** 2 + self.wn ** 2) * self._mask()
        return (sq.reshape(self.n, -1).mean(1) + 1e-12).sqrt()

    @torch.no_grad()
    def clamp_(self) -> None:
        self.wp.clamp_(0, 2)
        self.wn.clamp_(0, 2)
        m = self._mask()
        self.wp.mul_(m)
        self.wn.mul_(m)

    @torch.no_grad()
    def requantize_(self) -> None:
        """Relaxed bits -> exact binary planes (carries into higher planes; values clipped to N
        bits), then freeze the all-zero planes above the highest / below the lowest live one."""
        levels = 2 ** self.n - 1
        v = torch.round(self.integer_value()).clamp(-levels, levels).to(torch.int64)
        b = torch.arange(self.n).reshape(-1, *([1] * v.dim()))
        mag = v.abs().unsqueeze(0)
        bits = ((mag >> b) & 1).float()
        self.wp.copy_(bits * (v > 0).float())
        self.wn.copy_(bits * (v < 0).float())
        live = bits.reshape(self.n, -1).amax(1) > 0
        self.active.copy_(torch.zeros_like(self.active))
        if live.any():
            idx = torch.nonzero(live).flatten()
            self.active[int(idx.min()):int(idx.max()) + 1] = 1.0
        self.clamp_()

    def magnitude_bits(self) -> int:
        """hi - lo + 1 over the live planes (0 when the weight is all zero)."""
        live = torch.nonzero(self.active > 0).flatten()
        if live.numel() == 0:
            return 0
        return int(live.max() - live.min() + 1)

    def live_planes(self) -> list[int]:
        """Indices of planes holding at least one 1 (after requantize_)."""
        with torch.no_grad():
            nz = (self.wp + self.wn).reshape(self.n, -1).amax(1) > 0
        return [int(i) for i in torch.nonzero(nz).flatten()]


def _weights_of(mod: nn.Module) -> list[str]:
    if isinstance(mod, QuantRecurrent):
        return ["weight_ih", "weight_hh"]
    if isinstance(mod, (nn.Linear, nn.Conv2d)):
        return ["weight"]
    return []


@dataclass
class BSQModel:
    """A network whose searched layers' weights are bit-plane parametrized."""

    model: nn.Module
    bits: dict[str, list[BitWeight]]           # layer name -> its BitWeights
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it is not searched

    def parameters_of_bits(self) -> list[nn.Parameter]:
        return [p for bws in self.bits.values() for bw in bws for p in (bw.wp, bw.wn)]

    def scales(self) -> list[nn.Parameter]:
        return [bw.scale for bws in self.bits.values() for bw in bws]

    def layer_bits(self) -> dict[str, int]:
        """Magnitude bits per layer (max over its weight tensors)."""
        return {n: max(bw.magnitude_bits() for bw in bws) for n, bws in self.bits.items()}

    def alphas(self) -> dict[str, float]:
        sizes = {n: sum(bw.wp[0].numel() for bw in bws) for n, bws in self.bits.items()}
        lb = self.layer_bits()
        tot = sum(sizes[n] * max(lb[n], 1) for n in sizes) or 1
        return {n: sizes[n] * max(lb[n], 1) / tot for n in sizes}

    def regulariser(self, alphas: dict[str, float]) -> torch.Tensor:
        terms = [alphas[n] * bw.plane_norms().sum() for n, bws in self.bits.items() for bw in bws]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def clamp_(self) -> None:
        for bws in self.bits.values():
            for bw in bws:
                bw.clamp_()

    def requantize_(self) -> None:
        for bws in self.bits.values():
            for bw in bws:
                bw.requantize_()

    def total_planes(self) -> int:
        """Live (non-zero) bit-planes over all searched layers."""
        return sum(len(bw.live_planes()) for bws in self.bits.values() for bw in bws)


def make_bsq(model: nn.Module, input_shape: tuple[int, ...], max_bits: int = 8, a_bits: int = 8,
             calib=(), seed: int = 0) -> BSQModel:
    """A copy of the FP32 ``model`` with activations quantized at ``a_bits`` (LSQ, calibrated on
    ``calib``) and every Linear / Conv2d / LSTM weight in ``max_bits - 1`` magnitude planes + sign."""
    if not 2 <= max_bits <= 8:
        raise UserError(f"max_bits must be in 2..8, got {max_bits}")
    if a_bits != FLOAT_BITS and not 1 <= a_bits <= 8:
        raise UserError(f"a_bits must be in 1..8 or 32, got {a_bits}")
    torch.manual_seed(seed)
    if a_bits == FLOAT_BITS:
        net = copy.deepcopy(model)
        from engine.plans.graph import analyze
        names = analyze(net, input_shape).names
    else:
        applied = apply_plan(model, Plan.uniform(FLOAT_BITS, a_bits), input_shape, seed=seed)
        net, names = applied.model, applied.topology.names
        calibrate(net, list(calib))
    bits: dict[str, list[BitWeight]] = {}
    skipped: dict[str, str] = {}
    for name in names:
        mod = net.get_submodule(name)
        attrs = _weights_of(mod)
        if not attrs:
            skipped[name] = f"{type(mod).__name__} weights are not bit-parametrized (kept at {max_bits} bits)"
            continue
        bws = []
        for a in attrs:
            bw = BitWeight(getattr(mod, a), max_bits - 1)
            P.register_parametrization(mod, a, bw, unsafe=True)
            getattr(mod.parametrizations, a).original.requires_grad_(False)
            bws.append(bw)
        bits[name] = bws
    return BSQModel(net, bits, skipped)


@dataclass
class BSQResult:
    plan: Plan
    layer_bits: dict[str, int]                 # plan w_bits per layer (sign included)
    magnitude_bits: dict[str, int]
    val_accuracy: float                        # of the bit-parametrized network after the search
    baseline_val_accuracy: float
    history: list[dict] = field(default_factory=list)
    loss_curve: list[float] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def mean_bits(self) -> float:
        return sum(self.layer_bits.values()) / max(len(self.layer_bits), 1)

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "layer_bits": self.layer_bits, "magnitude_bits": self.magnitude_bits,
                "mean_bits": round(self.mean_bits, 4), "val_accuracy": self.val_accuracy,
                "baseline_val_accuracy": self.baseline_val_accuracy, "history": self.history,
                "skipped": self.skipped, "settings": self.settings, "wall_s": self.wall_s,
                "final_loss": self.loss_curve[-1] if self.loss_curve else None}


def run_bsq(model: nn.Module, data: Dataset, strength: float, steps: int, max_bits: int = 8, a_bits: int = 8,
            min_bits: int = 2, requant_every: int = 50, lr_bits: float = 0.01, settings: Settings | None = None,
            teacher: nn.Module | None = None, model_id: str | None = None, progress=None,
            should_stop=None) -> BSQResult:
    """Search per-layer weight precision on an FP32 ``model`` (see the module docstring).

    ``strength`` weighs the bit-sparsity regulariser against the task loss (CE, or KD with a
    ``teacher``); ``lr_bits`` is Adam's learning rate for the relaxed bits, ``settings.lr_step``
    the scales'. Layers end at ``max(min_bits, magnitude bits + 1)`` weight bits.
    """
    if strength < 0:
        raise UserError(f"strength must be 0 or more, got {strength}")
    if steps < 0:
        raise UserError(f"steps must be 0 or more, got {steps}")
    if not 1 <= min_bits <= max_bits:
        raise UserError(f"min_bits must be in 1..max_bits, got {min_bits}")
    if requant_every < 1:
        raise UserError("requant_every must be at least 1")
    s = settings or Settings()
    t0 = time.perf_counter()
    from engine.explore.pipeline import _calibration_batches
    bm = make_bsq(model, data.input_shape, max_bits, a_bits, _calibration_batches(data, s), s.seed)
    base_val = accuracy(model, data.x_val, data.y_val)
    task = ft.default_loss(s, teacher)
    state = {"alphas": bm.alphas()}
    history: list[dict] = []

    def loss(m, xb, yb, step):
        return task(m, xb, yb, step) + strength * bm.regulariser(state["alphas"])

    def after(step):
        bm.clamp_()
        if (step + 1) % requant_every == 0:
            bm.requantize_()
            state["alphas"] = bm.alphas()
            history.append({"step": step + 1, "bits": bm.layer_bits(), "planes": bm.total_planes()})

    bit_params = bm.parameters_of_bits()
    ids = {id(p) for p in bit_params} | {id(p) for p in bm.scales()}
    rest = [p for p in bm.model.parameters() if p.requires_grad and id(p) not in ids]
    steps_q = [p for n, p in bm.model.named_parameters() if id(p) in {id(q) for q in rest} and ft.is_step_param(n)]
    rest = [p for p in rest if all(p is not q for q in steps_q)]
    lr, lr_step = rates(s)
    groups = [{"params": bit_params, "lr": lr_bits, "weight_decay": 0.0},
              {"params": bm.scales() + steps_q, "lr": lr_step, "weight_decay": 0.0},
              {"params": rest, "lr": lr, "weight_decay": s.weight_decay}]
    r = ft.optimise(bm.model, data, s, loss, steps=steps, after_step=after, groups=[g for g in groups if g["params"]],
                  progress=progress, should_stop=should_stop, cosine=False)
    bm.requantize_()
    mag = bm.layer_bits()
    val = accuracy(bm.model, data.x_val, data.y_val)
    layer_bits = {n: max(min_bits, min(max_bits, b + 1)) for n, b in mag.items()}
    for n in bm.skipped:
        layer_bits[n] = max_bits
    layers = {n: {"w_bits": b} for n, b in layer_bits.items()}
    plan = Plan(default=LayerConfig(w_bits=max_bits, a_bits=a_bits), layers=layers, model=model_id,
                name=f"bsq strength={strength:g}")
    settings_d = {**s.to_dict(), "strength": strength, "steps": steps, "max_bits": max_bits, "a_bits": a_bits,
                  "min_bits": min_bits, "requant_every": requant_every, "lr_bits": lr_bits}
    return BSQResult(plan, layer_bits, mag, val, base_val, history, r.loss_curve, bm.skipped, settings_d,
                     round(time.perf_counter() - t0, 3))


def bsq(model_id: str, dataset_id: str, strength: float = 10.0, steps: int = 300, max_bits: int = 8,
        a_bits: int = 8, min_bits: int = 2, requant_every: int = 50, lr_bits: float = 0.01,
        settings: Settings | None = None, distill: bool = False, data: Dataset | None = None,
        baseline: nn.Module | None = None, progress=None, should_stop=None) -> BSQResult:
    """``run_bsq`` on a zoo (or user) model's FP32 baseline; the full result."""
    from engine.models.baselines import load_baseline
    from engine.models.data import load_dataset
    data = data or load_dataset(dataset_id)
    teacher = baseline if baseline is not None else load_baseline(model_id, dataset_id, data)
    return run_bsq(teacher, data, strength, steps, max_bits, a_bits, min_bits, requant_every, lr_bits, settings,
                   teacher if distill else None, model_id, progress, should_stop)


def bsq_search(model_id: str, dataset_id: str, strength: float = 10.0, steps: int = 300, **kw) -> Plan:
    """BSQ as a search method: the per-layer precision plan it finds (see ``bsq``)."""
    return bsq(model_id, dataset_id, strength, steps, **kw).plan
