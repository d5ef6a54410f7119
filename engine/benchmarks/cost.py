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

import numpy as np

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


# ----------------------------------------------------------------------------- plans

def plans_for(model: str, topo) -> dict:
    """The benchmark's plans, adjusted to the model (output layer not widened, 2:4 where it fits)."""
    from engine.plan import LayerConfig, Plan
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

    from engine.data import load_dataset
    from engine.deploy import deploy
    from engine.errors import UserError
    from engine.evaluation import Settings
    from engine.pipeline import prepare

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
            from engine.baselines import load_baseline
            from engine.graph import analyze
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
    from engine.plan import LayerConfig
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
