"""A plan as an editable per-layer table, and back; pure functions over pandas."""
from __future__ import annotations

import dataclasses

import pandas as pd

from engine.plans.graph import LayerInfo, Topology
from engine.plans.plan import FLOAT_BITS, LayerConfig, Plan, PlanError

EDITABLE = ("w_bits", "a_bits", "widen", "sparsity", "sparsity_fraction", "quantizer")
# every LayerConfig field travels through the table (the editor hides the ones it does not edit),
# so an edit never drops a setting a loaded plan carried, e.g. per_channel
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(LayerConfig))
CARRIED = tuple(f for f in CONFIG_FIELDS if f not in EDITABLE)
COLUMNS = ("layer", "kind", "shape", "macs") + EDITABLE + CARRIED + ("time_us", "share", "runs_as", "note")


def shape_label(layer: LayerInfo) -> str:
    if layer.kind == "conv2d":
        k = f"{layer.kernel[0]}x{layer.kernel[1]}"
        return f"{layer.in_channels}→{layer.out_channels} {k} @{layer.out_hw[0]}x{layer.out_hw[1]}"
    if layer.kind == "lstm":
        return f"{layer.in_channels}→{layer.out_channels} x{layer.steps} steps"
    return f"{layer.in_channels}→{layer.out_channels}"


def plan_rows(topo: Topology, configs: dict[str, LayerConfig]) -> pd.DataFrame:
    """One row per layer: its (widened) shape, MACs and editable settings."""
    rows = []
    for layer in topo.widened(configs):
        c = configs[layer.name]
        rows.append({"layer": layer.name, "kind": layer.kind, "shape": shape_label(layer), "macs": layer.macs,
                     **c.to_dict(), "time_us": 0.0, "share": 0.0, "runs_as": "", "note": ""})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def coerce(column: str, value):
    """Turn a table cell into the plan field's type; raise PlanError naming the column."""
    if column not in EDITABLE:
        raise PlanError(f"column {column!r} cannot be edited")
    try:
        if column in ("w_bits", "a_bits"):
            if isinstance(value, str) and value.strip().lower() in ("fp32", "float", "32"):
                return FLOAT_BITS
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if column in ("widen", "sparsity_fraction"):
            return float(value)
    except (TypeError, ValueError):
        raise PlanError(f"{column}={value!r} is not a number") from None
    return str(value).strip()


_TYPES = {"w_bits": int, "a_bits": int, "widen": float, "sparsity": str, "sparsity_fraction": float,
          "quantizer": str, "per_channel": bool}


def configs_from_rows(df: pd.DataFrame) -> dict[str, LayerConfig]:
    """The per-layer configs of a table: every LayerConfig field the table has (a missing one keeps its default)."""
    out = {}
    for r in df.to_dict("records"):
        values = {}
        for f in CONFIG_FIELDS:
            if f in r:
                v = r[f]
                values[f] = _TYPES[f](v.item() if hasattr(v, "item") else v) if f in _TYPES else v
        cfg = LayerConfig(**values)
        cfg.check(f"layer {r['layer']!r}")
        out[r["layer"]] = cfg
    return out


def plan_from_configs(configs: dict[str, LayerConfig], model: str, name: str | None = None) -> Plan:
    return Plan.explicit(configs, model=model, name=name)


def summary(configs: dict[str, LayerConfig]) -> str:
    """One line for hover text: the distinct layer settings with counts, e.g. 'W4A4 x3, W8A8 x2'."""
    labels: dict[str, int] = {}
    for c in configs.values():
        labels[c.label()] = labels.get(c.label(), 0) + 1
    return ", ".join(f"{k} ×{n}" if n > 1 else k for k, n in labels.items())
