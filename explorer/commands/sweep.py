"""``bitscape sweep``: search per-layer precision/width/sparsity, store every point, write the frontier."""
from __future__ import annotations

import sys

from .common import add_model_args, check_out, model_dataset, print_json


def add_job_args(p) -> None:
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPU cores)")
    p.add_argument("--scheduler", default=None,
                   help="run jobs on an existing Dask cluster, e.g. tcp://HOST:PORT (or $BITSCAPE_SCHEDULER)")
    p.add_argument("--store", default=None, help="results store: SQLite file or sqlite:///PATH "
                                                 "(default $BITSCAPE_STORE or the user data directory)")


def register(sub) -> None:
    p = sub.add_parser("sweep", help="search mixed-precision plans; every point to the store, the frontier to a file")
    add_model_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--profile", help="accelerator profile whose throughput is an objective")
    which.add_argument("--profile-file", metavar="JSON",
                       help="a profile .json file (e.g. from 'bitscape calibrate'); its name must be the file's stem")
    p.add_argument("--budget", type=int, required=True,
                   help="candidate plans scored by the no-training estimate (greedy: points on the path)")
    p.add_argument("--finetune", type=int, default=None,
                   help="how many of the most promising are fine-tuned (default budget/4, at least 2)")
    p.add_argument("--steps", type=int, default=200, help="fine-tuning steps per fine-tuned point")
    p.add_argument("--method", choices=("nsga2", "random", "greedy"), default="nsga2")
    p.add_argument("--order", choices=("eagl", "hessian", "alps"), default="eagl",
                   help="sensitivity order of the greedy path")
    p.add_argument("--objective3", choices=("size_bytes", "energy_j"), default=None,
                   help="optional third objective (minimised)")
    p.add_argument("--distill", action="store_true", help="fine-tune with distillation from the FP32 teacher")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--session", default=None, help="name of the store session the points go to")
    p.add_argument("--out", default=None, help="write the frontier to FILE (.csv or .parquet)")
    p.add_argument("--json", action="store_true", help="print the summary and frontier as JSON")
    add_job_args(p)
    p.set_defaults(func=run)


def _progress(json_mode: bool):
    tty = sys.stderr.isatty()

    def say(done: int, total: int, msg: str) -> None:
        line = f"[{done}/{total}] {msg}"
        if tty:
            sys.stderr.write("\r\033[K" + line[:150])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
    return say


def use_profile_file(path: str) -> str:
    """The sweep keeps profiles by name: make the file's profile findable by its name (workers too)."""
    from engine.cost.profiles import add_profile_file
    return add_profile_file(path)


def run(args) -> int:
    from engine.errors import UserError
    from engine.explore.jobs import JobRunner
    from engine.explore.store import Store
    from engine.explore.sweep import run_sweep

    model, dataset = model_dataset(args)
    if args.profile_file:
        args.profile = use_profile_file(args.profile_file)
    if args.steps < 0:
        raise UserError("--steps must be 0 or more")
    check_out(args.out)
    store = Store(args.store)
    runner = JobRunner(workers=args.workers, scheduler=args.scheduler, store=store)
    try:
        res = run_sweep(model, dataset, args.profile, args.budget, finetune=args.finetune, steps=args.steps,
                        method=args.method, seed=args.seed, distill=args.distill, third=args.objective3,
                        store=store, runner=runner, session_name=args.session, out=args.out,
                        progress=_progress(args.json), order=args.order)
    finally:
        runner.shutdown()
        if sys.stderr.isatty():
            sys.stderr.write("\n")
    cols = ["status", "val_accuracy", "test_accuracy", "throughput", "size_bytes", "label", "key"]
    if args.json:
        print_json({"summary": res.summary(), "frontier": res.frontier[cols].to_dict(orient="records")})
        return 0
    s = res.summary()
    print(f"sweep {model} on {dataset}, profile {args.profile}, method {args.method}: {s['points']} points "
          f"({s['submitted']} run, {s['reused']} reused from the store) in {s['wall_s']:.1f} s; session {s['session']}")
    print("frontier (selected on validation, reported on test):")
    print(f"{'status':<11} {'val':>7} {'test':>7} {'throughput/s':>13}  plan")
    for _, r in res.frontier.iterrows():
        print(f"{r.status:<11} {100 * r.val_accuracy:6.2f}% {100 * r.test_accuracy:6.2f}% {r.throughput:13.1f}  {r.label}")
    if s["hypervolume"] is not None:
        print(f"hypervolume (test accuracy x throughput, ref accuracy {s['ref'][0]:.4f}): {s['hypervolume']:.6g}")
    if args.out:
        print(f"frontier written to {args.out}")
    return 0
