"""Named plans that need the network's shape: uniform precision, widened, 2:4 where it fits."""
from __future__ import annotations

from engine.plans.graph import Topology
from engine.plans.plan import Plan

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
        return plan
    if "x-" in name:
        k, tag = name.split("x-")
        w, a = _bits(tag)
        plan = Plan.uniform(w, a, model=model, name=name)
        for layer in topo.layers:
            sp = topo.spaces.get(layer.out_space)
            if sp is None or not sp.fixed:
                plan.layers[layer.name] = {"widen": float(k)}
        return plan
    w, a = _bits(name)
    return Plan.uniform(w, a, model=model, name=name)
