"""Shared command-line options: model and dataset choice, progress bars, JSON output."""
from __future__ import annotations

import json
import sys

from engine.errors import UserError

DEFAULT_MODEL = "lenet5"
DEFAULT_DATASET = "digits"


def add_model_args(p, dataset: bool = True) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"zoo model (mlp, lenet5, cnn, resnet20, lstm) or package.module:function (default {DEFAULT_MODEL})")
    if dataset:
        p.add_argument("--dataset", default=None,
                       help="digits, fashion-mnist, mnist, cifar10, synthetic or package.module:function "
                            "(default: the model's usual dataset)")
        p.add_argument("--data-dir", default=None, help="directory holding the dataset's files")


def model_dataset(args) -> tuple[str, str]:
    from engine.zoo import ZOO
    ds = getattr(args, "dataset", None)
    if ds is None:
        if args.model in ZOO:
            ds = ZOO[args.model].datasets[0]
        else:
            raise UserError(f"--dataset is required with your own model {args.model!r}")
    return args.model, ds


def load_data(args, dataset: str):
    from engine.data import load_dataset
    return load_dataset(dataset, root=getattr(args, "data_dir", None))


def progress_bar(desc: str, enabled: bool | None = None):
    """A tqdm bar on stderr when it is a terminal; returns (callback, close)."""
    on = sys.stderr.isatty() if enabled is None else enabled
    if not on:
        return (lambda f, m: None), (lambda: None)
    from tqdm import tqdm
    bar = tqdm(total=1000, desc=desc, file=sys.stderr, leave=False, bar_format="{desc} {bar} {percentage:3.0f}% {postfix}")

    def update(frac: float, msg: str) -> None:
        bar.n = int(1000 * max(0.0, min(1.0, frac)))
        bar.set_postfix_str(msg, refresh=False)
        bar.refresh()

    return update, bar.close


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
