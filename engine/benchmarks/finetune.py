"""Fine-tune accuracy against FP32 fine-tuned with the same recipe and budget (issue 14's targets).

For LeNet-5 on digits at the default quick budget and Fashion-MNIST's CNN within one epoch:
each plan's test accuracy and its FP32 twin's, as means over seeds; the gap against each
target (PASS/MISS), and any preset whose fine-tune ends below its own no-training estimate.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

# (model, dataset, budget and recipe, plans with the most points below FP32 allowed; None = no target).
# LeNet-5 runs the default quick budget and recipe (its learning rate stored per baseline,
# data/baselines/rates.json). The CNN's batch of 128 (one epoch = 422 steps) came out best of six
# recipes measured on an H200 (3 seeds each, docs/benchmarks.md). Presets feed the network input at
# 8 bits (engine.plans.presets); "w4a4-input4" is W4A4 with the input at 4 bits too, shown without a target.
CASES = (
    ("lenet5", "digits", {"steps": 400}, (("w4a4", 0.5), ("w8a8", None), ("2:4-w8a8", None), ("w4a4-input4", None))),
    ("cnn", "fashion-mnist", {"epochs": 1.0, "steps": 1_000_000, "batch_size": 128},
     (("w4a4", 0.5), ("w8a8", 0.1), ("2:4-w8a8", 0.5))),
)


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a few minutes: the CNN at --quick-epochs, validated on 1,000 examples (digits unchanged)")
    p.add_argument("--quick-epochs", type=float, default=0.1, help="the CNN's epochs under --quick (default 0.1)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per plan (figures are their means; default 3)")
    p.add_argument("--case", choices=("all", "lenet5", "cnn"), default="all")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--recipe", default=None,
                   help='settings for every fine-tune, FP32 twin included, as JSON (e.g. \'{"lr": 3e-4}\')')
    p.add_argument("--workers", type=int, default=1,
                   help="processes running the fine-tunes side by side, one torch thread each (default 1)")
    p.add_argument("--json", action="store_true")


def measure(cases=CASES, seeds: int = 3, device: str = "cpu", log=None, overrides: dict | None = None,
            recipe: dict | None = None, workers: int = 1) -> list[dict]:
    """Rows per case and plan: mean test accuracies of the plan, its FP32 twin and its estimate,
    validation of the fine-tune and of its start, and seconds per fine-tune. ``workers`` > 1 runs
    the (plan, seed) fine-tunes in that many processes of one torch thread each."""
    from engine.models.data import load_dataset

    rows = []
    for model, dataset, budget, plans in cases:
        budget = {**budget, **(overrides or {}).get(model, {}), **(recipe or {})}
        try:
            load_dataset(dataset)
        except Exception as e:
            rows.append({"model": model, "dataset": dataset, "skipped": str(e)})
            continue
        names = ("fp32", *(p for p, _ in plans))
        jobs = [(model, dataset, name, seed, budget, device) for name in names for seed in range(seeds)]
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_one_thread) as pool:
                results = list(pool.map(_run_one, jobs))
        else:
            results = [_run_one(j) for j in jobs]
        done = {(j[2], j[3]): r for j, r in zip(jobs, results)}
        runs: dict[str, dict] = {}
        for name in names:
            est, tuned, secs = (list(x) for x in zip(*(done[(name, seed)] for seed in range(seeds))))
            failed = [e.reason for e in tuned if e.status == "failed"]
            ok = [e for e in tuned if e.status != "failed"] or tuned
            mean = lambda xs: statistics.mean(x for x in xs if x is not None) if any(  # noqa: E731
                x is not None for x in xs) else None
            runs[name] = {"model": model, "dataset": dataset, "plan": name, "seeds": seeds,
                          "budget": {k: v for k, v in budget.items()}, "device": device,
                          "steps_run": statistics.mean(e.steps for e in ok),
                          "finetuned_test": mean([e.test_accuracy for e in ok]),
                          "finetuned_val": mean([e.val_accuracy for e in ok]),
                          "estimate_test": mean([e.test_accuracy for e in est]),
                          "estimate_val": mean([e.estimate_val_accuracy for e in ok]),
                          "kept_steps": [e.provenance.get("finetune", {}).get("kept_step") for e in ok],
                          "fp32_baseline_test": tuned[0].baseline_test_accuracy,
                          "finetune_s": round(statistics.mean(secs), 2), "failed": failed}
        fp = runs["fp32"]
        for name, limit in (("fp32", None), *plans):
            r = runs[name]
            r["fp32_finetuned_test"] = fp["finetuned_test"]
            r["gap_points"] = None if r["finetuned_test"] is None or fp["finetuned_test"] is None else \
                round(100 * (fp["finetuned_test"] - r["finetuned_test"]), 2)
            r["limit"] = limit
            r["met"] = None if limit is None or r["gap_points"] is None else r["gap_points"] <= limit
            r["harm"] = harm(r)
            rows.append(r)
            if log:
                log(r)
    return rows


_CACHE: dict = {}


def _one_thread() -> None:
    import torch
    torch.set_num_threads(1)


def _run_one(job) -> tuple:
    """(estimate, fine-tune, seconds of the fine-tune) of one plan and seed; data cached per process."""
    from engine.evaluation import Settings
    from engine.explore.pipeline import evaluate_plan
    from engine.models.baselines import load_baseline
    from engine.models.data import load_dataset
    from engine.plans.graph import analyze
    model, dataset, name, seed, budget, device = job
    if (model, dataset) not in _CACHE:
        data = load_dataset(dataset)
        base = load_baseline(model, dataset, data)
        _CACHE[(model, dataset)] = (data, base, analyze(base, data.input_shape))
    data, base, topo = _CACHE[(model, dataset)]
    plan = _plan(name, topo, model)
    est = evaluate_plan(model, dataset, plan, Settings(steps=0, seed=seed), baseline=base, data=data).evaluation
    t0 = time.perf_counter()
    tuned = evaluate_plan(model, dataset, plan, Settings(seed=seed, device=device, **budget), baseline=base,
                          data=data).evaluation
    return est, tuned, time.perf_counter() - t0


def _plan(name: str, topo, model: str):
    """A preset, or ``<preset>-input4``: the preset with the layers reading the network input at its bits."""
    from engine.plans.presets import preset_plan
    if not name.endswith("-input4"):
        return preset_plan(name, topo, model)
    plan = preset_plan(name[: -len("-input4")], topo, model)
    for layer in topo.layers:
        if layer.is_input:
            rest = {k: v for k, v in plan.layers.pop(layer.name, {}).items() if k != "a_bits"}
            if rest:
                plan.layers[layer.name] = rest
    plan.name = name
    return plan


def harm(r: dict) -> str | None:
    """Why a fine-tune counts as worse than its own estimate, or None."""
    if r["failed"]:
        return f"{len(r['failed'])} of {r['seeds']} runs failed ({r['failed'][0]})"
    if r["finetuned_val"] is not None and r["estimate_val"] is not None and r["finetuned_val"] < r["estimate_val"]:
        return f"validation {100 * r['finetuned_val']:.2f}% below the estimate's {100 * r['estimate_val']:.2f}%"
    if r["finetuned_test"] is not None and r["estimate_test"] is not None and r["finetuned_test"] < r["estimate_test"]:
        return f"test {100 * r['finetuned_test']:.2f}% below the estimate's {100 * r['estimate_test']:.2f}%"
    return None


def _line(r: dict) -> str:
    pct = lambda v: "   -  " if v is None else f"{100 * v:6.2f}"   # noqa: E731
    budget = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k} {v}" for k, v in r["budget"].items()
                       if not (k == "steps" and "epochs" in r["budget"]))
    return (f"  {r['model']:6s} {r['plan']:11s} fine-tuned {pct(r['finetuned_test'])}  FP32 fine-tuned "
            f"{pct(r['fp32_finetuned_test'])}  gap {r['gap_points'] if r['gap_points'] is not None else '-':>5}  "
            f"estimate {pct(r['estimate_test'])}  ({budget}; {r['steps_run']:.0f} steps run, kept "
            f"{r['kept_steps']}; {r['finetune_s']:.1f} s each)")


def run(args) -> int:
    import torch

    from engine.errors import UserError
    from engine.training.device import resolve_device
    try:
        device = resolve_device(args.device).type
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 2
    try:
        from engine.evaluation import Settings
        recipe = json.loads(args.recipe) if args.recipe else {}
        if not isinstance(recipe, dict) or "device" in recipe:
            raise UserError("--recipe must be an object of settings other than device")
        Settings.from_dict(recipe)
    except (ValueError, TypeError) as e:
        print(f"error: --recipe: {e}", file=sys.stderr)
        return 2
    if device == "cpu":
        torch.set_num_threads(1)  # as the job workers run; 2 threads on a loaded 2-core box stall in barriers
    cases = tuple(c for c in CASES if args.case in ("all", c[0]))
    overrides = {"cnn": {"epochs": args.quick_epochs, "eval_limit": 1000}} if args.quick else None
    seeds = args.seeds
    if not args.json:
        print(f"fine-tune benchmark on {device} ({torch.get_num_threads()} torch threads, load average "
              f"{os.getloadavg()[0]:.2f}); test accuracy, %, means over {seeds} seeds; gap = points below FP32 "
              "fine-tuned with the same recipe and budget", flush=True)
    t0 = time.perf_counter()
    rows = measure(cases, seeds, device, None if args.json else (lambda r: print(_line(r), flush=True)), overrides,
                   recipe, workers=max(1, args.workers))
    wall = round(time.perf_counter() - t0, 1)
    if args.json:
        json.dump({"rows": rows, "wall_s": wall}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print("targets:")
    for r in rows:
        if "skipped" in r:
            print(f"  {r['model']} on {r['dataset']}: skipped ({r['skipped']})")
        elif r["limit"] is not None:
            print(f"  {'PASS' if r['met'] else 'MISS'} {r['model']}/{r['dataset']} {r['plan']}: "
                  f"{r['gap_points']} points below FP32 fine-tuned (target {r['limit']})")
    harmed = [r for r in rows if r.get("harm")]
    print("fine-tunes worse than their own estimate: " + ("none" if not harmed else ""))
    for r in harmed:
        print(f"  FAIL {r['model']} {r['plan']}: {r['harm']}")
    print(f"wall time {wall} s")
    return 0


if __name__ == "__main__":   # python -m engine.benchmarks.finetune (no explorer needed)
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
