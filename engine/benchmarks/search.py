"""Mixed-precision search vs uniform precision and random search, sensitivity agreement, speed.

On Fashion-MNIST's CNN with the bit-serial profile (bismo) and a fixed budget: hypervolume of
(test accuracy, throughput) with the reference point (FP32 test accuracy - 0.10, throughput 0),
fixed here and not chosen per run (figures at margins 0.05 and 0.20 are printed alongside), of
the frontier found by the NSGA-II search (Optuna's NSGAIISampler, started from the six uniform
plans and the EAGL greedy path from 4 to 2 bits), against the uniform-precision frontier (W8A8,
W4A4, W2A2 and their 2x-wide variants: six fine-tunes with the same steps) and against random
search (Optuna's RandomSampler, started from the six uniform plans) with the same budget (same
number of estimates and of fine-tunes, the same sampler seed, the same estimate-then-fine-tune
rounds and fine-tune choice). An ablation runs the random sampler from the same start as
NSGA-II (uniform plans and the greedy path), so only the proposals differ: it tells what the
sampler adds beyond the sensitivity-guided start. Each search fine-tunes as many points as the
uniform frontier has. Estimates are scored on a fixed 1,000-example validation
subset (no test); fine-tuned points on the full validation and test splits; frontiers are
selected on validation and reported on test.

Also: Spearman rank correlation of the EAGL, ALPS and Hessian layer orders; of estimated vs
fine-tuned validation accuracy over both searches' fine-tuned points; points per minute.
``--quick``: LeNet-5 on digits with a small budget (a couple of minutes).
"""
from __future__ import annotations

import json
import os
import sys
import time

import pandas as pd

TARGETS = (("hv found / uniform", ">=", 1.05), ("hv found / random", ">", 1.0))
# name -> (Optuna sampler, start from the greedy sensitivity path as well as the uniform plans)
SEARCHES = {"nsga2": ("nsga2", True), "random": ("random", False), "random+path": ("random", True)}


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="LeNet-5 on digits, small budget (smoke run)")
    p.add_argument("--budget", type=int, default=None, help="candidates scored by the estimate, per search")
    p.add_argument("--finetune", type=int, default=None, help="fine-tuned points per search")
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps per point")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="validation examples per estimate (default 1000 for the CNN; all for --quick)")
    p.add_argument("--profile", default="bismo")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")


def _spearman(a, b) -> float:
    from engine.training.sensitivity import rank_correlation
    keys = list(range(len(a)))
    return rank_correlation(dict(zip(keys, a)), dict(zip(keys, b)))


MARGIN = 0.10                 # HV reference accuracy = FP32 test accuracy - MARGIN
OTHER_MARGINS = (0.05, 0.20)  # shown for context only; the target is judged at MARGIN


def measure(quick=False, budget=None, finetune=None, steps=None, profile="bismo", workers=None, seed=0, log=None,
            eval_limit=None):
    from engine.evaluation import Settings
    from engine.explore.jobs import JobRunner
    from engine.explore.store import Store
    from engine.explore.sweep import Sweep, frontier_of, hypervolume_of, run_sweep
    from engine.models.baselines import load_baseline
    from engine.models.data import load_dataset
    from engine.plans.graph import analyze
    from engine.plans.presets import preset_plan
    from engine.training.sensitivity import alps, correlations, eagl, hessian

    log = log or (lambda m: None)
    model, dataset = ("lenet5", "digits") if quick else ("cnn", "fashion-mnist")
    budget = budget or (64 if quick else 96)
    finetune = finetune or 6
    steps = steps or (100 if quick else 150)
    eval_limit = eval_limit if eval_limit is not None else (None if quick else 1000)
    data = load_dataset(dataset)
    base = load_baseline(model, dataset, data)
    topo = analyze(base, data.input_shape)
    store = Store(":memory:")
    out = {"model": model, "dataset": dataset, "profile": profile, "budget": budget, "finetune": finetune,
           "steps": steps, "eval_limit": eval_limit}
    with JobRunner(workers=workers, store=store) as runner:
        # uniform-precision frontier
        t = time.perf_counter()
        log(f"uniform: fine-tuning {model} x 6 presets, {steps} steps each")
        sw = Sweep(model, dataset, profile, runner=runner, store=store, baseline=base, data=data,
                   progress=lambda done, total, msg: log(f"  uniform [{done}/{total}] {msg}") if "fine-tuned" in msg
                   else None)
        names = ["w8a8", "w4a4", "w2a2", "2x-w8a8", "2x-w4a4", "2x-w2a2"]
        plans = []
        for n in names:
            if n == "2x-w8a8":
                p = preset_plan("2x-w4a4", topo, model)
                p.default = p.default.replace(w_bits=8, a_bits=8)
                p.name = n
            else:
                p = preset_plan(n, topo, model)
            plans.append(p)
        sw.evaluate(plans, Settings(steps=steps, seed=seed), names)
        uni = frontier_of(sw.frame())
        ref = (float(sw.records[0][2].baseline_test_accuracy) - MARGIN, 0.0)
        log(f"uniform: {len(plans)} fine-tuned in {time.perf_counter() - t:.0f} s; HV {hypervolume_of(uni, ref):.6g}")
        runs = {}
        for method, (sampler, path) in SEARCHES.items():
            t = time.perf_counter()
            def say(done, total, msg, method=method):
                if msg.startswith("fine-tune ") or msg.startswith("estimate: "):
                    log(f"  {method} [{done}/{total}] {msg}")
            runs[method] = run_sweep(model, dataset, profile, budget, finetune=finetune, steps=steps, method=sampler,
                                     seed=seed, store=store, runner=runner, baseline=base, data=data,
                                     eval_limit=eval_limit, progress=say, path_seeds=path)
            log(f"{method}: {len(runs[method].points)} points in {time.perf_counter() - t:.0f} s; "
                f"HV {hypervolume_of(runs[method].frontier, ref):.6g}")
        base_acc = float(sw.records[0][2].baseline_test_accuracy)
        ref = (base_acc - MARGIN, 0.0)
        hv_uni = hypervolume_of(uni, ref)
        hv = {m: hypervolume_of(r.frontier, ref) for m, r in runs.items()}
        found = runs["nsga2"]
        pts = found.points
        both = pd.concat([r.points for r in runs.values()]).drop_duplicates("key")
        tuned = both[both.status == "fine-tuned"]
        est = pts[pts.status == "estimated"]
        ratio = lambda a, b: a / b if b else float("inf")  # noqa: E731
        other = {}
        for m in OTHER_MARGINS:
            r2 = (base_acc - m, 0.0)
            u2, n2, q2 = hypervolume_of(uni, r2), hypervolume_of(found.frontier, r2), hypervolume_of(runs["random"].frontier, r2)
            other[f"{m:.2f}"] = {"found / uniform": ratio(n2, u2), "found / random": ratio(n2, q2),
                                 "found / random+path": ratio(n2, hypervolume_of(runs["random+path"].frontier, r2))}
        out.update({
            "fp32_test_accuracy": base_acc, "ref": list(ref), "margin": MARGIN, "other_margins": other,
            "hv_uniform": hv_uni, "hv_nsga2": hv["nsga2"], "hv_random": hv["random"],
            "hv_random+path": hv["random+path"],
            "hv found / uniform": ratio(hv["nsga2"], hv_uni),
            "hv found / random": ratio(hv["nsga2"], hv["random"]),
            "hv found / random+path": ratio(hv["nsga2"], hv["random+path"]),
            "estimate_vs_finetuned_spearman": _spearman(tuned.estimate_val_accuracy.tolist(),
                                                        tuned.val_accuracy.tolist()) if len(tuned) > 1 else None,
            "estimate_vs_finetuned_n": len(tuned),
            "points_per_minute": 60 * len(pts) / found.wall_s,
            "nsga2_seconds": found.wall_s, "random_seconds": runs["random"].wall_s,
            "nsga2_estimates": int((pts.phase == "estimate").sum()),
            "nsga2_finetunes": int((pts.status == "fine-tuned").sum()),
            "random_finetunes": int((runs["random"].points.status == "fine-tuned").sum()),
            "median_estimate_s": _median_wall(store, est.key), "median_finetune_s": _median_wall(store, tuned.key),
            "frontier_nsga2": found.frontier[["val_accuracy", "test_accuracy", "throughput", "label"]].to_dict("records"),
            **{f"frontier_{m}": runs[m].frontier[["val_accuracy", "test_accuracy", "throughput",
                                                  "label"]].to_dict("records") for m in ("random", "random+path")},
            "frontier_uniform": uni[["val_accuracy", "test_accuracy", "throughput", "label"]].to_dict("records"),
            # every point of both searches (JSON only), for looking into what each search tried
            "points": {m: r.points[["phase", "status", "estimate_val_accuracy", "val_accuracy", "test_accuracy",
                                    "throughput", "label"]].to_dict("records") for m, r in runs.items()},
        })
        t = time.perf_counter()
        said = set()

        def alps_say(frac, msg):
            if msg not in said:
                said.add(msg)
                log(f"  alps {msg}")
        log("sensitivity: EAGL, Hessian (Hutchinson), ALPS (one short fine-tune per layer)")
        sens = [eagl(model, dataset, baseline=base, data=data), hessian(model, dataset, baseline=base, data=data),
                alps(model, dataset, steps=min(steps, 100), runner=runner, store=store, baseline=base, data=data,
                     progress=alps_say)]
        log(f"sensitivity in {time.perf_counter() - t:.0f} s")
        out["sensitivity_orders"] = {s.method: s.order(most_sensitive_first=True) for s in sens}
        out["sensitivity_spearman"] = {f"{c['a']} vs {c['b']}": c["spearman"] for c in correlations(sens)}
    return out


def _median_wall(store, keys) -> float | None:
    import numpy as np
    walls = [ev.wall_s for ev in (store.get(k) for k in keys) if ev is not None]
    return float(np.median(walls)) if walls else None


def check(out: dict) -> list[tuple[str, float, str, float, bool]]:
    rows = []
    for name, op, target in TARGETS:
        v = out[name]
        ok = v >= target if op == ">=" else v > target
        rows.append((name, v, op, target, ok))
    return rows


def run(args) -> int:
    t0 = time.perf_counter()
    load0 = os.getloadavg()

    def log(m):
        e = time.perf_counter() - t0
        print(f"[{int(e // 60):02d}:{int(e % 60):02d}] {m}", file=sys.stderr, flush=True)
    out = measure(args.quick, args.budget, args.finetune, args.steps, args.profile, args.workers, args.seed,
                  log=log, eval_limit=args.eval_limit)
    out["total_seconds"] = time.perf_counter() - t0
    out["load_average"] = {"start": list(load0), "end": list(os.getloadavg())}
    checks = check(out)
    if args.json:
        print(json.dumps({**out, "targets": [dict(zip(("name", "value", "op", "target", "met"), c)) for c in checks]},
                         default=float))
        return 0
    lim = out["eval_limit"]
    print(f"search benchmark: {out['model']} on {out['dataset']}, profile {out['profile']}, budget {out['budget']} "
          f"estimates ({'all' if lim is None else lim} validation examples, no test) + {out['finetune']} fine-tunes "
          f"x {out['steps']} steps per search (full validation + test)")
    print(f"FP32 test accuracy {100 * out['fp32_test_accuracy']:.2f}%; HV of (test accuracy, throughput), reference: "
          f"accuracy {100 * out['ref'][0]:.2f}% (FP32 - {100 * out['margin']:.0f} points), throughput 0")
    print(f"hypervolume  uniform {out['hv_uniform']:.6g}   NSGA-II {out['hv_nsga2']:.6g}   random {out['hv_random']:.6g}"
          f"   random+path {out['hv_random+path']:.6g}")
    for name, v, op, target, ok in checks:
        print(f"{name}: {v:.3f} (target {op} {target}) {'MET' if ok else 'NOT MET'}")
    print(f"ablation, hv found / random+path (the random sampler from NSGA-II's start, greedy path included): "
          f"{out['hv found / random+path']:.3f}")
    for m, r in out["other_margins"].items():
        print(f"  (context, reference FP32 - {100 * float(m):.0f} points: found/uniform {r['found / uniform']:.3f}, "
              f"found/random {r['found / random']:.3f}, found/random+path {r['found / random+path']:.3f})")
    for k, v in out["sensitivity_spearman"].items():
        print(f"rank correlation {k}: {v:+.3f}")
    print("sensitivity orders (most sensitive first): "
          + "; ".join(f"{m}: {' > '.join(o)}" for m, o in out["sensitivity_orders"].items()))
    e = out["estimate_vs_finetuned_spearman"]
    print(f"rank correlation estimated vs fine-tuned val accuracy: {'n/a' if e is None else f'{e:+.3f}'} "
          f"(over {out['estimate_vs_finetuned_n']} fine-tuned points of both searches)")
    print(f"points per minute (NSGA-II sweep): {out['points_per_minute']:.1f} ({out['nsga2_estimates']} estimates + "
          f"{out['nsga2_finetunes']} fine-tunes in {out['nsga2_seconds']:.0f} s; median estimate "
          f"{out['median_estimate_s'] or float('nan'):.1f} s, fine-tune {out['median_finetune_s'] or float('nan'):.1f} s "
          f"per job); total {out['total_seconds']:.0f} s")
    la = out["load_average"]
    print(f"load average (1, 5, 15 min) at start {', '.join(f'{v:.2f}' for v in la['start'])}; "
          f"at end {', '.join(f'{v:.2f}' for v in la['end'])} ({os.cpu_count()} cores)")
    print("NSGA-II frontier (val-selected, test-reported):")
    for r in out["frontier_nsga2"]:
        print(f"  val {100 * r['val_accuracy']:.2f}%  test {100 * r['test_accuracy']:.2f}%  {r['throughput']:10.1f}/s  {r['label']}")
    for m in ("random", "random+path"):
        print(f"{m} frontier:")
        for r in out[f"frontier_{m}"]:
            print(f"  val {100 * r['val_accuracy']:.2f}%  test {100 * r['test_accuracy']:.2f}%  {r['throughput']:10.1f}/s  "
                  f"{r['label']}")
    print("uniform frontier:")
    for r in out["frontier_uniform"]:
        print(f"  val {100 * r['val_accuracy']:.2f}%  test {100 * r['test_accuracy']:.2f}%  {r['throughput']:10.1f}/s  {r['label']}")
    return 0
