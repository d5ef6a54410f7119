"""Benchmarks that print figures (ratios measured side by side in one run, medians).

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is listed in
``BENCHMARKS``; ``bitscape bench NAME`` and the scripts under bench/ call them.
"""
BENCHMARKS = {
    "finetune": "engine.benchmarks.finetune",
    "kernels": "engine.benchmarks.kernels",
    "cost": "engine.benchmarks.cost",
    "search": "engine.benchmarks.search",
    "seeds": "engine.benchmarks.seeds",
    "runtime": "engine.benchmarks.runtime",
}
