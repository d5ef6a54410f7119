"""Benchmarks that print figures (ratios measured side by side in one run, medians).

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is listed in
``BENCHMARKS``; ``bitscape bench NAME`` runs them (bench/README.md is the index).
"""
BENCHMARKS = {
    "finetune": "engine.benchmarks.finetune",
    "kernels": "engine.benchmarks.kernels",
    "cost": "engine.benchmarks.cost",
    "search": "engine.benchmarks.search",
    "study": "engine.benchmarks.study",
    "runtime": "engine.benchmarks.runtime",
    "pool": "engine.benchmarks.pool",
}
