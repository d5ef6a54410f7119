"""Calibrate a profile to a measurements CSV (``bitscape measure`` rows): per-layer rows, whole-network
rows or both, weighted by share of time, coefficients free both ways, the model's structure chosen by
cross-validation holding out whole plans.

A per-layer row is predicted by the layer's cost; a ``total`` row by the sum of the plan's layers at
its batch. The fit minimises sqrt(weight) x log(predicted / measured) (``engine.cost.calibrate``'s
bounded least squares, with efficiency bounds 1e-5..1e3: a device faster than the base fits too).
"""
from __future__ import annotations

import copy
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import optimize, stats

from engine.cost.calibrate import _bounds, _current, _prepare
from engine.cost.formulas import FLOAT
from engine.cost.geometry import Geom, geometry
from engine.cost.model import _cfg_facts, _numbers
from engine.cost.profiles import Profile, bit_index, load_profile, set_path
from engine.errors import UserError
from engine.plans.plan import LayerConfig, Plan

TOTAL = "total"
BOUND_TOL = 0.01          # within 1% of a bound (in log terms) counts as a bound hit


class CalibrationError(UserError):
    """The measurements cannot be fitted as asked (no rows, unknown plans, unknown parameters)."""


@dataclass
class Row:
    """One measured row: the plan's layers (geometry, config facts, next-layer bits) and what was timed."""

    plan_hash: str
    model: str
    batch: int
    layer: str                 # a layer name or 'total'
    seconds: float
    cells: list                # [(Geom, wi, ai, nm, density, ni)] of the plan, in order
    index: int | None          # position of ``layer`` in cells (None for 'total')
    weight: float = 1.0


def _cells(geoms: Sequence[Geom], cfgs: Sequence[LayerConfig]) -> list:
    nexts = [bit_index(c.a_bits) for c in cfgs[1:]] + [bit_index(FLOAT)]
    out = []
    for g, c, ni in zip(geoms, cfgs, nexts):
        wi, ai, nm, density = _cfg_facts(c)
        out.append((g, wi, ai, nm, density, ni))
    return out


def _covered(row: Row) -> list:
    """The cells a row's time covers: the whole plan (a total row) or its one layer."""
    return row.cells if row.index is None else [row.cells[row.index]]


def predict(row: Row, prof: Profile) -> float:
    """Predicted seconds of one row on ``prof``."""
    cells = _covered(row)
    return float(sum(_numbers(g, wi, ai, nm, d, ni, prof, row.batch)[11] for g, wi, ai, nm, d, ni in cells))


def predict_all(rows: Sequence[Row], prof: Profile) -> np.ndarray:
    return np.array([predict(r, prof) for r in rows])


# ----------------------------------------------------------------------------- rows from a CSV

def _topology(model: str, dataset: str):
    from engine.models.data import dataset_spec
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    spec = dataset_spec(dataset)
    return analyze(build_model(model, spec.input_shape, spec.num_classes), spec.input_shape)


def rows_from_frame(df, plans: dict, target: str | None = None, use: str = "both",
                    weighted: bool = True) -> list[Row]:
    """Rows of one target from a measurements DataFrame and its plans ({plan_hash: {plan, model, dataset}}).

    ``use``: 'layers', 'total' or 'both'. Weights (``weighted``): a layer row weighs its share of the
    time of its plan's measured layers at that batch; a total row weighs 1 (one plan counts once per
    kind of row). Unweighted: every row 1."""
    if use not in ("layers", "total", "both"):
        raise CalibrationError(f"use must be 'layers', 'total' or 'both' (got {use!r})")
    targets = sorted(df["target"].astype(str).unique())
    if target is None:
        if len(targets) != 1:
            raise CalibrationError(f"the measurements hold targets {', '.join(targets)}: choose one with --target")
        target = targets[0]
    elif target not in targets:
        raise CalibrationError(f"no rows for target {target!r}; the measurements hold {', '.join(targets)}")
    df = df[df["target"].astype(str) == target]
    if use == "layers":
        df = df[df["layer"] != TOTAL]
    elif use == "total":
        df = df[df["layer"] == TOTAL]
    if df.empty:
        raise CalibrationError(f"no {'' if use == 'both' else use + ' '}rows to fit for target {target!r}")
    topos: dict = {}
    cells_of: dict = {}
    out: list[Row] = []
    for r in df.itertuples(index=False):
        h = str(r.plan_hash)
        if h not in plans:
            raise CalibrationError(f"plan {h!r} of the measurements is not in the plans file")
        entry = plans[h]
        model = str(r.model)
        dataset = str(getattr(r, "dataset", None) or entry.get("dataset"))
        key = (model, dataset, h)
        if key not in cells_of:
            if (model, dataset) not in topos:
                topos[(model, dataset)] = _topology(model, dataset)
            topo = topos[(model, dataset)]
            plan = Plan.from_dict(entry["plan"])
            cfgs = plan.resolve(topo.names)
            factors = topo.check(cfgs)
            layers = topo.widened(cfgs, factors)
            geoms = [geometry(x) for x in layers]
            cells_of[key] = (_cells(geoms, [cfgs[g.name] for g in geoms]), [g.name for g in geoms])
        cells, names = cells_of[key]
        layer = str(r.layer)
        if layer != TOTAL and layer not in names:
            raise CalibrationError(f"row for plan {h!r}: {model} has no layer {layer!r}")
        out.append(Row(h, model, int(r.batch), layer, float(r.seconds), cells,
                       None if layer == TOTAL else names.index(layer)))
    if weighted:
        sums: dict = {}
        for x in out:
            if x.index is not None:
                sums[(x.model, x.plan_hash, x.batch)] = sums.get((x.model, x.plan_hash, x.batch), 0.0) + x.seconds
        for x in out:
            if x.index is not None:
                x.weight = x.seconds / sums[(x.model, x.plan_hash, x.batch)]
    return out


def file_hash(*paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- structures and parameters

def structures(prof: Profile, rows: Sequence[Row] = ()) -> list[dict]:
    """Candidate model structures for ``prof`` as dotted-path changes (selected by cross-validation);
    with ``rows`` of two or more layer kinds, each also with one compute efficiency per kind."""
    base = _structures(prof)
    if len(kind_groups(rows)) < 2:
        return base
    return base + [{**s, "fit.kinds": True} for s in base]


def kind_groups(rows: Sequence[Row]) -> list[str]:
    """The layer kinds (Geom.group) of the rows' plans, the one with the most MACs first."""
    macs: dict = {}
    for r in rows:
        for c in _covered(r):
            macs[c[0].group] = macs.get(c[0].group, 0) + c[0].macs
    return sorted(macs, key=lambda k: -macs[k])


def _structures(prof: Profile) -> list[dict]:
    mem = [{"combine": "max"}, {"combine": "sum"}]
    if prof.bw:
        mem.append({"memory.bytes_per_s": None, "combine": "max"})
    if prof.klass == "bitserial":
        serial = [["w", "a"], ["w"], ["a"], []]
        return [{**m, "compute.serial": s} for s in serial for m in mem]
    if prof.klass == "lut" and _serial_widths(prof):
        # one efficiency for the bit-serial kernel's widths (time follows its w x a bit planes, so a
        # 1-bit layer's extra time must come from the binary-weight host terms), or one per width
        return [{**m, **t} for t in ({}, {"fit.tie": SERIAL_TIE}) for m in mem]
    if prof.klass == "fixed" and _names_host(prof, "unpack_s") and min(prof.tables.w_store) < 8:
        # a runtime that unpacks narrow weights at every call (host.unpack_s) computes them on its
        # wider unit: one efficiency for every integer unit, so their extra time is learned per
        # weight, not per MAC (uniform plans alone cannot tell the two apart)
        units = sorted({str(u) for row in prof.tables.w_exec for u in row if u != prof.float_bits}, key=int)
        tie = [f"compute.efficiency.{u}" for u in units]
        return [{**m, "fit.tie": tie} for m in mem] if len(tie) > 1 else mem
    return mem


SERIAL_TIE = ["compute.efficiency.1", "compute.efficiency.2"]


def _names_host(prof: Profile, term: str) -> bool:
    """Does the base's host section name ``term``? Runtime-specific terms (unpack_s: narrow weights
    unpacked at every call; clip_s: narrow activations clamped; sign_s: signed 1-bit activations
    made {-1, +1} codes; pool_s: max-pooling integer codes) are fitted only where it does."""
    return term in (prof.data.get("host") or {})


def _serial_widths(prof: Profile) -> bool:
    """Does the lut profile run widths 1 and 2 on a bit-serial kernel (rate ~ 1 / (w x a))?"""
    rows = prof.to_dict().get("compute", {}).get("table", [])
    return any(r.get("kernel") == "bitserial" for r in rows if isinstance(r, dict))


def structure_label(s: dict) -> str:
    parts = []
    if "compute.serial" in s:
        parts.append("serial " + ("+".join(s["compute.serial"]) or "none"))
    if s.get("fit.tie"):
        parts.append("one efficiency for widths " + "+".join(p.rsplit(".", 1)[-1] for p in s["fit.tie"]))
    if s.get("fit.kinds"):
        parts.append("one efficiency per layer kind")
    if "memory.bytes_per_s" in s and s["memory.bytes_per_s"] is None:
        parts.append("compute only")
    else:
        parts.append(f"combine {s.get('combine', 'max')}")
    return ", ".join(parts)


def default_params(prof: Profile, rows: Sequence[Row], structure: dict | None = None) -> list[str]:
    """Free coefficients: compute efficiency per executed width seen (fixed), per max(w, a) in {1, 2}
    plus a default (lut), one scalar (bitserial, fusion); the host terms of the layer kinds seen when
    the profile has a 'host' section, else the per-layer overhead; the memory efficiency."""
    s = structure or {}
    cells = [c for r in rows for c in _covered(r)]
    seen = {(c[1], c[2]) for c in cells}
    kinds = {c[0].kind for c in cells}
    params: list[str] = []
    t = prof.tables
    if prof.klass == "fixed":
        params += [f"compute.efficiency.{w}" for w in sorted({t.w_exec[wi][ai] for wi, ai in seen})]
    elif prof.klass == "lut":
        widths = sorted({max(t.w_exec[wi][ai], t.a_exec[wi][ai]) for wi, ai in seen})
        params += [f"compute.efficiency.{w}" for w in widths if w in (1, 2)] + ["compute.efficiency.default"]
    else:
        params.append("compute.efficiency")
    if prof.host:
        params += [f"host.layer_s.{k}" for k in ("linear", "conv2d", "lstm") if k in kinds]
        params += ["host.quant_s"] + [f"host.out_s.{k}" for k in ("linear", "conv2d", "lstm") if k in kinds]
        params += ["host.im2col_s"] if "conv2d" in kinds else []
        params += ["host.step_s"] if "lstm" in kinds else []
        # the {-1, +1} sum correction belongs to popcount kernels (lut); integer units take 1-bit codes as is
        binary = prof.klass == "lut" and any(t.binary[wi][ai] for wi, ai in seen)
        params += ["host.binary_s", "host.binary_out_s"] if binary else []
        params += [f"host.{t}" for t in ("unpack_s", "clip_s") if _names_host(prof, t)]
        unfused_convs = prof.unfused_conv_bits and any(c[0].kind == "conv2d" and c[0].requant != "unknown"
                                                       for c in cells)
        params += ["host.dequant_s"] if unfused_convs and _names_host(prof, "dequant_s") else []
        signed = any(c[0].signed_in and c[2] == bit_index(1) for c in cells)
        params += ["host.sign_s"] if signed and _names_host(prof, "sign_s") else []
        pooled = any(c[0].pooled for c in cells)
        params += ["host.pool_s"] if pooled and _names_host(prof, "pool_s") else []
    else:
        params.append("compute.overhead_s")
    if s.get("fit.kinds"):   # the kind with the most MACs is the reference the per-width efficiencies set
        params += [f"compute.kind_efficiency.{k}" for k in kind_groups(rows)[1:]]
    if prof.bw and s.get("memory.bytes_per_s", prof.bw) is not None:
        params.append("memory.efficiency")
    tie = [p for p in s.get("fit.tie", []) if p in params]
    if len(tie) > 1:       # tied paths are one free coefficient, written 'a|b'
        params = ["|".join(tie) if p == tie[0] else p for p in params if p not in tie[1:]]
    return params


def _apply_structure(prof: Profile, structure: dict) -> Profile:
    d = prof.to_dict()
    for k, v in structure.items():
        if k.startswith("fit."):            # a choice of the fit (tied coefficients), not profile data
            continue
        if k == "memory.bytes_per_s" and v is None:
            d.setdefault("memory", {})["bytes_per_s"] = None
        else:
            set_path(d, k, copy.deepcopy(v))
    return Profile(d, prof.path)


# ----------------------------------------------------------------------------- fitting

@dataclass
class Fit:
    profile: Profile
    params: dict
    bound_hits: list            # [(path, value, 'lower' | 'upper')]


def _fit(prof: Profile, rows: Sequence[Row], params: Sequence[str]) -> Fit:
    """Weighted bounded least squares of ``params`` (log-parameterised) on log(pred / measured); a
    parameter 'a|b' is one coefficient written to both paths."""
    paths = [p.split("|") for p in params]
    params = [p[0] for p in paths]
    base = _prepare(prof, params)
    meas = np.array([r.seconds for r in rows])
    sw = np.sqrt(np.array([r.weight for r in rows]))
    lo = np.array([math.log(_bounds(p)[0]) for p in params])
    hi = np.array([math.log(_bounds(p)[1]) for p in params])
    x0 = np.array([math.log(min(max(_current(base, p), _bounds(p)[0]), _bounds(p)[1])) for p in params])
    x0 = np.clip(x0, lo + 1e-3 * (hi - lo), hi - 1e-3 * (hi - lo))

    def build(x) -> Profile:
        d = copy.deepcopy(base)
        for ps, v in zip(paths, x):
            for p in ps:
                set_path(d, p, float(math.exp(v)))
        return Profile(d, prof.path, check=False)

    def resid(x):
        return sw * np.log(np.maximum(predict_all(rows, build(x)), 1e-30) / meas)

    sol = optimize.least_squares(resid, x0, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=200)
    values = {p: float(math.exp(v)) for ps, v in zip(paths, sol.x) for p in ps}
    hits = []
    for p, v, a, b in zip(params, sol.x, lo, hi):
        if v - a < BOUND_TOL and not _additive(p):    # an additive term at its floor is simply ~0
            hits.append((p, values[p], "lower"))
        elif b - v < BOUND_TOL:
            hits.append((p, values[p], "upper"))
    fitted = build(sol.x)
    return Fit(Profile(fitted.to_dict(), prof.path), values, hits)


def _additive(path: str) -> bool:
    """Terms that add seconds (host work, per-layer overhead): their lower bound stands for zero."""
    return path.startswith("host.") or path.endswith("overhead_s")


def quality(pred: np.ndarray, meas: np.ndarray) -> dict:
    """Median absolute relative error and Spearman rank correlation (nan under 3 rows)."""
    if len(meas) == 0:
        return {"n": 0, "median_abs_error": float("nan"), "spearman": float("nan")}
    rel = np.abs(pred / meas - 1)
    rho = float(stats.spearmanr(pred, meas).statistic) if len(meas) >= 3 else float("nan")
    return {"n": int(len(meas)), "median_abs_error": float(np.median(rel)), "spearman": rho}


def _split_quality(rows: Sequence[Row], pred: np.ndarray) -> dict:
    meas = np.array([r.seconds for r in rows])
    tot = np.array([r.index is None for r in rows])
    return {"total": quality(pred[tot], meas[tot]), "layers": quality(pred[~tot], meas[~tot])}


def _folds(rows: Sequence[Row], k: int, seed: int) -> list[set]:
    plans = sorted({r.plan_hash for r in rows})
    rng = np.random.default_rng(seed)
    order = [plans[i] for i in rng.permutation(len(plans))]
    k = min(k, len(plans))
    return [set(order[i::k]) for i in range(k)]


@dataclass
class Calibration:
    """The fitted profile and how well it fits: in sample and on held-out plans, per structure."""

    profile: Profile
    structure: dict
    params: dict
    bound_hits: list
    in_sample: dict
    held_out: dict
    candidates: list = field(default_factory=list)     # [{structure, held_out}] of every structure tried
    rows: int = 0
    plans: int = 0

    def warnings(self) -> list[str]:
        return [f"parameter {p} = {v:.4g} sits at its {side} bound: the fit wanted it further "
                f"(the model's structure may not match the measurements)" for p, v, side in self.bound_hits]


def _score(q: dict) -> float:
    """Selection score of a held-out quality: whole-network median error where there are totals."""
    e = q["total"] if q["total"]["n"] else q["layers"]
    v = e["median_abs_error"]
    return v if math.isfinite(v) else math.inf


def calibrate(base, rows: Sequence[Row], params: Sequence[str] | None = None, folds: int = 5, seed: int = 0,
              structure: dict | None = None) -> Calibration:
    """Fit ``base`` to ``rows``: every candidate structure (or the given one) is scored by held-out
    median error over ``folds`` plan-disjoint folds; the best is refitted on all rows."""
    prof = load_profile(base)
    rows = list(rows)
    if not rows:
        raise CalibrationError("no measurements to fit")
    if params:
        known = {r[0].split(".<")[0] for r in _param_table()}
        for p in params:
            if not any(p == k or p.startswith(k + ".") for k in known):
                raise CalibrationError(f"unknown parameter {p!r}; see 'bitscape profiles --describe'")
    cands = [structure] if structure is not None else structures(prof, rows)
    fold_sets = _folds(rows, folds, seed) if len({r.plan_hash for r in rows}) >= 2 else []
    tried = []
    for s in cands:
        sp = _apply_structure(prof, s)
        ps = list(params) if params else default_params(sp, rows, s)
        if fold_sets:
            pred = np.zeros(len(rows))
            for held in fold_sets:
                train = [r for r in rows if r.plan_hash not in held]
                test_i = [i for i, r in enumerate(rows) if r.plan_hash in held]
                f = _fit(sp, train, ps)
                pred[test_i] = predict_all([rows[i] for i in test_i], f.profile)
            q = _split_quality(rows, pred)
        else:
            q = {"total": quality(np.array([]), np.array([])), "layers": quality(np.array([]), np.array([]))}
        tried.append({"structure": s, "label": structure_label(s), "params": ps, "held_out": q})
    best = min(tried, key=lambda t: _score(t["held_out"])) if fold_sets else tried[0]
    sp = _apply_structure(prof, best["structure"])
    f = _fit(sp, rows, best["params"])
    ins = _split_quality(rows, predict_all(rows, f.profile))
    return Calibration(f.profile, best["structure"], f.params, f.bound_hits, ins, best["held_out"],
                       [{k: v for k, v in t.items() if k != "structure"} | {"structure": _jsonable(t["structure"])}
                        for t in tried], len(rows), len({r.plan_hash for r in rows}))


def _jsonable(s: dict) -> dict:
    return {k: v for k, v in s.items()}


def _param_table():
    from engine.cost.profiles import PARAMETERS
    return PARAMETERS


_NAME = re.compile(r"[^a-z0-9_.-]+")


def profile_name(out: str | Path) -> str:
    """A profile name from an output file name (lower case, other characters -> '-')."""
    stem = _NAME.sub("-", Path(out).stem.lower()).strip("-.") or "fitted"
    return stem if stem[0].isalnum() else "p" + stem


def fitted_profile(cal: Calibration, name: str, measurements_hash: str, source: str, target: str,
                   weighted: bool, use: str) -> dict:
    """The fitted profile's JSON data: status 'fitted', the fit record (hash, quality, structure)."""
    d = cal.profile.to_dict()
    d["name"] = name
    d["title"] = f"{d['title']} -- fitted to {target} measurements"
    d["status"] = "fitted"
    d["source"] = (d["source"].rstrip() + f" Fitted by 'bitscape calibrate' to {cal.rows} measured rows "
                   f"({use}) of {cal.plans} plans on target {target!r} ({source}); structure "
                   f"{structure_label(cal.structure)} chosen by cross-validation over held-out plans.")
    prov = d.setdefault("provenance", {})
    for p in cal.params:
        prov[p] = f"fitted by 'bitscape calibrate' to {target} measurements"
    d["fit"] = {"measurements_sha256": measurements_hash, "target": target, "rows": cal.rows, "plans": cal.plans,
                "use": use, "weighted": weighted, "structure": _jsonable(cal.structure),
                "structure_label": structure_label(cal.structure), "params": cal.params,
                "bound_hits": [{"param": p, "value": v, "bound": s} for p, v, s in cal.bound_hits],
                "in_sample": cal.in_sample, "held_out": cal.held_out,
                "candidates": [{"label": c["label"], "held_out": c["held_out"]} for c in cal.candidates]}
    return _finite(d)


def _finite(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o
