"""The ``bitscape`` command: subcommands registered by the modules in explorer.commands.

User errors print one clear line on stderr and exit with code 2 (no traceback).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each module in explorer.commands exposes register(subparsers); order sets the help listing.
COMMAND_MODULES = ["serve", "plan", "finetune", "baseline", "bench", "cost", "deploy", "export", "sweep", "sensitivity", "methods",
                   "measure", "calibrate"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bitscape", description="Explore low-precision, wide and sparse networks.")
    parser.add_argument("--allow-code", action="append", default=[], metavar="PKG.MODULE:FUNCTION",
                        help="run this model or dataset function when a checkpoint, session file or job names "
                             "it (repeatable); --model/--dataset references typed here are allowed already")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"explorer.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # One compute thread unless BITSCAPE_THREADS says otherwise: on a shared 2-core machine two
    # OpenMP threads stall in barriers whenever one is descheduled. Set before torch is imported.
    os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("BITSCAPE_THREADS", "1"))
    from engine.errors import USER_ERRORS
    from engine.models.zoo import is_reference, trusted_references

    parser = build_parser()
    args = parser.parse_args(argv)
    # code references the user typed are trusted; the ones files name are not (see README, Trust model)
    typed = [getattr(args, a, None) for a in ("model", "dataset")]
    refs = [*args.allow_code, *(r for r in typed if is_reference(r))]
    try:
        with trusted_references(*refs):
            return int(args.func(args) or 0)
    except USER_ERRORS as e:
        print(f"bitscape: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bitscape: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
