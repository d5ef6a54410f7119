"""The QDQ vocabulary of the ONNX export: quantizer parameters (read from the quantizers' ``spec``)
and the QuantizeLinear / DequantizeLinear nodes that carry them, emitted through ``_Builder``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.errors import UserError
from engine.quant.spec import Uncalibrated

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
    try:
        q = aq.spec(per_sample=per_sample)
    except Uncalibrated:
        raise ExportError(f"layer {where!r}: its activation quantizer was never calibrated "
                          "(export a model produced by evaluate_plan / `bitscape finetune --save`)") from None
    if q is None:
        return None
    if q.binary:
        return ActQ("sign", float(q.scale), -1, 1, True, 1)
    return ActQ("qdq", float(q.scale), q.qmin, q.qmax, q.signed, q.bits)


@torch.no_grad()
def weight_params(wq, w: torch.Tensor, where: str) -> WeightQ | None:
    """Codes and scales reproducing ``wq(w)`` (``w`` already masked), from ``wq.spec``."""
    w = w.detach().float()
    q = wq.spec(w)
    if q is None:
        return None
    return WeightQ(q.codes.numpy().astype(np.int8), _f32(q.scale), q.bits, _f32(wq(w)), q.qmin, q.qmax)


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
    integer: bool = False                              # the integer form (engine.export.onnx_model_bytes)
    bn_after: dict = field(default_factory=dict)       # conv module -> the batch norm that may fold into it
    modules: dict = field(default_factory=dict)        # module name -> module
    folded: dict = field(default_factory=dict)         # batch norm folded away -> its convolution
    slack: dict = field(default_factory=dict)          # layer -> per-channel bound of the folded bias's rounding

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
    if clip and p.signed and b.integer:
        # onnxruntime turns int8 activations into uint8 only where Q and DQ touch (then fuses the
        # layer): the clamp goes before Q, in float -- exact, since Q rounds lo*s and hi*s to lo and hi
        lo = b.const(f"{b.scope}.{tag}.lo", np.float32(p.lo * p.scale))
        hi = b.const(f"{b.scope}.{tag}.hi", np.float32(p.hi * p.scale))
        x, clip = b.op("Clip", [x, lo, hi], f"{tag}/Clip"), False
    q = b.op("QuantizeLinear", [x, s, zp], f"{tag}/QuantizeLinear")
    if clip:
        lo = b.typed_const(f"{b.scope}.{tag}.lo", np.array(p.lo), elem)
        hi = b.typed_const(f"{b.scope}.{tag}.hi", np.array(p.hi), elem)
        q = b.op("Clip", [q, lo, hi], f"{tag}/Clip")
    return b.op("DequantizeLinear", [q, s, zp], f"{tag}/DequantizeLinear")


def _weight_type(p: WeightQ, integer: bool = False) -> tuple[int, int]:
    """(ONNX element type, zero point) of stored weight codes.

    4-bit codes are int4 (int8 in the integer form: onnxruntime fuses int8 weights only). Codes
    needing the full signed 8-bit range (-128..127) are stored as uint8 with zero point 128: onnxruntime fuses int8-weight QDQ matmuls into u8s8
    integer kernels whose int16 pair sums saturate on CPUs without AVX-VNNI, while u8u8
    kernels are exact. Narrower codes are int8 (their pair sums cannot saturate).
    """
    from onnx import TensorProto as T
    if p.bits == 4 and p.lo >= -8 and p.hi <= 7 and not integer:
        return T.INT4, 0
    if p.lo < -64 or p.hi > 64:
        return T.UINT8, 128
    return T.INT8, 0


def _emit_weight(b: _Builder, name: str, w: torch.Tensor, wq, transpose: bool = False) -> str:
    """Float weight constant, or integer codes -> DequantizeLinear. ``transpose`` swaps the
    first two axes (for MatMul), moving the per-channel axis to 1."""
    p = weight_params(wq, w, b.scope) if wq is not None else None
    if p is None:
        arr = _f32(w)
        return b.const(f"{b.scope}.{name}", arr.T.copy() if transpose else arr)
    codes = p.codes.T.copy() if transpose else p.codes
    elem, offset = _weight_type(p, b.integer)
    return emit_codes(b, name, codes, p.scale, elem, offset, axis=1 if transpose else 0)


def emit_codes(b: _Builder, name: str, codes: np.ndarray, scale: np.ndarray, elem: int, offset: int,
               axis: int = 0) -> str:
    """Integer weight ``codes`` stored as ``elem`` with zero point ``offset`` -> DequantizeLinear
    (per channel on ``axis`` where ``scale`` has one entry a channel)."""
    from onnx import TensorProto as T
    if elem in (T.INT8, T.UINT8):
        cq = b.const(f"{b.scope}.{name}_quantized", (codes.astype(np.int16) + offset).astype(
            np.uint8 if elem == T.UINT8 else np.int8))
    else:
        cq = b.typed_const(f"{b.scope}.{name}_quantized", codes, elem)
    s = b.const(f"{b.scope}.{name}_scale", scale.astype(np.float32))
    zp = b.typed_const(f"{b.scope}.{name}_zero_point", np.full(scale.shape, offset, dtype=np.int64), elem)
    attrs = {"axis": axis} if scale.ndim else {}
    return b.op("DequantizeLinear", [cq, s, zp], f"{name}/DequantizeLinear", **attrs)
