"""Shared command-line options: model and dataset choice, progress bars, JSON output."""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

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
    from engine.models.zoo import ZOO
    ds = getattr(args, "dataset", None)
    if ds is None:
        if args.model in ZOO:
            ds = ZOO[args.model].datasets[0]
        else:
            raise UserError(f"--dataset is required with your own model {args.model!r}")
    return args.model, ds


def load_data(args, dataset: str):
    from engine.models.data import load_dataset
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


def check_out(path, flag: str = "--out", inputs: dict[str, object] | None = None) -> None:
    """Refuse an output path before any work: a directory, a folder that cannot be written, or
    the same file as an input (which the output would overwrite)."""
    if path is None or path == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {str(p)!r} is a directory; give a file name")
    for in_flag, given in (inputs or {}).items():
        if given is not None and given != "-" and _same_file(p, Path(given)):
            raise UserError(f"{flag} {str(p)!r} is the same file as {in_flag}: it would overwrite its input")
    folder = p.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{flag} {str(p)!r}: {str(folder)!r} is not a folder")
    try:  # the real test: os.access says yes to root even on read-only file systems
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"{flag} {str(p)!r}: cannot write in {str(folder)!r} ({e.strerror or e})") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_epochs(epochs, flag: str = "--epochs") -> None:
    """An epoch budget must be a finite positive number (inf and nan would never end)."""
    if epochs is not None and (not math.isfinite(epochs) or epochs <= 0 or epochs > 10_000):
        raise UserError(f"{flag} must be a positive number of at most 10000 (got {epochs:g})")
