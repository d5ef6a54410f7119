"""``bitscape sensitivity``: per-layer sensitivity (EAGL, ALPS or Hessian), one row per layer."""
from __future__ import annotations

from .common import add_model_args, model_dataset, print_json
from .sweep import add_job_args


def register(sub) -> None:
    p = sub.add_parser("sensitivity", help="per-layer sensitivity to low precision (eagl, alps, hessian)")
    add_model_args(p)
    p.add_argument("--method", choices=("eagl", "alps", "hessian", "all"), default="eagl")
    p.add_argument("--bits", type=int, default=None,
                   help="precision probed (default: 4 for eagl/hessian, 2 for alps)")
    p.add_argument("--steps", type=int, default=100, help="alps: fine-tuning steps per layer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-compare", action="store_true",
                   help="skip the rank correlation with the other methods (eagl and hessian take seconds)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_job_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.errors import UserError
    from engine.training.sensitivity import alps, correlations, eagl, hessian

    model, dataset = model_dataset(args)
    if args.bits is not None and not 1 <= args.bits <= 8:
        raise UserError("--bits must be between 1 and 8")
    methods = ["eagl", "hessian", "alps"] if args.method == "all" else [args.method]
    if not args.no_compare:
        methods += [m for m in ("eagl", "hessian") if m not in methods]
    results = []
    for m in methods:
        if m == "eagl":
            results.append(eagl(model, dataset, bits=args.bits or 4))
        elif m == "hessian":
            results.append(hessian(model, dataset, bits=args.bits or 4, seed=args.seed))
        else:
            from engine.explore.jobs import JobRunner
            from engine.explore.store import Store
            store = Store(args.store)
            with JobRunner(workers=args.workers, scheduler=args.scheduler, store=store) as runner:
                results.append(alps(model, dataset, bits=args.bits or 2, steps=args.steps, seed=args.seed,
                                    runner=runner, store=store))
    main = results[0]
    corr = correlations(results)
    if args.json:
        print_json({**main.to_dict(), "others": [r.to_dict() for r in results[1:]],
                    "rank_correlation": [{**c, "spearman": None if c["spearman"] != c["spearman"] else c["spearman"]}
                                         for c in corr]})
        return 0
    ranks = main.ranks()
    print(f"{main.method} sensitivity of {model} on {dataset} (higher = more sensitive; rank 1 = most)")
    print(f"{'layer':<16} {'kind':<7} {'params':>9} {'score':>12} {'rank':>5}")
    for r in main.rows:
        print(f"{r.layer:<16} {r.kind:<7} {r.params:>9} {r.score:>12.5g} {ranks[r.layer]:>5}")
    for c in corr:
        print(f"rank correlation (Spearman) {c['a']} vs {c['b']}: {c['spearman']:+.3f}")
    return 0
