"""ONNX export of a planned (fake-quantized, sparse, widened) network as standard QDQ.

The graph is built directly with ``onnx.helper`` from a torch.fx trace of the planned model
(``torch.onnx.export`` of the fake-quant graph would give float arithmetic, not QDQ):

* activation entering a quantized layer -> ``QuantizeLinear`` -> ``DequantizeLinear`` with the
  learned step as scale and zero point 0: int8/uint8 at 8 bits, int4/uint4 at 4 bits (opset
  21 types); any other width is quantized to int8/uint8, ``Clip``-ped to the k-bit code range
  and dequantized, which keeps exactly the 2^k levels the engine uses. A 1-bit *signed* LSQ
  activation (codes {-1, +1}, sign(0) = +1) is ``Where(x >= 0, s, -s)``, which is exact.
* weights -> integer codes stored as an int8 initializer (int4 at 4 bits; uint8 with zero
  point 128 for full-range 8-bit codes, see ``_weight_type``) followed by
  ``DequantizeLinear`` (per-tensor, or per output channel on axis 0), with the sparsity mask
  already applied (pruned weights are code 0) and widened layers at their real size.
  Binary (XNOR) and ternary (TWN) weights are codes {-1, 0, +1} with the per-channel
  alpha as scale; WRPN weights are codes with scale ``max|w| / (2^(k-1) - 1)``.
* biases stay float, added by a separate ``Add`` after the Gemm/Conv/MatMul (a bias input of a
  QDQ Gemm/Conv is requantized to int32 by onnxruntime's optimizer; the engine's is float);
* float layers stay float; batch norm, pooling, ReLU, reshapes and the LSTM (unrolled over
  its fixed number of time steps) are exported as plain ONNX operators.

The plan, the resolved per-layer configs, the model and the dataset travel in the model's
``metadata_props`` (keys ``bitscape.*``).

Numerics: quantization and dequantization are bit-exact with the engine (onnxruntime's
QuantizeLinear divides and rounds half-to-even like torch). What differs is float
accumulation order in matmuls/convolutions, and a few ulps in weights where the engine's
straight-through estimator computes ``(q - w) + w`` (binary, ternary, 1-bit codes) or WRPN's
``round(x * n) / n * scale``: logits agree to float tolerance, and an activation that lands
within an ulp of a rounding boundary may rarely move one level.
"""
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

from ..errors import UserError
from ..fxtrace import Tracer
from ..layers import QUANT_LAYERS, QuantConv2d, QuantLinear, QuantLSTM, QuantRecurrent
from ..plan import FLOAT_BITS, LayerConfig, Plan
from ..quant import lsq

OPSET = 21          # int4/uint4 QuantizeLinear/DequantizeLinear
IR_VERSION = 10
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_SAMPLE_BATCH = 2   # batch used to trace shapes; the exported batch dimension is dynamic


class ExportError(UserError):
    """The network or plan cannot be exported as asked; the message names the layer."""


# ---------------------------------------------------------------------------------------------
# the quantizers' exact parameters
# ---------------------------------------------------------------------------------------------

@dataclass
class ActQ:
    """How one activation quantizer exports."""

    kind: str                 # "qdq" | "sign"
    scale: float
    lo: int = 0
    hi: int = 0
    signed: bool = False
    bits: int = 8


@dataclass
class WeightQ:
    """Integer codes and scale(s) of a quantized weight, and what the engine computes."""

    codes: np.ndarray         # int, same shape as the weight
    scale: np.ndarray         # float32, shape () or (out_channels,)
    bits: int
    engine: np.ndarray        # the engine's fake-quantized float weight
    lo: int = -128
    hi: int = 127

    def dequantized(self) -> np.ndarray:
        s = self.scale.reshape(-1, *([1] * (self.codes.ndim - 1))) if self.scale.ndim else self.scale
        return (self.codes.astype(np.float32) * s).astype(np.float32)


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy()


@torch.no_grad()
def act_params(aq, per_sample: int, where: str) -> ActQ | None:
    """The scale and code range the engine's ActQuantizer uses for inputs of ``per_sample`` elements."""
    if not aq.active:
        return None
    if not bool(aq.ready):
        raise ExportError(f"layer {where!r}: its activation quantizer was never calibrated "
                          "(export a model produced by evaluate_plan / `bitscape finetune --save`)")
    signed, bits = bool(aq.signed), aq.bits
    step = aq.step.detach().float()
    if aq.method == "wrpn":
        n = 2 ** (bits - 1) - 1 if signed and bits > 1 else 2 ** bits - 1
        scale = float((step / n).reshape(()))
        return ActQ("qdq", scale, -n if signed else 0, n, signed, bits)
    q_n, q_p = lsq.levels(bits, signed)
    g = lsq.grad_scale_factor(per_sample, max(q_p, 1))
    s = float(lsq.grad_scale(step.abs().clamp_min(1e-8), g).reshape(()))
    if bits == 1 and signed:
        return ActQ("sign", s, -1, 1, True, 1)
    return ActQ("qdq", s, -q_n, q_p, signed, bits)


@torch.no_grad()
def weight_params(wq, w: torch.Tensor, where: str) -> WeightQ | None:
    """Codes and scales reproducing ``wq(w)`` (``w`` already masked)."""
    if not wq.active:
        return None
    w = w.detach().float()
    engine = _f32(wq(w))
    bits, method = wq.bits, wq.method
    ch = w.shape[0]
    if method in ("binary", "ternary"):
        a = w.abs().reshape(ch, -1)
        if method == "binary":
            alpha = a.mean(1)
            codes = torch.sign(w)
        else:
            from ..quant.binary import ternary_threshold
            delta = ternary_threshold(w)
            keep = w.abs() > delta
            kept = (a * keep.reshape(ch, -1)).sum(1)
            alpha = kept / keep.reshape(ch, -1).sum(1).clamp_min(1)
            codes = torch.sign(w) * keep
        alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))  # all-zero channel: codes 0
        return WeightQ(codes.numpy().astype(np.int8), _f32(alpha), bits, engine, -1, 1)
    if method == "wrpn":
        scale = w.new_tensor(float(wq.step.detach().reshape(-1)[0]))
        x = (w / scale).clamp(-1, 1)
        if bits == 1:
            return WeightQ(torch.sign(x).numpy().astype(np.int8), _f32(scale), bits, engine, -1, 1)
        n = 2 ** (bits - 1) - 1
        codes = torch.round(x * n)
        return WeightQ(codes.numpy().astype(np.int8), _f32(scale / n), bits, engine, -n, n)
    q_n, q_p = wq.levels()
    per = w.numel() // wq.step.numel()
    g = lsq.grad_scale_factor(per, max(q_p, 1))
    s = lsq.grad_scale(wq._step(w).detach(), g)
    x = w / s
    if bits == 1:
        codes = torch.where(x.clamp(-1, 1) >= 0, 1, -1)
        lo, hi = -1, 1
    else:
        codes = x.clamp(-q_n, q_p).round()
        lo, hi = -q_n, q_p
    return WeightQ(codes.numpy().astype(np.int8), _f32(s.reshape(-1) if s.numel() > 1 else s.reshape(())),
                   bits, engine, lo, hi)


# ---------------------------------------------------------------------------------------------
# graph builder
# ---------------------------------------------------------------------------------------------

@dataclass
class _Builder:
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    used: set = field(default_factory=set)
    owner: dict = field(default_factory=dict)     # node name -> layer name
    layer_outputs: dict = field(default_factory=dict)  # layer name -> ONNX tensor name
    layer_inputs: dict = field(default_factory=dict)   # layer name -> ONNX tensor name
    scope: str = ""
    act_int4: bool = True

    def uniq(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def const(self, name: str, value: Any, dtype=None) -> str:
        from onnx import numpy_helper
        arr = np.asarray(value, dtype=dtype) if dtype is not None else np.asarray(value)
        n = self.uniq(name)
        self.inits.append(numpy_helper.from_array(arr, n))
        return n

    def typed_const(self, name: str, values: np.ndarray, elem: int) -> str:
        """A constant of an ONNX element type numpy may not have (int4/uint4)."""
        from onnx import helper
        n = self.uniq(name)
        values = np.asarray(values)
        self.inits.append(helper.make_tensor(n, elem, list(values.shape), values.flatten().tolist()))
        return n

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> Any:
        from onnx import helper
        node_name = self.uniq(f"{self.scope}/{name}" if self.scope else name)
        outs = [self.uniq(f"{node_name}:{i}" if n_out > 1 else f"{node_name}:out") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name, **attrs))
        self.owner[node_name] = self.scope or None
        return outs if n_out > 1 else outs[0]


def _int_type(bits: int, signed: bool, lo: int, hi: int, int4: bool = True) -> tuple[int, bool]:
    """(ONNX element type, needs Clip) for codes in lo..hi of a ``bits``-wide quantizer."""
    from onnx import TensorProto as T
    if bits == 4 and int4:
        if signed and (lo, hi) == (-8, 7):
            return T.INT4, False
        if not signed and (lo, hi) == (0, 15):
            return T.UINT4, False
    if signed:
        return T.INT8, (lo, hi) != (-128, 127)
    return T.UINT8, (lo, hi) != (0, 255)


def _emit_act(b: _Builder, x: str, p: ActQ | None, tag: str = "aq") -> str:
    if p is None:
        return x
    if p.kind == "sign":
        zero = b.const(f"{b.scope}.{tag}.zero", np.float32(0))
        pos = b.const(f"{b.scope}.{tag}.scale", np.float32(p.scale))
        neg = b.const(f"{b.scope}.{tag}.neg_scale", np.float32(-p.scale))
        ge = b.op("GreaterOrEqual", [x, zero], f"{tag}/GreaterOrEqual")
        return b.op("Where", [ge, pos, neg], f"{tag}/Where")
    elem, clip = _int_type(p.bits, p.signed, p.lo, p.hi, b.act_int4)
    s = b.const(f"{b.scope}.{tag}.scale", np.float32(p.scale))
    zp = b.typed_const(f"{b.scope}.{tag}.zero_point", np.array(0), elem)
    q = b.op("QuantizeLinear", [x, s, zp], f"{tag}/QuantizeLinear")
    if clip:
        lo = b.typed_const(f"{b.scope}.{tag}.lo", np.array(p.lo), elem)
        hi = b.typed_const(f"{b.scope}.{tag}.hi", np.array(p.hi), elem)
        q = b.op("Clip", [q, lo, hi], f"{tag}/Clip")
    return b.op("DequantizeLinear", [q, s, zp], f"{tag}/DequantizeLinear")


def _weight_type(p: WeightQ) -> tuple[int, int]:
    """(ONNX element type, zero point) of stored weight codes.

    4-bit codes are int4. Codes needing the full signed 8-bit range (-128..127) are stored
    as uint8 with zero point 128: onnxruntime fuses int8-weight QDQ matmuls into u8s8
    integer kernels whose int16 pair sums saturate on CPUs without AVX-VNNI, while u8u8
    kernels are exact. Narrower codes are int8 (their pair sums cannot saturate).
    """
    from onnx import TensorProto as T
    if p.bits == 4 and p.lo >= -8 and p.hi <= 7:
        return T.INT4, 0
    if p.lo < -64 or p.hi > 64:
        return T.UINT8, 128
    return T.INT8, 0


def _emit_weight(b: _Builder, name: str, w: torch.Tensor, wq, transpose: bool = False) -> str:
    """Float weight constant, or integer codes -> DequantizeLinear. ``transpose`` swaps the
    first two axes (for MatMul), moving the per-channel axis to 1."""
    from onnx import TensorProto as T
    p = weight_params(wq, w, b.scope) if wq is not None else None
    if p is None:
        arr = _f32(w)
        return b.const(f"{b.scope}.{name}", arr.T.copy() if transpose else arr)
    codes = p.codes.T.copy() if transpose else p.codes
    elem, offset = _weight_type(p)
    if elem in (T.INT8, T.UINT8):
        cq = b.const(f"{b.scope}.{name}_quantized", (codes.astype(np.int16) + offset).astype(
            np.uint8 if elem == T.UINT8 else np.int8))
    else:
        cq = b.typed_const(f"{b.scope}.{name}_quantized", codes, elem)
    s = b.const(f"{b.scope}.{name}_scale", p.scale.astype(np.float32))
    zp = b.typed_const(f"{b.scope}.{name}_zero_point", np.full(p.scale.shape, offset, dtype=np.int64), elem)
    attrs = {"axis": 1 if transpose else 0} if p.scale.ndim else {}
    return b.op("DequantizeLinear", [cq, s, zp], f"{name}/DequantizeLinear", **attrs)


# ---------------------------------------------------------------------------------------------
# tracing
# ---------------------------------------------------------------------------------------------

class _Tracer(Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QUANT_LAYERS) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> torch.fx.GraphModule:
    from torch.fx.passes.shape_prop import ShapeProp
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many kinds
        raise ExportError(f"the network cannot be traced by torch.fx for export: {e}") from None
    gm = torch.fx.GraphModule(model, graph)
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(_SAMPLE_BATCH, *input_shape))
    return gm


def _shape(node) -> tuple[int, ...]:
    tm = node.meta.get("tensor_meta")
    if tm is None or not hasattr(tm, "shape"):
        raise ExportError(f"no static shape for {node.name!r}")
    return tuple(tm.shape)


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------

def _linear(b: _Builder, x: str, mod: nn.Linear, in_shape: tuple[int, ...]) -> str:
    quant = isinstance(mod, QuantLinear)
    if quant:
        x = _emit_act(b, x, act_params(mod.aq, _per_sample(in_shape), b.scope))
        w = mod.masked_weight()
    else:
        w = mod.weight
    if len(in_shape) == 2:
        wn = _emit_weight(b, "weight", w, mod.wq if quant else None)
        y = b.op("Gemm", [x, wn], "Gemm", transB=1)
    else:
        wn = _emit_weight(b, "weight", w, mod.wq if quant else None, transpose=True)
        y = b.op("MatMul", [x, wn], "MatMul")
    return _bias(b, y, mod.bias, 1)


def _bias(b: _Builder, y: str, bias, trailing: int) -> str:
    """Add a float bias after the product (a separate Add, so that runtimes do not requantize
    it to int32 the way a bias input of a QDQ Gemm/Conv is: the engine's bias is float)."""
    if bias is None:
        return y
    arr = _f32(bias).reshape(-1, *([1] * (trailing - 1)))
    return b.op("Add", [y, b.const(f"{b.scope}.bias", arr)], "Add_bias")


def _conv(b: _Builder, x: str, mod: nn.Conv2d, in_shape: tuple[int, ...]) -> str:
    if mod.padding_mode != "zeros":
        raise ExportError(f"layer {b.scope!r}: padding_mode={mod.padding_mode!r} is not exported (only 'zeros')")
    if isinstance(mod.padding, str):
        if mod.padding == "valid":
            pads = [0, 0]
        else:
            k, d = _pair(mod.kernel_size), _pair(mod.dilation)
            tot = [di * (ki - 1) for ki, di in zip(k, d)]
            if any(t % 2 for t in tot):
                raise ExportError(f"layer {b.scope!r}: padding='same' with an even kernel is not exported")
            pads = [t // 2 for t in tot]
    else:
        pads = _pair(mod.padding)
    quant = isinstance(mod, QuantConv2d)
    if quant:
        x = _emit_act(b, x, act_params(mod.aq, _per_sample(in_shape), b.scope))
    wn = _emit_weight(b, "weight", mod.masked_weight() if quant else mod.weight, mod.wq if quant else None)
    y = b.op("Conv", [x, wn], "Conv", kernel_shape=_pair(mod.kernel_size), strides=_pair(mod.stride),
             pads=pads + pads, dilations=_pair(mod.dilation), group=mod.groups)
    return _bias(b, y, mod.bias, 3)


def _lstm(b: _Builder, x: str, mod: nn.Module, in_shape: tuple[int, ...]):
    """A single-layer, batch-first LSTM unrolled over its (fixed) time steps, as the engine does."""
    if isinstance(mod, nn.LSTM):
        if mod.num_layers != 1 or mod.bidirectional or not mod.batch_first or mod.proj_size:
            raise ExportError(f"layer {b.scope!r}: only single-layer, unidirectional, batch-first LSTMs are exported")
        w_ih, w_hh = mod.weight_ih_l0, mod.weight_hh_l0
        bias = (mod.bias_ih_l0 + mod.bias_hh_l0) if mod.bias else None
        wq_ih = wq_hh = None
        p_x = p_h = None
    else:
        w_ih, w_hh = mod.masked("ih"), mod.masked("hh")
        bias = (mod.bias_ih + mod.bias_hh) if mod.bias_ih is not None else None
        wq_ih, wq_hh = mod.wq_ih, mod.wq_hh
        p_x = act_params(mod.aq, _per_sample(in_shape), b.scope)
        p_h = act_params(mod.aq_h, mod.hidden_size, b.scope)
    if len(in_shape) != 3:
        raise ExportError(f"layer {b.scope!r}: LSTM input must be (batch, time, features)")
    t_steps, hid = in_shape[1], mod.hidden_size
    xq = _emit_act(b, x, p_x, "aq")
    wih = _emit_weight(b, "weight_ih", w_ih, wq_ih, transpose=True)
    whh = _emit_weight(b, "weight_hh", w_hh, wq_hh, transpose=True)
    xs = b.op("MatMul", [xq, wih], "MatMul_ih")
    if bias is not None:
        xs = b.op("Add", [xs, b.const(f"{b.scope}.bias", _f32(bias))], "Add_bias")
    # zero initial state with the dynamic batch size: Expand(zeros(1, H), [B, H])
    shp = b.op("Shape", [x], "Shape", start=0, end=1)
    dims = b.op("Concat", [shp, b.const(f"{b.scope}.hidden", np.array([hid], np.int64))], "state_shape", axis=0)
    zeros = b.const(f"{b.scope}.zeros", np.zeros((1, hid), np.float32))
    h = c = b.op("Expand", [zeros, dims], "zero_state")
    split = b.const(f"{b.scope}.gate_split", np.array([hid] * 4, np.int64))
    outs = []
    for t in range(t_steps):
        xt = b.op("Gather", [xs, b.const(f"{b.scope}.t{t}", np.array(t, np.int64))], f"t{t}/Gather", axis=1)
        hq = _emit_act(b, h, p_h, f"t{t}/aq_h")
        gates = b.op("Add", [xt, b.op("MatMul", [hq, whh], f"t{t}/MatMul_hh")], f"t{t}/Add")
        i, f, g, o = b.op("Split", [gates, split], f"t{t}/Split", n_out=4, axis=1)
        fc = b.op("Mul", [b.op("Sigmoid", [f], f"t{t}/sig_f"), c], f"t{t}/Mul_fc")
        ig = b.op("Mul", [b.op("Sigmoid", [i], f"t{t}/sig_i"), b.op("Tanh", [g], f"t{t}/tanh_g")], f"t{t}/Mul_ig")
        c = b.op("Add", [fc, ig], f"t{t}/c")
        h = b.op("Mul", [b.op("Sigmoid", [o], f"t{t}/sig_o"), b.op("Tanh", [c], f"t{t}/tanh_c")], f"t{t}/h")
        outs.append(h)
    ax1 = b.const(f"{b.scope}.axis1", np.array([1], np.int64))
    ax0 = b.const(f"{b.scope}.axis0", np.array([0], np.int64))
    seq = b.op("Concat", [b.op("Unsqueeze", [o_, ax1], f"t{t}/Unsqueeze") for t, o_ in enumerate(outs)],
               "stack", axis=1)
    return (seq, (b.op("Unsqueeze", [h, ax0], "h_n"), b.op("Unsqueeze", [c, ax0], "c_n")))


def _per_sample(shape: tuple[int, ...]) -> int:
    n = 1
    for d in (shape[1:] if len(shape) > 1 else shape):
        n *= d
    return n


def _bn(b: _Builder, x: str, mod: nn.modules.batchnorm._BatchNorm) -> str:
    if mod.running_mean is None:
        raise ExportError(f"layer {b.scope!r}: batch norm without running statistics is not exported")
    c = mod.num_features
    w = _f32(mod.weight) if mod.weight is not None else np.ones(c, np.float32)
    bias = _f32(mod.bias) if mod.bias is not None else np.zeros(c, np.float32)
    ins = [x, b.const(f"{b.scope}.weight", w), b.const(f"{b.scope}.bias", bias),
           b.const(f"{b.scope}.running_mean", _f32(mod.running_mean)),
           b.const(f"{b.scope}.running_var", _f32(mod.running_var))]
    return b.op("BatchNormalization", ins, "BatchNormalization", epsilon=float(mod.eps))


def _pool(b: _Builder, x: str, kind: str, kernel, stride, padding, dilation=1, ceil_mode=False,
          count_include_pad=True) -> str:
    k = _pair(kernel)
    s = _pair(stride if stride not in (None, []) else kernel)
    p = _pair(padding)
    attrs = dict(kernel_shape=k, strides=s, pads=p + p, ceil_mode=int(bool(ceil_mode)))
    if kind == "MaxPool":
        attrs["dilations"] = _pair(dilation)
    else:
        attrs["count_include_pad"] = int(bool(count_include_pad))
    return b.op(kind, [x], kind, **attrs)


_UNARY = {F.relu: "Relu", torch.relu: "Relu", torch.sigmoid: "Sigmoid", torch.tanh: "Tanh",
          nn.ReLU: "Relu", nn.Sigmoid: "Sigmoid", nn.Tanh: "Tanh"}
_BINARY = {operator.add: "Add", torch.add: "Add", operator.sub: "Sub", torch.sub: "Sub",
           operator.mul: "Mul", torch.mul: "Mul"}
_PASS_MODULES = (nn.Identity, nn.Dropout)
_PASS_METHODS = ("contiguous", "detach", "clone")


# ---------------------------------------------------------------------------------------------
# the graph
# ---------------------------------------------------------------------------------------------

@dataclass
class Built:
    model: Any                 # onnx.ModelProto
    owner: dict[str, str | None]
    layer_outputs: dict[str, str]
    layer_inputs: dict[str, str]


def build_onnx(model: nn.Module, input_shape: tuple[int, ...], configs: dict[str, LayerConfig] | None = None,
               metadata: dict[str, str] | None = None, act_int4: bool = True) -> Built:
    """The ONNX ModelProto of ``model`` (an applied plan's network, in eval mode).

    ``act_int4``: 4-bit activations as int4/uint4 QDQ; otherwise in int8/uint8 with a Clip to
    the 4-bit range (the same 16 levels).
    """
    import onnx
    from onnx import TensorProto, helper

    for name, mod in model.named_modules():
        if isinstance(mod, QUANT_LAYERS):
            for aq in ([mod.aq, mod.aq_h] if isinstance(mod, QuantRecurrent) else [mod.aq]):
                if aq.active and not bool(aq.ready):
                    raise ExportError(f"layer {name!r}: its activation quantizer was never calibrated "
                                      "(export a model produced by evaluate_plan / `bitscape finetune --save`)")
    was = model.training
    model.eval()
    try:
        gm = _trace(model, tuple(input_shape))
        b = _Builder(act_int4=act_int4)
        b.used.update({INPUT_NAME, OUTPUT_NAME})
        env: dict[str, Any] = {}
        mods = dict(gm.named_modules())
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
            elif node.op == "call_module":
                mod = mods[node.target]
                b.scope = node.target
                b.layer_inputs[node.target] = val(node.args[0])
                env[node.name] = _call_module(b, node, mod, val(node.args[0]))
                b.layer_outputs[node.target] = env[node.name] if isinstance(env[node.name], str) else env[node.name][0]
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
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the exported graph fails onnx's checker: {e}") from None
    keep = {n.name for n in nodes}
    owner = {k: v for k, v in b.owner.items() if k in keep}
    names = {o for n in nodes for o in n.output} | {INPUT_NAME}
    outs = {k: v for k, v in b.layer_outputs.items()
            if isinstance(v, str) and v in names and b.layer_inputs.get(k) in names}
    return Built(m, owner, outs, {k: b.layer_inputs[k] for k in outs})


_STATIC = object()


def _call_module(b: _Builder, node, mod: nn.Module, x):
    in_shape = _shape(node.args[0])
    if isinstance(mod, (QuantLSTM, nn.LSTM)):
        return _lstm(b, x, mod, in_shape)
    if isinstance(mod, nn.Linear):
        return _linear(b, x, mod, in_shape)
    if isinstance(mod, nn.Conv2d):
        return _conv(b, x, mod, in_shape)
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _bn(b, x, mod)
    if isinstance(mod, _PASS_MODULES):
        return x
    for cls, op in _UNARY.items():
        if isinstance(cls, type) and isinstance(mod, cls):
            return b.op(op, [x], op)
    if isinstance(mod, nn.MaxPool2d):
        return _pool(b, x, "MaxPool", mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)
    if isinstance(mod, nn.AvgPool2d):
        return _pool(b, x, "AveragePool", mod.kernel_size, mod.stride, mod.padding, 1, mod.ceil_mode,
                     mod.count_include_pad)
    if isinstance(mod, nn.AdaptiveAvgPool2d) and _pair(mod.output_size) == [1, 1]:
        return b.op("GlobalAveragePool", [x], "GlobalAveragePool")
    if isinstance(mod, nn.Flatten):
        return _reshape(b, x, node)
    raise ExportError(f"layer {node.target!r} ({type(mod).__name__}) has no ONNX export in bitscape")


def _reshape(b: _Builder, x: str, node) -> str:
    out = _shape(node)
    if not out or out[0] != _SAMPLE_BATCH or _shape(node.args[0])[0] != _SAMPLE_BATCH:
        raise ExportError(f"{node.name!r}: reshapes that move the batch dimension are not exported")
    return b.op("Reshape", [x, b.const(f"{node.name}.shape", np.array([-1, *out[1:]], np.int64))], node.name)


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
    raise ExportError(f"{node.name!r}: the tensor method {m!r} has no ONNX export in bitscape")


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
    from ..evaluation import code_version
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


def onnx_model_bytes(applied, input_shape: tuple[int, ...], plan: Plan | dict | None = None,
                     model_id: str | None = None, dataset_id: str | None = None,
                     check_inputs: torch.Tensor | None = None, extra_metadata: dict | None = None) -> bytes:
    """Serialized ONNX of an applied plan's network: the bytes a file or a download holds.

    The graph is checked by onnx's checker, loaded by onnxruntime (a layer it cannot run is an
    ExportError naming the layer) and, on ``check_inputs`` (default: a few random inputs),
    compared layer by layer with the engine's network: a layer whose output differs beyond
    float tolerance is an ExportError naming it, so no silently different model is produced.

    4-bit activations are int4/uint4 QDQ where onnxruntime loads them; its graph optimizer
    moves activation QDQ through max-pooling, where it has no int4 kernel, and in that case
    the 4-bit activations are held in int8/uint8 with a Clip to the 16 levels (recorded in
    the metadata key ``bitscape.act_containers``).
    """
    model = applied.model
    extra = dict(extra_metadata or {})
    four = any(aq.active and aq.bits == 4 for m in model.modules() if isinstance(m, QUANT_LAYERS)
               for aq in ([m.aq, m.aq_h] if isinstance(m, QuantRecurrent) else [m.aq]))
    built, note = None, "int4 where 4-bit" if four else "int8/uint8"
    if four:
        built = build_onnx(model, input_shape, applied.configs,
                           metadata_for(applied.configs, plan, model_id, dataset_id, {**extra, "act_containers": note}))
        try:
            session(built.model.SerializeToString(), built.owner, applied.configs)
        except ExportError as e:
            built, note = None, f"int8/uint8 with Clip to 4-bit levels (onnxruntime rejected int4 activations: {e})"
    if built is None:
        built = build_onnx(model, input_shape, applied.configs,
                           metadata_for(applied.configs, plan, model_id, dataset_id, {**extra, "act_containers": note}),
                           act_int4=False)
    if check_inputs is None:
        check_inputs = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(0))
    check_layers(built, model, check_inputs, applied.configs)
    return built.model.SerializeToString()


def session(data: bytes, owner: dict[str, str | None] | None = None, configs: dict | None = None):
    """An onnxruntime CPU session; a node it cannot load is an ExportError naming the layer."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception kinds
        raise _ort_error(e, owner, configs) from None


def _ort_error(e: Exception, owner, configs) -> ExportError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    for node, layer in sorted((owner or {}).items(), key=lambda kv: -len(kv[0])):
        if layer and node in str(e):
            cfg = (configs or {}).get(layer)
            label = f" ({cfg.label()}, quantizer {cfg.quantizer})" if cfg is not None else ""
            return ExportError(f"onnxruntime cannot run layer {layer!r}{label} as planned: {msg}")
    return ExportError(f"onnxruntime cannot run the exported network: {msg}")


def check_layers(built: Built, model: nn.Module, x: torch.Tensor, configs: dict | None = None,
                 layer_tol: float = 1e-4, net_tol: float = 5e-2) -> None:
    """Compare onnxruntime with the engine, layer by layer and end to end, on inputs ``x``.

    Each layer is run alone by onnxruntime on the engine's own input to that layer, so the
    comparison is tight (float accumulation order is the only difference); the whole network
    is compared loosely, since an activation within an ulp of a rounding boundary may move
    one level. A mismatch is an ExportError naming the layer.
    """
    ins: dict[str, np.ndarray] = {}
    ref: dict[str, np.ndarray] = {}
    hooks = []
    mods = dict(model.named_modules())
    for layer in built.layer_outputs:
        def hook(_m, args, out, layer=layer):
            ins[layer] = _f32(args[0])
            ref[layer] = _f32(out[0] if isinstance(out, tuple) else out)
        hooks.append(mods[layer].register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = _f32(model(x))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()

    def fail(layer, err, what):
        cfg = (configs or {}).get(layer) if layer else None
        label = f" ({cfg.label()}, quantizer {cfg.quantizer})" if cfg is not None else ""
        where = f"layer {layer!r}{label}" if layer else "the network's output"
        return ExportError(f"onnxruntime's result for {where} differs from the engine's ({what} {err:.2g}); "
                           "refusing to write a model that silently differs")

    def rel(a, r):
        if a.shape != r.shape:
            return float("inf")
        return float(np.linalg.norm(a - r)) / max(float(np.linalg.norm(r)), 1e-12)

    for layer, out_name in built.layer_outputs.items():
        in_name = built.layer_inputs[layer]
        sess = session(_subgraph(built.model, in_name, out_name).SerializeToString(), built.owner, configs)
        try:
            got = sess.run(None, {in_name: ins[layer]})[0]
        except Exception as e:  # noqa: BLE001
            raise _ort_error(e, built.owner, configs) from None
        err = rel(got, ref[layer])
        if not np.isfinite(err) or err > layer_tol:
            raise fail(layer, err, "relative error")
    sess = session(built.model.SerializeToString(), built.owner, configs)
    try:
        out = sess.run(None, {INPUT_NAME: x.detach().float().numpy()})[0]
    except Exception as e:  # noqa: BLE001
        raise _ort_error(e, built.owner, configs) from None
    err = rel(out, logits)
    if not np.isfinite(err) or err > net_tol:
        raise fail(None, err, "relative error")


def _subgraph(m, in_name: str, out_name: str):
    """The nodes computing ``out_name`` from ``in_name`` (and constants), as a model."""
    from onnx import TensorProto, helper
    need, keep = {out_name}, []
    for n in reversed(m.graph.node):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i and i != in_name)
    keep.reverse()
    graph = helper.make_graph(keep, "layer", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
                              [t for t in m.graph.initializer if t.name in need])
    sub = helper.make_model(graph, opset_imports=list(m.opset_import))
    sub.ir_version = m.ir_version
    return sub


def predict_onnx(data: bytes, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Logits of an exported model run by onnxruntime on CPU."""
    sess = session(data)
    xs = x.detach().float().numpy()
    return np.concatenate([sess.run(None, {INPUT_NAME: xs[i:i + batch_size]})[0]
                           for i in range(0, len(xs), batch_size)]) if len(xs) else np.zeros((0, 0), np.float32)


def verify(data: bytes, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Agreement of the exported model (onnxruntime) with the engine's fake-quantized model."""
    from ..finetune import predict_logits
    onnx_logits = predict_onnx(data, x)
    engine_logits = _f32(predict_logits(model, x))
    yo, ye, yy = onnx_logits.argmax(1), engine_logits.argmax(1), y.numpy()
    n = max(len(yy), 1)
    diff = np.abs(onnx_logits - engine_logits)
    return {"examples": int(len(yy)),
            "agreement": float((yo == ye).sum()) / n,
            "disagreements": int((yo != ye).sum()),
            "onnx_accuracy": float((yo == yy).sum()) / n,
            "engine_accuracy": float((ye == yy).sum()) / n,
            "max_abs_logit_diff": float(diff.max()) if diff.size else 0.0}


def read_metadata(data: bytes) -> dict[str, str]:
    import onnx
    m = onnx.load_from_string(data)
    return {p.key: p.value for p in m.metadata_props}


FLOAT = FLOAT_BITS
