"""Layer shapes as the cost model needs them, from LayerInfo objects or their dicts (no torch).

The formulas mirror engine.plans.graph.LayerInfo's properties so a dict from ``Topology.to_dict()``
costs exactly like the object it came from.
"""
from __future__ import annotations

from typing import NamedTuple


class Geom(NamedTuple):
    """One (already widened) layer: GEMM view plus activation counts, per sample."""

    name: str
    kind: str
    cin: int
    cout: int
    kh: int
    kw: int
    groups: int
    positions: int       # GEMM M per sample
    gemm_n: int
    cin_g: int           # reduction length per kernel position (K tiling)
    reduction: int       # GEMM K
    weights: int
    macs: int            # per sample
    act_in: int
    act_out: int
    bias: bool
    nm_dims: tuple
    signed_in: bool = False  # its input activations can be negative (signed codes)
    requant: str = "unknown"  # LayerInfo.requantized: "direct", "after_bn", "none", "unknown"
    pooled: bool = False      # LayerInfo.pooled: its output is max-pooled as the next layer's codes
    next_signed: bool = False  # LayerInfo.next_signed: the next layer reads its output as signed codes

    @property
    def depthwise(self) -> bool:
        """A depthwise convolution (groups = in = out channels): a k x k reduction per channel."""
        return self.kind == "conv2d" and self.groups > 1 and self.groups == self.cin == self.cout

    @property
    def group(self) -> str:
        """The layer's kind for a per-kind compute efficiency (one of KIND_GROUPS)."""
        if self.kind in ("lstm", "gru"):
            return "recurrent"
        if self.kind == "linear":
            return "linear"
        if self.depthwise:
            return "depthwise"
        return "pointwise" if self.kh * self.kw == 1 else "conv"


KIND_GROUPS = ("conv", "depthwise", "pointwise", "linear", "recurrent")
REQUANT = ("unknown", "direct", "after_bn", "none")   # Geom.requant's values (LayerInfo.requantized)


def _get(layer, key, default=None):
    if isinstance(layer, dict):
        return layer.get(key, default)
    return getattr(layer, key, default)


def geometry(layer) -> Geom:
    """Geom of a LayerInfo (or its ``to_dict()``); widening must already be applied."""
    if isinstance(layer, dict):
        kind = layer.get("kind")
        cin, cout = int(layer["in_channels"]), int(layer["out_channels"])
        kh, kw = layer.get("kernel", (1, 1))
        g = int(layer.get("groups", 1) or 1)
        oh, ow = layer.get("out_hw", (1, 1))
        ih, iw = layer.get("in_hw", (1, 1))
        steps = int(layer.get("steps", 1))
        name, bias = layer.get("name"), layer.get("bias", True)
    else:
        kind, cin, cout = layer.kind, layer.in_channels, layer.out_channels
        kh, kw = layer.kernel
        g = layer.groups or 1
        oh, ow = layer.out_hw
        ih, iw = layer.in_hw
        steps, name, bias = layer.steps, layer.name, layer.bias
    signed = _get(layer, "signed_input")   # unknown (an older topology): the layer reading the data is
    signed = _get(layer, "is_input", False) if signed is None else signed
    requant = _get(layer, "requantized", "unknown")
    pooled = bool(_get(layer, "pooled", False))
    next_signed = bool(_get(layer, "next_signed", False))
    positions = oh * ow * steps
    if kind == "conv2d":
        reduction = cin // g * kh * kw
        cin_g = cin // g
        act_in, act_out = cin * ih * iw, cout * oh * ow
        nm_dims = (cin // g,)
    elif kind in ("lstm", "gru"):
        reduction = cin + cout
        cin_g, kh, kw, g = reduction, 1, 1, 1
        act_in, act_out = cin * steps, cout * steps
        nm_dims = (cin, cout)
    elif kind == "linear":
        reduction = cin
        cin_g, kh, kw, g = cin, 1, 1, 1
        act_in, act_out = cin * steps, cout * steps
        nm_dims = (cin,)
    else:
        raise ValueError(f"layer {name!r}: unknown kind {kind!r}")
    gemm_n = {"lstm": 4, "gru": 3}.get(kind, 1) * cout
    weights = gemm_n * reduction
    return Geom(str(name), kind, cin, cout, kh, kw, g, positions, gemm_n, cin_g, reduction,
                weights, weights * positions, act_in, act_out, bool(bias), nm_dims, bool(signed), str(requant),
                pooled, next_signed)
