"""The ONNX graph of a planned network, built with ``onnx.helper`` from one torch.fx trace
(``engine.plans.fxtrace``): modules through the handlers registered in ``onnx_layers.BUILD``, functions
and tensor methods here. ``onnx.py`` describes the format and its numerics."""
from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from engine.export import qdq
from engine.export.fold import bn_after
from engine.export.onnx_layers import _UNARY, _pair, _pool, _reshape, _shape, build_module
from engine.export.qdq import (
    _SAMPLE_BATCH,
    INPUT_NAME,
    IR_VERSION,
    OPSET,
    OUTPUT_NAME,
    ExportError,
    _Builder,
)
from engine.plans.fxtrace import Tracer
from engine.plans.layers import QUANT_LAYERS, act_quantizers
from engine.plans.plan import LayerConfig, Plan

_BINARY = {operator.add: "Add", torch.add: "Add", operator.sub: "Sub", torch.sub: "Sub",
           operator.mul: "Mul", torch.mul: "Mul"}
_PASS_METHODS = ("contiguous", "detach", "clone")


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> torch.fx.GraphModule:
    from torch.fx.passes.shape_prop import ShapeProp
    try:
        graph = Tracer().trace(model)
    except Exception as e:
        raise ExportError(f"the network cannot be traced by torch.fx for export: {e}") from None
    gm = torch.fx.GraphModule(model, graph)
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(_SAMPLE_BATCH, *input_shape))
    return gm


# ---------------------------------------------------------------------------------------------
# the graph
# ---------------------------------------------------------------------------------------------

@dataclass
class Built:
    model: Any                 # onnx.ModelProto
    owner: dict[str, str | None]
    layer_outputs: dict[str, str]
    layer_inputs: dict[str, str]
    output_of: dict[str, str] = field(default_factory=dict)   # layer -> module whose output it computes (a folded batch norm)
    slack: dict[str, Any] = field(default_factory=dict)       # layer -> per-channel bound of its int32 bias's rounding


def build_onnx(model: nn.Module, input_shape: tuple[int, ...], configs: dict[str, LayerConfig] | None = None,
               metadata: dict[str, str] | None = None, act_int4: bool = True, integer: bool = False) -> Built:
    """The ONNX ModelProto of ``model`` (an applied plan's network, in eval mode).

    ``act_int4``: 4-bit activations as int4/uint4 QDQ; otherwise in int8/uint8 with a Clip to
    the 4-bit range (the same 16 levels). ``integer``: the form integer runtimes fuse -- batch
    norm folded into the quantized convolution before it with an int32 bias (``fold``), and
    4-bit weights held as int8.
    """
    import onnx
    from onnx import TensorProto, helper

    for name, mod in model.named_modules():
        if isinstance(mod, QUANT_LAYERS):
            for aq in act_quantizers(mod):
                qdq.act_params(aq, 1, name)   # an uncalibrated quantizer is an ExportError naming the layer
    was = model.training
    model.eval()
    try:
        gm = _trace(model, tuple(input_shape))
        mods = dict(gm.named_modules())
        b = _Builder(act_int4=act_int4, integer=integer, bn_after=bn_after(gm, mods) if integer else {},
                     modules=mods)
        b.used.update({INPUT_NAME, OUTPUT_NAME})
        env: dict[str, Any] = {}
        out_value = None

        def val(a):
            if isinstance(a, torch.fx.Node):
                v = env[a.name]
                if v is _STATIC:
                    raise ExportError(f"{a.name!r} (a shape value) is used as a tensor; not exported")
                return v
            if isinstance(a, (tuple, list)):
                return type(a)(val(i) for i in a)
            return a

        for node in gm.graph.nodes:
            b.scope = ""
            if node.op == "placeholder":
                env[node.name] = INPUT_NAME
            elif node.op == "get_attr":
                raise ExportError(f"the network reads the tensor {node.target!r} directly in forward; not exported")
            elif node.op == "call_module" and node.target in b.folded:
                env[node.name] = val(node.args[0])
            elif node.op == "call_module":
                mod = mods[node.target]
                b.scope = node.target
                x_in = val(node.args[0])
                env[node.name] = build_module(b, node, mod, x_in)
                x_out = env[node.name] if isinstance(env[node.name], str) else env[node.name][0]
                if x_out != x_in:     # a pass-through (Identity, Dropout) computes nothing to check
                    b.layer_inputs[node.target], b.layer_outputs[node.target] = x_in, x_out
            elif node.op == "call_function":
                env[node.name] = _call_function(b, node, val)
            elif node.op == "call_method":
                env[node.name] = _call_method(b, node, val)
            elif node.op == "output":
                out_value = val(node.args[0])
        if not isinstance(out_value, str):
            raise ExportError("the network's forward must return one tensor (the logits)")
        b.nodes.append(helper.make_node("Identity", [out_value], [OUTPUT_NAME], name="output"))
        out_shape = _shape(next(n for n in gm.graph.nodes if n.op == "output").args[0])
    finally:
        model.train(was)

    nodes, inits = _prune(b.nodes, b.inits, OUTPUT_NAME)
    graph = helper.make_graph(
        nodes, "bitscape",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", *out_shape[1:]])],
        inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bitscape")
    m.ir_version = IR_VERSION
    m.doc_string = "bitscape planned network: QuantizeLinear/DequantizeLinear with the learned scales"
    for k, v in (metadata or {}).items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:
        raise ExportError(f"the exported graph fails onnx's checker: {e}") from None
    keep = {n.name for n in nodes}
    owner = {k: v for k, v in b.owner.items() if k in keep}
    names = {o for n in nodes for o in n.output} | {INPUT_NAME}
    outs = {k: v for k, v in b.layer_outputs.items()
            if isinstance(v, str) and v in names and b.layer_inputs.get(k) in names}
    return Built(m, owner, outs, {k: b.layer_inputs[k] for k in outs},
                 {conv: bn for bn, conv in b.folded.items() if conv in outs}, {k: v for k, v in b.slack.items() if k in outs})


_STATIC = object()


def _call_function(b: _Builder, node, val):
    fn, args, kw = node.target, node.args, dict(node.kwargs)
    b.scope = ""
    if fn in _UNARY:
        return b.op(_UNARY[fn], [val(args[0])], node.name)
    if fn in _BINARY:
        a, c = val(args[0]), val(args[1])
        if not isinstance(a, str) or not isinstance(c, str):
            raise ExportError(f"{node.name!r}: arithmetic with constants is not exported")
        return b.op(_BINARY[fn], [a, c], node.name)
    if fn is operator.getitem:
        return _getitem(b, node, val(args[0]), args[1])
    if fn is F.max_pool2d or fn is torch.max_pool2d:
        names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"]
        a = {**dict(zip(names, args)), **kw}
        if a.get("return_indices"):
            raise ExportError(f"{node.name!r}: max_pool2d with return_indices is not exported")
        return _pool(b, val(a["input"]), "MaxPool", a["kernel_size"], a.get("stride"), a.get("padding", 0),
                     a.get("dilation", 1), a.get("ceil_mode", False))
    if fn is F.avg_pool2d:
        names = ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"]
        a = {**dict(zip(names, args)), **kw}
        if a.get("divisor_override"):
            raise ExportError(f"{node.name!r}: avg_pool2d with divisor_override is not exported")
        return _pool(b, val(a["input"]), "AveragePool", a["kernel_size"], a.get("stride"), a.get("padding", 0), 1,
                     a.get("ceil_mode", False), a.get("count_include_pad", True))
    if fn is F.adaptive_avg_pool2d and _pair(args[1] if len(args) > 1 else kw["output_size"]) == [1, 1]:
        return b.op("GlobalAveragePool", [val(args[0])], node.name)
    if fn in (torch.flatten, torch.reshape):
        return _reshape(b, val(args[0]), node)
    if fn is torch.cat:
        xs = val(args[0])
        dim = args[1] if len(args) > 1 else kw.get("dim", 0)
        return b.op("Concat", list(xs), node.name, axis=int(dim))
    name = getattr(fn, "__name__", str(fn))
    raise ExportError(f"{node.name!r}: the operation {name!r} has no ONNX export in bitscape")


def _call_method(b: _Builder, node, val):
    m, args = node.target, node.args
    if m in _PASS_METHODS:
        return val(args[0])
    if m == "size" or m == "dim":
        return _STATIC
    if m in ("flatten", "view", "reshape"):
        return _reshape(b, val(args[0]), node)
    if m == "permute":
        perm = args[1:] if not isinstance(args[1], (tuple, list)) else args[1]
        return b.op("Transpose", [val(args[0])], node.name, perm=[int(p) for p in perm])
    if m in ("relu", "sigmoid", "tanh"):
        return b.op({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[m], [val(args[0])], node.name)
    if m in ("add", "mul", "sub"):
        return b.op(m.capitalize(), [val(args[0]), val(args[1])], node.name)
    if m in ("squeeze", "unsqueeze"):
        return _squeeze(b, node, m, val(args[0]), args[1] if len(args) > 1 else node.kwargs.get("dim"))
    raise ExportError(f"{node.name!r}: the tensor method {m!r} has no ONNX export in bitscape")


def _squeeze(b: _Builder, node, m: str, x, dim):
    """``x.squeeze([dim])`` / ``x.unsqueeze(dim)`` with the axes resolved from the traced shape (the
    traced batch is 2, so the batch axis is never taken for a size-1 axis)."""
    shape = _shape(node.args[0])
    if m == "unsqueeze":
        if not isinstance(dim, int):
            raise ExportError(f"{node.name!r}: unsqueeze needs one integer dimension")
        axes = [dim % (len(shape) + 1)]
    else:
        dims = range(len(shape)) if dim is None else [d % len(shape) for d in (dim if isinstance(dim, (tuple, list))
                                                                             else [dim])]
        axes = [d for d in dims if shape[d] == 1]
        if not axes:
            return x
    return b.op(m.capitalize(), [x, b.const(f"{node.name}.axes", np.array(axes, np.int64))], node.name)


def _getitem(b: _Builder, node, x, idx):
    if isinstance(x, (tuple, list)):
        return x[idx]
    if not isinstance(idx, tuple):
        idx = (idx,)
    if any(i is Ellipsis or i is None or isinstance(i, torch.fx.Node) for i in idx):
        raise ExportError(f"{node.name!r}: indexing with ..., None or tensors is not exported")
    shape = _shape(node.args[0])
    dim = 0
    for i in idx:
        if isinstance(i, slice):
            if i != slice(None):
                start = 0 if i.start is None else i.start
                stop = shape[dim] if i.stop is None else i.stop
                x = b.op("Slice", [x, b.const(f"{node.name}.starts", np.array([start], np.int64)),
                                   b.const(f"{node.name}.ends", np.array([stop], np.int64)),
                                   b.const(f"{node.name}.axes", np.array([dim], np.int64)),
                                   b.const(f"{node.name}.steps", np.array([i.step or 1], np.int64))], node.name)
            dim += 1
        elif isinstance(i, int):
            x = b.op("Gather", [x, b.const(f"{node.name}.index", np.array(i, np.int64))], node.name, axis=dim)
        else:
            raise ExportError(f"{node.name!r}: index {i!r} is not exported")
    return x


def _prune(nodes, inits, output):
    """Drop nodes and initializers the output does not depend on."""
    need, keep = {output}, []
    for n in reversed(nodes):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    keep.reverse()
    return keep, [t for t in inits if t.name in need]


# ---------------------------------------------------------------------------------------------
# public face
# ---------------------------------------------------------------------------------------------


def metadata_for(configs: dict[str, LayerConfig], plan: Plan | dict | None, model_id: str | None,
                 dataset_id: str | None, extra: dict | None = None) -> dict[str, str]:
    from engine.evaluation import code_version
    plan_d = plan.to_dict() if isinstance(plan, Plan) else plan
    md = {"bitscape.format": "qdq-v1",
          "bitscape.plan": json.dumps(plan_d, sort_keys=True) if plan_d is not None else "",
          "bitscape.layers": json.dumps({n: c.to_dict() for n, c in configs.items()}, sort_keys=True),
          "bitscape.model": model_id or "",
          "bitscape.dataset": dataset_id or "",
          "bitscape.input": "standardised images (N, C, H, W) as bitscape's dataset loader gives them",
          "bitscape.code_version": code_version()}
    for k, v in (extra or {}).items():
        md[f"bitscape.{k}"] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return md
