"""onnxruntime's side of the export: load a model (a node it cannot run is an ExportError naming the
layer), compare it with the engine layer by layer, predict, and verify (an ``Agreement``)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from engine.agreement import Agreement
from engine.export.builder import Built
from engine.export.qdq import INPUT_NAME, ExportError, _f32


def session(data: bytes, owner: dict[str, str | None] | None = None, configs: dict | None = None):
    """An onnxruntime CPU session; a node it cannot load is an ExportError naming the layer."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as e:
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
    one level. A layer with a folded int32 bias (``Built.slack``) may differ by its rounding bound
    besides, and a network with one is not compared end to end: its int32 biases move activations
    by design (``verify`` measures the agreement). A mismatch is an ExportError naming the layer.
    """
    ins: dict[str, np.ndarray] = {}
    ref: dict[str, np.ndarray] = {}
    hooks = []
    mods = dict(model.named_modules())
    for layer in built.layer_outputs:
        def take_in(_m, args, out, layer=layer):
            ins[layer] = _f32(args[0])

        def take_out(_m, args, out, layer=layer):
            ref[layer] = _f32(out[0] if isinstance(out, tuple) else out)
        hooks.append(mods[layer].register_forward_hook(take_in))
        hooks.append(mods[built.output_of.get(layer, layer)].register_forward_hook(take_out))
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
        except Exception as e:
            raise _ort_error(e, built.owner, configs) from None
        err = rel(_within_slack(got, ref[layer], built.slack.get(layer)), ref[layer])
        if not np.isfinite(err) or err > layer_tol:
            raise fail(layer, err, "relative error")
    sess = session(built.model.SerializeToString(), built.owner, configs)
    try:
        out = sess.run(None, {INPUT_NAME: x.detach().float().numpy()})[0]
    except Exception as e:
        raise _ort_error(e, built.owner, configs) from None
    if built.slack:
        return
    err = rel(out, logits)
    if not np.isfinite(err) or err > net_tol:
        raise fail(None, err, "relative error")


def _within_slack(got: np.ndarray, ref: np.ndarray, slack: np.ndarray | None) -> np.ndarray:
    """``got`` with each element's difference from ``ref`` reduced by the channel's allowed slack
    (a folded int32 bias's rounding, ``fold``): what is left must be float noise."""
    if slack is None or got.shape != ref.shape:
        return got
    s = slack.reshape(1, -1, *([1] * (got.ndim - 2)))
    return ref + np.sign(got - ref) * np.maximum(np.abs(got - ref) - s, 0)


def _subgraph(m, in_name: str, out_name: str):
    """The nodes computing ``out_name`` from ``in_name`` (and constants), as a model."""
    from onnx import TensorProto, helper
    need, keep = {out_name}, []
    for n in reversed(m.graph.node):
        if in_name in n.output:       # the subgraph's input: its producer stays outside
            continue
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


def verify(data: bytes, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Agreement:
    """Agreement of the exported model (onnxruntime, the candidate) with the engine's fake-quantized
    model (the reference) on inputs ``x`` with labels ``y``."""
    from engine.training.finetune import predict_logits
    onnx_logits = predict_onnx(data, x)
    engine_logits = _f32(predict_logits(model, x))
    return Agreement.of(engine_logits, onnx_logits, y.numpy())


def read_metadata(data: bytes) -> dict[str, str]:
    import onnx
    m = onnx.load_from_string(data)
    return {p.key: p.value for p in m.metadata_props}
