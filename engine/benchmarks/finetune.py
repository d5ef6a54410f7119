"""Accuracy and time of the no-training estimate and the quick fine-tune, per preset plan.

For the embedded default (LeNet-5 on digits) and Fashion-MNIST's CNN: FP32 accuracy, the
no-training estimate and the quick-fine-tuned accuracy at W8A8, W4A4, W2A2, W1A1, 2x-wide
W2A2 and 2:4 + W8A8, with seconds per configuration, checked against the targets.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

PLANS = ("w8a8", "w4a4", "w2a2", "w1a1", "2x-w2a2", "2:4-w8a8")
CASES = (("lenet5", "digits", 400), ("cnn", "fashion-mnist", 300))
TARGETS = (
    ("default fine-tune seconds (lenet5/digits, W4A4)", "<=", 15.0),
    ("W4A4 points below FP32", "<=", 0.5),
    ("2:4 + W8A8 points below FP32", "<=", 1.0),
)


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="digits only, fewer steps (CI smoke)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per fine-tune (accuracy is their median)")
    p.add_argument("--json", action="store_true")


def measure(quick: bool = False, seeds: int = 1, log=None) -> list[dict]:
    """Rows: case x plan with fp32 / estimate / fine-tuned accuracies and seconds."""
    import torch

    from engine.evaluation import Settings
    from engine.explore.pipeline import evaluate_plan
    from engine.models.baselines import load_baseline
    from engine.models.data import load_dataset
    from engine.plans.graph import analyze
    from engine.plans.presets import preset_plan

    torch.set_num_threads(1)  # as the job workers run; 2 threads on a loaded 2-core box stall in barriers
    rows = []
    cases = CASES[:1] if quick else CASES
    for model, dataset, steps in cases:
        if quick:
            steps = 100
        try:
            data = load_dataset(dataset)
        except Exception as e:
            rows.append({"model": model, "dataset": dataset, "skipped": str(e)})
            continue
        base = load_baseline(model, dataset, data)
        topo = analyze(base, data.input_shape)
        for name in PLANS:
            plan = preset_plan(name, topo, model)
            t0 = time.perf_counter()
            est = evaluate_plan(model, dataset, plan, Settings(steps=0), baseline=base, data=data).evaluation
            t_est = time.perf_counter() - t0
            tuned, times = [], []
            for seed in range(seeds):
                t0 = time.perf_counter()
                ev = evaluate_plan(model, dataset, plan, Settings(steps=steps, seed=seed), baseline=base,
                                   data=data).evaluation
                times.append(time.perf_counter() - t0)
                tuned.append(ev)
            row = {"model": model, "dataset": dataset, "plan": name, "steps": steps,
                   "fp32_test": est.baseline_test_accuracy, "estimate_test": est.test_accuracy,
                   "finetuned_test": statistics.median(e.test_accuracy for e in tuned),
                   "finetuned_val": statistics.median(e.val_accuracy for e in tuned),
                   "estimate_s": round(t_est, 2), "finetune_s": round(statistics.median(times), 2),
                   "status": tuned[0].status, "reason": tuned[0].reason}
            rows.append(row)
            if log:
                log(row)
    return rows


def check_targets(rows: list[dict]) -> list[dict]:
    out = []
    by = {(r["model"], r.get("plan")): r for r in rows if "plan" in r}
    d = by.get(("lenet5", "w4a4"))
    if d:
        out.append({"target": TARGETS[0][0], "value": d["finetune_s"], "limit": 15.0, "met": d["finetune_s"] <= 15.0})
    for model in ("lenet5", "cnn"):
        for plan, (label, _, limit) in (("w4a4", TARGETS[1]), ("2:4-w8a8", TARGETS[2])):
            r = by.get((model, plan))
            if r:
                drop = 100 * (r["fp32_test"] - r["finetuned_test"])
                out.append({"target": f"{label} ({model})", "value": round(drop, 2), "limit": limit,
                            "met": drop <= limit})
    return out


def run(args) -> int:
    def log(r):
        if not args.json:
            print(f"  {r['model']:7s} {r['dataset']:13s} {r['plan']:9s} fp32 {100 * r['fp32_test']:6.2f}  "
                  f"estimate {100 * r['estimate_test']:6.2f}  fine-tuned {100 * r['finetuned_test']:6.2f}  "
                  f"({r['steps']} steps, {r['finetune_s']:.1f} s; estimate {r['estimate_s']:.1f} s)", flush=True)

    if not args.json:
        print(f"fine-tune benchmark (1 torch thread, load average {os.getloadavg()[0]:.2f}); "
              "accuracies on the test split, %")
    rows = measure(args.quick, args.seeds, log)
    targets = check_targets(rows)
    if args.json:
        json.dump({"rows": rows, "targets": targets}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    for r in rows:
        if "skipped" in r:
            print(f"  {r['model']} on {r['dataset']}: skipped ({r['skipped']})")
    print("targets:")
    for t in targets:
        print(f"  {'met ' if t['met'] else 'MISS'} {t['target']}: {t['value']} (limit {t['limit']})")
    return 0
