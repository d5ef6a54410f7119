"""End-to-end speed: the packed network vs onnxruntime (the same plan's QDQ model, by default its integer
form) vs torch FP32.

Per model and uniform plan (W8A8, W4A4, W2A2, W1A1) and batch (1 and 64): whole-network latency of
bitscape's packed kernels (``engine.deploy``), of onnxruntime running the plan's exported QDQ model, and
of the FP32 torch network, all on one thread, every point of a model timed in the same interleaved
rounds (min of the repeats by default, or medians), so the ratios are side by side. The packed path's moonshot is >= 2x onnxruntime at
W2A2 and below. Seeded fresh weights stand in where a baseline or dataset is missing: speed does not
depend on the weights' values. Tests check the bookkeeping, never the figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

MODELS = (("lenet5", "digits"), ("cnn", "fashion-mnist"), ("resnet20", "cifar10"))
BITS = (8, 4, 2, 1)
FULL = dict(batches=(1, 64), repeats=15)
QUICK = dict(batches=(1, 16), repeats=5)
MOONSHOT = 2.0            # packed >= 2x onnxruntime ...
MOONSHOT_BITS = 2         # ... at W2A2 and below
CALIB_SIZE = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="batch 1 and 16, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per point (median taken)")
    parser.add_argument("--models", default=None,
                        help="comma-separated model:dataset pairs (default lenet5:digits,cnn:fashion-mnist,"
                             "resnet20:cifar10)")
    parser.add_argument("--bits", default=None, help="comma-separated uniform bit-widths (default 8,4,2,1)")
    parser.add_argument("--batch", default=None, help="comma-separated batch sizes (default 1,64; 1,16 with --quick)")
    parser.add_argument("--min-time", type=float, default=0.005, metavar="S",
                        help="seconds each timed run lasts at least: back-to-back calls averaged after an "
                             "untimed one (default 0.005; 0: one call per run)")
    parser.add_argument("--onnx-form", default="integer", choices=("integer", "faithful"),
                        help="which export onnxruntime runs (default integer: `export onnx --integer`, its "
                             "convolutions fused into integer kernels; faithful: the default export)")
    parser.add_argument("--stat", default="min", choices=("min", "median"),
                        help="what each point's repeats are reduced to (default min: a loaded machine's "
                             "preemptions add tens of ms to some runs)")


def torch_point(base, x):
    """One FP32 forward pass of the torch network (``bench_model`` holds torch to one thread)."""
    import torch
    xt = torch.from_numpy(x)

    def run() -> dict:
        with torch.inference_mode():
            base(xt)
        return {}
    return run


def bench_model(model: str, dataset: str, bits=BITS, batches=(1, 64), repeats: int = 15, progress=None,
                stat: str = "min", min_time: float = 0.0, onnx_form: str = "integer") -> dict:
    """Whole-network seconds (``stat`` of the repeats: min, or median) of packed / onnxruntime / torch
    FP32 per plan and batch, one interleaved set of rounds; a plan a runtime cannot run is noted in
    'skipped'. ``onnx_form``: the export onnxruntime runs, integer or faithful."""
    import torch

    from engine.cost.measure import (
        batch_of,
        model_source,
        ort_bytes,
        ort_point,
        packed_point,
        prepare_plan,
        time_rounds,
        uniform_plans,
    )
    from engine.errors import UserError
    say = progress or (lambda m: None)
    src = model_source(model, dataset, random_weights=True, calib_size=CALIB_SIZE)
    src.base.eval()
    keys, points, skipped = [], [], []
    for b in batches:
        keys.append(("torch-fp32", "FP32", b))
        points.append(torch_point(src.base, batch_of(src.sample, b)))
    for plan in uniform_plans(bits):
        prep = prepare_plan(src, plan)
        try:
            blob = ort_bytes(prep, integer=onnx_form == "integer")
        except UserError as e:
            blob = None
            skipped.append({"runtime": "onnxruntime", "plan": plan.name, "reason": str(e)})
        for b in batches:
            x = batch_of(src.sample, b)
            keys.append(("packed", plan.name, b))
            points.append(packed_point(prep, b))
            if blob is not None:
                keys.append(("onnxruntime", plan.name, b))
                points.append(ort_point(blob, x))
        say(f"prepared {model} {plan.name}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timed = time_rounds(points, repeats, stat=stat, min_time=min_time)
    finally:
        torch.set_num_threads(threads)
    secs = {k: t.total for k, t in zip(keys, timed)}
    rows = []
    for plan in uniform_plans(bits):
        for b in batches:
            p, o, t = secs.get(("packed", plan.name, b)), secs.get(("onnxruntime", plan.name, b)), \
                secs.get(("torch-fp32", "FP32", b))
            rows.append({"model": model, "dataset": dataset, "plan": plan.name, "bits": plan.default.w_bits,
                         "batch": b, "packed_s": p, "onnxruntime_s": o, "torch_fp32_s": t,
                         "packed_vs_ort": (o / p) if (o and p) else None,
                         "packed_vs_torch": (t / p) if (t and p) else None,
                         "ort_vs_torch": (t / o) if (t and o) else None})
    return {"model": model, "dataset": dataset, "weights": src.weights, "stat": stat, "min_time": min_time,
            "onnx_form": onnx_form, "rows": rows, "skipped": skipped}


def moonshot(rows: list[dict]) -> dict:
    """Where the packed path stands against onnxruntime at W2A2 and below: met when every such point
    is >= MOONSHOT x faster."""
    low = [r for r in rows if r["bits"] <= MOONSHOT_BITS and r["packed_vs_ort"] is not None]
    ratios = [r["packed_vs_ort"] for r in low]
    return {"target": MOONSHOT, "points": len(low), "met_points": sum(x >= MOONSHOT for x in ratios),
            "min": min(ratios) if ratios else None, "max": max(ratios) if ratios else None,
            "met": bool(ratios) and all(x >= MOONSHOT for x in ratios)}


def _pairs(text: str):
    from engine.errors import UserError
    out = tuple(tuple(x.strip().split(":", 1)) for x in text.split(",") if x.strip())
    if not out or any(len(m) != 2 for m in out):
        raise UserError(f"--models must be model:dataset pairs (got {text!r})")
    return out


def _ints(text: str, what: str, lo: int, hi: int | None = None):
    from engine.errors import UserError
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers (got {text!r})") from None
    if not vals or any(v < lo or (hi is not None and v > hi) for v in vals):
        raise UserError(f"{what} must be integers in {lo}..{hi if hi else 'any'} (got {text!r})")
    return vals


def run(args) -> int:
    from engine.cost.measure import check_min_time, machine
    cfg = dict(QUICK if args.quick else FULL)
    models = _pairs(args.models) if args.models else MODELS
    bits = _ints(args.bits, "--bits", 1, 8) if args.bits else BITS
    batches = _ints(args.batch, "--batch", 1) if args.batch else cfg["batches"]
    repeats = args.repeats or cfg["repeats"]
    say = None if args.json else (lambda m: print(m, file=sys.stderr))
    check_min_time(args.min_time)
    form = getattr(args, "onnx_form", "integer")
    results = [bench_model(m, d, bits, batches, repeats, say, args.stat, args.min_time, form) for m, d in models]
    rows = [r for x in results for r in x["rows"]]
    out = {"machine": machine(), "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
           "repeats": repeats, "stat": args.stat, "min_time": args.min_time, "onnx_form": form, "results": results,
           "moonshot": moonshot(rows)}
    if args.json:
        print(json.dumps(out, default=lambda o: None if isinstance(o, float) and not math.isfinite(o) else o))
        return 0
    print(f"end-to-end latency, {args.stat} of {repeats} interleaved runs of >= {args.min_time * 1e3:g} ms, one thread; "
          f"onnxruntime runs the {form} export; {out['machine']}; "
          f"load average {out['loadavg']}")
    print(f"  {'model':<9} {'plan':<5} {'batch':>5} {'packed ms':>10} {'ORT ms':>10} {'torch ms':>10}"
          f"   {'packed/ORT':>10} {'packed/torch':>12} {'ORT/torch':>9}   (speedups: x > 1 = faster)")

    def ms(v):
        return f"{v * 1e3:10.3f}" if v else f"{'-':>10}"

    def x(v, w):
        return f"{v:>{w - 1}.2f}x" if v else f"{'-':>{w}}"
    for res in results:
        for r in res["rows"]:
            print(f"  {r['model']:<9} {r['plan']:<5} {r['batch']:>5} {ms(r['packed_s'])} {ms(r['onnxruntime_s'])} "
                  f"{ms(r['torch_fp32_s'])}   {x(r['packed_vs_ort'], 10)} {x(r['packed_vs_torch'], 12)} "
                  f"{x(r['ort_vs_torch'], 9)}")
        for s in res["skipped"]:
            print(f"  skipped {s['runtime']} {res['model']} {s['plan']}: {s['reason']}")
    m = out["moonshot"]
    if m["points"]:
        print(f"moonshot (packed >= {MOONSHOT:g}x onnxruntime at W{MOONSHOT_BITS}A{MOONSHOT_BITS} and below): "
              f"{m['met_points']}/{m['points']} points met; packed/ORT from {m['min']:.2f}x to {m['max']:.2f}x"
              + ("" if m["met"] else "   NOT MET"))
    return 0
