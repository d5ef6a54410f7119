"""PrecisionBatching (Lam et al.): weight bit-planes dropped at run time, accuracy and packed-kernel speed."""
from __future__ import annotations

import statistics
import time

from engine.study import core

ID = "pbatch"
TITLE = "PrecisionBatching: run-time weight bit-planes"
PAPER = "Lam, Yedidia, Banbury, Reddi, 'PrecisionBatching: Bitserial Decomposition for Efficient Neural " \
        "Network Inference on GPUs', arXiv 2003.00822"
CLAIM = ("Decomposing quantized weights into bit-planes and multiplying them with full-precision activations "
         "runs low-bit weights several times faster than full precision with little accuracy loss, and the "
         "number of bit-planes, hence the accuracy/speed trade-off, can be chosen at run time from one stored "
         "model (paraphrased).")
HIGH = 8
PLANES = (8, 7, 6, 5, 4, 3, 2, 1)
BATCH = 32


def accuracy_by_planes(cfg) -> dict:
    """One W8 (float activations) model; for each plane count the fake-quant accuracy on the whole test set
    and the packed bit-plane kernels' accuracy and agreement on the first ``cfg.pb_examples`` test images."""
    import torch

    from engine.evaluation import Settings
    from engine.explore.pipeline import _calibration_batches
    from engine.training.finetune import accuracy
    from engine.training.methods.dual import make_dual, planes_model, set_mode
    base, data, _ = core.context(cfg)
    calib = _calibration_batches(data, Settings())
    n = cfg.pb_examples
    xs, ys = data.x_test[:n], data.y_test[:n]
    out = {}
    for t in PLANES:
        applied = make_dual(base, data.input_shape, high=(HIGH, 32), low=(t, 32), calib=calib)
        mode = "high" if t == HIGH else "low"
        set_mode(applied.model, mode)
        acc = accuracy(applied.model, data.x_test, data.y_test)
        net = planes_model(applied.model)
        set_mode(net, mode)
        with torch.no_grad():
            ref = torch.cat([applied.model(xs[i:i + 250]) for i in range(0, n, 250)])
            got = torch.cat([net(xs[i:i + 250]) for i in range(0, n, 250)])
        out[str(t)] = {"fake_quant_test": acc, "packed_sub": float((got.argmax(1) == ys).float().mean()),
                       "fake_quant_sub": float((ref.argmax(1) == ys).float().mean()),
                       "agreement": float((got.argmax(1) == ref.argmax(1)).float().mean()),
                       "max_abs_diff": float((got - ref).abs().max())}
    return {"planes": out, "fp32_test": accuracy(base, data.x_test, data.y_test), "examples": n}


def final(cfg, ctx, done) -> dict:
    """Kernel timing in the main process after the pool has stopped: every GEMM of the network at batch
    ``BATCH`` through ``gemm_float_act(w, x, planes=t)`` vs torch's float32 matmul, medians, interleaved."""
    import numpy as np
    import torch

    from engine import kernels as K
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    topo = ctx["topo"][cfg.model]
    shapes = [(BATCH * layer.positions, layer.reduction, layer.gemm_n) for layer in topo.layers if layer.kind != "lstm"]
    cases = []
    for m, k, n in shapes:
        codes = rng.integers(-128, 128, size=(n, k)).astype(np.int8)
        x = rng.standard_normal((m, k)).astype(np.float32)
        cases.append((K.pack_weights(codes, HIGH, True, "float"), x, torch.from_numpy(x),
                      torch.from_numpy(codes.astype(np.float32))))
    reps = 3 if cfg.quick else 7
    times = {str(t): [] for t in PLANES}
    times["torch fp32"] = []
    for _ in range(reps):
        for t in PLANES:
            t0 = time.perf_counter()
            for pw, x, _, _ in cases:
                K.gemm_float_act(pw, x, planes=t)
            times[str(t)].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            for _, _, xt, wt in cases:
                torch.nn.functional.linear(xt, wt)
        times["torch fp32"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    macs = sum(m * k * n for m, k, n in shapes)
    return {"seconds": med, "macs": macs, "shapes": shapes, "batch": BATCH, "reps": reps,
            "simd": K.simd_path()}


def tasks(cfg, ctx, done):
    return [core.Task("pbatch-accuracy", "engine.study.pbatch:accuracy_by_planes", {}, 3.0)]


def section(cfg, ctx, done, plots):
    acc = done.get("pbatch-accuracy", {})
    tim = done.get("pbatch-final", {})
    problems = [f"{k}: {r['error']}" for k, r in (("accuracy", acc), ("timing", tim)) if "error" in r]
    if problems or not acc or not tim:
        return core.failed_section(__name__, problems or ["missing results"])
    fp = 100 * acc["fp32_test"]
    sec = tim["seconds"]
    rows, within = [], []
    for t in PLANES:
        r = acc["planes"][str(t)]
        a = 100 * r["fake_quant_test"]
        if a >= fp - 2 * core.TOL:
            within.append(t)
        rows.append([f"{t}", f"{a:.2f} ({a - fp:+.2f})", f"{100 * r['packed_sub']:.2f}", f"{100 * r['agreement']:.1f}%",
                     f"{1e3 * sec[str(t)]:.1f}", f"{sec[str(HIGH)] / sec[str(t)]:.2f}x",
                     f"{sec['torch fp32'] / sec[str(t)]:.2f}x"])
    t_min = min(within) if within else HIGH
    tradeoff = sec[str(HIGH)] / sec[str(max(1, HIGH // 2))] > 1.3
    vs_fp = sec["torch fp32"] / sec[str(t_min)]
    verdict = "held" if tradeoff and vs_fp > 1 else ("partly held" if tradeoff else "did not hold")
    fig, ax = core.figure()
    ax.plot(PLANES, [100 * acc["planes"][str(t)]["fake_quant_test"] for t in PLANES], "o-", label="accuracy")
    ax.axhline(fp, color="k", ls="--", lw=1, label="FP32")
    ax.set_xlabel("weight bit-planes used")
    ax.set_ylabel("test accuracy (%)")
    ax.invert_xaxis()
    ax2 = ax.twinx()
    ax2.plot(PLANES, [1e3 * sec[str(t)] for t in PLANES], "s-", color="tab:red", label="packed GEMMs (ms)")
    ax2.axhline(1e3 * sec["torch fp32"], color="tab:red", ls=":", lw=1, label="torch fp32 (ms)")
    ax2.set_ylabel("ms per batch of GEMMs")
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower left")
    ax.set_title(f"Bit-planes at run time, {cfg.model} / {cfg.dataset}", fontsize=9)
    png = core.save(fig, plots, ID)
    figure = (f"accuracy within {2 * core.TOL} points of FP32 down to {t_min} planes; {HIGH} -> 4 planes "
              f"{sec[str(HIGH)] / sec['4']:.2f}x faster; at {t_min} planes {vs_fp:.2f}x torch fp32 speed (CPU)")
    notes = [f"One model: W{HIGH} weights (per-tensor LSQ step, MSE-calibrated, no fine-tuning), float "
             "activations. Dropping planes keeps the top t bits of each 8-bit code (floor), reconstructed at the "
             "bin midpoint with a least-squares step (engine.training.methods.dual, 'nested' weights); no retraining "
             "per plane count.",
             f"Fake-quant accuracy on the whole test set; the packed path (engine.kernels.gemm_float_act with "
             f"planes=t inside every conv / linear layer) on the first {acc['examples']} test images, with its "
             "top-1 agreement with the fake-quant model.",
             f"Speed: all {len(tim['shapes'])} GEMMs of the network at batch {tim['batch']} (im2col shapes), one "
             f"thread, median of {tim['reps']} interleaved rounds, SIMD path '{tim['simd']}', random codes; vs "
             "torch float32 F.linear on the same shapes. Measured on a shared 2-core machine after the study's "
             "workers stopped.",
             "PrecisionBatching targets GPUs (and reports its speed-ups against cuDNN/cuBLAS on them); this is a "
             "CPU kernel, so the comparison with torch fp32 is the CPU analogue, not the paper's setting."]
    if vs_fp <= 1:
        notes.append(f"On this CPU the bit-plane kernel at {t_min} planes is slower than torch's float32 GEMM "
                     f"(x{vs_fp:.2f}); only the run-time trade-off between planes holds.")
    table = {"columns": ["planes", "test acc. (%)", f"packed acc. ({acc['examples']} imgs)", "packed = fake-quant",
                         "GEMM ms", f"vs {HIGH} planes", "vs torch fp32"], "rows": rows}
    return core.section(__name__, verdict, figure, table, notes, [png],
                        extra={"t_min": t_min, "speed_vs_fp32": vs_fp, "seconds": sec})
