"""The plan as data another tool reads: a per-layer CSV table and a compact JSON mapping."""
from __future__ import annotations

import csv
import io
import json

from engine.plans.graph import Topology
from engine.plans.plan import FLOAT_BITS, LayerConfig, Plan

MAPPING_FORMAT = "bitscape-plan-map"
MAPPING_VERSION = 1

COLUMNS = ("layer", "kind", "w_bits", "a_bits", "quantizer", "per_channel", "widen", "sparsity",
           "sparsity_fraction", "density", "in_channels", "out_channels", "widened_in_channels",
           "widened_out_channels", "weights", "macs", "label")


def resolve(plan: Plan, topology: Topology) -> tuple[dict[str, LayerConfig], dict[int, float]]:
    """Per-layer configs and channel-space widening factors (a bad plan raises PlanError)."""
    configs = plan.resolve(topology.names)
    return configs, topology.check(configs)


def rows(plan: Plan, topology: Topology) -> list[dict]:
    """One row per quantizable layer, in network order: its resolved config and shapes."""
    configs, factors = resolve(plan, topology)
    out = []
    wide = {w.name: w for w in topology.widened(configs, factors)}
    for info in topology.layers:
        c = configs[info.name]
        win, wout = wide[info.name].in_channels, wide[info.name].out_channels
        out.append({"layer": info.name, "kind": info.kind,
                    "w_bits": c.w_bits, "a_bits": c.a_bits, "quantizer": c.quantizer,
                    "per_channel": c.per_channel, "widen": c.widen, "sparsity": c.sparsity,
                    "sparsity_fraction": c.sparsity_fraction, "density": c.density,
                    "in_channels": info.in_channels, "out_channels": info.out_channels,
                    "widened_in_channels": win, "widened_out_channels": wout,
                    "weights": info.weights, "macs": info.macs, "label": c.label()})
    return out


def table_csv(plan: Plan, topology: Topology) -> str:
    """The per-layer table as CSV text (header + one line per layer; 32 bits means float)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows(plan, topology):
        w.writerow({k: (str(v).lower() if isinstance(v, bool) else v) for k, v in r.items()})
    return buf.getvalue()


def mapping(plan: Plan, topology: Topology, model_id: str | None = None, dataset_id: str | None = None) -> dict:
    """Layer name -> full resolved config (every field, no defaults or patterns to apply)."""
    configs, _ = resolve(plan, topology)
    return {"format": MAPPING_FORMAT, "version": MAPPING_VERSION, "model": model_id, "dataset": dataset_id,
            "plan_hash": plan.digest(), "float_bits": FLOAT_BITS,
            "layers": {n: configs[n].to_dict() for n in topology.names}}


def mapping_json(plan: Plan, topology: Topology, model_id: str | None = None, dataset_id: str | None = None) -> str:
    return json.dumps(mapping(plan, topology, model_id, dataset_id), indent=2) + "\n"
