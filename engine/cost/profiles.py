"""Accelerator profiles: JSON data files (data/profiles/*.json), validated, compiled into tables.

A profile names its compute class (fixed-width units, bit-serial, Bit Fusion, or a measured
lookup table), its sparsity support, memory system, per-layer overhead and energy terms, and
cites its source. ``load_profile`` checks the file and compiles 9x9 tables indexed by
(weight bits, activation bits) -- bits 1..8 at index 0..7, float at index 8 -- so a plan costs
a handful of lookups per layer (the HAQ lookup-table structure, costmodel.md 2.9).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from engine.assets import data_dir
from engine.cost.formulas import FLOAT, bitfusion_perf_factor, mac_energy_pj, round_up_to
from engine.cost.geometry import KIND_GROUPS
from engine.errors import UserError

BITS = tuple(range(1, 9)) + (FLOAT,)       # plan bit choices, in table order
NB = len(BITS)
SHIPPED_DIR = data_dir() / "profiles"
ENV_PATH = "BITSCAPE_PROFILE_PATH"
CLASSES = ("fixed", "bitserial", "fusion", "lut")


class ProfileError(UserError):
    """A profile file is missing or malformed; the message names the file and the field."""


def bit_index(bits: int) -> int:
    """Table index of a plan bit-width (1..8 -> 0..7, 32 -> 8)."""
    return 8 if bits == FLOAT else bits - 1


_pos = {"type": "number", "exclusiveMinimum": 0}
_nonneg = {"type": "number", "minimum": 0}
_frac = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
_width_map = {"type": "object", "patternProperties": {"^([0-9]+|default)$": _pos}, "additionalProperties": False,
              "minProperties": 1}
# efficiencies scale a peak rate; a fit may find the device faster than the base (> 1), so no cap at 1
_eff = {"oneOf": [_pos, {"type": "object", "patternProperties": {"^([0-9]+|default)$": _pos},
                          "additionalProperties": False, "minProperties": 1}]}

_kind_map = {"type": "object", "additionalProperties": False,
             "properties": {"linear": _nonneg, "conv2d": _nonneg, "lstm": _nonneg}}
KINDS = ("conv2d", "linear", "lstm")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "title", "source", "status", "compute"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]*$"},
        "title": {"type": "string", "minLength": 1},
        "source": {"type": "string", "minLength": 10},
        "status": {"enum": ["verified", "derived", "assumed", "fitted"]},
        "target": {"enum": ["agnostic", "asic", "fpga", "gpu", "cpu"]},
        "notes": {"type": "string"},
        "provenance": {"type": "object", "additionalProperties": {"type": "string"}},
        "batch": {"type": "integer", "minimum": 1},
        "combine": {"enum": ["max", "sum"]},
        "fit": {"type": "object"},
        "compute": {
            "type": "object",
            "required": ["class", "float_bits"],
            "additionalProperties": False,
            "properties": {
                "class": {"enum": list(CLASSES)},
                "float_bits": {"type": "integer", "minimum": 8, "maximum": 32},
                "rates": _width_map,
                "binary_macs_per_s": _pos,
                "serial": {"type": "array", "items": {"enum": ["w", "a"]}, "uniqueItems": True},
                "macs_per_s_8bit": _pos,
                # fixed: which operand's plan width picks the INT unit (default: the wider of the two),
                # and plan widths that run on a unit other than the next wider one (a runtime's rule)
                "operand": {"enum": ["max", "w", "a"]},
                "width_map": {"type": "object", "patternProperties": {"^[1-8]$": {"type": "integer", "minimum": 1,
                                                                                   "maximum": 32}},
                              "additionalProperties": False},
                "table": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["w", "a", "macs_per_s"], "additionalProperties": False,
                    "properties": {"w": {"type": "integer", "minimum": 1, "maximum": 8},
                                   "a": {"type": "integer", "minimum": 1, "maximum": 8},
                                   "macs_per_s": _pos, "overhead_s": _nonneg, "kernel": {"type": "string"}}}},
                "float_macs_per_s": _pos,
                "float_overhead_s": _nonneg,
                "efficiency": _eff,
                "overhead_s": _nonneg,
                "tile": {"type": "object", "additionalProperties": False, "properties": {
                    "m": {"type": "integer", "minimum": 1}, "n": {"type": "integer", "minimum": 1},
                    "k": {"oneOf": [{"type": "integer", "minimum": 1}, _width_map]},
                    "k_mode": {"enum": ["reduction", "cin"]}}},
                "storage_widths": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 32},
                                   "minItems": 1},
                # a convolution whose 1-bit activations are signed ({-1, +1}) runs them as codes of this
                # many bits (the packed deployment: 2, no {0, 1} rewrite on the im2col path)
                "signed_binary_conv_bits": {"enum": [1, 2, 3, 4, 5, 6, 7, 8, 32]},
                # an integer runtime fuses a convolution only when its output is requantized for the
                # next layer (analyze(): LayerInfo.requantized); the others run at this width (32: float)
                "unfused_conv_bits": {"enum": [1, 2, 3, 4, 5, 6, 7, 8, 32]},
                # whether the runtime's model has batch norms folded into the convolutions before them
                # (a batch norm between a convolution and the requantization stops fusion otherwise)
                "folds_bn": {"type": "boolean"},
                # whether the runtime's model clamps signed activations narrower than 8 bits in float
                # before their QuantizeLinear (the integer export): the convolution producing them is then
                # not fused
                "clamps_signed_in_float": {"type": "boolean"},
                # compute efficiency per layer kind, on top of the per-width one (default 1)
                "kind_efficiency": {"type": "object", "additionalProperties": False,
                                    "properties": {k: _pos for k in KIND_GROUPS}},
            },
        },
        "sparsity": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "nm": {"type": "object", "additionalProperties": False,
                       "required": ["patterns", "speedup"],
                       "properties": {"patterns": {"type": "array", "items": {"type": "string",
                                                                               "pattern": "^[0-9]+:[0-9]+$"}},
                                      "speedup": {"type": "number", "minimum": 1},
                                      "efficiency": _frac,
                                      "widths": {"type": "array", "items": {"type": "integer"}},
                                      "min_channels": {"type": "integer", "minimum": 1},
                                      "channel_multiple": {"type": "integer", "minimum": 1}}},
                "skip": {"type": "object", "additionalProperties": False,
                         "properties": {"weights": {"type": "boolean"}, "activations": {"type": "boolean"},
                                        "efficiency": _frac, "index_overhead": {"type": "number", "minimum": 0,
                                                                                "maximum": 1},
                                        "activation_density": _frac}},
                "formats": {"type": "array", "items": {"enum": ["dense", "bitmap", "nm"]}},
            },
        },
        "memory": {
            "type": "object", "additionalProperties": False,
            "properties": {"bytes_per_s": {"oneOf": [_pos, {"type": "null"}]},
                           "efficiency": _pos,
                           "weight_buffer_bytes": {"oneOf": [_pos, {"type": "null"}]},
                           "act_buffer_bytes": {"oneOf": [_pos, {"type": "null"}]},
                           "double_buffered": {"type": "boolean"},
                           "traffic_factor": {"type": "number", "minimum": 1}},
        },
        "host": {
            "type": "object", "additionalProperties": False,
            "description": "Host-side work a CPU deployment does around each kernel call (Python, numpy): "
                           "time = layer_s[kind] + step_s * time steps (LSTM) + batch * (quant_s * activation "
                           "elements quantized + out_s[kind] * GEMM output elements + im2col_s * im2col "
                           "elements); out_s is one number or one per layer kind. Layers whose 1-bit ({-1, +1}) "
                           "weights run as {0, 1} bits (a lut profile's 1-bit-weight rows; every 1-bit layer "
                           "elsewhere) add binary_s per call + batch * binary_out_s per GEMM output element (the "
                           "sum correction of the popcount result). unpack_s is paid per call for each weight a "
                           "layer stores below 8 bits and the runtime unpacks at every call (onnxruntime's int4 "
                           "DequantizeLinear), whatever the batch; dequant_s for each weight of a convolution "
                           "it does not fuse (compute.unfused_conv_bits), dequantized to float at every call. "
                           "clip_s is paid per call by a layer whose "
                           "activations are narrower than 8 bits and are clamped to their k-bit range inside "
                           "an 8-bit container (onnxruntime's Clip between QuantizeLinear and DequantizeLinear). sign_s "
                           "is paid per call by a layer whose 1-bit activations are signed ({-1, +1} codes). pool_s is "
                           "paid per sample for each element and code bit of a layer's output that a max-pool "
                           "takes as the next layer's integer codes (onnxruntime's uint8 MaxPool, whose "
                           "compares are data-dependent: its time grows with the codes' width).",
            "properties": {"layer_s": _kind_map,
                           "step_s": _nonneg, "quant_s": _nonneg, "out_s": {"oneOf": [_nonneg, _kind_map]},
                           "im2col_s": _nonneg, "binary_s": _nonneg, "binary_out_s": _nonneg,
                           "unpack_s": _nonneg, "clip_s": _nonneg, "sign_s": _nonneg, "dequant_s": _nonneg,
                           "pool_s": _nonneg},
        },
        "energy": {
            "type": "object", "additionalProperties": False,
            "properties": {"mac": {"enum": ["horowitz", "none"]},
                           "mac_scale": _pos,
                           "dram_pj_per_bit": _nonneg, "sram_pj_per_bit": _nonneg,
                           "compute_w": _nonneg, "static_w": _nonneg},
        },
    },
}


@dataclass
class Tables:
    """Per (w, a) lookup tables (lists of lists, NB x NB) plus per-width storage bits."""

    rate: list            # peak dense MAC/s
    eff: list             # kernel efficiency (fraction of peak reached)
    tile_k: list          # reduction tile in elements
    overhead: list        # per-layer fixed time, s
    w_exec: list          # executed widths (energy, notes)
    a_exec: list
    emac: list            # pJ per MAC without the log2 K term
    nm_ok: list           # the sparse math path supports this width pair
    w_store: list         # per weight-bit index: stored bits
    a_store: list         # per activation-bit index: stored bits
    binary: list = None   # 1-bit weights run as {0, 1} bits with a per-call correction (a popcount kernel)
    label: list = None    # what the target runs, e.g. 'INT4', 'W2A2'


@dataclass
class Profile:
    """A validated accelerator profile and its compiled tables."""

    data: dict
    path: str = "<memory>"
    check: bool = field(default=True, repr=False)   # False: data already validated (a fit changing numbers)
    tables: Tables = field(init=False, repr=False)

    def __post_init__(self):
        if self.check:
            validate(self.data, self.path)
        self.tables = compile_tables(self.data)
        self.memo: dict = {}
        d = self.data
        fixed = d["compute"]["class"] == "fixed"
        fb = d["compute"]["float_bits"]
        self.tables.label = [[(("FP" if FLOAT in (wb, ab) else "INT") + str(self.tables.w_exec[i][j])) if fixed
                              else f"W{self.tables.w_exec[i][j]}A{self.tables.a_exec[i][j]}"
                              for j, ab in enumerate(BITS)] for i, wb in enumerate(BITS)]
        del fb
        c, sp, mem, en = d["compute"], d.get("sparsity", {}), d.get("memory", {}), d.get("energy", {})
        self.name: str = d["name"]
        self.batch: int = d.get("batch", 1)
        self.combine: str = d.get("combine", "max")
        self.klass: str = c["class"]
        self.min_width: int = min((int(k) for k in c.get("rates", {}) if k != "default"), default=1)
        self.float_bits: int = c["float_bits"]
        self.signed_binary_conv_bits: int | None = c.get("signed_binary_conv_bits")
        self.unfused_conv_bits: int | None = c.get("unfused_conv_bits")
        self.folds_bn: bool = bool(c.get("folds_bn", False))
        self.clamps_signed: bool = bool(c.get("clamps_signed_in_float", False))
        ke = c.get("kind_efficiency", {})
        self.kind_eff: dict = {k: float(ke.get(k, 1.0)) for k in KIND_GROUPS}
        tile = c.get("tile", {})
        self.tile_m: int = tile.get("m", 1)
        self.tile_n: int = tile.get("n", 1)
        self.k_mode: str = tile.get("k_mode", "reduction")
        nm = sp.get("nm")
        self.nm_patterns: tuple = tuple(nm["patterns"]) if nm else ()
        self.nm_speedup: float = nm["speedup"] if nm else 1.0
        self.nm_eff: float = nm.get("efficiency", 1.0) if nm else 1.0
        self.nm_min_ch: int = nm.get("min_channels", 1) if nm else 1
        self.nm_mult: int = nm.get("channel_multiple", 1) if nm else 1
        skip = sp.get("skip", {})
        self.skip_w: bool = skip.get("weights", False)
        self.skip_a: bool = skip.get("activations", False)
        self.skip_eff: float = skip.get("efficiency", 1.0)
        self.skip_idx: float = skip.get("index_overhead", 0.0)
        self.act_density: float = skip.get("activation_density", 1.0) if self.skip_a else 1.0
        self.formats: tuple = tuple(sp.get("formats", ["dense"]))
        self.bw: float | None = mem.get("bytes_per_s")
        self.mem_eff: float = mem.get("efficiency", 1.0)
        half = 0.5 if mem.get("double_buffered") else 1.0
        wb, ab = mem.get("weight_buffer_bytes"), mem.get("act_buffer_bytes")
        self.w_buf: float | None = wb * half if wb else None
        self.a_buf: float | None = ab * half if ab else None
        self.traffic_factor: float = mem.get("traffic_factor", 1.0)
        self.dram_pj: float = en.get("dram_pj_per_bit", 0.0)
        self.sram_pj: float = en.get("sram_pj_per_bit", 0.0)
        self.compute_w: float = en.get("compute_w", 0.0)
        self.static_w: float = en.get("static_w", 0.0)
        self.mac_on: bool = en.get("mac", "none") == "horowitz"
        self.mac_scale: float = en.get("mac_scale", 1.0)
        host = d.get("host") or {}
        hl = host.get("layer_s", {})
        # per-layer host terms (0 when the profile has no 'host' section: the cost is then unchanged)
        self.host: bool = bool(host)
        self.host_layer: dict = {k: float(hl.get(k, 0.0)) for k in KINDS}
        ho = host.get("out_s", 0.0)
        self.host_out: dict = {k: float(ho.get(k, 0.0) if isinstance(ho, dict) else ho) for k in KINDS}
        self.host_step: float = float(host.get("step_s", 0.0))
        self.host_quant: float = float(host.get("quant_s", 0.0))
        self.host_im2col: float = float(host.get("im2col_s", 0.0))
        self.host_binary: float = float(host.get("binary_s", 0.0))
        self.host_binary_out: float = float(host.get("binary_out_s", 0.0))
        self.host_unpack: float = float(host.get("unpack_s", 0.0))
        self.host_clip: float = float(host.get("clip_s", 0.0))
        self.host_sign: float = float(host.get("sign_s", 0.0))
        self.host_dequant: float = float(host.get("dequant_s", 0.0))
        self.host_pool: float = float(host.get("pool_s", 0.0))

    @property
    def title(self) -> str:
        return self.data["title"]

    @property
    def source(self) -> str:
        return self.data["source"]

    @property
    def status(self) -> str:
        return self.data["status"]

    def to_dict(self) -> dict:
        return copy.deepcopy(self.data)

    def with_changes(self, changes: dict[str, Any]) -> "Profile":
        """A copy with dotted-path fields replaced, e.g. {'compute.overhead_s': 2e-6}."""
        d = copy.deepcopy(self.data)
        for path, value in changes.items():
            set_path(d, path, value)
        return Profile(d, self.path)

    def exec_label(self, w: int, a: int) -> str:
        """How the target runs a W{w}A{a} layer, e.g. 'INT4' or 'W3A3'."""
        return self.tables.label[bit_index(w)][bit_index(a)]


def get_path(d: dict, path: str):
    cur = d
    for part in path.split("."):
        cur = cur[part]
    return cur


def set_path(d: dict, path: str, value) -> None:
    parts = path.split(".")
    cur = d
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def _fmt_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def validate(d: Any, where: str = "<memory>") -> None:
    """Raise ProfileError naming the file and the offending field."""
    if not isinstance(d, dict):
        raise ProfileError(f"profile {where}: expected a JSON object, got {type(d).__name__}")
    v = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(v.iter_errors(d), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        e = errors[0]
        field_ = _fmt_path(e.absolute_path)
        msg = e.message
        if e.validator == "additionalProperties":
            msg = msg.replace("Additional properties are not allowed", "unknown field(s)")
        elif e.validator == "oneOf":
            msg = f"{e.instance!r} is not valid here"
        raise ProfileError(f"profile {where}: field {field_!r}: {msg}")
    c = d["compute"]
    klass = c["class"]
    need = {"fixed": ["rates"], "bitserial": ["binary_macs_per_s"], "fusion": ["macs_per_s_8bit"],
            "lut": ["table", "float_macs_per_s"]}[klass]
    for key in need:
        if key not in c:
            raise ProfileError(f"profile {where}: field 'compute.{key}' is required for class {klass!r}")
    if klass == "fixed":
        widths = [int(k) for k in c["rates"] if k != "default"]
        if c["float_bits"] not in widths:
            raise ProfileError(f"profile {where}: field 'compute.rates' has no rate for float_bits="
                               f"{c['float_bits']} (the width float layers run at)")
        for b, to in c.get("width_map", {}).items():
            if str(to) not in c["rates"]:
                raise ProfileError(f"profile {where}: field 'compute.width_map.{b}': {to} has no rate in "
                                   f"'compute.rates' (widths: {', '.join(sorted(c['rates'], key=str))})")
    for key in ("efficiency",):
        eff = c.get(key)
        if isinstance(eff, dict) and "default" not in eff and klass == "fixed":
            missing = [w for w in c["rates"] if w not in eff]
            if missing:
                raise ProfileError(f"profile {where}: field 'compute.efficiency' has no entry for width "
                                   f"{missing[0]} (add it or a 'default')")
    nm = d.get("sparsity", {}).get("nm")
    if nm:
        for p in nm["patterns"]:
            n, m = map(int, p.split(":"))
            if not 1 <= n < m:
                raise ProfileError(f"profile {where}: field 'sparsity.nm.patterns': {p!r} needs 1 <= N < M")


def _width_value(mapping, width: int, what: str, default=None):
    if not isinstance(mapping, dict):
        return mapping if mapping is not None else default
    if str(width) in mapping:
        return mapping[str(width)]
    if "default" in mapping:
        return mapping["default"]
    if default is not None:
        return default
    raise ProfileError(f"no {what} for width {width}")


def compile_tables(d: dict) -> Tables:
    """Evaluate the compute class for every (w, a) pair the plan format allows."""
    c = d["compute"]
    klass, fb = c["class"], c["float_bits"]
    en = d.get("energy", {})
    mac_on = en.get("mac", "none") == "horowitz"
    scale = en.get("mac_scale", 1.0)
    nm = d.get("sparsity", {}).get("nm")
    nm_widths = set(nm.get("widths", [])) if nm else set()
    eff_spec = c.get("efficiency", 1.0)
    tile_k_spec = c.get("tile", {}).get("k", 1)
    ovh = c.get("overhead_s", 0.0)
    storage = c.get("storage_widths")
    if storage is None and klass == "fixed":
        storage = sorted(int(k) for k in c["rates"] if k != "default")
    if storage is None and klass == "fusion":
        storage = [2, 4, 8, 16]

    def z():
        return [[0.0] * NB for _ in range(NB)]

    rate, eff, tk, oh, we_t, ae_t, emac, nm_ok = z(), z(), z(), z(), z(), z(), z(), z()
    binary = [[wb == 1 for _ in BITS] for wb in BITS]
    lut = {}
    if klass == "lut":
        for row in c["table"]:
            lut[(row["w"], row["a"])] = row
    for wi, wb in enumerate(BITS):
        for ai, ab in enumerate(BITS):
            w = fb if wb == FLOAT else wb
            a = fb if ab == FLOAT else ab
            overhead = ovh
            if klass == "fixed":
                widths = sorted(int(k) for k in c["rates"] if k != "default")
                x = {"max": max(w, a), "w": w, "a": a}[c.get("operand", "max")]
                p = fb if FLOAT in (wb, ab) else int(c.get("width_map", {}).get(str(x), round_up_to(x, widths)))
                r, we, ae = c["rates"][str(p)], p, p
                e = _width_value(eff_spec, p, "efficiency")
                k = _width_value(tile_k_spec, p, "tile k")
                ok = nm is not None and (not nm_widths or p in nm_widths)
            elif klass == "bitserial":
                ser = c.get("serial", ["w", "a"])
                r = c["binary_macs_per_s"] / ((w if "w" in ser else 1) * (a if "a" in ser else 1))
                we, ae, ok = w, a, nm is not None
                e = _width_value(eff_spec, max(w, a), "efficiency")
                k = _width_value(tile_k_spec, max(w, a), "tile k")
            elif klass == "fusion":
                pf = bitfusion_perf_factor(a, w)
                r = c["macs_per_s_8bit"] * pf
                we, ae = round_up_to(max(w, 2), [2, 4, 8, 16]), round_up_to(max(a, 2), [2, 4, 8, 16])
                e = _width_value(eff_spec, max(w, a), "efficiency")
                k = _width_value(tile_k_spec, 8, "tile k") * (int(pf) if pf >= 1 else 1)
                ok = nm is not None
            else:  # lut: the fastest measured kernel that handles operands at least this wide
                if FLOAT in (wb, ab):
                    r, overhead, we, ae = c["float_macs_per_s"], c.get("float_overhead_s", ovh), fb, fb
                else:
                    cands = [row for (tw, ta), row in lut.items() if tw >= w and ta >= a]
                    if cands:
                        best = max(cands, key=lambda row: row["macs_per_s"])
                        r, overhead = best["macs_per_s"], best.get("overhead_s", ovh)
                        we, ae = w, a
                        binary[wi][ai] = wb == 1 and best["w"] == 1     # a 1-bit-weight (popcount) row
                    else:
                        r, overhead, we, ae = c["float_macs_per_s"], c.get("float_overhead_s", ovh), fb, fb
                e = _width_value(eff_spec, max(w, a), "efficiency")
                k = _width_value(tile_k_spec, max(w, a), "tile k")
                ok = nm is not None
            rate[wi][ai], eff[wi][ai], tk[wi][ai], oh[wi][ai] = float(r), float(e), int(k), float(overhead)
            we_t[wi][ai], ae_t[wi][ai], nm_ok[wi][ai] = we, ae, bool(ok)
            emac[wi][ai] = mac_energy_pj(we, ae, 1, scale) if mac_on else 0.0
    w_store, a_store = [], []
    stored_as = c.get("width_map", {}) if klass == "fixed" else {}
    for b in BITS:
        x = fb if b == FLOAT else b
        s = int(stored_as.get(str(x), x))
        s = round_up_to(s, storage) if storage else s      # the mapped unit's width, in a container it has
        w_store.append(s)
        a_store.append(s)
    return Tables(rate, eff, tk, oh, we_t, ae_t, emac, nm_ok, w_store, a_store, binary)


# ---- discovery --------------------------------------------------------------------------------
def profile_dirs() -> list[Path]:
    """Where profiles are looked up: $BITSCAPE_PROFILE_PATH entries first, then the shipped ones."""
    dirs = [Path(p) for p in os.environ.get(ENV_PATH, "").split(os.pathsep) if p]
    return dirs + [SHIPPED_DIR]


def _read(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"profile {str(path)!r}: cannot read it ({e})") from None
    from engine.fileio import load_json
    return load_json(text, f"profile {str(path)!r}", error=ProfileError)


def profile_paths() -> dict[str, Path]:
    """Profile name (file stem) -> file; earlier directories shadow later ones."""
    out: dict[str, Path] = {}
    for d in profile_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.json")):
                out.setdefault(p.stem, p)
    return out


_CACHE: dict[tuple[str, float], Profile] = {}
_NAMES: dict[str, tuple] = {}
ENV_PATH_VALUE = [""]


def load_profile(name_or_path: str | Path | Profile | dict) -> Profile:
    """A profile by name (``a100``), by path to a JSON file, or from a dict; errors name file and field."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    if isinstance(name_or_path, dict):
        return Profile(copy.deepcopy(name_or_path))
    s = str(name_or_path)
    p = Path(s)
    if s.endswith(".json") or os.sep in s:
        if not p.is_file():
            raise ProfileError(f"profile file {s!r} does not exist")
    else:
        hit = _NAMES.get(s)
        if hit is not None:
            path, mtime, prof = hit
            try:
                if path.stat().st_mtime == mtime and ENV_PATH_VALUE[0] == os.environ.get(ENV_PATH, ""):
                    return prof
            except OSError:
                pass
        paths = profile_paths()
        if s not in paths:
            raise ProfileError(f"unknown profile {s!r}; profiles are {', '.join(sorted(paths)) or '(none)'} "
                               f"(or give a path to a profile .json file)")
        p = paths[s]
    key = (str(p.resolve()), p.stat().st_mtime)
    if key not in _CACHE:
        data = _read(p)
        prof = Profile(data, str(p))
        if prof.name != p.stem and p.parent in profile_dirs():
            raise ProfileError(f"profile {str(p)!r}: field 'name' is {prof.name!r} but the file is "
                               f"{p.name!r}; they must match")
        _CACHE[key] = prof
    if not (s.endswith(".json") or os.sep in s):
        _NAMES[s] = (p, key[1], _CACHE[key])
        ENV_PATH_VALUE[0] = os.environ.get(ENV_PATH, "")
    return _CACHE[key]


def list_profiles() -> list[dict]:
    """One row per profile found: name, title, status, target, source, path (or error for a bad file)."""
    rows = []
    for name, p in sorted(profile_paths().items()):
        try:
            prof = load_profile(p)
            rows.append({"name": name, "title": prof.title, "status": prof.status,
                         "target": prof.data.get("target", ""), "source": prof.source, "path": str(p)})
        except ProfileError as e:
            rows.append({"name": name, "title": "", "status": "invalid", "target": "", "source": "",
                         "path": str(p), "error": str(e)})
    return rows



# ---- fittable parameters ------------------------------------------------------------------------
# (dotted path, unit, one-line meaning, compute classes it applies to or "all")
PARAMETERS: tuple[tuple[str, str, str, str], ...] = (
    ("compute.efficiency", "fraction of peak (may exceed 1)",
     "scales the compute rate of every (w, a) cell: time = MACs / (rate x efficiency)", "bitserial fusion"),
    ("compute.efficiency.<width>", "fraction of peak (may exceed 1)",
     "efficiency of one executed width: INT<width> units (fixed) or max(w, a) = width (lut, bitserial)", "all"),
    ("compute.efficiency.default", "fraction of peak (may exceed 1)",
     "efficiency of every width without its own entry", "all"),
    ("compute.binary_macs_per_s", "MAC/s", "peak 1-bit x 1-bit MAC rate; W{w}A{a} runs at it / (w x a) "
     "(/ w or / a alone when compute.serial names one operand)", "bitserial"),
    ("compute.macs_per_s_8bit", "MAC/s", "peak 8-bit x 8-bit MAC rate (Bit Fusion scales it by bit-width)", "fusion"),
    ("compute.rates.<width>", "MAC/s", "peak dense MAC rate of INT<width> units", "fixed"),
    ("compute.operand", "max | w | a", "which operand's plan width picks the INT unit (a structure choice of "
     "the base, not fitted): the wider one, the weights' or the activations'", "fixed"),
    ("compute.width_map.<bits>", "width", "the INT unit a plan width runs on where it is not the next wider "
     "one (e.g. onnxruntime stores only 4-bit codes as int4: 1-3 -> 8)", "fixed"),
    ("compute.float_macs_per_s", "MAC/s", "rate of float layers (and widths no kernel handles)", "lut"),
    ("compute.kind_efficiency.<kind>", "x (may exceed 1)", "compute efficiency of one layer kind (conv, "
     "depthwise, pointwise, linear, recurrent) on top of the per-width one; fitted when cross-validation "
     "selects it (fit.kinds)", "all"),
    ("compute.signed_binary_conv_bits", "bits", "the activation width a convolution's signed 1-bit "
     "activations ({-1, +1}) run at (a fact of the runtime, not fitted; the packed deployment: 2; "
     "32: in float, as onnxruntime runs them)", "all"),
    ("compute.unfused_conv_bits", "bits", "the width a convolution runs at when the runtime cannot fuse it into "
     "an integer kernel: its output is not requantized for the next layer (an add, a fan-out, the output; a "
     "fact of the graph) (a fact of the runtime, not fitted; onnxruntime: 32, in float)", "all"),
    ("compute.folds_bn", "true/false", "the runtime's model has each batch norm folded into the convolution "
     "before it (onnxruntime on the integer export: true); otherwise a batch norm after a convolution "
     "leaves it unfused (with compute.unfused_conv_bits)", "all"),
    ("compute.clamps_signed_in_float", "true/false", "the runtime's model clamps a layer's signed activations "
     "narrower than 8 bits in float before their QuantizeLinear (onnxruntime on the integer export: true), so "
     "the convolution that produces them is not fused (with compute.unfused_conv_bits)", "all"),
    ("compute.overhead_s", "s per layer call", "fixed time added to every layer (launch, call cost)", "all"),
    ("memory.bytes_per_s", "bytes/s", "peak off-chip (or last-level) bandwidth", "all"),
    ("memory.efficiency", "fraction of peak (may exceed 1)", "scales the bandwidth: memory time = bytes / (bw x eff)",
     "all"),
    ("memory.traffic_factor", "x (>= 1)", "multiplies the modeled DRAM traffic (re-reads a tiling misses)", "all"),
    ("sparsity.nm.speedup", "x (>= 1)", "speedup of the N:M sparse math path over dense", "all"),
    ("host.layer_s.<kind>", "s per layer call", "host call cost of a layer kind (linear, conv2d, lstm)", "all"),
    ("host.step_s", "s per time step", "host cost per recurrent time step", "all"),
    ("host.quant_s", "s per element", "quantizing one activation element before a GEMM", "all"),
    ("host.out_s.<kind>", "s per element", "rescale / epilogue of one GEMM output element of a layer kind", "all"),
    ("host.im2col_s", "s per element", "im2col gather of one element (convolutions)", "all"),
    ("host.binary_s", "s per layer call", "extra call cost of a layer whose 1-bit {-1, +1} weights run as "
     "{0, 1} bits (on a lut profile: where its 1-bit-weight rows are the fastest kernel)", "all"),
    ("host.clip_s", "s per layer call", "clamping a layer's activations narrower than 8 bits to their k-bit "
     "range in an 8-bit container (onnxruntime's Clip node); fitted only where the base profile has it", "all"),
    ("host.binary_out_s", "s per element", "sum correction of one output element of a 1-bit-weight layer", "all"),
    ("host.sign_s", "s per layer call", "turning a layer's signed 1-bit activations into {-1, +1} codes (the "
     "packed deployment's input layer on signed data); fitted only where the base profile has it", "all"),
    ("host.unpack_s", "s per weight", "unpacking one weight stored below 8 bits at every call (e.g. onnxruntime's "
     "int4 DequantizeLinear); fitted only where the base profile has it", "all"),
    ("host.dequant_s", "s per weight", "dequantizing one weight of a convolution the runtime does not fuse "
     "(compute.unfused_conv_bits) at every call; fitted only where the base profile has it", "all"),
    ("host.pool_s", "s per element and bit", "max-pooling one output element of a layer as the next layer's "
     "integer codes, per code bit (onnxruntime's uint8 MaxPool: data-dependent compares, slower on wider "
     "codes); fitted only where the base profile has it", "all"),
)
# structure choices 'bitscape calibrate' selects by cross-validation (not fitted numbers)
STRUCTURES: tuple[tuple[str, str], ...] = (
    ("compute.serial", "which operands run bit-serially on a bitserial profile: [w, a], [w], [a] or [] "
                       "(time follows w x a bits, w bits, a bits, or neither)"),
    ("combine", "how compute and memory time combine: max (roofline: a layer is bound by one) or sum"),
    ("memory", "whether the memory term is modeled at all (off: every layer compute-bound)"),
    ("fit.kinds", "a separate compute efficiency per layer kind (compute.kind_efficiency.<kind>, the kind "
                  "with the most MACs staying the reference) or one for all"),
    ("fit.tie", "lut profiles with a bit-serial kernel: one efficiency for widths 1 and 2 (time follows the "
                "kernel's w x a bit planes; 1-bit weights' extra cost goes to host.binary_*) or one per width; "
                "fixed profiles with host.unpack_s: always one efficiency for every INT unit (narrow weights "
                "are unpacked, then computed on the wider unit)"),
)


def describe_parameters() -> list[dict]:
    """The fittable parameters (path, unit, meaning, classes) and the structure choices."""
    rows = [{"path": p, "unit": u, "meaning": m, "classes": c, "kind": "parameter"} for p, u, m, c in PARAMETERS]
    rows += [{"path": p, "unit": "", "meaning": m, "classes": "all", "kind": "structure"} for p, m in STRUCTURES]
    return rows


def add_profile_file(path: str | Path) -> str:
    """Make a profile file findable by name: its folder goes first on $BITSCAPE_PROFILE_PATH (so worker
    processes, the sweep and the dashboard's profile list see it too); returns its name. The name
    must be the file's stem, as for every profile found by name."""
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"profile file {str(path)!r} does not exist")
    prof = load_profile(p)
    if prof.name != p.stem:
        raise ProfileError(f"profile file {str(path)!r}: its name is {prof.name!r}; rename the file to "
                           f"{prof.name}.json (profiles are found by name)")
    old = os.environ.get(ENV_PATH, "")
    os.environ[ENV_PATH] = os.pathsep.join([str(p.resolve().parent)] + ([old] if old else []))
    return prof.name
