"""Speed of the cost model: plans per second on the scalar and the vectorised path.

Wall-clock lives here (and behind ``bitscape cost --speed``), never in tests.
"""
from __future__ import annotations

import time

import numpy as np

from engine.cost.geometry import geometry
from engine.cost.model import cost_plan
from engine.cost.profiles import load_profile
from engine.cost.vector import LayerTable, PlanArrays, cost_batch
from engine.plans.plan import BIT_CHOICES, LayerConfig


def synthetic_layers(n: int = 50) -> list[dict]:
    """A plain chain of n 3x3 convolutions (16..128 channels, 32x32 -> 4x4) ending in a linear layer."""
    rows, c, hw = [], 3, 32
    for i in range(n - 1):
        cout = min(128, 16 * 2 ** (i * 4 // n))
        stride = 2 if i in (n // 3, 2 * n // 3) and hw > 4 else 1
        ohw = hw // stride
        rows.append({"name": f"conv{i}", "kind": "conv2d", "in_channels": c, "out_channels": cout,
                     "kernel": (3, 3), "stride": (stride, stride), "groups": 1, "in_hw": (hw, hw),
                     "out_hw": (ohw, ohw), "steps": 1, "bias": False})
        c, hw = cout, ohw
    rows.append({"name": "fc", "kind": "linear", "in_channels": c, "out_channels": 10, "steps": 1, "bias": True})
    return rows


def random_arrays(n_plans: int, n_layers: int, seed: int = 0) -> PlanArrays:
    """Random bits (1..8 or float), half the layers 2:4 or 50 % unstructured, no widening."""
    rng = np.random.default_rng(seed)
    bits = np.array(BIT_CHOICES)
    w = bits[rng.integers(0, len(bits), (n_plans, n_layers))]
    a = bits[rng.integers(0, len(bits), (n_plans, n_layers))]
    mode = rng.integers(0, 3, (n_plans, n_layers))
    nm_n = np.where(mode == 1, 2, 0)
    nm_m = np.where(mode == 1, 4, 0)
    density = np.where(mode == 1, 0.5, np.where(mode == 2, 0.5, 1.0))
    return PlanArrays(w, a, np.ones((n_plans, n_layers)), nm_n, nm_m, density)


def configs_from_arrays(arr: PlanArrays, names: list[str], i: int) -> dict[str, LayerConfig]:
    out = {}
    for j, n in enumerate(names):
        if arr.nm_m[i, j]:
            c = LayerConfig(int(arr.w_bits[i, j]), int(arr.a_bits[i, j]), sparsity=f"{arr.nm_n[i, j]}:{arr.nm_m[i, j]}")
        elif arr.density[i, j] < 1:
            c = LayerConfig(int(arr.w_bits[i, j]), int(arr.a_bits[i, j]), sparsity="unstructured",
                            sparsity_fraction=float(1 - arr.density[i, j]))
        else:
            c = LayerConfig(int(arr.w_bits[i, j]), int(arr.a_bits[i, j]))
        out[n] = c
    return out


def measure_speed(layers=None, profile="a100", batch: int | None = None, n_scalar: int = 200,
                  n_vector: int = 20000, repeats: int = 3) -> dict:
    """Best-of-``repeats`` timing of cost_plan (scalar, with notes) and cost_batch (vectorised)."""
    layers = layers if layers is not None else synthetic_layers(50)
    prof = load_profile(profile)
    geoms = [geometry(x) for x in layers]
    names = [g.name for g in geoms]
    arr = random_arrays(max(n_scalar, n_vector), len(geoms))
    plans = [configs_from_arrays(arr, names, i) for i in range(n_scalar)]
    best_s = best_v = float("inf")
    table = LayerTable.from_layers(layers)
    for _ in range(repeats):
        t0 = time.perf_counter()
        for c in plans:
            cost_plan(layers, c, prof, batch)
        best_s = min(best_s, (time.perf_counter() - t0) / n_scalar)
        t0 = time.perf_counter()
        cost_batch(table, arr, prof, batch)
        best_v = min(best_v, (time.perf_counter() - t0) / arr.w_bits.shape[0])
    return {"layers": len(geoms), "profile": prof.name, "scalar_s_per_plan": best_s,
            "scalar_plans_per_s": 1.0 / best_s, "vector_s_per_plan": best_v, "vector_plans_per_s": 1.0 / best_v,
            "vector_batch": int(arr.w_bits.shape[0])}
