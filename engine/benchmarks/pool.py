"""onnxruntime's uint8 max-pool over integer codes of each width: the provenance of ``host.pool_s``.

An integer runtime max-pools the next layer's codes (the export puts the QuantizeLinear before the
MaxPool), and onnxruntime's uint8 MaxPool is data-dependent: wider codes pool slower. Per max-pool
of the CNN and lenet5, the tensors it takes for 16 test images, quantized as the next layer's
calibrated 1..8-bit codes (saturated to uint8, as the QuantizeLinear before the pool leaves them),
pooled one image a call in turn: the same image over and over would let the branch predictor learn
its compares, which a whole network's other work between two pools does not. The time relative to
8-bit codes, medians of interleaved rounds, and the slope the cost model's term takes (seconds per
element and code bit, least squares). Seeded fresh weights and random inputs
stand in where a baseline or its dataset is missing (the codes' distribution then differs).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

MODELS = (("cnn", "fashion-mnist"), ("lenet5", "digits"))
WIDTHS = tuple(range(1, 9))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (median taken; default 15)")
    parser.add_argument("--calls", type=int, default=200, help="back-to-back calls averaged per round")
    parser.add_argument("--models", default=None,
                        help="comma-separated model:dataset pairs (default cnn:fashion-mnist,lenet5:digits)")


def maxpool_session(shape):
    """A one-node onnxruntime session: 2x2 MaxPool, stride 2, over a uint8 tensor of ``shape``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, None)
    # the attributes as onnxruntime's optimizer writes them on the exported graph's pool: they pick its kernel
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], dilations=[1, 1],
                            pads=[0, 0, 0, 0], storage_order=0, ceil_mode=0, auto_pad="NOTSET")
    model = helper.make_model(helper.make_graph([node], "pool", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


IMAGES = 16


def pool_inputs(model: str, dataset: str, images: int = IMAGES) -> tuple[str, list]:
    """(weights, [(name, tensor)]): what each max-pool of the network takes for ``images`` test images,
    one image a row."""
    import torch
    import torch.nn.functional as F
    from torch import fx

    from engine.cost.measure import model_source
    src = model_source(model, dataset, random_weights=True, calib_size=16)
    seen: list = []

    class Catch(fx.Interpreter):
        def call_function(self, target, args, kwargs):
            if target is F.max_pool2d:
                seen.append((f"{model} max-pool {len(seen) + 1}", args[0].detach().clone()))
            return super().call_function(target, args, kwargs)
    with torch.inference_mode():
        Catch(fx.symbolic_trace(src.base)).run(torch.from_numpy(src.sample[:images]))
    return src.weights, seen


def codes(x, bits: int) -> np.ndarray:
    """``x`` as ``bits``-bit unsigned codes on the calibrated step (engine.quant.lsq.mse_step), saturated
    to uint8: the next layer's clamp to 2^bits - 1 comes after the pool."""
    from engine.quant.lsq import mse_step
    step = float(mse_step(x, 0, 2 ** bits - 1))
    return np.clip(np.round(x.numpy() / step), 0, 255).astype(np.uint8)


def slope(widths, seconds, elements: int) -> float:
    """Least-squares seconds per element and code bit of ``seconds`` over ``widths``."""
    return float(np.polyfit(np.asarray(widths, float), np.asarray(seconds, float), 1)[0]) / elements


def bench(models=MODELS, repeats: int = 15, calls: int = 200) -> list[dict]:
    out = []
    for name, weights, x in [(n, w, x) for m, d in models for w, pools in [pool_inputs(m, d)] for n, x in pools]:
        shape = (1, *x.shape[1:])
        s = maxpool_session(shape)
        feeds = {b: [{"x": c[None]} for c in codes(x, b)] for b in WIDTHS}
        times: dict = {b: [] for b in WIDTHS}
        for _ in range(repeats):
            for b, fs in feeds.items():
                s.run(None, fs[0])
                t0 = time.perf_counter()
                for i in range(calls):
                    s.run(None, fs[i % len(fs)])
                times[b].append((time.perf_counter() - t0) / calls)
        med = {b: statistics.median(v) for b, v in times.items()}
        elements = int(np.prod(shape))
        out.append({"pool": name, "weights": weights, "dims": list(shape), "elements": elements,
                    "ratio_to_8bit": {b: med[b] / med[8] for b in WIDTHS},
                    "seconds_per_element_bit": slope(WIDTHS, [med[b] for b in WIDTHS], elements)})
    return out


def run(args) -> int:
    """Entry point of ``bitscape bench pool``."""
    from engine.errors import UserError
    repeats = args.repeats or (5 if args.quick else 15)
    if repeats < 1 or args.calls < 1:
        raise UserError("--repeats and --calls must be at least 1")
    models = MODELS
    if args.models:
        models = tuple(tuple(m.split(":", 1)) for m in args.models.split(",") if m.strip())
        if not all(len(m) == 2 for m in models):
            raise UserError(f"--models must be model:dataset pairs (got {args.models!r})")
    rows = bench(models, repeats, args.calls)
    if args.json:
        print(json.dumps({"repeats": repeats, "calls": args.calls, "rows": rows}))
        return 0
    print(f"onnxruntime uint8 MaxPool 2x2 over the network's codes, time / time at 8-bit codes (medians of {repeats} "
          f"interleaved rounds of {args.calls} calls, one thread)")
    print(f"  {'pool':<18} {'elements':>8}  " + " ".join(f"{b:>5}b" for b in WIDTHS) + "   ns per element and bit; weights")
    for r in rows:
        print(f"  {r['pool']:<18} {r['elements']:>8}  " + " ".join(f"{r['ratio_to_8bit'][b]:>6.3f}" for b in WIDTHS)
              + f"   {r['seconds_per_element_bit'] * 1e9:>6.3f}; {r['weights']}")
    return 0


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace(json=False, quick=False, repeats=None, calls=200, models=None)))
