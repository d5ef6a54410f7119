"""``bitscape cost`` (a plan's per-layer cost on a target) and ``bitscape profiles`` (the targets)."""
from __future__ import annotations

import math

from engine.errors import UserError

from .common import add_model_args, model_dataset, print_json


def register(sub) -> None:
    p = sub.add_parser("cost", help="per-layer cost of a plan on an accelerator profile")
    add_model_args(p)
    p.add_argument("--plan", default=None, help="plan JSON file (default: every layer in float)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--profile", help="profile name (see 'bitscape profiles') or path to a profile .json file")
    which.add_argument("--profile-file", metavar="JSON", help="a profile .json file, e.g. one 'bitscape calibrate' wrote")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the profile's)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--speed", action="store_true",
                   help="also time the cost model itself (plans per second, scalar and vectorised)")
    p.set_defaults(func=run_cost)
    q = sub.add_parser("profiles", help="list accelerator profiles and their sources")
    q.add_argument("--json", action="store_true", help="print a JSON list")
    q.add_argument("--describe", action="store_true",
                   help="list the parameters 'bitscape calibrate' can fit: meaning and unit")
    q.set_defaults(func=run_profiles)


def _finite(obj):
    """JSON-safe copy: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _si(x: float, unit: str) -> str:
    if x == 0 or not math.isfinite(x):
        return f"{x:g} {unit}"
    for f, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n")):
        if abs(x) >= f:
            return f"{x / f:.3g} {p}{unit}"
    return f"{x:.3g} {unit}"


def run_cost(args) -> int:
    from engine.cost import cost_topology, load_profile
    from engine.plans.plan import LayerConfig, Plan

    from .plan import topology_for

    if args.batch is not None and args.batch < 1:
        raise UserError(f"--batch must be at least 1 (got {args.batch})")
    prof = load_profile(profile_arg(args))
    plan = Plan.load(args.plan) if args.plan else Plan(default=LayerConfig())
    plan.check_model(args.model)
    topo = topology_for(args)
    configs = plan.resolve(topo.names)
    rep = cost_topology(topo, configs, prof, args.batch)
    model, dataset = model_dataset(args)
    speed = None
    if args.speed:
        from engine.cost.speed import measure_speed
        speed = measure_speed(topo.widened(configs), prof, args.batch, n_scalar=100, n_vector=10000)
    if args.json:
        d = rep.to_dict()
        d.update(model=model, dataset=dataset, plan=args.plan, plan_digest=plan.digest(), profile_status=prof.status)
        if speed:
            d["speed"] = speed
        print_json(_finite(d))
        return 0
    print(f"{model} on {dataset}, plan {args.plan or '(float)'}, profile {prof.name}: {prof.title}")
    print(f"source: {prof.source}")
    head = f"{'layer':<22} {'kind':<6} {'runs':<6} {'MACs':>9} {'time':>10} {'share':>6}  note"
    print(head)
    print("-" * len(head))
    for lc, share in zip(rep.layers, rep.shares):
        print(f"{lc.name[:22]:<22} {lc.kind[:6]:<6} {lc.exec:<6} {_si(lc.macs, ''):>9} {_si(lc.time_s, 's'):>10} "
              f"{share:>6.1%}  {lc.note}")
    print("-" * len(head))
    print(f"throughput {rep.throughput:,.1f} inferences/s at batch {rep.batch}; latency {_si(rep.latency_s, 's')} "
          f"(batch 1); energy {_si(rep.energy_j, 'J')}/inference; size {_si(rep.size_bytes, 'B')}; "
          f"{_si(rep.bops, 'BOPs')}")
    if speed:
        print(f"cost model speed ({speed['layers']} layers): scalar {speed['scalar_plans_per_s']:,.0f} plans/s "
              f"({speed['scalar_s_per_plan'] * 1e6:.0f} us/plan), vectorised {speed['vector_plans_per_s']:,.0f} plans/s")
    return 0


def profile_arg(args) -> str:
    """The profile a command was given: --profile-file (must be an existing file) or --profile."""
    path = getattr(args, "profile_file", None)
    if path:
        from pathlib import Path
        if not Path(path).is_file():
            raise UserError(f"--profile-file {path!r} does not exist")
        return str(Path(path))
    return args.profile


def run_profiles(args) -> int:
    from engine.cost import list_profiles
    if args.describe:
        from engine.cost.profiles import describe_parameters
        rows = describe_parameters()
        if args.json:
            print_json(rows)
            return 0
        print("fittable parameters (bitscape calibrate --params a,b,...):")
        for r in rows:
            if r["kind"] == "parameter":
                print(f"  {r['path']:<28} [{r['unit']}; {r['classes']}] {r['meaning']}")
        print("structure choices (selected by cross-validation over held-out plans):")
        for r in rows:
            if r["kind"] == "structure":
                print(f"  {r['path']:<28} {r['meaning']}")
        return 0
    rows = list_profiles()
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        if r.get("error"):
            print(f"{r['name']:<10} INVALID  {r['error']}")
            continue
        print(f"{r['name']:<10} [{r['status']}, {r['target']}] {r['title']}")
        print(f"{'':<10} source: {r['source']}")
    return 0
