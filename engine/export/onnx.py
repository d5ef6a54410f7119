"""ONNX export of a planned (fake-quantized, sparse, widened) network as standard QDQ.

This module is the export's face (``onnx_model_bytes``: build, load in onnxruntime, check, serialize)
and keeps the names other modules import; the work is split along its seams: ``qdq`` (quantizer
parameters from the quantizers' ``spec`` and the QDQ nodes), ``onnx_layers`` (one registered
handler per layer kind), ``builder`` (the graph) and ``checks`` (onnxruntime).

The graph is built directly with ``onnx.helper`` from a torch.fx trace of the planned model
(``torch.onnx.export`` of the fake-quant graph would give float arithmetic, not QDQ):

* activation entering a quantized layer -> ``QuantizeLinear`` -> ``DequantizeLinear`` with the
  learned step as scale and zero point 0, in int8/uint8; a narrower width is ``Clip``-ped to
  the k-bit code range between the two, which keeps exactly the 2^k levels the engine uses
  (4-bit too, unless ``act_int4``: onnxruntime runs int4 activation pairs unfused, in float). A 1-bit *signed* LSQ
  activation (codes {-1, +1}, sign(0) = +1) is ``Where(x >= 0, s, -s)``, which is exact.
* weights -> integer codes stored as an int8 initializer (int4 at 4 bits; uint8 with zero
  point 128 for full-range 8-bit codes, see ``_weight_type``) followed by
  ``DequantizeLinear`` (per-tensor, or per output channel on axis 0), with the sparsity mask
  already applied (pruned weights are code 0) and widened layers at their real size.
  Binary (XNOR) and ternary (TWN) weights are codes {-1, 0, +1} with the per-channel
  alpha as scale; WRPN weights are codes with scale ``max|w| / (2^(k-1) - 1)``.
* biases stay float, added by a separate ``Add`` after the Gemm/Conv/MatMul (a bias input of a
  QDQ Gemm/Conv is requantized to int32 by onnxruntime's optimizer; the engine's is float);
* the integer form (``integer``) is what integer runtimes fuse: batch norm folded into the
  quantized convolution before it with an int32 bias at the accumulator's scale (``fold``),
  4-bit weights as int8, a signed narrow activation clamped in float before its
  QuantizeLinear. onnxruntime then runs every quantized convolution and matmul in int8;
* float layers stay float; batch norm, pooling, ReLU, reshapes and LSTM and GRU layers (unrolled
  over their fixed number of time steps, ``onnx_recurrent``) are exported as plain ONNX operators.

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

import torch

from engine.export.builder import Built, build_onnx, metadata_for
from engine.export.checks import check_layers, predict_onnx, read_metadata, session, verify
from engine.export.qdq import (
    INPUT_NAME,
    IR_VERSION,
    OPSET,
    OUTPUT_NAME,
    ActQ,
    ExportError,
    WeightQ,
    act_params,
    weight_params,
)
from engine.plans.layers import QUANT_LAYERS, act_quantizers
from engine.plans.plan import FLOAT_BITS, Plan

FLOAT = FLOAT_BITS

__all__ = ["FLOAT", "INPUT_NAME", "IR_VERSION", "OPSET", "OUTPUT_NAME", "ActQ", "Built", "ExportError", "WeightQ",
           "act_params", "build_onnx", "check_layers", "metadata_for", "onnx_model_bytes", "predict_onnx",
           "read_metadata", "session", "verify", "weight_params"]


def onnx_model_bytes(applied, input_shape: tuple[int, ...], plan: Plan | dict | None = None,
                     model_id: str | None = None, dataset_id: str | None = None,
                     check_inputs: torch.Tensor | None = None, extra_metadata: dict | None = None,
                     act_int4: bool = False, integer: bool = False) -> bytes:
    """Serialized ONNX of an applied plan's network: the bytes a file or a download holds.

    The graph is checked by onnx's checker, loaded by onnxruntime (a layer it cannot run is an
    ExportError naming the layer) and, on ``check_inputs`` (default: a few random inputs),
    compared layer by layer with the engine's network: a layer whose output differs beyond
    float tolerance is an ExportError naming it, so no silently different model is produced.

    4-bit activations are held in int8/uint8 with a Clip to the 16 levels, like every width below
    8: onnxruntime has no int4 kernels, so an int4 activation QDQ pair is not fused and its layer
    runs in float (measured: a 4-bit input made lenet5's fc2 ~15% of the network slower). With
    ``act_int4`` they are int4/uint4 QDQ where onnxruntime loads them (its graph optimizer moves
    activation QDQ through max-pooling, where it has no int4 kernel; then int8/uint8 again). The
    metadata key ``bitscape.act_containers`` records which.

    ``integer``: the form integer runtimes fuse. Each batch norm after a quantized convolution is
    folded into it with an int32 bias (``fold``), and 4-bit weights are int8 (onnxruntime then
    runs those convolutions and matmuls in int8 instead of float). The int32 bias rounds the
    engine's float bias, so activations near a rounding boundary can move one level: folded
    layers are checked within that rounding's bound, a network with one is not held to the
    engine's logits (``verify`` measures its agreement), and the metadata keys ``bitscape.form``
    and ``bitscape.bias`` say so.
    """
    model = applied.model
    extra = {**(extra_metadata or {}), "form": "integer" if integer else "faithful"}
    four = any(aq.active and aq.bits == 4 for m in model.modules() if isinstance(m, QUANT_LAYERS)
               for aq in act_quantizers(m))
    built, note = None, "int4 where 4-bit" if four and act_int4 else "int8/uint8"
    if four and act_int4:
        built = build_onnx(model, input_shape, applied.configs,
                           metadata_for(applied.configs, plan, model_id, dataset_id, {**extra, "act_containers": note}),
                           integer=integer)
        try:
            session(built.model.SerializeToString(), built.owner, applied.configs)
        except ExportError as e:
            built, note = None, f"int8/uint8 with Clip to 4-bit levels (onnxruntime rejected int4 activations: {e})"
    if built is None:
        built = build_onnx(model, input_shape, applied.configs,
                           metadata_for(applied.configs, plan, model_id, dataset_id, {**extra, "act_containers": note}),
                           act_int4=False, integer=integer)
    folded = sorted(built.slack)
    e = built.model.metadata_props.add()
    e.key, e.value = "bitscape.bias", (f"int32 at the accumulator's scale in the convolutions with their batch "
                                       f"norm folded in ({', '.join(folded)}); float elsewhere" if folded
                                       else "float, added after each product")
    if check_inputs is None:
        check_inputs = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(0))
    check_layers(built, model, check_inputs, applied.configs)
    return built.model.SerializeToString()
