"""``bitscape bench NAME``: run one of the engine's benchmarks."""
from __future__ import annotations

import importlib

from engine.benchmarks import BENCHMARKS as ENGINE_BENCHMARKS
from explorer.benchmarks import BENCHMARKS as EXPLORER_BENCHMARKS

BENCHMARKS = {**ENGINE_BENCHMARKS, **EXPLORER_BENCHMARKS}
ALIASES = {"study": ["seeds"]}      # issue 14 names the study 'bench seeds' (seeds x budgets per claim)


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark that prints measured figures")
    names = p.add_subparsers(dest="bench", metavar="NAME")
    names.required = True
    for name, module in BENCHMARKS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        q = names.add_parser(name, aliases=ALIASES.get(name, []), help=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else None)
        mod.add_arguments(q)
        q.set_defaults(func=mod.run)
