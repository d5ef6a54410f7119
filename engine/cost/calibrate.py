"""Calibration: fit a profile's free coefficients to measured layer latencies (least squares).

``fit_profile`` fits efficiencies / overhead / memory terms of any profile to a few measured
layers and reports the fit error; ``fit_cpu_profile`` turns ``bitscape bench kernels --json``
rows into the ``cpu`` profile's kernel table; ``compare_measured`` sets predicted against measured
per-layer latencies of a deployed plan (the hook for the predicted-vs-measured benchmark).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import optimize, stats

from engine.cost.formulas import FLOAT
from engine.cost.geometry import Geom, geometry
from engine.cost.model import _cfg_facts, _numbers, cost_plan
from engine.cost.profiles import Profile, ProfileError, bit_index, get_path, load_profile
from engine.plans.plan import LayerConfig


@dataclass
class Measurement:
    """One measured layer: its (widened) shape, its config, the batch and the seconds it took."""

    layer: object
    config: LayerConfig
    time_s: float
    batch: int = 1
    a_next: int | None = None   # output activation bits; defaults to the layer's own a_bits


@dataclass
class FitResult:
    profile: Profile
    params: dict[str, float]
    before: dict[str, float]          # rms / max relative error with the starting coefficients
    after: dict[str, float]
    rows: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        p = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
        return (f"fitted {len(self.rows)} measurements: rms log error {self.before['rms_log']:.3f} -> "
                f"{self.after['rms_log']:.3f}, max |rel| error {self.before['max_rel']:.1%} -> "
                f"{self.after['max_rel']:.1%}; {p}")


def _as_measurements(ms: Sequence) -> list[Measurement]:
    out = []
    for m in ms:
        if isinstance(m, Measurement):
            out.append(m)
        elif isinstance(m, Mapping):
            cfg = m["config"]
            if isinstance(cfg, Mapping):
                cfg = LayerConfig(**cfg)
            out.append(Measurement(m["layer"], cfg, float(m["time_s"]), int(m.get("batch", 1)), m.get("a_next")))
        else:
            raise TypeError(f"measurement {m!r} is neither a Measurement nor a dict")
    for m in out:
        if not (m.time_s > 0 and math.isfinite(m.time_s)):
            raise ValueError(f"measured time {m.time_s!r} must be a positive number of seconds")
    return out


def predict_layer(m: Measurement, prof: Profile) -> float:
    """Predicted seconds of one measured layer at its batch."""
    g = m.layer if isinstance(m.layer, Geom) else geometry(m.layer)
    wi, ai, nm, density = _cfg_facts(m.config)
    ni = bit_index(m.a_next if m.a_next is not None else m.config.a_bits)
    return _numbers(g, wi, ai, nm, density, ni, prof, m.batch)[11]


def default_params(prof: Profile, ms: Sequence[Measurement]) -> list[str]:
    """Free coefficients: kernel efficiency per executed width seen, per-layer overhead (the host terms
    of the layer kinds seen, when the profile has a 'host' section), memory efficiency."""
    params = []
    if prof.klass == "fixed":
        widths = sorted({prof.tables.w_exec[bit_index(m.config.w_bits)][bit_index(m.config.a_bits)] for m in ms})
        params += [f"compute.efficiency.{w}" for w in widths]
    elif prof.klass != "lut":
        params.append("compute.efficiency")
    if prof.host:
        kinds = {(m.layer if isinstance(m.layer, Geom) else geometry(m.layer)).kind for m in ms}
        params += [f"host.layer_s.{k}" for k in ("linear", "conv2d", "lstm") if k in kinds]
        params += ["host.quant_s"] + [f"host.out_s.{k}" for k in ("linear", "conv2d", "lstm") if k in kinds] \
            + (["host.im2col_s"] if "conv2d" in kinds else []) \
            + (["host.step_s"] if "lstm" in kinds else []) \
            + (["host.binary_s", "host.binary_out_s"] if any(m.config.w_bits == 1 for m in ms) else [])
    else:
        params.append("compute.overhead_s")
    if prof.bw:
        params.append("memory.efficiency")
    return params


# efficiencies go both ways: a measured device may be faster than the base profile assumes
_BOUNDS = {"host": (1e-13, 1.0), "efficiency": (1e-5, 1e3), "kind_efficiency": (1e-3, 1e3), "overhead_s": (1e-12, 1.0),
           "traffic_factor": (1.0, 1e4),
           "speedup": (1.0, 4.0)}   # N:M: 2:4 halves the MACs; 4x allows 1:4 or a lighter sparse kernel


def _bounds(path: str) -> tuple[float, float]:
    for key, b in _BOUNDS.items():
        if key in path.split("."):
            return b
    return (1e-30, 1e30)


def _errors(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    r = np.log(pred / meas)
    return {"rms_log": float(np.sqrt(np.mean(r ** 2))), "max_rel": float(np.max(np.abs(pred / meas - 1))),
            "total_rel": float(pred.sum() / meas.sum() - 1)}


def _prepare(prof: Profile, params: Sequence[str]) -> dict:
    """Profile data where every fitted path exists (a scalar efficiency becomes a per-width map)."""
    d = prof.to_dict()
    for p in params:
        parts = p.split(".")
        if parts[:2] == ["compute", "efficiency"] and len(parts) == 3:
            eff = d["compute"].get("efficiency", 1.0)
            if not isinstance(eff, dict):
                d["compute"]["efficiency"] = {"default": eff}
    return d


def _current(d: dict, path: str) -> float:
    try:
        v = get_path(d, path)
    except (KeyError, TypeError):
        parts = path.split(".")
        if parts[:2] == ["compute", "efficiency"]:
            eff = d["compute"].get("efficiency", 1.0)
            v = eff.get("default", 1.0) if isinstance(eff, dict) else eff
        elif parts[0] == "host":   # a starting guess: microseconds per call / step, ns per element
            v = 1e-6 if "layer_s" in parts or parts[-1] in ("step_s", "binary_s") else 1e-9
        else:
            v = {"overhead_s": 1e-6, "efficiency": 1.0, "traffic_factor": 1.0}.get(parts[-1], 1.0)
    if isinstance(v, dict):
        raise ProfileError(f"cannot fit {path!r}: it is a table, name one entry (e.g. {path}.8)")
    return float(v)


def fit_profile(profile, measurements: Sequence, params: Sequence[str] | None = None,
                source_note: str | None = None) -> FitResult:
    """Least-squares fit (on log time) of the profile's free coefficients to measured layers.

    ``params`` are dotted profile paths (default: see ``default_params``); the returned profile has
    status 'fitted', a 'fit' record with the error, and ``source_note`` appended to its source.
    """
    prof = load_profile(profile)
    ms = _as_measurements(measurements)
    if not ms:
        raise ValueError("no measurements to fit")
    params = list(params or default_params(prof, ms))
    base = _prepare(prof, params)
    meas = np.array([m.time_s for m in ms])
    x0 = np.array([math.log(min(max(_current(base, p), _bounds(p)[0]), _bounds(p)[1])) for p in params])
    lo = np.array([math.log(_bounds(p)[0]) for p in params])
    hi = np.array([math.log(_bounds(p)[1]) for p in params])

    def build(x) -> Profile:
        d = _prepare(prof, params)
        from engine.cost.profiles import set_path
        for p, v in zip(params, x):
            set_path(d, p, float(math.exp(v)))
        return Profile(d, prof.path)

    def resid(x):
        pr = build(x)
        return np.log(np.array([predict_layer(m, pr) for m in ms]) / meas)

    before_pred = np.array([predict_layer(m, prof) for m in ms])
    start = np.clip(x0, lo + 1e-3 * (hi - lo), hi - 1e-3 * (hi - lo))   # strictly inside the bounds
    sol = optimize.least_squares(resid, start, bounds=(lo, hi), method="trf", x_scale="jac")
    fitted = build(sol.x)
    after_pred = np.array([predict_layer(m, fitted) for m in ms])
    values = {p: float(math.exp(v)) for p, v in zip(params, sol.x)}
    after = _errors(after_pred, meas)
    d = fitted.to_dict()
    d["status"] = "fitted"
    d["fit"] = {"params": values, "measurements": len(ms), "rms_log_error": after["rms_log"],
                "max_rel_error": after["max_rel"]}
    if source_note:
        d["source"] = d["source"].rstrip() + " " + source_note
    out = Profile(d, prof.path)
    rows = [{"layer": (m.layer.name if isinstance(m.layer, Geom) else geometry(m.layer).name),
             "config": m.config.label(), "batch": m.batch, "measured_s": m.time_s, "before_s": float(b),
             "after_s": float(a)} for m, b, a in zip(ms, before_pred, after_pred)]
    return FitResult(out, values, _errors(before_pred, meas), after, rows)


# ---- the cpu profile from kernel benchmarks ---------------------------------------------------
_WA = re.compile(r"w(\d+)a(\d+)", re.I)
_NM = re.compile(r"(\d+):(\d+)")


def kernel_bits(row: Mapping) -> tuple[int, int] | None:
    """(w, a) of a dense GEMM kernel benchmark row, or None for rows that are not one.

    Explicit w_bits/a_bits win; else the kernel name: 'W2A2' -> (2, 2), 'int8' -> (8, 8),
    'torch-fp32'/'float' -> (32, 32), 'binary'/'xnor' -> (1, 1). Packing-only rows ('... pack'),
    N:M sparse kernels ('2:4 W4A8'), float-activation kernels ('W2-float') and torch's own int8
    path are not dense bitscape GEMMs and give None.
    """
    if "w_bits" in row and "a_bits" in row:
        return int(row["w_bits"]), int(row["a_bits"])
    name = str(row.get("kernel", "")).lower()
    if "pack" in name or _NM.search(name) or re.search(r"w\d+-float", name):
        return None
    m = _WA.search(name)
    if m:
        return int(m.group(1)), int(m.group(2))
    if "int8" in name or "i8" in name:
        return None if "torch" in name else (8, 8)
    if "fp32" in name or "float" in name or "f32" in name:
        return FLOAT, FLOAT
    if "binary" in name or "xnor" in name or "1bit" in name:
        return 1, 1
    return None


def _nm_speedup(rows: Sequence[Mapping], threads: int) -> dict | None:
    """Median time ratio of dense 'WxAy' to '2:4 WxAy' rows at the same shape, if both were measured."""
    dense, sparse = {}, {}
    for r in rows:
        if int(r.get("threads", 1)) != threads or not float(r.get("gops", 0)) > 0:
            continue
        name = str(r.get("kernel", ""))
        m = _WA.search(name)
        if not m:
            continue
        key = (m.group(0).upper(), int(r["m"]), int(r["k"]), int(r["n"]))
        nm = _NM.search(name)
        if nm and "pack" not in name.lower():
            sparse[key] = (float(r["gops"]), nm.group(0))
        elif not nm and "pack" not in name.lower():
            dense[key] = float(r["gops"])
    ratios = [sparse[k][0] / dense[k] for k in sparse if k in dense]
    if not ratios:
        return None
    pattern = next(iter(sparse.values()))[1]
    m_ = int(pattern.split(":")[1])
    return {"patterns": [pattern], "speedup": max(1.0, float(np.median(ratios))), "efficiency": 1.0,
            "min_channels": m_, "channel_multiple": m_}


def fit_cpu_profile(rows, base="cpu", threads: int = 1) -> tuple[Profile, dict]:
    """Fit ``t = t0 + MACs / R`` per (kernel, w, a) from benchmark rows {kernel, m, k, n, threads, gops}
    (GOPS = 2*m*k*n / s) and write the cpu profile's kernel table; returns (profile, report).

    Non-negative least squares weighted by 1/t (relative error). Rows at other thread counts and
    rows whose bit-widths cannot be told are skipped and listed in the report.
    """
    prof = load_profile(base)
    if isinstance(rows, Mapping):          # the whole 'bitscape bench kernels --json' object
        rows = rows.get("rows", [])
    groups: dict[tuple, list] = {}
    skipped = []
    for r in rows:
        bits = kernel_bits(r)
        if bits is None or int(r.get("threads", 1)) != threads or not float(r.get("gops", 0)) > 0:
            skipped.append(dict(r))
            continue
        groups.setdefault((str(r.get("kernel", "")), *bits), []).append(r)
    if not groups:
        raise ValueError(f"no usable kernel rows at threads={threads} (need kernel, m, k, n, gops)")
    table, fits, float_fit = [], [], None
    for (kernel, w, a), rs in sorted(groups.items()):
        macs = np.array([float(r["m"]) * float(r["k"]) * float(r["n"]) for r in rs])
        t = 2 * macs / (np.array([float(r["gops"]) for r in rs]) * 1e9)
        A = np.column_stack([np.ones_like(macs), macs]) / t[:, None]
        if len(rs) >= 2:
            (t0, inv_r), _ = optimize.nnls(A, np.ones_like(t))
        else:
            t0, inv_r = 0.0, t[0] / macs[0]
        if inv_r <= 0:  # every row overhead-bound: take the fastest row's rate
            inv_r = float(np.min(t / macs))
            t0 = 0.0
        pred = t0 + macs * inv_r
        err = _errors(pred, t)
        entry = {"kernel": kernel, "w": w, "a": a, "macs_per_s": float(1.0 / inv_r), "overhead_s": float(t0),
                 "rows": len(rs), **err}
        fits.append(entry)
        if w == FLOAT:
            if float_fit is None or entry["macs_per_s"] > float_fit["macs_per_s"]:
                float_fit = entry
        elif 1 <= w <= 8 and 1 <= a <= 8:
            table.append({"w": w, "a": a, "macs_per_s": entry["macs_per_s"], "overhead_s": entry["overhead_s"],
                          "kernel": kernel})
    d = prof.to_dict()
    c = d["compute"]
    if c["class"] != "lut":
        raise ProfileError(f"profile {prof.name!r} has compute class {c['class']!r}; the cpu fit needs 'lut'")
    if table:
        c["table"] = table
    if float_fit:
        c["float_macs_per_s"] = float_fit["macs_per_s"]
        c["float_overhead_s"] = float_fit["overhead_s"]
    nm = _nm_speedup(rows, threads)
    if nm:
        d.setdefault("sparsity", {})["nm"] = nm
        d["sparsity"].setdefault("formats", ["dense", "nm"])
        if "nm" not in d["sparsity"]["formats"]:
            d["sparsity"]["formats"].append("nm")
    d["status"] = "fitted"
    d["source"] = (f"Fitted by engine.cost.calibrate.fit_cpu_profile from {sum(f['rows'] for f in fits)} "
                   f"'bitscape bench kernels' rows at {threads} thread(s) (t = t0 + MACs / R per kernel).")
    d["fit"] = {"threads": threads, "kernels": fits, "skipped_rows": len(skipped)}
    d.setdefault("provenance", {})["compute.table"] = "fitted from kernel benchmark rows"
    return Profile(d, prof.path), {"kernels": fits, "skipped": skipped}


# ---- predicted vs measured for a deployed plan ------------------------------------------------
def compare_measured(layers: Sequence, configs, profile, measured: Mapping[str, float],
                     batch: int | None = None) -> dict:
    """Per-layer predicted vs measured seconds (only layers present in ``measured``), with the
    rank correlation and errors; the predicted-vs-measured benchmark calls this."""
    rep = cost_plan(list(layers), configs, profile, batch, notes=False)
    rows = []
    for lc in rep.layers:
        if lc.name in measured:
            m = float(measured[lc.name])
            rows.append({"layer": lc.name, "exec": lc.exec, "predicted_s": lc.time_s, "measured_s": m,
                         "ratio": lc.time_s / m if m > 0 else math.inf, "bound": lc.bound})
    if not rows:
        raise ValueError("no measured layer matches the plan's layers")
    pred = np.array([r["predicted_s"] for r in rows])
    meas = np.array([r["measured_s"] for r in rows])
    rho = float(stats.spearmanr(pred, meas).statistic) if len(rows) > 2 else float("nan")
    return {"profile": rep.profile, "batch": rep.batch, "rows": rows, "spearman": rho, **_errors(pred, meas),
            "predicted_total_s": float(pred.sum()), "measured_total_s": float(meas.sum())}


def fit_from_measured(layers: Sequence, configs, profile, measured: Mapping[str, float], batch: int | None = None,
                      params: Sequence[str] | None = None) -> FitResult:
    """Fit ``profile`` to measured per-layer seconds of one plan (layers in plan order)."""
    prof = load_profile(profile)
    b = int(batch or prof.batch)
    geoms = [x if isinstance(x, Geom) else geometry(x) for x in layers]
    cfgs = [configs[g.name] for g in geoms] if isinstance(configs, Mapping) else list(configs)
    nexts = [c.a_bits for c in cfgs[1:]] + [FLOAT]
    ms = [Measurement(g, c, float(measured[g.name]), b, an) for g, c, an in zip(geoms, cfgs, nexts)
          if g.name in measured]
    return fit_profile(prof, ms, params)
