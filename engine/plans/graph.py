"""What a network is made of: its quantizable layers, their shapes, and which layers share
channels (so widening stays consistent through residual connections).

``analyze(model, input_shape)`` traces the model with torch.fx once and returns a
``Topology``: plain data (``LayerInfo`` rows and channel ``Space`` groups) that the cost model
and the dashboard use without touching torch again.
"""
from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from engine.plans.fxtrace import trace
from engine.plans.plan import LayerConfig, PlanError

QUANTIZABLE = (nn.Conv2d, nn.Linear, nn.LSTM, nn.GRU)
GATES = {"lstm": 4, "gru": 3}  # gate blocks of a recurrent layer's weight rows


@dataclass
class LayerInfo:
    """Shape facts of one quantizable layer, per sample (batch 1)."""

    name: str
    kind: str                       # "conv2d" | "linear" | "lstm" | "gru"
    in_channels: int                # conv in-channels, linear in-features, lstm input size
    out_channels: int               # conv out-channels, linear out-features, lstm hidden size
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    in_hw: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    steps: int = 1                  # lstm time steps, or rows a linear layer is applied to
    bias: bool = True
    is_output: bool = False
    is_input: bool = False          # it reads the network input (the data, not another layer)
    signed_input: bool | None = None  # its input can be negative (no ReLU-like op before it); None: unknown
    requantized: str = "unknown"      # its output goes to one next layer's input quantizer only: "direct"
                                      # (through ReLU, max-pool, reshapes), "after_bn" (a batch norm first),
                                      # or not ("none"); "unknown": not analyzed (an older topology)
    pooled: bool = False              # on that way its output passes a max-pool, which a runtime then runs
                                      # on the next layer's integer codes
    next_signed: bool | None = None   # that next layer reads it as signed codes; None: no such layer / unknown
    in_space: int = -1
    out_space: int = -1

    @property
    def positions(self) -> int:
        """Output positions at which the layer's weights are applied."""
        return self.out_hw[0] * self.out_hw[1] * self.steps

    @property
    def reduction(self) -> int:
        """Length of one dot product (the GEMM's K)."""
        if self.kind == "conv2d":
            return self.in_channels // self.groups * self.kernel[0] * self.kernel[1]
        if self.kind in GATES:
            return self.in_channels + self.out_channels
        return self.in_channels

    @property
    def gemm_n(self) -> int:
        """Output features computed per position (the GEMM's N)."""
        return GATES.get(self.kind, 1) * self.out_channels

    @property
    def weights(self) -> int:
        return self.gemm_n * self.reduction

    @property
    def macs(self) -> int:
        return self.weights * self.positions

    @property
    def act_in(self) -> int:
        """Input activation elements read per sample."""
        if self.kind == "conv2d":
            return self.in_channels * self.in_hw[0] * self.in_hw[1]
        return self.in_channels * self.steps

    @property
    def act_out(self) -> int:
        if self.kind == "conv2d":
            return self.out_channels * self.out_hw[0] * self.out_hw[1]
        return self.out_channels * self.steps

    @property
    def nm_dims(self) -> tuple[int, ...]:
        """Input dimensions an N:M pattern groups along (recurrent layers: input and recurrent)."""
        if self.kind == "conv2d":
            return (self.in_channels // self.groups,)
        if self.kind in GATES:
            return (self.in_channels, self.out_channels)
        return (self.in_channels,)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(macs=self.macs, weights=self.weights, reduction=self.reduction, positions=self.positions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerInfo":
        keys = {f for f in cls.__dataclass_fields__}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in keys}
        return cls(**kw)


@dataclass
class Space:
    """A set of channels shared by the layers that produce and consume them."""

    id: int
    size: int
    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (layer, features per channel)
    fixed: str | None = None  # why this space cannot be widened
    depthwise: list[str] = field(default_factory=list)  # depthwise layers carrying these channels through


@dataclass
class Topology:
    layers: list[LayerInfo]
    spaces: dict[int, Space]
    input_shape: tuple[int, ...]

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def layer(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    # ---- widening and validation --------------------------------------------------------
    def space_factors(self, configs: dict[str, LayerConfig]) -> dict[int, float]:
        """Widening factor of each channel space; producers that disagree are an error."""
        out = {}
        for sid, sp in self.spaces.items():
            ks = {p: float(configs[p].widen) for p in sp.producers if p in configs}
            vals = set(ks.values()) or {1.0}
            if len(vals) > 1:
                desc = ", ".join(f"{p!r} widen={k:g}" for p, k in ks.items())
                raise PlanError(f"layers {desc} share channels (residual connection); their widen must match")
            k = vals.pop()
            if k != 1.0 and sp.fixed:
                who = ", ".join(repr(p) for p in sp.producers)
                raise PlanError(f"layer {who}: widen={k:g} is not possible: {sp.fixed}")
            out[sid] = k
        return out

    def widened_size(self, sid: int, factors: dict[int, float]) -> int:
        return widened(self.spaces[sid].size, factors.get(sid, 1.0))

    def check(self, configs: dict[str, LayerConfig]) -> dict[int, float]:
        """Raise PlanError for configs this network cannot take; return the space factors."""
        factors = self.space_factors(configs)
        for sid, sp in self.spaces.items():
            for name in sp.depthwise:
                k = float(configs[name].widen) if name in configs else 1.0
                if k != 1.0 and k != factors.get(sid, 1.0):
                    who = ", ".join(repr(p) for p in sp.producers) or "its input"
                    raise PlanError(f"layer {name!r} is depthwise: its channels widen with {who} "
                                    f"(widen={factors.get(sid, 1.0):g}), not on their own (widen={k:g})")
        for layer in self.widened(configs, factors):
            cfg = configs[layer.name]
            nm = cfg.nm
            if nm and layer.kind == "conv2d" and layer.groups > 1 and layer.groups == layer.in_channels:
                taps = layer.kernel[0] * layer.kernel[1]
                if taps % nm[1]:
                    raise PlanError(
                        f"layer {layer.name!r}: sparsity={cfg.sparsity!r} is not possible on a depthwise "
                        f"convolution: each channel's filter has {taps} weights ({layer.kernel[0]}x"
                        f"{layer.kernel[1]}), not a multiple of {nm[1]}")
                continue
            if nm:
                for dim in layer.nm_dims:
                    if dim % nm[1]:
                        raise PlanError(
                            f"layer {layer.name!r}: sparsity={cfg.sparsity!r} needs the input dimension to be "
                            f"divisible by {nm[1]}, but it is {dim}")
        return factors

    def widened(self, configs: dict[str, LayerConfig], factors: dict[int, float] | None = None) -> list[LayerInfo]:
        """LayerInfo rows with widening applied to inputs and outputs."""
        factors = self.space_factors(configs) if factors is None else factors
        rows = []
        for layer in self.layers:
            d = asdict(layer)
            if layer.out_space in self.spaces:
                d["out_channels"] = self.widened_size(layer.out_space, factors)
            if layer.in_space in self.spaces:
                rep = layer.in_channels // self.spaces[layer.in_space].size
                d["in_channels"] = self.widened_size(layer.in_space, factors) * rep
            if layer.kind == "conv2d" and layer.groups > 1:
                dw = layer.groups == layer.in_channels == layer.out_channels
                d["groups"] = d["in_channels"] if dw else layer.groups
            rows.append(LayerInfo(**d))
        return rows

    def to_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "layers": [layer.to_dict() for layer in self.layers],
                "spaces": [asdict(s) for s in self.spaces.values()]}


def _is_depthwise(mod: nn.Conv2d) -> bool:
    return mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels


def widened(size: int, k: float) -> int:
    """Channels after widening by k: rounded to an integer, never fewer than before."""
    return max(size, int(math.floor(size * k + 0.5)))


_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU,
                 nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d, nn.Identity)
_PASS_FUNCS = {F.relu, torch.relu, F.relu6, torch.tanh, torch.sigmoid, F.max_pool2d, F.avg_pool2d,
               F.adaptive_avg_pool2d, F.dropout, F.gelu, F.leaky_relu, F.hardtanh, torch.nn.functional.silu}
_PASS_METHODS = {"relu", "tanh", "sigmoid", "contiguous", "clone", "float"}
# which pass-through ops make their output non-negative (True) or possibly negative (False); the rest
# (pooling, dropout, identity, copies) keep their input's sign
_NONNEG_MODULES = {nn.ReLU: True, nn.ReLU6: True, nn.Sigmoid: True, nn.LeakyReLU: False, nn.Hardtanh: False,
                   nn.Tanh: False, nn.GELU: False, nn.SiLU: False}
_NONNEG_FUNCS = {F.relu: True, torch.relu: True, F.relu6: True, torch.sigmoid: True, torch.tanh: False,
                 F.gelu: False, F.leaky_relu: False, F.hardtanh: False, torch.nn.functional.silu: False}
_NONNEG_METHODS = {"relu": True, "sigmoid": True, "tanh": False}


def _signed_as(src: "_T", nonneg: bool | None) -> "_T":
    """``src`` through an op that makes it non-negative (True), possibly negative (False) or keeps it (None)."""
    return src if nonneg is None or nonneg == src.nonneg else replace(src, nonneg=nonneg)
_ADD = {operator.add, operator.iadd, torch.add}
_FLATTEN_FUNCS = {torch.flatten}
_FLATTEN_METHODS = {"view", "reshape", "flatten"}


@dataclass
class _T:
    """Tracking state of one traced value: which space its feature axis carries."""

    space: int
    axis: int           # feature axis (1 for NCHW / NC, -1 for sequences)
    repeat: int = 1     # features per channel after a flatten
    data: bool = False  # derived from the network input by reshapes only (no layer in between)
    nonneg: bool = False  # provably >= 0 (after ReLU / ReLU6 / sigmoid, through pooling and reshapes)


def analyze(model: nn.Module, input_shape: tuple[int, ...]) -> Topology:
    """Trace ``model`` on a zero input of ``input_shape`` (without batch) and describe it."""
    model = model.eval()
    try:
        gm = trace(model)
    except Exception as e:
        raise PlanError(f"bitscape cannot trace this model with torch.fx ({type(e).__name__}: {e}); "
                        "models need a static forward (no data-dependent control flow)") from None
    example = torch.zeros((1, *input_shape))
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    modules = dict(gm.named_modules())

    parent: dict[int, int] = {}
    spaces: dict[int, Space] = {}

    def new_space(size, fixed=None) -> int:
        sid = len(parent)
        parent[sid] = sid
        spaces[sid] = Space(sid, size, fixed=fixed)
        return sid

    def find(s):
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    def union(a, b):
        a, b = find(a), find(b)
        if a == b:
            return a
        sa, sb = spaces[a], spaces[b]
        if sa.size != sb.size:
            fix(a, "its channels meet others of a different count")
        parent[b] = a
        sa.producers += sb.producers
        sa.norms += sb.norms
        sa.consumers += sb.consumers
        sa.depthwise += sb.depthwise
        sa.fixed = sa.fixed or sb.fixed
        return a

    def fix(s, why):
        sp = spaces[find(s)]
        sp.fixed = sp.fixed or why

    def shape(node):
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    state: dict[torch.fx.Node, object] = {}
    layers: list[LayerInfo] = []
    infos: dict[str, LayerInfo] = {}

    def tensor_args(node):
        return [a for a in node.args if isinstance(a, torch.fx.Node) and isinstance(state.get(a), _T)]

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            shp = shape(node)
            axis = 1 if shp is not None and len(shp) != 3 else -1
            size = shp[axis] if shp else 1
            state[node] = _T(new_space(size, fixed="it carries the network input"), axis, data=True)
            continue
        if node.op == "output":
            for a in node.all_input_nodes:
                if isinstance(state.get(a), _T):
                    fix(state[a].space, "it carries the network output")
            continue
        args = tensor_args(node)
        src = state.get(args[0]) if args else None
        out_shape = shape(node)

        if node.op == "call_module":
            mod = modules[node.target]
            name = node.target
            if isinstance(mod, nn.RNN):
                raise PlanError(f"layer {name!r}: RNN layers are not supported yet (Conv2d, Linear, LSTM and GRU are)")
            if isinstance(mod, QUANTIZABLE):
                in_shape = shape(node.args[0])
                if isinstance(mod, nn.Conv2d):
                    if _is_depthwise(mod) and src is not None and src.repeat == 1:
                        # one filter per channel: its channels are its producer's, widened together
                        sp = find(src.space)
                        info = LayerInfo(name, "conv2d", mod.in_channels, mod.out_channels,
                                         kernel=tuple(mod.kernel_size), stride=tuple(mod.stride), groups=mod.groups,
                                         in_hw=tuple(in_shape[2:4]), out_hw=tuple(out_shape[2:4]),
                                         bias=mod.bias is not None, in_space=sp, out_space=sp)
                        spaces[sp].depthwise.append(name)
                        state[node] = _T(sp, 1)
                        layers.append(info)
                        infos[name] = info
                        continue
                    if mod.groups > 1:
                        if src is not None:
                            fix(src.space, f"grouped convolution {name!r} follows it")
                    info = LayerInfo(name, "conv2d", mod.in_channels, mod.out_channels,
                                     kernel=tuple(mod.kernel_size), stride=tuple(mod.stride), groups=mod.groups,
                                     in_hw=tuple(in_shape[2:4]), out_hw=tuple(out_shape[2:4]),
                                     bias=mod.bias is not None)
                    size = mod.out_channels
                elif isinstance(mod, nn.Linear):
                    steps = int(math.prod(in_shape[1:-1])) if len(in_shape) > 2 else 1
                    info = LayerInfo(name, "linear", mod.in_features, mod.out_features, steps=steps,
                                     bias=mod.bias is not None)
                    size = mod.out_features
                else:
                    kind = "lstm" if isinstance(mod, nn.LSTM) else "gru"
                    if mod.num_layers != 1 or mod.bidirectional or not mod.batch_first or getattr(mod, "proj_size", 0):
                        raise PlanError(f"layer {name!r}: only single-layer, unidirectional, batch_first "
                                        f"{kind.upper()}s without projection are supported")
                    info = LayerInfo(name, kind, mod.input_size, mod.hidden_size, steps=int(in_shape[1]),
                                     bias=mod.bias)
                    size = mod.hidden_size
                if src is not None:
                    sp = find(src.space)
                    info.in_space = sp
                    info.is_input = src.data
                    info.signed_input = not src.nonneg
                    spaces[sp].consumers.append((name, src.repeat))
                    if src.repeat * spaces[sp].size != info.in_channels:
                        fix(sp, f"layer {name!r} reads it in a layout bitscape cannot follow")
                out = new_space(size)
                spaces[out].producers.append(name)
                info.out_space = out
                if isinstance(mod, (nn.LSTM, nn.GRU)):
                    spaces[out].consumers.append((name, 1))  # recurrent weights read the hidden state
                    state[node] = ("recurrent", out)
                else:
                    state[node] = _T(out, 1 if isinstance(mod, nn.Conv2d) else -1)
                layers.append(info)
                infos[name] = info
                continue
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) and src is not None:
                spaces[find(src.space)].norms.append(name)
                state[node] = _signed_as(src, False)
                continue
            if isinstance(mod, _PASS_MODULES) and src is not None:
                state[node] = _signed_as(src, _NONNEG_MODULES.get(type(mod)))
                continue
            if isinstance(mod, nn.Flatten) and src is not None:
                state[node] = _flatten(src, shape(node.args[0]), out_shape) or _unsupported(node, src, fix, new_space)
                continue
        elif node.op == "call_function":
            fn = node.target
            if fn is operator.getitem:
                base = state.get(node.args[0])
                if isinstance(base, tuple) and base[0] == "recurrent":
                    state[node] = _T(base[1], -1) if node.args[1] == 0 else ("recurrent_state", base[1])
                    continue
                if isinstance(base, tuple) and base[0] == "recurrent_state":
                    state[node] = _T(base[1], -1)
                    continue
                if isinstance(base, _T):
                    in_shape = shape(node.args[0])
                    if base.axis == -1 and in_shape and out_shape and in_shape[-1] == out_shape[-1]:
                        state[node] = _T(base.space, -1, base.repeat, base.data, base.nonneg)
                        continue
                    state[node] = _unsupported(node, base, fix, new_space)
                    continue
            if fn in _ADD and len(args) == 2:
                a, b = state[args[0]], state[args[1]]
                union(a.space, b.space)
                state[node] = _T(find(a.space), a.axis, a.repeat, a.data and b.data, a.nonneg and b.nonneg)
                continue
            if fn in _ADD and len(args) == 1:
                state[node] = src
                continue
            if fn in _PASS_FUNCS and src is not None:
                state[node] = _signed_as(src, _NONNEG_FUNCS.get(fn))
                continue
            if fn in _FLATTEN_FUNCS and src is not None:
                state[node] = _flatten(src, shape(args[0]), out_shape) or _unsupported(node, src, fix, new_space)
                continue
        elif node.op == "call_method":
            if node.target in _PASS_METHODS and src is not None:
                state[node] = _signed_as(src, _NONNEG_METHODS.get(node.target))
                continue
            if node.target in _FLATTEN_METHODS and src is not None:
                state[node] = _flatten(src, shape(args[0]), out_shape) or _unsupported(node, src, fix, new_space)
                continue
            if node.target == "mean" and src is not None:
                in_shape = shape(args[0])
                if in_shape and out_shape and len(in_shape) == 4 and out_shape[:2] == in_shape[:2]:
                    state[node] = _T(src.space, 1, src.repeat, src.data, src.nonneg)
                    continue
        if args or src is not None:
            for a in args:
                state[node] = _unsupported(node, state[a], fix, new_space)
        elif out_shape is not None and len(out_shape) > 1:
            state[node] = _T(new_space(out_shape[1], fixed=f"it comes from {node.name}"), 1)

    for name, (how, pooled, nxt) in _requantized(gm, modules, set(infos)).items():
        infos[name].requantized, infos[name].pooled = how, pooled
        infos[name].next_signed = infos[nxt].signed_input if nxt else None

    # canonical spaces: roots only, ids re-pointed
    roots = {sid: sp for sid, sp in spaces.items() if find(sid) == sid}
    for info in layers:
        info.in_space = find(info.in_space) if info.in_space >= 0 else -1
        info.out_space = find(info.out_space)
        if roots[info.out_space].fixed == "it carries the network output":
            info.is_output = True
    return Topology(layers=layers, spaces=roots, input_shape=tuple(input_shape))


_KEEP_MODULES = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
_KEEP_FUNCS = {F.relu, torch.relu, F.max_pool2d, torch.flatten, F.dropout}
_KEEP_METHODS = {"relu", "view", "reshape", "flatten", "contiguous"}


def _requantized(gm: torch.fx.GraphModule, modules: dict, layers: set[str]) -> dict[str, tuple[str, bool, str | None]]:
    """Per layer, whether its output reaches exactly one next layer (whose input quantizer then takes
    it) through a chain of single-use ops a runtime fuses into the requantization (ReLU, max-pool,
    reshapes): "direct", "after_bn" (a batch norm right after the layer, which a runtime must fold
    first), or "none" (an add, a fan-out, the network output...); whether that chain passes a
    max-pool; and that next layer's name. Integer runtimes run a convolution as an integer kernel only
    when its output is requantized, and then max-pool the next layer's codes."""
    out: dict[str, tuple[str, bool, str | None]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in layers:
            continue
        cur, how, pooled = node, "direct", False
        while True:
            if len(cur.users) != 1:
                how = "none"
                break
            u = next(iter(cur.users))
            mod = modules.get(u.target) if u.op == "call_module" else None
            if mod is not None and u.target in layers and u.args and u.args[0] is cur:
                cur = u
                break
            if cur is node and isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                how = "after_bn"
            elif not (isinstance(mod, _KEEP_MODULES) or (u.op == "call_function" and u.target in _KEEP_FUNCS)
                      or (u.op == "call_method" and u.target in _KEEP_METHODS)):
                how = "none"
                break
            pooled = pooled or isinstance(mod, nn.MaxPool2d) or (u.op == "call_function" and u.target is F.max_pool2d)
            cur = u
        reached = how != "none"
        out[node.target] = (how, pooled and reached, str(cur.target) if reached else None)
    return out


def _flatten(src: _T, in_shape, out_shape) -> _T | None:
    if not in_shape or not out_shape:
        return None
    if len(out_shape) == 2 and src.axis == 1 and out_shape[1] == math.prod(in_shape[1:]):
        return _T(src.space, 1, src.repeat * int(math.prod(in_shape[2:])), src.data, src.nonneg)
    if tuple(in_shape) == tuple(out_shape):
        return src
    return None


def _unsupported(node, src: _T, fix, new_space) -> _T:
    fix(src.space, f"it goes through {node.target if isinstance(node.target, str) else getattr(node.target, '__name__', node.name)!s}, "
                   "which bitscape cannot widen through")
    return _T(new_space(1, fixed=f"it comes from {node.name}"), 1, data=src.data)
