"""Vectorised costing for sweeps: many plans of one network at once, as (plans x layers) arrays.

Same model and same numbers as ``model.cost_plan`` (tests check equality), without notes.
Build a ``LayerTable`` once per network, give plans as ``PlanArrays`` (or ``encode_plans`` from
LayerConfig dicts), and ``cost_batch`` returns per-plan totals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from engine.cost.formulas import E_ADD_BIT_PJ, FLOAT
from engine.cost.geometry import KIND_GROUPS, REQUANT, _get, geometry
from engine.cost.profiles import BITS, NB, Profile, bit_index, load_profile

_KIND = {"conv2d": 0, "linear": 1, "lstm": 2, "gru": 3}


@dataclass
class LayerTable:
    """Static per-layer facts of one network, plus how widening maps onto its channel spaces."""

    names: list[str]
    kind: np.ndarray          # 0 conv2d, 1 linear, 2 lstm, 3 gru
    cin: np.ndarray           # base (unwidened) channels
    cout: np.ndarray
    kh: np.ndarray
    kw: np.ndarray
    groups: np.ndarray
    in_area: np.ndarray       # conv: in_h*in_w; else steps
    out_area: np.ndarray      # conv: out_h*out_w; else steps
    positions: np.ndarray
    bias: np.ndarray
    # widening: per layer, the space it reads/writes (-1: none) and the space's base size
    in_space: np.ndarray = field(default=None)
    out_space: np.ndarray = field(default=None)
    space_size: np.ndarray = field(default=None)     # indexed by dense space position
    space_producer: np.ndarray = field(default=None)  # first producing layer index, -1 if none
    space_fixed: np.ndarray = field(default=None)
    space_extra: list = field(default_factory=list)   # (space pos, other producer idx) pairs to agree
    in_rep: np.ndarray = field(default=None)
    signed_in: np.ndarray = field(default=None)       # input activations can be negative
    requant: np.ndarray = field(default=None)         # index into REQUANT (geometry's requant)
    pooled: np.ndarray = field(default=None)          # output max-pooled as the next layer's codes
    next_signed: np.ndarray = field(default=None)     # the next layer reads the output as signed codes
    group: np.ndarray = field(default=None)           # index into KIND_GROUPS (per-kind efficiency)

    @property
    def n(self) -> int:
        return len(self.names)

    @classmethod
    def from_layers(cls, layers: Sequence, spaces=None) -> "LayerTable":
        """From LayerInfo rows (or dicts); ``spaces`` (Topology.spaces or its dict list) enables widening."""
        geoms = [geometry(x) for x in layers]
        conv = [g.kind == "conv2d" for g in geoms]
        t = cls(
            names=[g.name for g in geoms],
            kind=np.array([_KIND[g.kind] for g in geoms]),
            cin=np.array([g.cin for g in geoms], dtype=np.int64),
            cout=np.array([g.cout for g in geoms], dtype=np.int64),
            kh=np.array([g.kh for g in geoms], dtype=np.int64),
            kw=np.array([g.kw for g in geoms], dtype=np.int64),
            groups=np.array([g.groups for g in geoms], dtype=np.int64),
            in_area=np.array([g.act_in // g.cin for g in geoms], dtype=np.int64),
            out_area=np.array([g.act_out // g.cout for g in geoms], dtype=np.int64),
            positions=np.array([g.positions for g in geoms], dtype=np.int64),
            bias=np.array([g.bias for g in geoms], dtype=bool),
            signed_in=np.array([g.signed_in for g in geoms], dtype=bool),
            requant=np.array([REQUANT.index(g.requant) for g in geoms], dtype=np.int64),
            pooled=np.array([g.pooled for g in geoms], dtype=bool),
            next_signed=np.array([g.next_signed for g in geoms], dtype=bool),
            group=np.array([KIND_GROUPS.index(g.group) for g in geoms], dtype=np.int64),
        )
        del conv
        if spaces is not None:
            t._attach_spaces(layers, spaces)
        return t

    @classmethod
    def from_topology(cls, topology) -> "LayerTable":
        """From a Topology object or its ``to_dict()``."""
        if isinstance(topology, Mapping):
            return cls.from_layers(topology["layers"], topology.get("spaces"))
        return cls.from_layers(topology.layers, topology.spaces)

    def _attach_spaces(self, layers, spaces) -> None:
        items = list(spaces.values()) if isinstance(spaces, Mapping) else list(spaces)
        sid = [_get(s, "id") for s in items]
        pos = {s: i for i, s in enumerate(sid)}
        index = {n: i for i, n in enumerate(self.names)}
        self.space_size = np.array([_get(s, "size") for s in items], dtype=np.int64)
        self.space_fixed = np.array([bool(_get(s, "fixed")) for s in items])
        prod, extra = [], []
        for i, s in enumerate(items):
            ps = [index[p] for p in _get(s, "producers") or [] if p in index]
            prod.append(ps[0] if ps else -1)
            extra += [(i, j) for j in ps[1:]]
        self.space_producer = np.array(prod, dtype=np.int64)
        self.space_extra = extra
        self.in_space = np.array([pos.get(_get(x, "in_space", -1), -1) for x in layers], dtype=np.int64)
        self.out_space = np.array([pos.get(_get(x, "out_space", -1), -1) for x in layers], dtype=np.int64)
        rep = np.ones(self.n, dtype=np.int64)
        has = self.in_space >= 0
        rep[has] = self.cin[has] // self.space_size[self.in_space[has]]
        self.in_rep = rep

    def widened(self, widen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cin, cout, valid) per plan from per-layer widen factors (the producer's factor sets a space)."""
        p = widen.shape[0]
        cin = np.broadcast_to(self.cin, (p, self.n)).copy()
        cout = np.broadcast_to(self.cout, (p, self.n)).copy()
        valid = np.ones(p, dtype=bool)
        if self.space_size is None:
            if np.any(widen != 1.0):
                raise ValueError("widening needs the network's channel spaces: build the LayerTable "
                                 "with from_topology()")
            return cin, cout, valid
        prod = self.space_producer
        k = np.where(prod >= 0, widen[:, np.maximum(prod, 0)], 1.0)          # (P, S)
        for s, j in self.space_extra:
            valid &= widen[:, j] == k[:, s]
        valid &= ~np.any((k != 1.0) & self.space_fixed, axis=1)
        size = np.maximum(self.space_size, np.floor(self.space_size * k + 0.5)).astype(np.int64)
        o, i = self.out_space, self.in_space
        cout[:, o >= 0] = size[:, o[o >= 0]]
        cin[:, i >= 0] = size[:, i[i >= 0]] * self.in_rep[i >= 0]
        return cin, cout, valid


@dataclass
class PlanArrays:
    """P plans over L layers. Bits are 1..8 or 32; nm_n/nm_m are 0 for no N:M pattern;
    density is the kept fraction (1 for dense, n/m for N:M, 1-f for unstructured)."""

    w_bits: np.ndarray
    a_bits: np.ndarray
    widen: np.ndarray
    nm_n: np.ndarray
    nm_m: np.ndarray
    density: np.ndarray

    @classmethod
    def uniform(cls, p: int, n_layers: int, w_bits=FLOAT, a_bits=FLOAT) -> "PlanArrays":
        shape = (p, n_layers)
        return cls(np.full(shape, w_bits), np.full(shape, a_bits), np.ones(shape), np.zeros(shape, int),
                   np.zeros(shape, int), np.ones(shape))


def encode_plans(table: LayerTable, plans: Sequence) -> PlanArrays:
    """PlanArrays from a list of {layer name: LayerConfig} dicts or Plan objects."""
    p, n = len(plans), table.n
    arr = PlanArrays(np.zeros((p, n), np.int64), np.zeros((p, n), np.int64), np.ones((p, n)),
                     np.zeros((p, n), np.int64), np.zeros((p, n), np.int64), np.ones((p, n)))
    for i, plan in enumerate(plans):
        configs = plan.resolve(table.names) if hasattr(plan, "resolve") else plan
        for j, name in enumerate(table.names):
            c = configs[name]
            arr.w_bits[i, j], arr.a_bits[i, j], arr.widen[i, j] = c.w_bits, c.a_bits, c.widen
            nm = c.nm
            if nm:
                arr.nm_n[i, j], arr.nm_m[i, j] = nm
            arr.density[i, j] = c.density
    return arr


@dataclass
class BatchCost:
    """Per-plan totals (arrays of length P); ``layer_time_s`` (P x L) when asked for."""

    profile: str
    batch: int
    throughput: np.ndarray
    latency_s: np.ndarray
    batch_time_s: np.ndarray
    energy_j: np.ndarray
    size_bytes: np.ndarray
    bops: np.ndarray
    macs: np.ndarray
    valid: np.ndarray
    layer_time_s: np.ndarray | None = None

    def to_frame(self):
        import pandas as pd
        return pd.DataFrame({k: getattr(self, k) for k in
                             ("throughput", "latency_s", "batch_time_s", "energy_j", "size_bytes", "bops", "macs",
                              "valid")})


def _np_tables(prof: Profile) -> dict:
    cached = getattr(prof, "_np_tables", None)
    if cached is None:
        t = prof.tables
        cached = {k: np.array(getattr(t, k), dtype=float) for k in
                  ("rate", "eff", "tile_k", "overhead", "emac", "w_store", "a_store")}
        cached["nm_ok"] = np.array(t.nm_ok, dtype=bool)
        cached["binary"] = np.array(t.binary, dtype=bool)
        cached["tile_k"] = cached["tile_k"].astype(np.int64)
        cached["nm_pairs"] = [tuple(map(int, p.split(":"))) for p in prof.nm_patterns]
        cached["kind_eff"] = np.array([prof.kind_eff[k] for k in KIND_GROUPS])
        prof._np_tables = cached
    return cached


def _bidx(bits: np.ndarray) -> np.ndarray:
    return np.where(bits == FLOAT, NB - 1, bits - 1)


def _ceil_div(a, b):
    return -(-a // b)


def cost_batch(table: LayerTable, plans: PlanArrays, profile, batch: int | None = None,
               keep_layers: bool = False) -> BatchCost:
    """Cost P plans at once. Plans whose widening the network cannot take get valid=False and NaN."""
    prof = load_profile(profile)
    b = int(batch or prof.batch)
    T = _np_tables(prof)
    wi, ai = _bidx(np.asarray(plans.w_bits)), _bidx(np.asarray(plans.a_bits))
    a_next = np.concatenate([ai[:, 1:], np.full((ai.shape[0], 1), NB - 1)], axis=1)
    cin, cout, valid = table.widened(np.asarray(plans.widen, dtype=float))
    kind = table.kind
    conv, lstm = kind == 0, (kind == 2) | (kind == 3)  # lstm: any recurrent layer
    sign = table.signed_in & (ai == bit_index(1))      # signed 1-bit activations (model.signed_binary)
    if prof.signed_binary_conv_bits:
        ai = np.where(sign & conv, bit_index(prof.signed_binary_conv_bits), ai)
    ac = ai      # the width the compute runs at (model.unfused)
    if prof.unfused_conv_bits:
        req = table.requant
        fused = (req == REQUANT.index("direct")) | ((req == REQUANT.index("after_bn")) & prof.folds_bn)
        if prof.clamps_signed:
            fused = fused & ~(table.next_signed & (a_next < bit_index(8)))
        uf = conv & (req != REQUANT.index("unknown")) & ~(fused & (a_next != NB - 1))
        ac = np.where(uf, bit_index(prof.unfused_conv_bits), ai)
    else:
        uf = np.zeros_like(conv)
    dw = conv & (table.groups > 1) & (table.groups == table.cin) & (table.groups == table.cout)
    g = np.where(dw, cin, table.groups)   # a widened depthwise layer keeps groups = channels
    gemm_n = np.where(kind == 2, 4 * cout, np.where(kind == 3, 3 * cout, cout))
    cin_g = np.where(conv, cin // g, np.where(lstm, cin + cout, cin))
    reduction = cin_g * table.kh * table.kw
    weights = gemm_n * reduction
    macs1 = (weights * table.positions).astype(float)
    act_in = (cin * table.in_area).astype(float)
    act_out = (cout * table.out_area).astype(float)
    density = np.asarray(plans.density, dtype=float)
    nm_n, nm_m = np.asarray(plans.nm_n), np.asarray(plans.nm_m)

    # sparse math path
    has_nm = nm_m > 0
    supported = np.zeros_like(has_nm)
    for n_, m_ in T["nm_pairs"]:
        supported |= (nm_n == n_) & (nm_m == m_)
    dim1 = np.where(conv, cin // g, cin)
    dim2 = np.where(lstm, cout, dim1)
    dims_ok = ((dim1 >= prof.nm_min_ch) & (dim1 % prof.nm_mult == 0)
               & (dim2 >= prof.nm_min_ch) & (dim2 % prof.nm_mult == 0))
    nm_used = has_nm & supported & T["nm_ok"][wi, ai] & dims_ok
    d = np.where(prof.skip_w & (density < 1.0) & ~nm_used, density, 1.0)
    if prof.skip_a:
        d = d * prof.act_density
    skip = np.where(d < 1.0, np.minimum(1.0, d / prof.skip_eff + prof.skip_idx), 1.0)
    d_exec = np.where(skip < 1.0, d, 1.0)

    rate, eff, tk, ovh = T["rate"][wi, ac], T["eff"][wi, ac], T["tile_k"][wi, ac], T["overhead"][wi, ac]
    eff = eff * T["kind_eff"][table.group]
    ng = gemm_n // g
    np_ = np.where(dw, gemm_n, g * _ceil_div(ng, prof.tile_n) * prof.tile_n).astype(float)
    khw = table.kh * table.kw
    if prof.k_mode == "cin":
        kt = np.minimum(khw * _ceil_div(cin_g, tk), _ceil_div(khw * cin_g, tk))
    else:
        kt = _ceil_div(khw * cin_g, tk)
    kp = np.where(dw, reduction, kt * tk).astype(float)   # depthwise: unpadded k x k per channel
    nm_div = np.where(nm_used, prof.nm_speedup * prof.nm_eff, 1.0)

    wbits = T["w_store"][wi]
    nm_bits = np.where(has_nm, nm_n / np.maximum(nm_m, 1) * (wbits + np.ceil(np.log2(np.maximum(nm_m, 1)))), wbits)
    bitmap = (density < 1.0) & (skip < 1.0) & prof.skip_w & ~nm_used & ("bitmap" in prof.formats)
    wbits_el = np.where(bitmap, np.minimum(wbits, 1.0 + density * wbits), wbits)
    if "nm" in prof.formats:
        wbits_el = np.where(nm_used, nm_bits, wbits_el)
    weight_bytes = weights * wbits_el / 8.0
    param_bytes = np.where(table.bias, 4.0 * gemm_n, 0.0)
    w_all = weight_bytes + param_bytes
    a_store_in, a_store_out = T["a_store"][ai], T["a_store"][a_next]

    if prof.host:   # host terms (model.host_terms), per layer call and per sample
        pos = table.positions
        h_layer = np.select([conv, lstm], [prof.host_layer["conv2d"], prof.host_layer["lstm"]],
                            prof.host_layer["linear"])
        h_fixed = h_layer + np.where(lstm, prof.host_step * pos, 0.0)
        q_el = np.where(ai == NB - 1, 0.0, act_in + np.where(lstm, act_out, 0.0))
        o_el = gemm_n * pos * np.where(lstm, 2, 1)
        i_el = np.where(conv & ~dw, pos * reduction, 0)
        h_out = np.select([conv, lstm], [prof.host_out["conv2d"], prof.host_out["lstm"]], prof.host_out["linear"])
        h_per = prof.host_quant * q_el + h_out * o_el + prof.host_im2col * i_el
        binary = T["binary"][wi, ai]
        h_fixed = h_fixed + np.where(binary, prof.host_binary, 0.0)
        h_per = h_per + np.where(binary, prof.host_binary_out * o_el, 0.0)
        if prof.host_unpack:
            h_fixed = h_fixed + np.where(T["w_store"][wi] < 8, prof.host_unpack * weights, 0.0)
        h_fixed = h_fixed + np.where(uf, prof.host_dequant * weights, 0.0)
        if prof.host_clip:
            h_fixed = h_fixed + np.where(ai < bit_index(8), prof.host_clip, 0.0)
        h_fixed = h_fixed + np.where(sign, prof.host_sign, 0.0)
        if prof.host_pool:
            h_per = h_per + np.where(table.pooled & (a_next != NB - 1),
                                     prof.host_pool * act_out * np.asarray(BITS, dtype=float)[a_next], 0.0)

    def times(bb: int):
        m = bb * table.positions
        mp = np.where(dw, m, _ceil_div(m, prof.tile_m) * prof.tile_m).astype(float)
        compute = mp * np_ * kp / (rate * eff) * skip / nm_div
        a_in = bb * act_in * a_store_in / 8.0
        a_out = bb * act_out * a_store_out / 8.0
        t_ws = w_all + a_in * (np.ceil(w_all / prof.w_buf) if prof.w_buf else 1.0)
        t_is = a_in + w_all * (np.ceil(a_in / prof.a_buf) if prof.a_buf else 1.0)
        dram = (np.minimum(t_ws, t_is) + a_out) * prof.traffic_factor
        memory = dram / (prof.bw * prof.mem_eff) if prof.bw else np.zeros_like(dram)
        ov = ovh + h_fixed + bb * h_per if prof.host else ovh
        if prof.combine == "sum":
            t = compute + memory + ov
        else:
            t = np.maximum(compute, memory) + ov
        return compute, t, dram, a_in, a_out

    compute, t, dram, a_in, a_out = times(b)
    batch_time = t.sum(axis=1)
    latency = batch_time if b == 1 else times(1)[1].sum(axis=1)

    macs = macs1 * b
    macs_exec = macs * d_exec * np.where(nm_used, nm_n / np.maximum(nm_m, 1), 1.0)
    e_mac = 0.0
    if prof.mac_on:
        e_mac = T["emac"][wi, ai] + prof.mac_scale * E_ADD_BIT_PJ * np.ceil(np.log2(np.maximum(reduction, 1)))
    energy = (macs_exec * e_mac + dram * 8 * prof.dram_pj + (w_all + a_in + a_out) * 8 * prof.sram_pj) * 1e-12 \
        + prof.compute_w * compute + prof.static_w * t
    wb = np.asarray(plans.w_bits, dtype=float)
    ab = np.asarray(plans.a_bits, dtype=float)
    out = BatchCost(
        profile=prof.name, batch=b,
        throughput=np.where(batch_time > 0, b / np.where(batch_time > 0, batch_time, 1.0), math.inf),
        latency_s=latency, batch_time_s=batch_time, energy_j=energy.sum(axis=1) / b,
        size_bytes=w_all.sum(axis=1), bops=(macs * wb * ab).sum(axis=1) / b, macs=macs.sum(axis=1) / b,
        valid=valid, layer_time_s=t if keep_layers else None)
    if not valid.all():
        for k in ("throughput", "latency_s", "batch_time_s", "energy_j", "size_bytes", "bops", "macs"):
            v = getattr(out, k).astype(float)
            v[~valid] = np.nan
            setattr(out, k, v)
    return out
