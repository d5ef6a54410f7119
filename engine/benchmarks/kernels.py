"""Bit-packed kernels vs torch fp32 F.linear and torch dynamic int8 Linear (GOPS, same run).

Every kernel and both torch baselines run on the same shapes, interleaved round by round, and
each figure is the median over rounds; ratios compare figures from the same run only. GOPS =
2*M*N*K / time (dense-equivalent for 2:4). What each row times: bit-serial rows take activations
already packed into bit-planes (``pack`` rows time that packing); int8-dot and 2:4 rows take
int8/uint8 codes; the float GEMV takes float32 x; torch int8 quantizes x inside the call.

Depthwise rows (a list of their own): the direct depthwise kernel on zero-padded channels-last
int8 codes vs torch fp32 ``F.conv2d(groups=C)`` on the same-shaped float NCHW input, 3x3,
stride 1, padding 1, interleaved the same way; GOPS = 2*B*H*W*C*9 / time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

FULL = dict(ms=(1, 16, 256), ks=(1024, 4096), threads=(1, 2), repeats=7, min_sample_s=0.02,
            dw=((1, 144, 28), (16, 96, 28), (16, 144, 14)))
QUICK = dict(ms=(1, 256), ks=(1024,), threads=(1,), repeats=3, min_sample_s=0.005, dw=((16, 96, 28),))

# (name, test on the rows) -- the targets, checked on the rows of the same run
TARGETS = [
    ("W1A1 >= 5x torch fp32 (1 thread, M=256, K=N=1024)", "W1A1", 256, 1024, "vs_fp32", 5.0),
    ("W2A2 >= 1.5x torch fp32 (1 thread, M=256, K=N=1024)", "W2A2", 256, 1024, "vs_fp32", 1.5),
    ("W4A8 >= 1.5x torch fp32 (1 thread, M=256, K=N=1024)", "W4A8", 256, 1024, "vs_fp32", 1.5),
    ("W4A8 >= 0.9x torch int8 (1 thread, M=256, K=N=1024)", "W4A8", 256, 1024, "vs_int8", 0.9),
    ("W2 float-act GEMV >= 3x torch fp32 (1 thread, M=1, K=N=4096)", "W2-float", 1, 4096, "vs_fp32", 3.0),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (rows, targets, machine)")
    parser.add_argument("--quick", action="store_true", help="reduced set for a CI smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds per shape (median taken)")


def _cases(m: int, k: int, n: int, threads: int, rng: np.random.Generator) -> dict:
    """Name -> zero-argument callable for every implementation at one shape."""
    import torch

    from engine import kernels as K

    x = torch.randn(m, k)
    w = torch.randn(n, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qlin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(k, n, bias=False)),
                                                      {torch.nn.Linear}, dtype=torch.qint8)
        qlin[0].set_weight_bias(torch.quantize_per_tensor(w, 0.05, 0, torch.qint8), None)

    def u(bits, shape):
        return rng.integers(0, 1 << bits, size=shape)

    w1, a1 = K.pack_weights(u(1, (n, k)), 1, False), K.pack_activations(u(1, (m, k)), 1, False)
    w2, a2 = K.pack_weights(u(2, (n, k)), 2, False), K.pack_activations(u(2, (m, k)), 2, False)
    a1_codes, a2_codes = u(1, (m, k)).astype(np.uint8), u(2, (m, k)).astype(np.uint8)
    a8 = rng.integers(-128, 128, size=(m, k)).astype(np.int8)
    w4 = K.pack_weights(rng.integers(-8, 8, size=(n, k)), 4, True, "int8")
    w8 = K.pack_weights(rng.integers(-128, 128, size=(n, k)), 8, True, "int8")
    sparse = rng.integers(-8, 8, size=(n, k)).reshape(n, k // 4, 4)
    np.put_along_axis(sparse, np.argsort(rng.random(sparse.shape), axis=2)[:, :, :2], 0, axis=2)
    wnm = K.pack_nm(sparse.reshape(n, k), 4, True)
    wf = K.pack_weights(rng.integers(-2, 2, size=(n, k)), 2, True, "float")
    xf = x.numpy()
    return {
        "torch-fp32": lambda: torch.nn.functional.linear(x, w),
        "torch-int8-dynamic": lambda: qlin(x),
        "W1A1": lambda: K.gemm_bitserial(w1, a1, threads=threads),
        "W1A1 pack": lambda: K.pack_activations(a1_codes, 1, False),
        "W2A2": lambda: K.gemm_bitserial(w2, a2, threads=threads),
        "W2A2 pack": lambda: K.pack_activations(a2_codes, 2, False),
        "W4A8": lambda: K.gemm_int8(w4, a8, 8, True, threads=threads),
        "W8A8": lambda: K.gemm_int8(w8, a8, 8, True, threads=threads),
        "W2-float": lambda: K.gemm_float_act(wf, xf, threads=threads),
        "W2-float t=1": lambda: K.gemm_float_act(wf, xf, planes=1, threads=threads),
        "2:4 W4A8": lambda: K.gemm_nm(wnm, a8, 8, True, threads=threads),
    }


def _sample(fn, inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def measure(quick: bool = False, repeats: int | None = None, shapes=None, threads=None) -> list[dict]:
    """Measure every kernel and both torch baselines; returns one row per (kernel, shape, threads).

    Each row: kernel, m, k, n, threads, gops, seconds (median per call), vs_fp32, vs_int8, path.
    The cost model calibrates its CPU profile from these rows.
    """
    import torch

    from engine import kernels as K

    cfg = dict(QUICK if quick else FULL)
    if repeats:
        cfg["repeats"] = repeats
    shapes = shapes or [(m, k, k) for k in cfg["ks"] for m in cfg["ms"]]
    rng = np.random.default_rng(0)
    rows = []
    old_threads = torch.get_num_threads()
    try:
        for m, k, n in shapes:
            for t in threads or cfg["threads"]:
                torch.set_num_threads(t)
                cases = _cases(m, k, n, t, rng)
                inner = {}
                for name, fn in cases.items():  # warm up and size the inner loop
                    fn()
                    inner[name] = max(1, int(cfg["min_sample_s"] / max(_sample(fn, 1), 1e-7)))
                times = {name: [] for name in cases}
                names = list(cases)
                for r in range(cfg["repeats"]):
                    for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
                        times[name].append(_sample(cases[name], inner[name]))
                med = {name: statistics.median(ts) for name, ts in times.items()}
                ops = 2.0 * m * n * k
                for name, sec in med.items():
                    rows.append(dict(kernel=name, m=m, k=k, n=n, threads=t, gops=ops / sec / 1e9, seconds=sec,
                                     vs_fp32=med["torch-fp32"] / sec, vs_int8=med["torch-int8-dynamic"] / sec,
                                     path=K.simd_path()))
    finally:
        torch.set_num_threads(old_threads)
    return rows


def _dw_cases(b: int, c: int, hw: int, threads: int, rng: np.random.Generator) -> dict:
    """Name -> zero-argument callable: torch fp32 depthwise 3x3 and the packed kernel (W8A8, W4A8)."""
    import torch

    from engine import kernels as K

    x = torch.randn(b, c, hw, hw)
    w = torch.randn(c, 1, 3, 3)
    xp = np.zeros((b, hw + 2, hw + 2, c), np.int8)
    xp[:, 1:-1, 1:-1, :] = rng.integers(-128, 128, size=(b, hw, hw, c))
    w8 = K.bind_depthwise(K.pack_depthwise(rng.integers(-128, 128, size=(c, 9)), 8, True, 3), 3, 1, 8, True, threads)
    w4 = K.bind_depthwise(K.pack_depthwise(rng.integers(-8, 8, size=(c, 9)), 4, True, 3), 3, 1, 8, True, threads)
    return {
        "torch-fp32 dw": lambda: torch.nn.functional.conv2d(x, w, padding=1, groups=c),
        "dw W8A8": lambda: w8(xp),
        "dw W4A8": lambda: w4(xp),
    }


def measure_depthwise(quick: bool = False, repeats: int | None = None, shapes=None, threads=None) -> list[dict]:
    """Depthwise 3x3 rows: kernel, b, c, hw, threads, gops, seconds, vs_fp32 (torch fp32 depthwise conv
    timed in the same interleaved rounds), path."""
    import torch

    from engine import kernels as K

    cfg = dict(QUICK if quick else FULL)
    if repeats:
        cfg["repeats"] = repeats
    rng = np.random.default_rng(0)
    rows = []
    old_threads = torch.get_num_threads()
    try:
        for b, c, hw in shapes or cfg["dw"]:
            for t in threads or cfg["threads"]:
                torch.set_num_threads(t)
                cases = _dw_cases(b, c, hw, t, rng)
                inner = {}
                for name, fn in cases.items():
                    fn()
                    inner[name] = max(1, int(cfg["min_sample_s"] / max(_sample(fn, 1), 1e-7)))
                times = {name: [] for name in cases}
                names = list(cases)
                for r in range(cfg["repeats"]):
                    for name in names[r % len(names):] + names[:r % len(names)]:
                        times[name].append(_sample(cases[name], inner[name]))
                med = {name: statistics.median(ts) for name, ts in times.items()}
                ops = 2.0 * b * hw * hw * c * 9
                for name, sec in med.items():
                    rows.append(dict(kernel=name, b=b, c=c, hw=hw, threads=t, gops=ops / sec / 1e9, seconds=sec,
                                     vs_fp32=med["torch-fp32 dw"] / sec, path=K.simd_path()))
    finally:
        torch.set_num_threads(old_threads)
    return rows


def _dw_table(rows: list[dict]) -> str:
    lines = [f"{'depthwise 3x3':<20} {'B':>4} {'C':>5} {'HxW':>7} {'thr':>3} {'GOPS':>8} {'vs fp32':>8}"]
    for r in rows:
        lines.append(f"{r['kernel']:<20} {r['b']:>4} {r['c']:>5} {str(r['hw']) + 'x' + str(r['hw']):>7} "
                     f"{r['threads']:>3} {r['gops']:>8.2f} {r['vs_fp32']:>7.2f}x")
    return "\n".join(lines)


def check_targets(rows: list[dict]) -> list[dict]:
    """The issue's 1-thread targets, evaluated on rows from one run (None when not measured)."""
    out = []
    for label, kernel, m, k, key, goal in TARGETS:
        hit = [r for r in rows if r["kernel"] == kernel and r["m"] == m and r["k"] == k and r["threads"] == 1]
        val = hit[0][key] if hit else None
        out.append(dict(target=label, measured=val, goal=goal, met=None if val is None else val >= goal))
    return out


def _table(rows: list[dict]) -> str:
    lines = [f"{'kernel':<20} {'M':>4} {'K=N':>5} {'thr':>3} {'GOPS':>8} {'vs fp32':>8} {'vs int8':>8}"]
    for r in rows:
        lines.append(f"{r['kernel']:<20} {r['m']:>4} {r['k']:>5} {r['threads']:>3} {r['gops']:>8.1f} "
                     f"{r['vs_fp32']:>7.2f}x {r['vs_int8']:>7.2f}x")
    return "\n".join(lines)


def run(args) -> int:
    """Entry point of ``bitscape bench kernels``."""
    from engine import kernels as K

    rows = measure(quick=args.quick, repeats=args.repeats)
    dw_rows = measure_depthwise(quick=args.quick, repeats=args.repeats)
    targets = check_targets(rows)
    machine = dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), path=K.simd_path(),
                   loadavg=os.getloadavg() if hasattr(os, "getloadavg") else None)
    if args.json:
        json.dump(dict(rows=rows, depthwise=dw_rows, targets=targets, machine=machine), sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(f"bit-packed kernels, path={machine['path']}, load average {machine['loadavg']}, "
          f"medians of interleaved rounds (ratios from this run only)")
    print(_table(rows))
    print()
    print(_dw_table(dw_rows))
    print()
    for t in targets:
        state = "not measured" if t["met"] is None else ("MET" if t["met"] else "MISSED")
        val = "-" if t["measured"] is None else f"{t['measured']:.2f}x"
        print(f"  [{state}] {t['target']}: {val}")
    return 0
