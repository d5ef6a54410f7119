"""The frontier as analysts read it: its view state and the pure functions that shape its data.

``FrontierState`` holds what the Frontier tab adds to a workspace (the brushed points, the
heat map's scope, the second accelerator profile). The functions below turn the workspace's
points table into what the plot, table, heat map and loss chart draw; none imports Panel,
so tests call them directly and the PNG/HTML exports draw exactly what the app draws.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import param

from engine.plans.plan import Plan, PlanError

ACCURACY = {"test_accuracy": "baseline_test_accuracy", "val_accuracy": "baseline_val_accuracy"}
VS_FP32 = {"test_vs_fp32": "test_accuracy", "val_vs_fp32": "val_accuracy"}
# One axis type per x column, used by the app, the PNG and the HTML export alike. Linear: a
# Bokeh figure cannot change its axis type after the first render, and the x choice is live.
X_SCALE = {"throughput": "linear", "latency_s": "linear", "energy_j": "linear", "size_bytes": "linear"}
STATUS_COLORS = {"estimated": "#e08e0b", "fine-tuned": "#2a7f62", "failed": "#c0392b"}
STATUS_MARKERS = {"estimated": "circle", "fine-tuned": "circle", "failed": "square_x"}
TABLE_COLUMNS = {"label": "label", "status": "status", "test_pct": "test acc %", "val_pct": "val acc %",
                 "vs_fp32": "vs FP32 (pts)", "reason": "reason", "throughput": "inferences/s", "latency_ms": "latency ms",
                 "energy_mj": "energy mJ", "size_kb": "size KB", "steps": "steps", "distill": "distill",
                 "key": "key"}


class FrontierState(param.Parameterized):
    """What the Frontier tab adds to a workspace; no Panel import."""

    brushed = param.List(default=None, allow_None=True, item_type=str,
                         doc="keys of the points inside the brushed box; None = no brush (every point)")
    heatmap_scope = param.Selector(default="Pareto points", objects=["Pareto points", "all points"],
                                   doc="rows of the per-layer heat map")
    profile_b = param.Selector(default=None, objects=[], allow_None=True,
                               doc="a second accelerator profile to cost the same plans on")

    def __init__(self, profiles: list[str], profile_a: str, **params):
        super().__init__(**params)
        self.param.profile_b.objects = list(profiles)
        if self.profile_b is None:
            self.profile_b = next((p for p in profiles if p != profile_a), profile_a)


# ---- labels and numbers ------------------------------------------------------------------------
def point_label(name: str, status: str, steps: int) -> str:
    """'W4A4 ×5 · 400 steps', 'W4A4 · estimate' or 'W4A4 · failed': the plan and its budget."""
    if status == "failed":
        budget = "failed"
    elif status == "estimated" or not steps:
        budget = "estimate"
    else:
        budget = f"{int(steps)} steps"
    return f"{name} · {budget}"


def sig(v, digits: int = 3):
    """``v`` rounded to ``digits`` significant digits (None/NaN pass through as NaN)."""
    if v is None or not np.isfinite(v):
        return float("nan")
    if v == 0:
        return 0.0
    return round(float(v), digits - 1 - math.floor(math.log10(abs(v))))


def y_label(y: str) -> str:
    if y in VS_FP32:
        return _split(y) + " accuracy − FP32 (points; below 0 = drop)"
    return _split(y) + " accuracy (%)"


def _split(y: str) -> str:
    return "validation" if y.startswith("val") else "test"


def y_display(points: pd.DataFrame, y: str) -> pd.Series:
    """The y column as drawn: a fraction (accuracy, or its change vs FP32); the axis ticks
    show it as % / points, and data coordinates stay those of the workspace's points."""
    return pd.to_numeric(points[y], errors="coerce").astype(float)


def reference_accuracy(points: pd.DataFrame, y: str) -> float | None:
    """The FP32 baseline on the same split as ``y``, as a fraction (0 on the vs-FP32 axes)."""
    if y in VS_FP32:
        return 0.0
    col = ACCURACY.get(y)
    if points is None or col not in points.columns:
        return None
    vals = pd.to_numeric(points[col], errors="coerce").dropna()
    return float(vals.median()) if len(vals) else None


# ---- the scatter ---------------------------------------------------------------------------------
def plot_frame(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points ready to draw, in the order of ``points`` (so a selection index maps back to a key).

    Failed points have no accuracy: they sit on a strip below the lowest scored point, drawn as
    a red crossed square; their hover says why they failed.
    """
    df = points.reset_index(drop=True).copy()
    df["x"] = pd.to_numeric(df[x], errors="coerce")
    df["y"] = y_display(df, y)
    ok = df["y"].dropna()
    ref = reference_accuracy(points, y)
    hi = max([*ok.tolist(), *([ref] if ref is not None else [])], default=1.0)
    lo = min([*ok.tolist(), *([ref] if ref is not None else [])], default=0.0)
    floor = lo - 0.08 * max(hi - lo, 0.01)
    failed = df["y"].isna()
    df.loc[failed, "y"] = floor
    if failed.any() and df["x"].notna().any():
        df.loc[failed & df["x"].isna(), "x"] = df["x"].min()
    smax = df["size_bytes"].max() if len(df) else 1.0
    df["marker_size"] = 9 + 12 * np.sqrt(df["size_bytes"].fillna(0) / (smax if smax and smax > 0 else 1.0))
    df.loc[failed, "marker_size"] = 12
    df["marker"] = df["status"].map(STATUS_MARKERS).fillna("circle")
    df["acc_text"] = [_acc_text(r, y) for r in df.to_dict("records")]
    return df


def pct_text(v: float | None, y: str) -> str:
    """A y value as analysts read it: '97.12 %', or '-1.39 pts' on the vs-FP32 axes."""
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{100 * v:+.2f} pts" if y in VS_FP32 else f"{100 * v:.2f} %"


def _acc_text(row: dict, y: str) -> str:
    if row.get("status") == "failed":
        return "failed: " + str(row.get("reason") or "no reason recorded")
    v = row.get(y)
    if v is None or not np.isfinite(v):
        return "not scored on this split"
    return pct_text(v, y) + (" vs FP32" if y in VS_FP32 else "")


def front_frame(front: pd.DataFrame | None, x: str, y: str) -> pd.DataFrame:
    """The Pareto points as a line, sorted along x."""
    if front is None or len(front) == 0:
        return pd.DataFrame({"x": [], "y": []}, dtype=float)
    f = front.sort_values(x)
    return pd.DataFrame({"x": pd.to_numeric(f[x]).to_numpy(float), "y": y_display(f, y).to_numpy(float)})


def estimate_links(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """One segment per fine-tuned point, from its plan's no-training estimate up to its accuracy.

    The estimate is the estimated point of the same plan when there is one (same split as ``y``);
    otherwise, on the validation axes only, the fine-tune's own ``estimate_val_accuracy``.
    """
    cols = ["x0", "y0", "x1", "y1", "label", "gain"]
    if points is None or points.empty:
        return pd.DataFrame(columns=cols, dtype=float)
    df = points.reset_index(drop=True)
    yv = y_display(df, y)
    estimates = {}
    for i, r in df.iterrows():
        if r["status"] == "estimated" and np.isfinite(yv[i]):
            estimates.setdefault(r.get("plan_digest"), yv[i])
    rows = []
    for i, r in df.iterrows():
        if r["status"] != "fine-tuned" or not np.isfinite(yv[i]) or not np.isfinite(r[x]):
            continue
        est = estimates.get(r.get("plan_digest"))
        if est is None and y.startswith("val") and np.isfinite(r.get("estimate_val_accuracy", np.nan)):
            est = r["estimate_val_accuracy"]
            if y in VS_FP32:
                est -= r.get("baseline_val_accuracy", np.nan)
        if est is None or not np.isfinite(est):
            continue
        rows.append({"x0": r[x], "y0": est, "x1": r[x], "y1": yv[i], "label": r["label"], "gain": yv[i] - est})
    return pd.DataFrame(rows, columns=cols)


def brushed_keys(frame: pd.DataFrame, bounds) -> list[str]:
    """Keys of the drawn points (a ``plot_frame``) inside the box (x0, y0, x1, y1)."""
    if bounds is None or frame is None or frame.empty:
        return []
    x0, y0, x1, y1 = bounds
    xlo, xhi, ylo, yhi = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    inside = frame["x"].between(xlo, xhi) & frame["y"].between(ylo, yhi)
    return frame.loc[inside, "key"].tolist()


# ---- the results table -----------------------------------------------------------------------------
def table_frame(points: pd.DataFrame, y: str, brushed: list[str] | None = None,
                failed_jobs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The results table: rounded numbers with their units in the header; brushed points only
    when a brush is set; failed jobs that left no evaluation are listed with their reason."""
    df = points if points is not None else pd.DataFrame()
    if brushed is not None and len(df):
        df = df[df["key"].isin(brushed)]
    split = "val" if y.startswith("val") else "test"
    rows = []
    for r in df.to_dict("records"):
        acc, base = r.get(f"{split}_accuracy"), r.get(f"baseline_{split}_accuracy")
        rows.append({"label": r["label"], "status": r["status"], "test_pct": _pct(r.get("test_accuracy")),
                     "val_pct": _pct(r.get("val_accuracy")),
                     "vs_fp32": _pct(acc - base) if _finite(acc) and _finite(base) else float("nan"),
                     "throughput": sig(r.get("throughput")), "latency_ms": sig(_scale(r.get("latency_s"), 1e3)),
                     "energy_mj": sig(_scale(r.get("energy_j"), 1e3)), "size_kb": sig(_scale(r.get("size_bytes"), 1e-3)),
                     "steps": int(r.get("steps") or 0), "distill": bool(r.get("distill")),
                     "reason": r.get("reason") or "", "key": r["key"]})
    if failed_jobs is not None and brushed is None:
        for r in failed_jobs.to_dict("records"):
            rows.append({"label": point_label(r["label"] or "job", "failed", 0), "status": "failed",
                         "reason": r["reason"], "key": "job:" + r["id"]})
    out = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return out.rename(columns=TABLE_COLUMNS)


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and np.isfinite(v)


def _pct(v) -> float:
    return round(100.0 * v, 2) if _finite(v) else float("nan")


def _scale(v, k):
    return v * k if _finite(v) else None


# ---- heat map, loss curve, profile comparison ------------------------------------------------------
def heatmap_frame(evaluations: dict, keys: list[str], labels: dict[str, str], layers: list[str]) -> pd.DataFrame:
    """One cell per (point, layer): weight and activation bits, widening and sparsity.

    Rows follow ``keys`` (best first); the layer column keeps the network's order through a
    numbered name, since a heat map's categorical axes are otherwise sorted."""
    rows = []
    width = len(str(len(layers)))
    for key in keys:
        ev = evaluations.get(key)
        if ev is None:
            continue
        try:
            configs = Plan.from_dict(ev.plan).resolve(layers)
        except PlanError:
            continue
        for i, name in enumerate(layers):
            c = configs[name]
            sp = c.sparsity if c.sparsity != "unstructured" else f"{c.sparsity_fraction:.0%} unstructured"
            rows.append({"layer": f"{i + 1:0{width}d} {name}", "point": labels.get(key, key), "w_bits": c.w_bits,
                         "a_bits": c.a_bits, "widen": c.widen, "sparsity": sp, "key": key})
    return pd.DataFrame(rows, columns=["layer", "point", "w_bits", "a_bits", "widen", "sparsity", "key"])


def heatmap_keys(points: pd.DataFrame, front: pd.DataFrame | None, scope: str, y: str) -> list[str]:
    """The heat map's rows: the Pareto points (or every scored point), best accuracy first."""
    src = front if scope == "Pareto points" else points
    if src is None or src.empty:
        return []
    src = src[src["status"] != "failed"]
    return src.sort_values(y, ascending=False)["key"].tolist()


def loss_frame(ev) -> pd.DataFrame:
    """A fine-tune's training loss, one row per logged step."""
    curve = list(getattr(ev, "loss_curve", None) or [])
    steps = int(getattr(ev, "steps", 0) or 0)
    n = len(curve)
    stride = steps / n if n and steps else 1.0
    return pd.DataFrame({"step": [round((i + 1) * stride) for i in range(n)], "loss": [float(v) for v in curve]})


def profile_compare_frame(points: pd.DataFrame, costs_b: dict[str, dict], x: str, y: str,
                          maximize_x: bool, maximize_y: bool) -> pd.DataFrame:
    """The same points costed on profile A (the workspace's) and profile B, each marked with
    whether it is on that profile's Pareto front."""
    from engine.explore.frontier import pareto
    cols = ["key", "label", "status", "y", "acc_text", "x_a", "x_b", "front_a", "front_b"]
    if points is None or points.empty:
        return pd.DataFrame(columns=cols)
    df = points.reset_index(drop=True)
    out = pd.DataFrame({"key": df["key"], "label": df["label"], "status": df["status"], "y": y_display(df, y),
                        "acc_text": [pct_text(v, y) for v in y_display(df, y)],
                        "x_a": pd.to_numeric(df[x], errors="coerce"),
                        "x_b": pd.to_numeric(df["key"].map(lambda k: costs_b.get(k, {}).get(x)), errors="coerce")})
    for side in ("a", "b"):
        f = pareto(out, x=f"x_{side}", y="y", maximize=[maximize_x, maximize_y])
        out[f"front_{side}"] = out.index.isin(f.index)
    return out[cols]
