"""Lowering: a planned torch network -> a ``PackedNetwork`` (ops as plain data + packed layers).

``deploy(applied)`` walks the planned network's torch.fx graph once (``engine.plans.fxtrace``). GEMM layers
are lowered by the handlers registered in ``engine.deploy.kinds.LOWER`` (their numbers come from the
quantizers' ``spec`` only); the other modules map to runtime ops through ``MODULE_OPS``.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from engine.deploy.kinds import is_layer, lower_layer
from engine.deploy.operands import DeployError
from engine.deploy.ops import _pair
from engine.deploy.runtime import Layer, PackedNetwork
from engine.plans.fxtrace import Tracer
from engine.plans.handlers import Handlers
from engine.quant.modules import ActQuantizer

# ---- op-argument encoding (JSON) --------------------------------------------------------

def _enc(a, names):
    if isinstance(a, torch.fx.Node):
        return {"ref": names[a]}
    if isinstance(a, slice):
        return {"slice": [_enc(a.start, names), _enc(a.stop, names), _enc(a.step, names)]}
    if isinstance(a, tuple):
        return {"tuple": [_enc(v, names) for v in a]}
    if isinstance(a, list):
        return {"list": [_enc(v, names) for v in a]}
    if a is Ellipsis:
        return {"ellipsis": True}
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    raise DeployError(f"argument {a!r} ({type(a).__name__}) cannot be stored in a packed network")


def _bind(node, params: list[tuple[str, object]]) -> dict:
    """Positional + keyword arguments of an fx node as {param: value}, with defaults."""
    out = {}
    for (name, _default), v in zip(params, node.args):
        out[name] = v
    for name, default in params[len(node.args):]:
        out[name] = node.kwargs.get(name, default)
    return out


_POOL_PARAMS = [("input", None), ("kernel_size", None), ("stride", None), ("padding", 0), ("dilation", 1),
                ("ceil_mode", False)]


def _pool_op(node, kind, names, where):
    b = _bind(node, _POOL_PARAMS)
    if b.get("ceil_mode") or _pair(b.get("dilation", 1) or 1) != (1, 1) or node.kwargs.get("return_indices"):
        raise DeployError(f"{where}: {kind} with ceil_mode, dilation or return_indices is not supported")
    return {"op": kind, "args": [_enc(b["input"], names)],
            "kwargs": {"kernel_size": _enc(b["kernel_size"], names), "stride": _enc(b["stride"], names),
                       "padding": _enc(b["padding"], names)}}


MODULE_OPS = Handlers("packed deployment ops")
"""Non-GEMM module type -> fn(mod, src, names, where) giving its runtime op (batch norm is handled apart)."""


def _unary(op):
    return lambda mod, src, names, where: {"op": op, "args": [src]}


MODULE_OPS.register(nn.ReLU)(_unary("relu"))
MODULE_OPS.register(nn.Tanh)(_unary("tanh"))
MODULE_OPS.register(nn.Sigmoid)(_unary("sigmoid"))
MODULE_OPS.register(nn.Dropout, nn.Dropout2d, nn.Identity)(_unary("identity"))


@MODULE_OPS.register(nn.MaxPool2d, nn.AvgPool2d)
def _pool_module(mod, src, names, where):
    kind = "avg_pool2d" if isinstance(mod, nn.AvgPool2d) else "max_pool2d"
    if getattr(mod, "ceil_mode", False) or _pair(getattr(mod, "dilation", 1)) != (1, 1):
        raise DeployError(f"{where}: {kind} with ceil_mode or dilation is not supported")
    if kind == "avg_pool2d" and (not mod.count_include_pad or mod.divisor_override):
        raise DeployError(f"{where}: avg_pool2d without count_include_pad is not supported")
    return {"op": kind, "args": [src], "kwargs": {"kernel_size": _enc(mod.kernel_size, names),
                                                   "stride": _enc(mod.stride, names),
                                                   "padding": _enc(mod.padding, names)}}


@MODULE_OPS.register(nn.AdaptiveAvgPool2d)
def _adaptive_pool_module(mod, src, names, where):
    if _pair(mod.output_size) != (1, 1):
        raise DeployError(f"{where}: adaptive_avg_pool2d to {mod.output_size} is not supported")
    return {"op": "adaptive_avg_pool2d", "args": [src], "kwargs": {"output_size": 1}}


@MODULE_OPS.register(nn.Flatten)
def _flatten_module(mod, src, names, where):
    return {"op": "flatten", "args": [src], "kwargs": {"start_dim": mod.start_dim, "end_dim": mod.end_dim}}


def _module_op(mod, node, names, layer_names, where):
    src = _enc(node.args[0], names) if node.args else None
    if node.target in layer_names:
        return {"op": "layer", "layer": node.target, "args": [src]}
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return {"op": "batchnorm", "norm": node.target, "args": [src]}
    fn = MODULE_OPS.lookup(mod)
    if fn is None:
        raise DeployError(f"{where}: module {type(mod).__name__} is not supported by the packed deployment")
    return fn(mod, src, names, where)


def _function_op(node, names, where):
    fn = node.target
    def enc(v):
        return _enc(v, names)
    if fn in (F.relu, torch.relu):
        return {"op": "relu", "args": [enc(node.args[0])]}
    if fn in (torch.tanh, F.tanh):
        return {"op": "tanh", "args": [enc(node.args[0])]}
    if fn in (torch.sigmoid, F.sigmoid):
        return {"op": "sigmoid", "args": [enc(node.args[0])]}
    if fn in (F.dropout,):
        return {"op": "identity", "args": [enc(node.args[0])]}
    if fn is F.max_pool2d:
        return _pool_op(node, "max_pool2d", names, where)
    if fn is F.avg_pool2d:
        b = _bind(node, [("input", None), ("kernel_size", None), ("stride", None), ("padding", 0),
                         ("ceil_mode", False), ("count_include_pad", True), ("divisor_override", None)])
        if b["ceil_mode"] or not b["count_include_pad"] or b["divisor_override"]:
            raise DeployError(f"{where}: avg_pool2d with ceil_mode/count_include_pad=False/divisor_override "
                              "is not supported")
        return {"op": "avg_pool2d", "args": [enc(b["input"])],
                "kwargs": {"kernel_size": enc(b["kernel_size"]), "stride": enc(b["stride"]),
                           "padding": enc(b["padding"])}}
    if fn is F.adaptive_avg_pool2d:
        b = _bind(node, [("input", None), ("output_size", None)])
        if _pair(b["output_size"]) != (1, 1):
            raise DeployError(f"{where}: adaptive_avg_pool2d to {b['output_size']} is not supported")
        return {"op": "adaptive_avg_pool2d", "args": [enc(b["input"])], "kwargs": {"output_size": 1}}
    if fn is torch.flatten:
        b = _bind(node, [("input", None), ("start_dim", 0), ("end_dim", -1)])
        return {"op": "flatten", "args": [enc(b["input"])],
                "kwargs": {"start_dim": b["start_dim"], "end_dim": b["end_dim"]}}
    if fn in (operator.add, operator.iadd, torch.add) and len(node.args) == 2 and not node.kwargs:
        return {"op": "add", "args": [enc(node.args[0]), enc(node.args[1])]}
    if fn is operator.getitem:
        return {"op": "getitem", "args": [enc(node.args[0]), enc(node.args[1])]}
    name = getattr(fn, "__name__", str(fn))
    raise DeployError(f"{where}: function {name!r} is not supported by the packed deployment")


def _method_op(node, names, where):
    def enc(v):
        return _enc(v, names)
    m = node.target
    args = [enc(a) for a in node.args]
    if m in ("relu", "tanh", "sigmoid"):
        return {"op": m, "args": args[:1]}
    if m in ("contiguous", "clone", "float", "detach"):
        return {"op": "identity", "args": args[:1]}
    if m in ("view", "reshape"):
        return {"op": "reshape", "args": args}
    if m == "permute":
        return {"op": "permute", "args": args}
    if m == "flatten":
        b = _bind(node, [("self", None), ("start_dim", 0), ("end_dim", -1)])
        return {"op": "flatten", "args": args[:1], "kwargs": {"start_dim": b["start_dim"], "end_dim": b["end_dim"]}}
    if m == "mean":
        b = _bind(node, [("self", None), ("dim", None), ("keepdim", False)])
        return {"op": "mean", "args": args[:1], "kwargs": {"dim": enc(b["dim"]), "keepdim": b["keepdim"]}}
    raise DeployError(f"{where}: method .{m}() is not supported by the packed deployment")


def _trace(model):
    try:
        return Tracer().trace(model)
    except Exception as e:
        raise DeployError(f"the network cannot be traced with torch.fx ({type(e).__name__}: {e})") from None


def _act_per(model, input_shape) -> dict:
    """Elements per sample each ActQuantizer sees (LSQ's gradient-scale g depends on it)."""
    seen, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, ActQuantizer):
            def hook(mod, inp, name=name):
                x = inp[0]
                seen.setdefault(name, x[0].numel() if x.dim() > 1 else x.numel())
            hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for h in hooks:
            h.remove()
    return seen


def deploy(applied, threads: int = 1, meta: dict | None = None) -> PackedNetwork:
    """Turn a planned (fine-tuned) network into a PackedNetwork; unsupported layers raise DeployError
    naming the layer. ``applied`` is an ``engine.plans.apply.Applied`` (or a (Applied, meta) pair)."""
    if isinstance(applied, tuple):
        applied, meta = applied[0], {**(applied[1] or {}), **(meta or {})}
    model = applied.model
    was = model.training
    model.eval()
    try:
        input_shape = tuple(int(d) for d in applied.topology.input_shape)
        graph = _trace(model)
        mods = dict(model.named_modules())
        per = _act_per(model, input_shape)
        names: dict = {}
        ops: list[dict] = []
        layers: dict[str, Layer] = {}
        norms: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        layer_names = {n for n, m in mods.items() if is_layer(m)}
        n_inputs = 0
        for node in graph.nodes:
            names[node] = node.name
            where = f"node {node.name!r}"
            if node.op == "placeholder":
                n_inputs += 1
                if n_inputs > 1:
                    raise DeployError(f"{where}: networks with more than one input are not supported")
                ops.append({"op": "input", "name": node.name})
                continue
            if node.op == "output":
                res = node.args[0]
                if not isinstance(res, torch.fx.Node):
                    raise DeployError("the network must return a single tensor of logits")
                ops.append({"op": "output", "name": node.name, "args": [_enc(res, names)]})
                continue
            if node.op == "call_module":
                mod = mods[node.target]
                where = f"layer {node.target!r}"
                op = _module_op(mod, node, names, layer_names, where)
                if op["op"] == "layer" and node.target not in layers:
                    layers[node.target] = lower_layer(node.target, mod, applied.configs.get(node.target),
                                                      per, threads)
                if op["op"] == "batchnorm" and node.target not in norms:
                    norms[node.target] = _bn_affine(mod, where)
            elif node.op == "call_function":
                op = _function_op(node, names, where)
            elif node.op == "call_method":
                op = _method_op(node, names, where)
            else:
                raise DeployError(f"{where}: {node.op} {node.target!r} is not supported by the packed deployment")
            op["name"] = node.name
            ops.append(op)
    finally:
        model.train(was)
    m = dict(meta or {})
    m.setdefault("configs", {k: v.to_dict() for k, v in applied.configs.items()})
    return PackedNetwork(ops, layers, norms, input_shape, m)


def _bn_affine(mod, where):
    if not mod.track_running_stats or mod.running_mean is None:
        raise DeployError(f"{where}: batch norm without running statistics is not supported")
    with torch.no_grad():
        var = mod.running_var.double()
        inv = 1.0 / torch.sqrt(var + mod.eps)
        w = mod.weight.double() if mod.weight is not None else torch.ones_like(var)
        b = mod.bias.double() if mod.bias is not None else torch.zeros_like(var)
        scale = (w * inv).float().numpy()
        shift = (b - mod.running_mean.double() * w * inv).float().numpy()
    return scale, shift
