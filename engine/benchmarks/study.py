"""The reproduction study of the papers bitscape is built on (engine.study), as a benchmark.

``bitscape bench study`` runs every claim on Fashion-MNIST (CNN and row-by-row LSTM) at the quick
fine-tune budget and again at a convergent one (one epoch), and writes docs/results.md with a
verdict at each budget and plots in docs/results/; ``--quick`` runs the same sections on digits with
tiny budgets and one seed (a smoke run for CI, labelled as such in the report).
"""
from __future__ import annotations

import sys
import time


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="digits, tiny budgets, one seed (smoke run)")
    p.add_argument("--out", default="docs/results.md", help="Markdown report (plots go next to it, in <name>/)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: min(2, CPUs))")
    p.add_argument("--budget", choices=("both", "quick", "convergent"), default="both",
                   help="fine-tune budget of the claims that train: quick (the interactive 120 steps), "
                        "convergent (one epoch, one seed), or both in one report (default; --resume FILE keeps "
                        "the convergent runs in FILE.convergent.json)")
    p.add_argument("--claims", default=None, help="comma-separated subset of claims (default: all)")
    p.add_argument("--resume", default=None, metavar="FILE",
                   help="keep finished runs in FILE (JSON) and skip those already there (continue a stopped study)")
    p.add_argument("--render-only", action="store_true",
                   help="with --resume: run nothing, write the report from the runs already in FILE")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args) -> int:
    from engine.study import CLAIMS, Config, run_both, run_study, to_json
    claims = tuple(c.strip() for c in args.claims.split(",")) if getattr(args, "claims", None) else CLAIMS
    unknown = [c for c in claims if c not in CLAIMS]
    if unknown:
        print(f"unknown claim {unknown[0]!r}; claims are {', '.join(CLAIMS)}", file=sys.stderr)
        return 2
    budget = getattr(args, "budget", "both")
    cfg = Config.make(quick=args.quick, workers=args.workers, budget="quick" if budget == "both" else budget)
    t0 = time.perf_counter()
    def say(m):
        print(f"[{time.perf_counter() - t0:7.1f} s] {m}", file=sys.stderr, flush=True)
    if getattr(args, "render_only", False) and not getattr(args, "resume", None):
        print("--render-only needs --resume FILE", file=sys.stderr)
        return 2
    study = run_both if budget == "both" else run_study
    result = study(cfg, out=args.out, log=say, claims=claims, resume=getattr(args, "resume", None),
                   render_only=getattr(args, "render_only", False))
    if args.json:
        print(to_json(result))
        return 0
    conv = result.get("convergent") or {}
    print(f"reproduction study ({'quick' if cfg.quick else 'full'}): {(result['wall_s'] + conv.get('wall_s', 0)) / 60:.1f} min, "
          f"{result['tasks'] + conv.get('tasks', 0)} runs; report {args.out}")
    at_conv = {s["id"]: s for s in conv.get("sections", [])}
    for s in result["sections"]:
        c = at_conv.get(s["id"])
        print(f"  {s['verdict']:>13s}  {s['title']}: {s['figure']}")
        if c:
            print(f"  {c['verdict']:>13s}  ... at the convergent budget: {c['figure']}")
    return 0
