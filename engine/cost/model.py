"""Cost of one plan on one profile, layer by layer (the readable reference path).

Per layer: a roofline ``time = max(compute, memory) + overhead`` (or the profile's 'sum' rule)
with a precision-dependent compute rate, array-tiling padding, sparse/zero-skipping rules, a
capacity-aware DRAM traffic estimate and an additive energy model (costmodel.md 2.4-2.7).
Every layer carries a note saying what the target really runs and what it falls back on.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

from engine.cost.formulas import E_ADD_BIT_PJ, FLOAT, k_tiles, nm_bits_per_weight
from engine.cost.geometry import Geom, geometry
from engine.cost.profiles import BITS, Profile, bit_index, load_profile


@dataclass(slots=True)
class LayerCost:
    """One layer's cost. Treat as read-only: reports share these objects through the per-profile memo."""

    name: str
    kind: str
    exec: str                 # what the target runs, e.g. 'INT4', 'W2A2'
    macs: int                 # at the cost batch
    bops: float               # macs * w_bits * a_bits (float counted as 32)
    macs_exec: float          # MACs the hardware actually performs (skipped zeros removed)
    peak_macs_per_s: float    # peak math rate used for this layer (x2 on qualifying 2:4 layers)
    weight_bytes: float       # weight tensor incl. sparse metadata
    param_bytes: float        # biases (32-bit)
    act_in_bytes: float
    act_out_bytes: float
    dram_bytes: float
    compute_s: float
    memory_s: float
    overhead_s: float
    time_s: float
    energy_j: float
    bound: str                # 'compute' | 'memory' | 'overhead'
    note: str


@dataclass
class CostReport:
    profile: str
    batch: int
    layers: list[LayerCost]
    throughput: float         # inferences / s at ``batch``
    latency_s: float          # one inference at batch 1
    batch_time_s: float       # one batch of ``batch``
    energy_j: float           # per inference
    size_bytes: float         # weights + metadata + biases
    bops: float               # per inference
    macs: float               # per inference
    title: str = ""
    source: str = ""

    @property
    def shares(self) -> list[float]:
        """Each layer's share of the batch time."""
        total = self.batch_time_s
        return [x.time_s / total if total > 0 else 0.0 for x in self.layers]

    def layer_dicts(self) -> list[dict]:
        return [dict(asdict(x), share=s) for x, s in zip(self.layers, self.shares)]

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("profile", "title", "source", "batch", "throughput", "latency_s",
                                           "batch_time_s", "energy_j", "size_bytes", "bops", "macs")}
        d["layers"] = self.layer_dicts()
        return d

    def to_frame(self):
        import pandas as pd
        return pd.DataFrame(self.layer_dicts())


def _nm_eligibility(g: Geom, cfg, prof: Profile, wi: int, ai: int) -> tuple[bool, str]:
    """Does this layer run on the sparse math path? (False, reason) when it does not."""
    pat = cfg.sparsity
    if not prof.nm_patterns:
        return False, f"{pat} not used: {prof.name} has no sparse math"
    if pat not in prof.nm_patterns:
        return False, f"{pat} not used: {prof.name} accelerates {', '.join(prof.nm_patterns)} only"
    if not prof.tables.nm_ok[wi][ai]:
        return False, f"{pat} not used: no sparse path at {prof.exec_label(cfg.w_bits, cfg.a_bits)}"
    for d in g.nm_dims:
        if d < prof.nm_min_ch:
            return False, f"{pat} not used: input channels {d} < {prof.nm_min_ch}"
        if d % prof.nm_mult:
            return False, f"{pat} not used: input channels {d} not a multiple of {prof.nm_mult}"
    return True, ""


_CFG_CACHE: dict = {}


def _cfg_facts(cfg) -> tuple:
    """(w index, a index, (n, m) or None, density) of a LayerConfig, memoised (regex-free on repeat)."""
    try:
        return _CFG_CACHE[cfg]
    except (KeyError, TypeError):
        pass
    facts = (bit_index(cfg.w_bits), bit_index(cfg.a_bits), cfg.nm, cfg.density)
    if len(_CFG_CACHE) > 100_000:
        _CFG_CACHE.clear()
    try:
        _CFG_CACHE[cfg] = facts
    except TypeError:
        pass
    return facts


_A1 = bit_index(1)


def signed_binary(g: Geom, ai: int, prof: Profile) -> tuple[bool, int]:
    """(signed 1-bit activations?, the activation index the layer executes at): a convolution's
    {-1, +1} activation codes run at ``compute.signed_binary_conv_bits`` where the profile names it."""
    sign = g.signed_in and ai == _A1
    if sign and g.kind == "conv2d" and prof.signed_binary_conv_bits:
        return True, bit_index(prof.signed_binary_conv_bits)
    return sign, ai


_FLOAT = bit_index(FLOAT)
_INT8 = bit_index(8)


def unfused(g: Geom, ni: int, prof: Profile) -> bool:
    """A convolution the runtime cannot fuse into an integer kernel (``compute.unfused_conv_bits``): its
    output is not requantized for the next layer, directly or (``compute.folds_bn``) after a batch norm,
    or (``compute.clamps_signed_in_float``) the next layer's signed narrow codes are clamped in float first."""
    if not prof.unfused_conv_bits or g.kind != "conv2d" or g.requant == "unknown":
        return False
    fused = g.requant == "direct" or (g.requant == "after_bn" and prof.folds_bn)
    clamped = prof.clamps_signed and g.next_signed and ni < _INT8
    return not fused or clamped or ni == _FLOAT


def pooled_bits(g: Geom, ni: int, prof: Profile) -> int:
    """The width of the next layer's codes a max-pool takes this layer's output as (host.pool_s), 0 if none."""
    return BITS[ni] if prof.host_pool and g.pooled and ni != _FLOAT else 0


def _numbers(g: Geom, wi: int, ai: int, nm, density: float, ni: int, prof: Profile, batch: int) -> tuple:
    """The numeric part of one layer's cost (no strings): see LayerCost for the fields."""
    sign, ai = signed_binary(g, ai, prof)
    uf = unfused(g, ni, prof)
    ac = bit_index(prof.unfused_conv_bits) if uf else ai      # the width the compute runs at
    t = prof.tables
    rate, eff, tk, ovh = t.rate[wi][ac], t.eff[wi][ac], t.tile_k[wi][ac], t.overhead[wi][ac]

    # sparsity: does the sparse math path run; what density the datapath sees
    nm_used = bool(nm) and _nm_ok(g, nm, prof, wi, ai)
    d = density if (prof.skip_w and density < 1.0 and not nm_used) else 1.0
    if prof.skip_a:
        d *= prof.act_density
    skip = min(1.0, d / prof.skip_eff + prof.skip_idx) if d < 1.0 else 1.0
    d_exec = d if skip < 1.0 else 1.0      # skipping engages only where it pays

    # compute: padded GEMM on the array at the executed precision; a depthwise layer is no GEMM:
    # each channel's k x k reduction runs unpadded (its time then follows the bits it moves)
    tm, tn = prof.tile_m, prof.tile_n
    if g.depthwise:
        np_, kp, tm = g.gemm_n, g.reduction, 1
    else:
        np_ = g.groups * (-(-(g.gemm_n // g.groups) // tn)) * tn
        kp = k_tiles(g.cin_g, g.kh, g.kw, tk, prof.k_mode) * tk
    per_row = np_ * kp / (rate * eff * prof.kind_eff[g.group]) * skip
    if nm_used:
        per_row /= prof.nm_speedup * prof.nm_eff
    peak = rate * prof.nm_speedup if nm_used else rate

    # memory: stored bits, capacity-aware traffic (weights once per batch)
    wbits = t.w_store[wi]
    if nm_used and "nm" in prof.formats:
        wbits_el = nm_bits_per_weight(wbits, *nm)
    elif density < 1.0 and skip < 1.0 and prof.skip_w and not nm_used and "bitmap" in prof.formats:
        wbits_el = min(wbits, 1.0 + density * wbits)   # compressed only where the skipping path reads it
    else:
        wbits_el = wbits
    weight_bytes = g.weights * wbits_el / 8.0
    param_bytes = 4.0 * g.gemm_n if g.bias else 0.0
    w_all = weight_bytes + param_bytes
    in1 = g.act_in * t.a_store[ai] / 8.0
    out1 = g.act_out * t.a_store[ni] / 8.0
    w_tiles = math.ceil(w_all / prof.w_buf) if prof.w_buf else 1
    bw = prof.bw * prof.mem_eff if prof.bw else 0.0
    a_buf, tf, summed = prof.a_buf, prof.traffic_factor, prof.combine == "sum"
    h_fixed, h_per = host_terms(g, wi, ai, prof, sign, uf, ni) if prof.host else (0.0, 0.0)
    out = []
    for bb in ((batch, 1) if batch != 1 else (1,)):
        compute = -(-(bb * g.positions) // tm) * tm * per_row
        a_in, a_out = bb * in1, bb * out1
        t_ws = w_all + a_in * w_tiles
        t_is = a_in + w_all * (math.ceil(a_in / a_buf) if a_buf else 1)
        dram = ((t_ws if t_ws < t_is else t_is) + a_out) * tf
        memory = dram / bw if bw else 0.0
        ov = ovh + h_fixed + bb * h_per if prof.host else ovh
        time = compute + memory + ov if summed else (compute if compute > memory else memory) + ov
        out.append((compute, memory, time, dram, a_in, a_out, ov))
    compute_s, memory_s, time_s, dram, a_in, a_out, ovh = out[0]
    time1 = out[-1][2]

    # energy: MACs actually executed, bits moved, power x time
    macs = g.macs * batch
    macs_exec = macs * d_exec * (nm[0] / nm[1] if nm_used else 1.0)
    e_mac = 0.0
    if prof.mac_on:
        e_mac = t.emac[wi][ai] + prof.mac_scale * E_ADD_BIT_PJ * math.ceil(math.log2(max(g.reduction, 1)))
    energy = (macs_exec * e_mac + dram * 8 * prof.dram_pj + (w_all + a_in + a_out) * 8 * prof.sram_pj) * 1e-12 \
        + prof.compute_w * compute_s + prof.static_w * time_s
    return (macs, macs_exec, peak, weight_bytes, param_bytes, a_in, a_out, dram, compute_s, memory_s, ovh, time_s,
            energy, time1, nm_used, d_exec, skip)


def host_terms(g: Geom, wi: int, ai: int, prof: Profile, sign: bool = False,
               unfused_conv: bool = False, ni: int = _FLOAT) -> tuple[float, float]:
    """(fixed seconds per layer call, seconds per sample) of the profile's host terms: the per-kind
    call cost plus per-time-step cost (LSTM), and per sample the activation quantization (elements
    entering the GEMMs; an LSTM re-quantizes h every step), the rescale/epilogue (GEMM output
    elements, both LSTM GEMMs) and the im2col gather (convolutions); 1-bit weights add the sum
    correction of their {-1, +1} codes; weights stored below 8 bits add their per-call unpacking,
    those of an unfused convolution (``unfused_conv``) their dequantization (host.dequant_s),
    activations below 8 bits their clamp (host.clip_s), signed 1-bit activations their {-1, +1}
    codes (host.sign_s; ``sign``); an output max-pooled as the next layer's ``ni``-bit codes, per
    element and bit (host.pool_s)."""
    lstm = g.kind in ("lstm", "gru")  # recurrent: per-step calls, hidden state re-quantized each step
    fixed = prof.host_layer.get("lstm" if lstm else g.kind, 0.0) + (prof.host_step * g.positions if lstm else 0.0)
    q_el = 0 if ai == 8 else g.act_in + (g.act_out if lstm else 0)
    o_el = g.gemm_n * g.positions * (2 if lstm else 1)
    i_el = g.positions * g.reduction if g.kind == "conv2d" and not g.depthwise else 0  # direct kernel: no im2col
    per = prof.host_quant * q_el + prof.host_out["lstm" if lstm else g.kind] * o_el + prof.host_im2col * i_el
    if prof.tables.binary[wi][ai]:
        fixed += prof.host_binary
        per += prof.host_binary_out * o_el
    if prof.host_unpack and prof.tables.w_store[wi] < 8:
        fixed += prof.host_unpack * g.weights
    if unfused_conv:
        fixed += prof.host_dequant * g.weights
    if prof.host_clip and ai < bit_index(8):
        fixed += prof.host_clip
    if sign:
        fixed += prof.host_sign
    per += prof.host_pool * g.act_out * pooled_bits(g, ni, prof)
    return fixed, per


def _nm_ok(g: Geom, nm, prof: Profile, wi: int, ai: int) -> bool:
    if f"{nm[0]}:{nm[1]}" not in prof.nm_patterns or not prof.tables.nm_ok[wi][ai]:
        return False
    return all(d >= prof.nm_min_ch and d % prof.nm_mult == 0 for d in g.nm_dims)


def _note(g: Geom, cfg, prof: Profile, wi: int, ai: int, nums: tuple, bound: str, ni: int) -> str:
    """What the target really runs for this layer and what it falls back on."""
    t = prof.tables
    nm_used, d_exec, skip = nums[14], nums[15], nums[16]
    _, _, nm, density = _cfg_facts(cfg)
    w, a = cfg.w_bits, cfg.a_bits
    we, ae = t.w_exec[wi][ai], t.a_exec[wi][ai]
    label = t.label[wi][ai]
    msgs = []
    if FLOAT in (w, a) and prof.float_bits != FLOAT:
        msgs.append(f"float runs as {prof.float_bits}-bit")
    if prof.klass == "fixed" and FLOAT not in (w, a) and we > max(w, a):
        msgs.append(f"W{w}A{a} runs as {label}"
                    + (f" (no gain below INT{prof.min_width})" if max(w, a) < prof.min_width else ""))
    elif prof.klass == "fusion" and FLOAT not in (w, a) and (we != w or ae != a):
        msgs.append(f"W{w}A{a} runs at W{we}A{ae} speed")
    elif prof.klass == "lut" and FLOAT not in (w, a) and we == prof.float_bits:
        msgs.append(f"no W{w}A{a} kernel: runs in float")
    sign, ax = signed_binary(g, ai, prof)
    if ax != ai:
        msgs.append("signed 1-bit activations run in float" if prof.signed_binary_conv_bits == FLOAT else
                    f"signed 1-bit activations run as {prof.signed_binary_conv_bits}-bit {{-1, +1}} codes")
    elif sign and prof.host_sign:
        msgs.append("signed 1-bit activations: {-1, +1} codes")
    if unfused(g, ni, prof):
        msgs.append("not fused: runs in float" if prof.unfused_conv_bits == FLOAT
                    else f"not fused: runs at {prof.unfused_conv_bits} bits")
    if pooled_bits(g, ni, prof):
        msgs.append(f"max-pooled as the next layer's {pooled_bits(g, ni, prof)}-bit codes (slower the wider)")
    if g.depthwise:
        msgs.append(f"depthwise: {g.kh}x{g.kw} reduction per channel, no GEMM padding")
    if nm:
        if nm_used:
            msgs.append(f"{cfg.sparsity} sparse math (x{prof.nm_speedup:g} peak)")
        elif prof.skip_w and skip < 1.0:
            msgs.append(f"{cfg.sparsity} skipped as unstructured zeros")
        else:
            msgs.append(_nm_eligibility(g, cfg, prof, wi, ai)[1])
    if skip < 1.0:
        msgs.append(f"zero-skipping: {d_exec:.0%} of MACs effectual, time x{skip:.2f}")
    elif density < 1.0 and not nm_used and prof.skip_w:
        msgs.append(f"sparsity not exploited: density {density:.0%} too high for skipping "
                    f"(needs < {prof.skip_eff * (1 - prof.skip_idx):.0%})")
    elif density < 1.0 and not nm:
        msgs.append(f"unstructured sparsity not exploited: {prof.name} runs it dense")
    msgs.append(f"{bound}-bound")
    return "; ".join(msgs)


def _layer(g: Geom, cfg, ni: int, prof: Profile, batch: int, notes: bool = True) -> tuple[LayerCost, float]:
    """One layer's cost at ``batch`` and its time at batch 1, memoised per profile: a plan edit in
    the dashboard re-costs only the layers that changed (the per-layer lookup table of costmodel.md 2.9)."""
    memo = prof.memo
    key = (g, cfg, ni, batch, notes)
    try:
        return memo[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable config object: compute without the memo
        return _layer_uncached(g, cfg, ni, prof, batch, notes)
    out = _layer_uncached(g, cfg, ni, prof, batch, notes)
    if len(memo) > 200_000:
        memo.clear()
    memo[key] = out
    return out


def _layer_uncached(g: Geom, cfg, ni: int, prof: Profile, batch: int, notes: bool) -> tuple[LayerCost, float]:
    wi, ai, nm, density = _cfg_facts(cfg)
    nums = _numbers(g, wi, ai, nm, density, ni, prof, batch)
    (macs, macs_exec, peak, weight_bytes, param_bytes, a_in, a_out, dram, compute_s, memory_s, ovh, time_s,
     energy, time1) = nums[:14]
    bound = "overhead" if ovh > max(compute_s, memory_s) else ("memory" if memory_s > compute_s else "compute")
    note = _note(g, cfg, prof, wi, ai, nums, bound, ni) if notes else ""
    bops = float(macs) * (FLOAT if cfg.w_bits == FLOAT else cfg.w_bits) * (FLOAT if cfg.a_bits == FLOAT else cfg.a_bits)
    return LayerCost(g.name, g.kind, prof.tables.label[wi][ai], macs, bops, macs_exec, peak, weight_bytes,
                     param_bytes, a_in, a_out, dram, compute_s, memory_s, ovh, time_s, energy, bound, note), time1


def _aligned(layers: Sequence, configs) -> tuple[list[Geom], list]:
    geoms = [x if isinstance(x, Geom) else geometry(x) for x in layers]
    if isinstance(configs, Mapping):
        missing = [g.name for g in geoms if g.name not in configs]
        if missing:
            from engine.plans.plan import PlanError
            raise PlanError(f"no config for layer {missing[0]!r}")
        cfgs = [configs[g.name] for g in geoms]
    else:
        cfgs = list(configs)
        if len(cfgs) != len(geoms):
            raise ValueError(f"{len(cfgs)} configs for {len(geoms)} layers")
    return geoms, cfgs


def cost_plan(layers: Sequence, configs, profile, batch: int | None = None, notes: bool = True) -> CostReport:
    """Cost a plan: ``layers`` are widened LayerInfo rows (or dicts, or Geom), ``configs`` maps layer
    name -> LayerConfig (or is a list aligned with ``layers``), ``profile`` a Profile or name.

    Layer i writes its output at layer i+1's activation bits (the last layer at the float width).
    """
    prof = load_profile(profile)
    b = int(batch or prof.batch)
    if b < 1:
        raise ValueError("batch must be >= 1")
    geoms, cfgs = _aligned(layers, configs)
    nexts = [bit_index(c.a_bits) for c in cfgs[1:]] + [bit_index(FLOAT)]
    pairs = [_layer(g, c, an, prof, b, notes) for g, c, an in zip(geoms, cfgs, nexts)]
    rows = [r for r, _ in pairs]
    batch_time = sum(r.time_s for r in rows)
    latency = sum(t1 for _, t1 in pairs)
    return CostReport(
        profile=prof.name, batch=b, layers=rows,
        throughput=b / batch_time if batch_time > 0 else math.inf,
        latency_s=latency, batch_time_s=batch_time,
        energy_j=sum(r.energy_j for r in rows) / b,
        size_bytes=sum(r.weight_bytes + r.param_bytes for r in rows),
        bops=sum(r.bops for r in rows) / b, macs=sum(r.macs for r in rows) / b,
        title=prof.title, source=prof.source)


def cost_topology(topology, configs: Mapping, profile, batch: int | None = None) -> CostReport:
    """Check ``configs`` against a Topology, widen its layers, and cost them."""
    factors = topology.check(configs)
    return cost_plan(topology.widened(configs, factors), configs, profile, batch)


def layer_times(layers: Iterable, configs, profile, batch: int | None = None) -> dict[str, float]:
    """Predicted seconds per layer (name -> time), for comparing with measurements."""
    rep = cost_plan(list(layers), configs, profile, batch, notes=False)
    return {r.name: r.time_s for r in rep.layers}
