"""``bitscape measure``: time plans on a real runtime (packed kernels, onnxruntime) into a tidy CSV."""
from __future__ import annotations

import sys

from engine.errors import UserError

from .common import add_model_args, model_dataset, print_json


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers (got {text!r})") from None
    if not vals:
        raise UserError(f"{what} is empty")
    return vals


def register(sub) -> None:
    p = sub.add_parser("measure", help="time plans on a real runtime; write a tidy CSV for 'bitscape calibrate'")
    add_model_args(p)
    p.add_argument("--target", default="packed",
                   help="comma-separated runtimes: packed, onnxruntime, onnxruntime-integer (the export's "
                        "integer form, `export onnx --integer`), torch-cuda (default packed; torch-cuda is "
                        "skipped with 'no GPU' where none is present)")
    src = p.add_argument_group("plans (at least one)")
    src.add_argument("--plan", action="append", default=[], metavar="PATH",
                     help="a plan JSON file or a directory of them (repeatable)")
    src.add_argument("--uniform", nargs="?", const="1,2,3,4,5,6,7,8", default=None, metavar="BITS",
                     help="uniform WbAb plans for each b (default 1..8)")
    src.add_argument("--random", type=int, default=0, metavar="N", help="N random mixed plans (bits 1..8 per layer)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random plans")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per point; the median is kept (default 5; see --stat)")
    p.add_argument("--out", required=True, help="CSV to write (its plans go to <name>.plans.json beside it)")
    p.add_argument("--append", action="store_true", help="add to an existing CSV instead of replacing it")
    p.add_argument("--random-weights", action="store_true",
                   help="time a seeded fresh network where no FP32 baseline or dataset is installed")
    p.add_argument("--no-layers", action="store_true", help="whole-network rows only")
    p.add_argument("--stat", default="median", choices=("median", "min"),
                   help="what the repeats are reduced to (default median; min resists a loaded machine)")
    p.add_argument("--min-time", type=float, default=0.005, metavar="S",
                   help="seconds each timed run lasts at least: after one untimed call (the other plans ran in "
                        "between), back-to-back calls averaged, so a short network's jitter is spread thin "
                        "(default 0.005; 0: one call per run)")
    p.add_argument("--instances", type=int, default=1, metavar="N",
                   help="fresh deployments / sessions of every plan, each timed in its own rounds, averaged: "
                        "where a small network's memory lands moves its time by ~1%% (default 1)")
    p.add_argument("--cuda-dtype", default="fp16", choices=("fp16", "bf16"),
                   help="torch-cuda: the float dtype of layers not on the int8 / 2:4 paths (default fp16)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.cost.measure import TARGETS, load_plans, measure, model_source, random_plans, uniform_plans, write

    model, dataset = model_dataset(args)
    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    for t in targets:
        if t not in TARGETS:
            raise UserError(f"--target {t!r} is not one of {', '.join(TARGETS)}")
    plans = []
    for path in args.plan:
        plans += load_plans(path)
    if args.uniform is not None:
        bits = _ints(args.uniform, "--uniform")
        if any(not 1 <= b <= 8 for b in bits):
            raise UserError(f"--uniform bits must be within 1..8 (got {args.uniform})")
        plans += uniform_plans(bits)
    if args.random:
        if args.random < 0:
            raise UserError(f"--random must be 0 or more (got {args.random})")
        names = model_source(model, dataset, args.data_dir, args.random_weights).names
        plans += random_plans(names, args.random, args.seed)
    if not plans:
        raise UserError("no plans: give --plan PATH, --uniform or --random N")
    batches = _ints(args.batch, "--batch")
    say = None if args.json else (lambda m: print(m, file=sys.stderr))
    rows, plan_map = measure(model, dataset, plans, targets, batches, args.repeats, args.data_dir,
                             args.random_weights, per_layer=not args.no_layers, progress=say,
                             cuda_dtype=args.cuda_dtype, stat=args.stat, min_time=args.min_time,
                             instances=args.instances)
    out, side = write(rows, plan_map, args.out, append=args.append)
    totals = [r for r in rows if r["layer"] == "total"]
    if args.json:
        print_json({"out": str(out), "plans_file": str(side), "rows": len(rows), "totals": totals})
        return 0
    print(f"{len(rows)} rows ({len(totals)} whole-network) for {len(plans)} plan(s) of {model} on "
          f"{', '.join(targets)} -> {out} (plans: {side})")
    for r in totals:
        print(f"  {r['target']:<12} {r['plan'][:24]:<24} batch {r['batch']:>4}: {r['seconds'] * 1e3:9.3f} ms")
    return 0
