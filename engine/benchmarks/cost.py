"""Cost model vs measured packed-kernel latency (the cpu profile checked against the deployment).

For each zoo model (mlp, lenet5, lstm on digits; the cnn on Fashion-MNIST when installed) and
several plans (W8A8, W4A4, W2A2, W1A1, 2:4, widened), the planned network is deployed with
``engine.deploy`` and timed: every packed layer and the whole forward pass, medians of repeats, at
batch 1 and a larger batch, the plans of one model timed in interleaved rounds (a load burst on the
shared machine hits every plan alike). A layer's time is its span (``PackedNetwork.forward(spans=)``):
activation quantization, packing, the kernel, the rescale, plus the non-GEMM ops after it up to the
next layer (ReLU, pooling, flatten), so the layers add up to the network; the layer call alone is
kept as ``measured_calls_s``. The
cost model's predictions on the ``cpu`` profile are set against those times per layer and per
network: mean absolute percentage error (MAPE) and Spearman rank correlation. The profile is then
re-fitted (``engine.cost.calibrate.fit_profile``) on some plans and its error reported on the
held-out plans. Nothing here checks wall-clock in tests; figures are from one run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from engine.cost.bases import BASES

TARGET_MAPE = 0.25
TARGET_SPEARMAN = 0.9
PLAN_NAMES = ("W8A8", "W4A4", "W2A2", "W1A1", "2:4", "widened")
FIT_PLANS = ("W8A8", "W2A2", "W1A1", "2:4")
HELD_OUT = ("W4A4", "widened")
FULL = dict(models=(("mlp", "digits"), ("lenet5", "digits"), ("lstm", "digits"), ("cnn", "fashion-mnist")),
            batches=(1, 64), repeats=15)
QUICK = dict(models=(("mlp", "digits"), ("lenet5", "digits"), ("lstm", "digits")), batches=(1, 16), repeats=5)
# free coefficients of the cpu profile fitted to the per-layer measurements
FIT_PARAMS = ("compute.efficiency.1", "compute.efficiency.2", "compute.efficiency.default",
              "memory.efficiency", "sparsity.nm.speedup",
              "host.layer_s.linear", "host.layer_s.conv2d", "host.layer_s.lstm", "host.step_s",
              "host.quant_s", "host.out_s.linear", "host.out_s.conv2d", "host.out_s.lstm", "host.im2col_s",
              "host.binary_s", "host.binary_out_s")
# starting values of the host terms (seconds per call / step, per element)
HOST_START = {"layer_s": {"linear": 1e-5, "conv2d": 2e-5, "lstm": 2e-5}, "step_s": 1e-5, "quant_s": 2e-9,
              "out_s": {"linear": 2e-9, "conv2d": 2e-9, "lstm": 2e-9}, "im2col_s": 1e-9, "binary_s": 5e-6,
              "binary_out_s": 1e-9}
# reduction padding of the deployment's kernels: bit-serial planes are 256 bits, int8 / 2:4 blocks 64
TILE_K = {"1": 256, "2": 256, "default": 64}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (rows, errors, targets)")
    parser.add_argument("--quick", action="store_true", help="digits models only, fewer repeats, batch 1 and 16")
    parser.add_argument("--repeats", type=int, default=None, help="timed forward passes per point (median taken)")
    parser.add_argument("--profile", default="cpu", help="profile to check (default cpu)")
    parser.add_argument("--write-profile", default=None, metavar="PATH",
                        help="write the profile re-fitted on the fit plans to PATH (e.g. data/profiles/cpu.json)")
    parser.add_argument("--mixed", action="store_true",
                        help="the uniform-to-mixed protocol instead: per target (packed, onnxruntime) calibrate on "
                             "uniform W1A1..W8A8 plans, predict random mixed plans (lenet5, cnn, resnet20)")
    parser.add_argument("--random", type=int, default=None, metavar="N",
                        help="--mixed: random mixed plans per model (default 200; 20 with --quick)")
    parser.add_argument("--seed", type=int, default=0,
                        help="--mixed: seed of the random mixed plans (default 0; another seed draws a fresh set "
                             "to check a cost-model change on plans it was not developed on)")
    parser.add_argument("--targets", default="packed,onnxruntime,onnxruntime-integer",
                        help="--mixed: comma-separated targets")
    parser.add_argument("--save-measurements", default=None, metavar="DIR",
                        help="--mixed: also write each model's measurements (CSV + plans; with --repeatability "
                             "the second run as <model>-<dataset>.run2.csv) to DIR")
    parser.add_argument("--from-measurements", default=None, metavar="DIR",
                        help="--mixed: time nothing; score the measurements an earlier --save-measurements "
                             "wrote to DIR (after a change to the cost model or a base profile)")
    parser.add_argument("--models", default=None,
                        help="--mixed: comma-separated model:dataset pairs (default lenet5:digits,"
                             "cnn:fashion-mnist,resnet20:cifar10)")
    parser.add_argument("--repeatability", action="store_true",
                        help="--mixed: time every plan a second time; the two runs' Spearman on the mixed plans "
                             "is the ceiling any prediction can reach on this machine")
    parser.add_argument("--stat", default="min", choices=("median", "min"),
                        help="--mixed: what each point's repeats are reduced to (default min: on a loaded "
                             "machine the least disturbed of the interleaved runs repeats best)")
    parser.add_argument("--instances", type=int, default=None, metavar="N",
                        help="--mixed: fresh deployments / sessions of every plan, each timed, averaged (default "
                             "4; 1 with --quick): where a network's memory lands moves its time by ~1%%")
    parser.add_argument("--min-time", type=float, default=None, metavar="S",
                        help="--mixed: seconds each repeat lasts at least: after an untimed call, back-to-back "
                             f"calls averaged (default {MIXED_MIN_TIME}; 0: one call per repeat)")


# ----------------------------------------------------------------------------- plans

def plans_for(model: str, topo) -> dict:
    """The benchmark's plans, adjusted to the model (output layer not widened, 2:4 where it fits)."""
    from engine.plans.plan import LayerConfig, Plan
    out_layers = [l.name for l in topo.layers if l.is_output]
    keep = {n: {"widen": 1.0} for n in out_layers}
    nm_layers: dict = {}
    for l in topo.layers:
        if any(d % 4 for d in l.nm_dims):
            nm_layers[l.name] = {"sparsity": "none"}
    if model == "lenet5":   # conv2 reads 6 channels: widen conv1 so conv2 can be 2:4 too
        nm_layers = {"conv1": {"sparsity": "none", "widen": 2.0}}
    return {
        "W8A8": Plan.uniform(8, 8, name="W8A8"),
        "W4A4": Plan.uniform(4, 4, name="W4A4"),
        "W2A2": Plan.uniform(2, 2, name="W2A2"),
        "W1A1": Plan.uniform(1, 1, quantizer="binary", name="W1A1"),
        "2:4": Plan(default=LayerConfig(4, 4, sparsity="2:4"), layers=nm_layers, name="2:4 W4A4"),
        "widened": Plan(default=LayerConfig(4, 4, widen=2.0), layers=keep, name="W4A4 x2"),
    }


# ----------------------------------------------------------------------------- measuring

def _time_nets(points: list, repeats: int) -> list[tuple[dict, dict, float]]:
    """Median seconds per layer span, per layer call and for the whole forward pass of every
    (net, x) point, timed in ``repeats`` interleaved rounds (one forward pass of each point per round)."""
    for net, x in points:
        for _ in range(2):
            net.forward(x)
    spans: list[dict] = [{} for _ in points]
    calls: list[dict] = [{} for _ in points]
    totals: list[list] = [[] for _ in points]
    for _ in range(repeats):
        for i, (net, x) in enumerate(points):
            sp: dict = {}
            t: dict = {}
            t0 = time.perf_counter()
            net.forward(x, timings=t, spans=sp)
            totals[i].append(time.perf_counter() - t0)
            for k, v in sp.items():
                spans[i].setdefault(k, []).append(v)
            for k, v in t.items():
                calls[i].setdefault(k, []).append(v)
    med = lambda d: {k: statistics.median(v) for k, v in d.items()}  # noqa: E731
    return [(med(s_), med(c), statistics.median(tt)) for s_, c, tt in zip(spans, calls, totals)]


def measure(quick: bool = False, repeats: int | None = None, models=None, batches=None, progress=None) -> list[dict]:
    """One record per (model, plan, batch): widened layers, configs, measured seconds per layer and net."""
    import torch

    from engine.deploy import deploy
    from engine.errors import UserError
    from engine.evaluation import Settings
    from engine.explore.pipeline import prepare
    from engine.models.data import load_dataset

    cfg = dict(QUICK if quick else FULL)
    reps = repeats or cfg["repeats"]
    records = []
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for model, dataset in models or cfg["models"]:
            try:
                data = load_dataset(dataset)
            except UserError as e:
                records.append({"model": model, "dataset": dataset, "skipped": str(e)})
                continue
            from engine.models.baselines import load_baseline
            from engine.plans.graph import analyze
            base = load_baseline(model, dataset, data)
            topo = analyze(base, data.input_shape)
            points, recs = [], []
            for pname, plan in plans_for(model, topo).items():
                applied, _, _ = prepare(model, dataset, plan, Settings(steps=0, calib_batches=1), baseline=base,
                                        data=data)
                net = deploy(applied)
                layers = applied.topology.widened(applied.configs, applied.factors)
                kernels = {r["name"]: r["kernel"] for r in net.summary()["layers"]}
                for b in batches or cfg["batches"]:
                    idx = np.arange(b) % len(data.x_test)
                    points.append((net, np.ascontiguousarray(data.x_test.numpy()[idx])))
                    recs.append({"model": model, "dataset": dataset, "plan": pname, "batch": b,
                                 "layers": [l.to_dict() for l in layers],
                                 "configs": {k: v.to_dict() for k, v in applied.configs.items()},
                                 "kernels": kernels})
            for rec, (per, calls, total) in zip(recs, _time_nets(points, reps)):
                rec.update(measured_layers_s=per, measured_calls_s=calls, measured_net_s=total)
                records.append(rec)
                if progress:
                    progress(f"{model} {rec['plan']} batch {rec['batch']}: {total * 1e3:.3f} ms")
    finally:
        torch.set_num_threads(old)
    return records


# ----------------------------------------------------------------------------- comparing

def _configs(rec):
    from engine.plans.plan import LayerConfig
    return {k: LayerConfig(**v) for k, v in rec["configs"].items()}


def _mape(pred, meas) -> float:
    p, m = np.asarray(pred, float), np.asarray(meas, float)
    return float(np.mean(np.abs(p / m - 1))) if len(m) else float("nan")


def _spearman(pred, meas) -> float:
    from scipy import stats
    if len(pred) < 3:
        return float("nan")
    return float(stats.spearmanr(pred, meas).statistic)


def compare(records: list[dict], profile) -> dict:
    """Per-layer and per-network predicted vs measured rows, with MAPE and Spearman."""
    from engine.cost import cost_plan
    from engine.cost.calibrate import compare_measured
    layer_rows, net_rows = [], []
    for rec in records:
        if "skipped" in rec:
            continue
        cfgs = _configs(rec)
        cmp = compare_measured(rec["layers"], cfgs, profile, rec["measured_layers_s"], rec["batch"])
        for r in cmp["rows"]:
            layer_rows.append({"model": rec["model"], "plan": rec["plan"], "batch": rec["batch"],
                               "layer": r["layer"], "kernel": rec["kernels"].get(r["layer"]), "exec": r["exec"],
                               "predicted_s": r["predicted_s"], "measured_s": r["measured_s"]})
        rep = cost_plan(rec["layers"], cfgs, profile, rec["batch"], notes=False)
        net_rows.append({"model": rec["model"], "plan": rec["plan"], "batch": rec["batch"],
                         "predicted_s": rep.batch_time_s, "measured_s": rec["measured_net_s"],
                         "measured_layers_sum_s": float(sum(rec["measured_layers_s"].values()))})
    return {"layer_rows": layer_rows, "net_rows": net_rows}


def errors(rows: list[dict], select=lambda r: True) -> dict:
    rs = [r for r in rows if select(r)]
    pred = [r["predicted_s"] for r in rs]
    meas = [r["measured_s"] for r in rs]
    return {"n": len(rs), "mape": _mape(pred, meas), "spearman": _spearman(pred, meas)}


def summarize(cmp: dict, plans=None) -> dict:
    sel = (lambda r: True) if plans is None else (lambda r: r["plan"] in plans)
    models = sorted({r["model"] for r in cmp["layer_rows"]})
    out = {"layers": errors(cmp["layer_rows"], sel), "networks": errors(cmp["net_rows"], sel), "per_model": {}}
    for m in models:
        out["per_model"][m] = {"layers": errors(cmp["layer_rows"], lambda r, m=m: sel(r) and r["model"] == m),
                               "networks": errors(cmp["net_rows"], lambda r, m=m: sel(r) and r["model"] == m)}
    return out


# ----------------------------------------------------------------------------- fitting

def _base_profile(name, combine=None):
    """The profile to fit from, with a 2:4 entry (the fit sets its speedup) if it has none."""
    from engine.cost import load_profile
    from engine.cost.profiles import Profile
    prof = load_profile(name)
    d = prof.to_dict()
    if combine:
        d["combine"] = combine
    nm = d.setdefault("sparsity", {}).setdefault("nm", {"patterns": ["2:4"], "speedup": 1.2, "efficiency": 1.0,
                                                      "min_channels": 4, "channel_multiple": 4})
    nm.setdefault("speedup", 1.2)
    d["sparsity"].setdefault("formats", ["dense", "nm"])
    eff = d["compute"].get("efficiency", 1.0)
    if not isinstance(eff, dict):
        d["compute"]["efficiency"] = {"default": eff}
    for row in d["compute"].get("table", []):   # the per-layer cost lives in the host terms
        row.pop("overhead_s", None)
    d["compute"]["overhead_s"] = 0.0
    d["compute"].setdefault("tile", {}).setdefault("k", dict(TILE_K))
    host = d.setdefault("host", {})
    for k, v in HOST_START.items():
        if isinstance(v, dict):
            host.setdefault(k, {})
            for kk, vv in v.items():
                host[k].setdefault(kk, vv)
        else:
            host.setdefault(k, v)
    return Profile(d, prof.path)


def fit(records: list[dict], profile="cpu", plans=FIT_PLANS, extra_note: str = ""):
    """Fit the profile's free coefficients to the per-layer measurements of ``plans``, with the
    roofline combined as max(compute, memory) and as compute + memory (the host runs the numpy
    quantize/rescale work and the kernel one after the other); the better fit (on ``plans`` only)
    is kept."""
    from engine.cost.calibrate import Measurement, fit_profile
    from engine.cost.formulas import FLOAT
    from engine.cost.geometry import geometry
    ms = []
    for rec in records:
        if "skipped" in rec or rec["plan"] not in plans:
            continue
        cfgs = _configs(rec)
        names = [l["name"] for l in rec["layers"]]
        for i, l in enumerate(rec["layers"]):
            if l["name"] in rec["measured_layers_s"]:
                nxt = cfgs[names[i + 1]].a_bits if i + 1 < len(names) else FLOAT
                ms.append(Measurement(geometry(l), cfgs[l["name"]], rec["measured_layers_s"][l["name"]],
                                      rec["batch"], nxt))
    note = (f"Re-fitted by 'bitscape bench cost' (engine.benchmarks.cost.fit -> engine.cost.calibrate.fit_profile, "
            f"least squares on log time) to {len(ms)} per-layer latencies of the packed deployment "
            f"(engine.deploy layer spans: activation quantization + kernel + rescale + the non-GEMM ops up to the next "
            f"layer; 1 thread, medians of interleaved rounds) of plans "
            f"{', '.join(plans)} on {', '.join(sorted({r['model'] for r in records if 'plan' in r}))}; "
            f"held-out plans {', '.join(p for p in PLAN_NAMES if p not in plans)} are reported separately. "
            f"The efficiencies scale the table's kernel rates down to what the deployment path reaches on these "
            f"small layers; the host terms are the per-layer host work (call cost by layer kind, LSTM per-step cost, "
            f"activation quantization per element, rescale/epilogue per output element, im2col per element)."
            + (f" {extra_note}" if extra_note else ""))
    fits = [fit_profile(_base_profile(profile, comb), ms, params=list(FIT_PARAMS),
                        source_note=note + f" Roofline combine '{comb}' (chosen on the fit plans).")
            for comb in ("max", "sum")]
    return min(fits, key=lambda f: f.after["rms_log"])


# ----------------------------------------------------------------------------- entry point

def _targets(s: dict) -> dict:
    lay, net = s["layers"], s["networks"]
    return {"layer_mape_met": bool(lay["mape"] <= TARGET_MAPE), "layer_spearman_met": bool(lay["spearman"] >= TARGET_SPEARMAN),
            "net_mape_met": bool(net["mape"] <= TARGET_MAPE), "net_spearman_met": bool(net["spearman"] >= TARGET_SPEARMAN)}


def _finite(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def run(args) -> int:
    """Entry point of ``bitscape bench cost``."""
    from engine.cost import load_profile
    from engine.errors import UserError
    if args.repeats is not None and args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    if getattr(args, "mixed", False):
        return run_mixed(args)
    prof = load_profile(args.profile)
    say = (lambda m: print(m, file=sys.stderr)) if not args.json and sys.stderr.isatty() else None
    records = measure(quick=args.quick, repeats=args.repeats, progress=say)
    shipped = compare(records, prof)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    fitted = fit(records, args.profile, extra_note=(
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, load average "
        f"{', '.join(f'{v:.1f}' for v in load) if load else 'unknown'} (a shared machine: figures are noisy)."))
    refit = compare(records, fitted.profile)
    result = {
        "profile": prof.name, "profile_status": prof.status,
        "machine": {"cores": os.cpu_count(), "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "skipped": [r for r in records if "skipped" in r],
        "shipped": {"all": summarize(shipped)},
        "fitted": {"params": fitted.params, "combine": fitted.profile.to_dict().get("combine"),
                   "fit_plans": list(FIT_PLANS), "held_out_plans": list(HELD_OUT),
                   "fit": summarize(refit, FIT_PLANS), "held_out": summarize(refit, HELD_OUT),
                   "all": summarize(refit)},
        "targets": {"mape": TARGET_MAPE, "spearman": TARGET_SPEARMAN},
        "rows": {"shipped": shipped, "fitted": refit},
    }
    result["shipped"]["met"] = _targets(result["shipped"]["all"])
    result["fitted"]["met_held_out"] = _targets(result["fitted"]["held_out"])
    if args.write_profile:
        from engine.fileio import atomic_write_text
        d = fitted.profile.to_dict()
        prov = d.setdefault("provenance", {})
        for k in FIT_PARAMS:
            prov[k] = "fitted: 'bitscape bench cost' per-layer latencies of the packed deployment (see source)"
        prov["combine"] = "chosen by the fit (lower log error on the fit plans)"
        prov["compute.overhead_s"] = "0: the per-layer cost is carried by the fitted host terms"
        atomic_write_text(args.write_profile, json.dumps(_finite(d), indent=2) + "\n")
        result["wrote_profile"] = args.write_profile
    if args.json:
        print(json.dumps(_finite(result)))
        return 0
    _print(result)
    return 0


def _fmt(e: dict) -> str:
    sp = "  n/a" if not math.isfinite(e["spearman"]) else f"{e['spearman']:5.2f}"
    return f"MAPE {e['mape']:7.1%}  Spearman {sp}  (n={e['n']})"


def _print(r: dict) -> None:
    print(f"cost model ({r['profile']} profile, {r['profile_status']}) vs measured packed deployment, 1 thread, "
          f"load average {r['machine']['loadavg']}")
    for s in r["skipped"]:
        print(f"  skipped {s['model']} on {s['dataset']}: {s['skipped']}")
    print("\nper network (predicted vs measured, medians):")
    print(f"  {'model':<7} {'plan':<8} {'batch':>5} {'predicted':>11} {'measured':>11} {'ratio':>6}")
    for row in r["rows"]["fitted"]["net_rows"]:
        shipped = next(x for x in r["rows"]["shipped"]["net_rows"]
                       if (x["model"], x["plan"], x["batch"]) == (row["model"], row["plan"], row["batch"]))
        print(f"  {row['model']:<7} {row['plan']:<8} {row['batch']:>5} {row['predicted_s'] * 1e6:>9.1f}us "
              f"{row['measured_s'] * 1e6:>9.1f}us {row['predicted_s'] / row['measured_s']:>5.2f}x"
              f"   (shipped profile {shipped['predicted_s'] / shipped['measured_s']:.2f}x)")
    for title, s in (("shipped profile, all plans", r["shipped"]["all"]),
                     (f"re-fitted on {', '.join(r['fitted']['fit_plans'])} (fit error)", r["fitted"]["fit"]),
                     (f"re-fitted, HELD-OUT plans {', '.join(r['fitted']['held_out_plans'])}", r["fitted"]["held_out"])):
        print(f"\n{title}:")
        print(f"  layers   {_fmt(s['layers'])}")
        print(f"  networks {_fmt(s['networks'])}")
        for m, e in s["per_model"].items():
            print(f"    {m:<7} layers {_fmt(e['layers'])} | networks {_fmt(e['networks'])}")
    print(f"\nfitted coefficients (combine {r['fitted']['combine']}): "
          + ", ".join(f"{k}={v:.4g}" for k, v in r["fitted"]["params"].items()))
    print(f"\ntargets (MAPE <= {TARGET_MAPE:.0%}, Spearman >= {TARGET_SPEARMAN}):")
    for label, met in (("shipped profile, all plans", r["shipped"]["met"]),
                       ("re-fitted profile, held-out plans", r["fitted"]["met_held_out"])):
        print(f"  {label}: " + ", ".join(f"{k.replace('_met', '')} {'MET' if v else 'MISSED'}" for k, v in met.items()))
    if r.get("wrote_profile"):
        print(f"\nwrote the re-fitted profile to {r['wrote_profile']}")


# ----------------------------------------------------------------------------- uniform -> mixed (issue 16)
#
# Per target and model: time uniform W1A1..W8A8 and N random mixed plans (bits 1..8 per layer and
# operand) at batch 1; calibrate a base profile on the uniform plans only ('bitscape calibrate''s fit:
# per-layer and whole-network rows, weighted, structure by plan-held-out CV); predict the mixed plans'
# whole-network latency. BOPs scaled to the measured uniform W8A8 is the baseline on the same plans.
MIXED_TARGET_ERROR = 0.15
MIXED_TARGET_SPEARMAN = 0.8
MIXED_MODELS = (("lenet5", "digits"), ("cnn", "fashion-mnist"), ("resnet20", "cifar10"))
MIXED_FULL = dict(random=200, repeats=15, instances=4)
MIXED_QUICK = dict(random=20, repeats=9, instances=1)
MIXED_MIN_TIME = 0.005    # a repeat: calls averaged over >= 5 ms (a 60 us network's jitter spread thin)
CALIB_SIZE = 16           # calibration images per plan: timing needs a calibrated plan, not a good one


def _bops(row) -> float:
    from engine.cost.profiles import BITS
    return float(sum(g.macs * BITS[wi] * BITS[ai] for g, wi, ai, *_ in row.cells)) * row.batch


def score_mixed(df, plans: dict, target: str, uniform: set, seed: int = 0, with_prediction: bool = False) -> dict:
    """Calibrate ``target``'s base profile on the rows of the ``uniform`` plan hashes; predict the
    whole-network rows of every other plan; errors of the prediction and of scaled BOPs."""
    from engine.cost.calibrate_measured import calibrate, predict_all, quality, rows_from_frame
    df = df[df["target"] == target]
    df_u, df_m = df[df["plan_hash"].isin(uniform)], df[~df["plan_hash"].isin(uniform)]
    # which rows to fit (per-layer + whole network, or whole network only) is a structure choice too:
    # chosen by the held-out whole-network error on the uniform plans
    cals = {use: calibrate(BASES[target](), rows_from_frame(df_u, plans, target, use), folds=4, seed=seed)
            for use in ("both", "total")}
    use = min(cals, key=lambda u: cals[u].held_out["total"]["median_abs_error"])
    cal = cals[use]
    test = rows_from_frame(df_m, plans, target, "total")
    meas = np.array([r.seconds for r in test])
    pred = predict_all(test, cal.profile)
    w8 = df_u[(df_u["plan"] == "W8A8") & (df_u["layer"] == "total")]
    w8 = rows_from_frame(w8, plans, target, "total")[0] if len(w8) else None
    bops = np.array([_bops(r) for r in test]) * (w8.seconds / _bops(w8) if w8 else float("nan"))
    res = {"target": target, "model": str(df["model"].iloc[0]), "dataset": str(df["dataset"].iloc[0]),
           "weights": str(df["weights"].iloc[0]), "structure": cal.structure, "use": use, "params": cal.params,
           "bound_hits": [p for p, _, _ in cal.bound_hits],
           "fit_in_sample": cal.in_sample, "fit_held_out_uniform": cal.held_out,
           "mixed": quality(pred, meas), "bops": quality(bops, meas),
           "measured_ms": {"min": float(meas.min() * 1e3), "median": float(np.median(meas) * 1e3),
                           "max": float(meas.max() * 1e3)}}
    res["met"] = bool(res["mixed"]["median_abs_error"] <= MIXED_TARGET_ERROR
                      and res["mixed"]["spearman"] >= MIXED_TARGET_SPEARMAN)
    if with_prediction:      # the predicted rows themselves, for ``repeatability``
        res["_test_rows"], res["_pred"] = test, pred
    return res


def repeatability(df1, df2, target: str, uniform: set, pred_rows=None, pred=None) -> dict:
    """How far two timings of the same mixed plans agree: their Spearman (the ceiling of any
    prediction's rank correlation here) and median |run 1 / run 2 - 1|; with a prediction, its
    Spearman against run 2 and against the runs' mean."""
    from engine.cost.calibrate_measured import quality

    def totals(df):
        d = df[(df["target"] == target) & (df["layer"] == "total") & ~df["plan_hash"].isin(uniform)]
        return d.groupby("plan_hash")["seconds"].median()
    t1, t2 = totals(df1), totals(df2)
    common = sorted(set(t1.index) & set(t2.index))
    a, b = t1[common].to_numpy(), t2[common].to_numpy()
    q = quality(a, b)
    out = {"n": q["n"], "spearman": q["spearman"], "median_abs_diff": q["median_abs_error"],
           "spread_iqr_over_median": float((np.percentile(a, 75) - np.percentile(a, 25)) / np.median(a))}
    if pred_rows is not None:
        p = dict(zip([r.plan_hash for r in pred_rows], pred))
        pp = np.array([p[h] for h in common])
        out["prediction_vs_run2"] = quality(pp, b)["spearman"]
        out["prediction_vs_mean"] = quality(pp, (a + b) / 2)["spearman"]
    return out


def validate_mixed(targets=("packed", "onnxruntime"), models=MIXED_MODELS, n_random=20, repeats=3, seed=0,
                   progress=None, save_dir=None, twice: bool = False, stat: str = "median",
                   min_time: float = 0.0, instances: int = 1, from_dir=None, plan_seed: int = 0) -> dict:
    """Measure uniform and mixed plans (``plan_seed``: the random ones') in the same interleaved rounds,
    then ``score_mixed`` per target (``seed``: its folds); ``twice``: time them all again and report
    ``repeatability`` beside; ``from_dir``: time nothing, score what ``save_dir`` wrote there earlier."""
    from engine.cost.measure import uniform_plans
    say = progress or (lambda m: None)
    out = {"targets": list(targets), "random": n_random, "plan_seed": plan_seed, "repeats": repeats, "stat": stat,
           "min_time": min_time,
           "instances": instances,
           "results": [],
           "skipped": []}
    uni = uniform_plans(range(1, 9))
    uni_h = {p.digest() for p in uni}
    for model, dataset in models:
        wall = None
        if from_dir:
            saved = _saved(Path(from_dir), model, dataset)
            if isinstance(saved, str):
                out["skipped"].append({"model": model, "dataset": dataset, "reason": saved})
                continue
            df, plans, df2 = saved
        else:
            timed = _time_mixed(model, dataset, uni, targets, n_random, repeats, plan_seed, say, save_dir, twice, stat,
                                min_time, instances, out["skipped"])
            if timed is None:
                continue
            df, plans, df2, wall = timed
        for target in sorted(set(df["target"]) & set(targets), key=list(targets).index):
            res = score_mixed(df, plans, target, uni_h, seed, with_prediction=df2 is not None)
            if wall is not None:
                res["measure_wall_s"] = wall
            if df2 is not None:
                res["repeat"] = repeatability(df, df2, target, uni_h, res.pop("_test_rows"), res.pop("_pred"))
            out["results"].append(res)
            say(f"{target} {model}: mixed median |error| {res['mixed']['median_abs_error']:.1%}, "
                f"Spearman {res['mixed']['spearman']:.3f}")
    return out


def _time_mixed(model, dataset, uni, targets, n_random, repeats, seed, say, save_dir, twice, stat, min_time,
                instances, skipped_out):
    """Time the uniform and random plans of one model (twice with ``twice``), save them to ``save_dir``:
    (measurements, plans, second run or None, seconds), or None where nothing was timed."""
    import pandas as pd

    from engine.cost.measure import measure as time_plans
    from engine.cost.measure import model_source, random_plans, write
    from engine.errors import UserError
    try:
        names = model_source(model, dataset, random_weights=True).names
    except UserError as e:
        skipped_out.append({"model": model, "dataset": dataset, "reason": str(e)})
        return None
    t0 = time.perf_counter()
    skipped: list = []
    all_plans = uni + random_plans(names, n_random, seed)
    kw = dict(random_weights=True, progress=say, calib_size=CALIB_SIZE, stat=stat, min_time=min_time,
              instances=instances)
    rows, plans = time_plans(model, dataset, all_plans, targets, (1,), repeats, skipped=skipped, **kw)
    rows2 = time_plans(model, dataset, all_plans, targets, (1,), repeats, skipped=[], **kw)[0] if twice else None
    skipped_out += [{**x, "dataset": dataset} for x in skipped]
    wall = time.perf_counter() - t0
    if save_dir:
        write(rows, plans, Path(save_dir) / f"{model}-{dataset}.csv")
        if rows2:
            write(rows2, plans, Path(save_dir) / f"{model}-{dataset}.run2.csv")
    if not rows:
        return None
    return pd.DataFrame(rows), plans, (pd.DataFrame(rows2) if rows2 else None), wall


def _saved(folder, model: str, dataset: str):
    """(measurements, plans, second run or None) that ``--save-measurements`` wrote, or why not."""
    from engine.cost.measure import MeasureError, plans_path, read_rows
    csv = folder / f"{model}-{dataset}.csv"
    if not csv.is_file():
        return f"no saved measurements {str(csv)!r}"
    try:
        df = read_rows(csv)
        plans = json.loads(plans_path(csv).read_text(encoding="utf-8"))
        run2 = folder / f"{model}-{dataset}.run2.csv"
        df2 = read_rows(run2) if run2.is_file() else None
    except (MeasureError, OSError, ValueError) as e:
        return f"cannot read the saved measurements: {e}"
    if not isinstance(plans, dict):
        return f"{str(plans_path(csv))!r} is not a plans file"
    return df, plans, df2


def run_mixed(args) -> int:
    """``bitscape bench cost --mixed``: the uniform-to-mixed protocol, printed or as JSON."""
    from engine.cost.measure import TARGETS, machine
    from engine.errors import UserError
    cfg = dict(MIXED_QUICK if args.quick else MIXED_FULL)
    n = args.random if args.random is not None else cfg["random"]
    if n < 3:
        raise UserError(f"--random must be at least 3 for a rank correlation (got {n})")
    min_time = MIXED_MIN_TIME if getattr(args, "min_time", None) is None else args.min_time
    instances = cfg["instances"] if getattr(args, "instances", None) is None else args.instances
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        if t not in BASES:
            raise UserError(f"--targets: {t!r} is not measured here (targets with a base profile: "
                            f"{', '.join(BASES)}; all runtimes: {', '.join(TARGETS)})")
    models = MIXED_MODELS
    if args.models:
        try:
            models = tuple(tuple(x.split(":", 1)) for x in args.models.split(",") if x.strip())
            assert all(len(m) == 2 for m in models)
        except AssertionError:
            raise UserError(f"--models must be model:dataset pairs (got {args.models!r})") from None
    say = (lambda m: print(m, file=sys.stderr)) if not args.json else None
    src = getattr(args, "from_measurements", None)
    if src and not Path(src).is_dir():
        raise UserError(f"--from-measurements: {src!r} is not a folder")
    r = validate_mixed(targets, models, n, args.repeats or cfg["repeats"], progress=say,
                       save_dir=args.save_measurements, twice=getattr(args, "repeatability", False),
                       stat=getattr(args, "stat", "min"), min_time=min_time, instances=instances, from_dir=src,
                       plan_seed=getattr(args, "seed", 0))
    r["machine"] = machine()
    r["loadavg"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    r["targets_set"] = {"median_abs_error": MIXED_TARGET_ERROR, "spearman": MIXED_TARGET_SPEARMAN}
    if args.json:
        print(json.dumps(_finite(r)))
        return 0
    if src:
        print(f"uniform -> mixed: calibrate on W1A1..W8A8, predict the random mixed plans measured in {src} "
              "(re-scored: nothing timed now)")
    else:
        print(f"uniform -> mixed: calibrate on W1A1..W8A8, predict {n} random mixed plans (seed {r['plan_seed']}), "
              f"batch 1, {r['stat']}s "
              f"of {args.repeats or cfg['repeats']} runs of >= {min_time * 1e3:g} ms, mean of {instances} "
              f"instance(s); {r['machine']}; load average {r['loadavg']}")
    for s in r["skipped"]:
        print(f"  skipped {s.get('target', 'all targets')} for {s['model']} on {s['dataset']}: {s['reason']}")
    print(f"  {'target':<12} {'model':<9} {'median |err|':>12} {'Spearman':>9}   {'BOPs |err|':>10} {'BOPs rho':>9}"
          f"   {'measured ms (min/med/max)':<26} structure; weights")
    for x in r["results"]:
        m, b = x["mixed"], x["bops"]
        print(f"  {x['target']:<12} {x['model']:<9} {m['median_abs_error']:>12.1%} {m['spearman']:>9.3f}   "
              f"{b['median_abs_error']:>10.1%} {b['spearman']:>9.3f}   "
              f"{x['measured_ms']['min']:.3f}/{x['measured_ms']['median']:.3f}/{x['measured_ms']['max']:.3f}"
              f"{'':<6} {_structure(x['structure'])}, fit on {x['use']}; {x['weights']}" + ("" if x["met"] else "   MISSED"))
        if "repeat" in x:
            rp = x["repeat"]
            print(f"  {'':<12} {'':<9} repeatability: run 1 vs run 2 Spearman {rp['spearman']:.3f} (the ceiling), "
                  f"median |diff| {rp['median_abs_diff']:.1%}, mixed plans' IQR / median "
                  f"{rp['spread_iqr_over_median']:.1%}; prediction vs run 2 {rp['prediction_vs_run2']:.3f}, "
                  f"vs mean of runs {rp['prediction_vs_mean']:.3f}")
        if x["bound_hits"]:
            print(f"  {'':<12} {'':<9} warning: at a bound: {', '.join(x['bound_hits'])}")
    print(f"targets: median |error| <= {MIXED_TARGET_ERROR:.0%} and Spearman >= {MIXED_TARGET_SPEARMAN} per target "
          f"and model: {sum(x['met'] for x in r['results'])}/{len(r['results'])} met")
    return 0


def _structure(s: dict) -> str:
    from engine.cost.calibrate_measured import structure_label
    return structure_label(s)
