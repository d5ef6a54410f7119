"""``bitscape train-baseline``: train and cache a model's FP32 baseline."""
from __future__ import annotations

from .common import add_model_args, check_epochs, check_out, model_dataset, print_json, progress_bar


def register(sub) -> None:
    p = sub.add_parser("train-baseline", help="train the FP32 baseline a plan starts from")
    add_model_args(p)
    p.add_argument("--epochs", type=float, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="where to write it (default: the user cache directory)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.models.baselines import train_baseline
    check_epochs(args.epochs)
    check_out(args.out)
    model, dataset = model_dataset(args)
    update, close = progress_bar(f"training {model} on {dataset}")
    try:
        r = train_baseline(model, dataset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           seed=args.seed, out=args.out, progress=update)
    finally:
        close()
    if args.json:
        print_json(r)
    else:
        print(f"{model} on {dataset}: val {100 * r['val_accuracy']:.2f}%  test {100 * r['test_accuracy']:.2f}%  "
              f"({r['steps']} steps, {r['wall_s']:.1f} s) -> {r['path']}")
    return 0
