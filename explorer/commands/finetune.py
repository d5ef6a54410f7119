"""``bitscape finetune``: apply a plan to the pretrained model, fine-tune, print the Evaluation."""
from __future__ import annotations

from .common import add_model_args, check_epochs, check_out, load_data, model_dataset, print_json, progress_bar


def register(sub) -> None:
    p = sub.add_parser("finetune", help="apply a plan, run a quick fine-tune, print the Evaluation")
    add_model_args(p)
    p.add_argument("--plan", required=True, help="plan JSON file")
    p.add_argument("--steps", type=int, default=None,
                   help="fine-tuning steps (0 = no-training estimate); with --epochs or --patience, the cap")
    p.add_argument("--epochs", type=float, default=None, help="budget in epochs of the training split (e.g. 0.5)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many validations in a row without a better score")
    p.add_argument("--val-every", type=int, default=None, help="steps between validations (default: automatic)")
    p.add_argument("--lr-find", action="store_true", help="choose the learning rates by a short range test")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="where to fine-tune: cpu (default), cuda, or auto (CUDA when torch sees one)")
    p.add_argument("--distill", action="store_true", help="distil from the FP32 teacher (Apprentice)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline", default=None, help="FP32 checkpoint to start from (default: shipped or cached)")
    p.add_argument("--save", default=None, help="write the fine-tuned model with its plan (safetensors)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def settings_from(args):
    from engine.errors import UserError
    from engine.evaluation import MAX_STEPS, Settings
    from engine.training.device import resolve_device
    s = Settings(seed=args.seed, distill=args.distill)
    if args.lr is not None:
        s.lr = s.lr_step = args.lr
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        s.batch_size = args.batch_size
    if args.steps is not None:
        if args.steps < 0:
            raise UserError("--steps must be 0 or more")
        s.steps = args.steps
    elif args.epochs is not None:
        s.steps = MAX_STEPS   # the epochs decide; --steps would cap them
    if args.epochs is not None:
        s.epochs = float(args.epochs)
    if args.patience is not None:
        s.patience = args.patience
    if args.val_every is not None:
        s.val_every = args.val_every
    s.lr_find = args.lr_find
    resolve_device(args.device)   # a CUDA request without a GPU is refused before any work
    s.device = args.device
    return s


def run(args) -> int:
    from engine.errors import UserError
    from engine.explore.pipeline import evaluate_plan
    from engine.models.baselines import load_baseline
    from engine.models.checkpoint import save_planned
    from engine.plans.graph import analyze
    from engine.plans.plan import Plan
    from engine.training.budget import budget_steps

    check_epochs(args.epochs)
    check_out(args.save, "--save", inputs={"--plan": args.plan, "--baseline": args.baseline})
    model, dataset = model_dataset(args)
    plan = Plan.load(args.plan)
    plan.check_model(model)
    s = settings_from(args)
    data = load_data(args, dataset)
    if args.epochs is not None:
        try:
            budget_steps(s, len(data.y_train))
        except UserError as e:
            raise UserError(f"--{e}") from None
    base = load_baseline(model, dataset, data, path=args.baseline)
    topo = analyze(base, data.input_shape)
    topo.check(plan.resolve(topo.names))  # a bad plan is a user error (exit 2), not a failed run
    update, close = progress_bar(f"{model} on {dataset}")
    try:
        result = evaluate_plan(model, dataset, plan, s, progress=update, baseline=base, data=data)
    finally:
        close()
    ev = result.evaluation
    if args.save and ev.status != "failed":
        save_planned(result, args.save)
    if args.json:
        print_json(ev.to_dict())
    else:
        print(describe(ev))
        if args.save and ev.status != "failed":
            print(f"saved: {args.save}")
    return 0 if ev.status != "failed" else 1


def describe(ev) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"
    lines = [f"status: {ev.status}" + (f" ({ev.reason})" if ev.reason else ""),
             f"model {ev.model} on {ev.dataset}, plan {ev.provenance.get('plan_hash')}, seed {ev.settings['seed']}",
             f"FP32 baseline: val {pct(ev.baseline_val_accuracy)}  test {pct(ev.baseline_test_accuracy)}",
             f"no-training estimate: val {pct(ev.estimate_val_accuracy)}",
             f"result: val {pct(ev.val_accuracy)}  test {pct(ev.test_accuracy)}  ({ev.steps} steps, {ev.wall_s:.1f} s)"]
    if ev.loss_curve:
        lines.append(f"loss: {ev.loss_curve[0]:.4f} -> {ev.loss_curve[-1]:.4f}")
    ft = ev.provenance.get("finetune")
    if ft:
        lines.append(f"kept the state of step {ft.get('kept_step')} of {ft.get('steps_run')} (validation "
                     f"{pct(ft.get('start_val'))} at the start, {pct(ft.get('best_val'))} best; stopped on "
                     f"{ft.get('stopped')}); lr {ft.get('lr'):.3g}, step-size lr {ft.get('lr_step'):.3g} "
                     f"from {ft.get('lr_source')}; device {ev.provenance.get('device', 'cpu')}")
    return "\n".join(lines)
