"""Named plans that need the network's shape: uniform precision, widened, 2:4 where it fits.

Below 8 bits, a preset feeds the network input (the data itself) to its first layers at
``INPUT_BITS``: pixels arrive as 8-bit codes, and the low-precision results the papers report
(LSQ, PACT, DoReFa) keep the first layer's input at 8 bits or more. A plan that quantizes the
input lower is one table edit away.
"""
from __future__ import annotations

from engine.plans.graph import Topology
from engine.plans.plan import Plan

INPUT_BITS = 8
PRESETS = ("fp32", "w8a8", "w4a4", "w2a2", "w1a1", "2x-w2a2", "2x-w4a4", "2:4-w8a8", "2:4-w4a4")


def _bits(tag: str) -> tuple[int, int]:
    w, a = tag.lstrip("w").split("a")
    return int(w), int(a)


def preset_plan(name: str, topo: Topology, model: str | None = None) -> Plan:
    """The plan called ``name`` for this network (see PRESETS).

    ``Nx-...`` widens every layer except the one producing the output (and layers whose
    channels cannot be widened); ``2:4-...`` applies 2:4 only to layers whose input
    dimension is divisible by 4, leaving the others dense.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}")
    if name == "fp32":
        return Plan(model=model, name=name)
    if name.startswith("2:4-"):
        w, a = _bits(name[4:])
        plan = Plan.uniform(w, a, sparsity="2:4", model=model, name=name)
        for layer in topo.layers:
            if any(d % 4 for d in layer.nm_dims):
                plan.layers[layer.name] = {"sparsity": "none"}
        return _input_at(plan, a, topo)
    if "x-" in name:
        k, tag = name.split("x-")
        w, a = _bits(tag)
        plan = Plan.uniform(w, a, model=model, name=name)
        for layer in topo.layers:
            sp = topo.spaces.get(layer.out_space)
            if sp is None or not sp.fixed:
                plan.layers[layer.name] = {"widen": float(k)}
        return _input_at(plan, a, topo)
    w, a = _bits(name)
    return _input_at(Plan.uniform(w, a, model=model, name=name), a, topo)


def _input_at(plan: Plan, a_bits: int, topo: Topology) -> Plan:
    """``plan`` with the layers that read the network input fed at INPUT_BITS when ``a_bits`` is lower."""
    if a_bits < INPUT_BITS:
        for layer in topo.layers:
            if layer.is_input:
                plan.layers[layer.name] = {**plan.layers.get(layer.name, {}), "a_bits": INPUT_BITS}
    return plan
