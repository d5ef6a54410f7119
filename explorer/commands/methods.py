"""Commands for the methods in engine.training.methods:

``bitscape bsq``            BSQ bit-level sparsity search -> a per-layer plan
``bitscape dual``           a dual-precision network (high and low mode from one set of weights)
``bitscape cpt``            cyclic precision fine-tuning of a plan
``bitscape policy-distill`` distil a CartPole policy into a low-precision student
"""
from __future__ import annotations

from .common import add_model_args, check_out, load_data, model_dataset, print_json, progress_bar


def _bits_pair(p, flag: str, default, help_: str) -> None:
    p.add_argument(flag, nargs=2, type=int, metavar=("W", "A"), default=list(default), help=help_)


def register(sub) -> None:
    p = sub.add_parser("bsq", help="BSQ: search per-layer weight precision by bit-level sparsity; prints a plan")
    add_model_args(p)
    p.add_argument("--strength", type=float, default=10.0, help="bit-sparsity regulariser weight (default 10)")
    p.add_argument("--steps", type=int, default=300, help="search steps (default 300)")
    p.add_argument("--a-bits", type=int, default=8, help="activation bits, fixed during the search (default 8)")
    p.add_argument("--max-bits", type=int, default=8, help="starting (and largest) weight bits (default 8)")
    p.add_argument("--min-bits", type=int, default=2, help="smallest weight bits in the plan (default 2)")
    p.add_argument("--requant-every", type=int, default=50, help="steps between re-quantizations (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the plan here (JSON)")
    p.add_argument("--json", action="store_true", help="print one JSON object (plan, bits, history) on stdout")
    p.set_defaults(func=run_bsq)

    p = sub.add_parser("dual", help="train one network for two precisions (dual-precision) and report both")
    add_model_args(p)
    _bits_pair(p, "--high", (8, 8), "high-mode weight and activation bits (default 8 8)")
    _bits_pair(p, "--low", (4, 4), "low-mode weight and activation bits (default 4 4)")
    p.add_argument("--steps", type=int, default=400, help="total steps, half per phase (default 400)")
    p.add_argument("--schedule", choices=("joint", "alternate"), default="joint", help="phase 2 over both modes")
    p.add_argument("--low-weights", choices=("nested", "independent"), default="nested",
                   help="low-mode weights: top bit-planes of the high codes (one packed model) or re-quantized")
    p.add_argument("--distill", action="store_true", help="distil both modes from the FP32 teacher")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_dual)

    p = sub.add_parser("cpt", help="fine-tune a plan with cyclic precision training (CPT)")
    add_model_args(p)
    p.add_argument("--plan", required=True, help="plan JSON file (its bits are the upper bound)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--cycles", type=int, default=8)
    p.add_argument("--bits-min", type=int, default=None, help="lower bound (default: the precision range test)")
    p.add_argument("--which", choices=("both", "weights", "activations"), default="both")
    p.add_argument("--distill", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_cpt)

    p = sub.add_parser("policy-distill", help="distil an FP32 CartPole policy into a low-precision student")
    _bits_pair(p, "--bits", (8, 8), "student weight and activation bits (default 8 8)")
    p.add_argument("--plan", default=None, help="a plan file for the student instead of --bits (layers fc1..fc3)")
    p.add_argument("--data", default=None, help=".npz with 'states' (N, 4) and 'actions' (N,) to distil from "
                                                "instead of teacher rollouts")
    p.add_argument("--episodes", type=int, default=20, help="teacher rollouts for training states (default 20)")
    p.add_argument("--steps", type=int, default=300, help="distillation steps (per DAgger round)")
    p.add_argument("--dagger", type=int, default=0, help="DAgger rounds (default 0)")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_policy)


def _check_positive(**values) -> None:
    from engine.errors import UserError
    for k, v in values.items():
        if v is not None and not 0 <= v < float("inf"):   # nan and inf fail too
            raise UserError(f"--{k.replace('_', '-')} must be a finite number, 0 or more")


def run_bsq(args) -> int:
    from engine.evaluation import Settings
    from engine.models.baselines import load_baseline
    from engine.training.methods.bsq import run_bsq as search

    _check_positive(strength=args.strength, steps=args.steps)
    check_out(args.out)
    model, dataset = model_dataset(args)
    data = load_data(args, dataset)
    base = load_baseline(model, dataset, data)
    update, close = progress_bar(f"bsq {model} on {dataset}")
    try:
        res = search(base, data, args.strength, args.steps, args.max_bits, args.a_bits, args.min_bits,
                     args.requant_every, settings=Settings(seed=args.seed), model_id=model, progress=update)
    finally:
        close()
    if args.out:
        res.plan.save(args.out)
    if args.json:
        print_json(res.to_dict())
    elif not args.out:
        print(res.plan.to_json())
    else:
        bits = ", ".join(f"{n} W{b}" for n, b in res.layer_bits.items())
        print(f"bsq strength {args.strength:g}: {bits} (mean {res.mean_bits:.2f} bits); "
              f"bit-model val {100 * res.val_accuracy:.2f}% (FP32 {100 * res.baseline_val_accuracy:.2f}%)")
        print(f"plan written to {args.out}")
    return 0


def run_dual(args) -> int:
    from engine.errors import UserError
    from engine.evaluation import Settings
    from engine.models.baselines import load_baseline
    from engine.training.methods.dual import dual_finetune

    if args.steps < 0:
        raise UserError("--steps must be 0 or more")
    model, dataset = model_dataset(args)
    data = load_data(args, dataset)
    base = load_baseline(model, dataset, data)
    update, close = progress_bar(f"dual {model} on {dataset}")
    try:
        res = dual_finetune(model, dataset, tuple(args.high), tuple(args.low),
                            Settings(steps=args.steps, seed=args.seed, distill=args.distill), schedule=args.schedule,
                            low_weights=args.low_weights, baseline=base, data=data, progress=update)
    finally:
        close()
    if args.json:
        print_json(res.to_dict())
        return 0
    h, lo = args.high, args.low
    print(f"FP32: val {100 * res.baseline['val']:.2f}%  test {100 * res.baseline['test']:.2f}%")
    for mode, (w, a) in (("high", h), ("low", lo)):
        acc = res.accuracy[mode]
        print(f"{mode} W{w}A{a}: val {100 * acc['val']:.2f}%  test {100 * acc['test']:.2f}%  "
              f"(before training: val {100 * res.estimate[mode]:.2f}%)")
    return 0


def run_cpt(args) -> int:
    from engine.evaluation import Settings
    from engine.models.baselines import load_baseline
    from engine.plans.graph import analyze
    from engine.plans.plan import Plan
    from engine.training.methods.cpt import cpt_finetune

    model, dataset = model_dataset(args)
    plan = Plan.load(args.plan)
    plan.check_model(model)
    data = load_data(args, dataset)
    base = load_baseline(model, dataset, data)
    analyze(base, data.input_shape).check(plan.resolve(analyze(base, data.input_shape).names))
    _check_positive(steps=args.steps)
    update, close = progress_bar(f"cpt {model} on {dataset}")
    try:
        res = cpt_finetune(model, dataset, plan, Settings(steps=args.steps, seed=args.seed, distill=args.distill),
                           cycles=args.cycles, bits_min=args.bits_min, which=args.which, baseline=base, data=data,
                           progress=update)
    finally:
        close()
    ev = res.evaluation
    if args.json:
        print_json(ev.to_dict())
        return 0
    m = ev.provenance["method"]
    print(f"cpt: {m['cycles']} cycles between {m['bits_min']} bits and the plan's (mean {m['mean_bits']:.2f} bits)")
    if m["range_test"]:
        accs = ", ".join(f"{b}b {100 * a:.0f}%" for b, a in m["range_test"]["accuracies"].items())
        print(f"precision range test: {accs} -> lower bound {m['range_test']['lower']}")
    print(f"result: val {100 * ev.val_accuracy:.2f}%  test {100 * ev.test_accuracy:.2f}%  "
          f"(FP32 val {100 * ev.baseline_val_accuracy:.2f}%)")
    return 0


def run_policy(args) -> int:
    from engine.errors import UserError
    from engine.plans.plan import Plan
    from engine.training.methods.policy import policy_distill

    _check_positive(episodes=args.episodes, steps=args.steps, dagger=args.dagger)
    if args.eval_episodes < 1 or args.episodes < 1:
        raise UserError("--episodes and --eval-episodes must be at least 1")
    bits = Plan.load(args.plan) if args.plan else tuple(args.bits)
    if not args.plan:
        Plan.uniform(*bits)  # a bad bit-width is a user error before any training
    out = policy_distill(bits, seed=args.seed, demonstrations=args.data, episodes=args.episodes, steps=args.steps,
                         dagger=args.dagger, eval_episodes=args.eval_episodes)
    if args.json:
        print_json(out)
        return 0
    print(f"teacher (FP32, {out['teacher']['method']}, {out['teacher']['iterations']} iterations): "
          f"return {out['teacher_return']:.1f}")
    label = out["plan"].get("name") or "plan"
    print(f"student {label}: return {out['student_return']:.1f} "
          f"({100 * out['return_ratio']:.0f}% of the teacher's), action agreement {100 * out['agreement']:.1f}%")
    print(f"random policy: return {out['random_return']:.1f}; trained on {out['states']} states from {out['source']}")
    return 0
