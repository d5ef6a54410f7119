"""HoloViews elements of the frontier plot, shared by the app and the HTML export.

Each layer (points, Pareto line, FP32 reference, estimate -> fine-tune links) is its own
element so the app can put each in its own DynamicMap; the legend sits right of the axes so
it never hides the best points.
"""
from __future__ import annotations

import holoviews as hv
import holoviews.plotting.bokeh
import pandas as pd

from explorer.state.frontier import (
    KIND_COLORS,
    X_SCALE,
    estimate_links,
    front_frame,
    plot_frame,
    reference_accuracy,
    y_label,
)
from explorer.state.workspace import X_AXES

POINT_VDIMS = ["y", "kind", "status", "tier", "label", "summary", "acc_text", "throughput", "size_bytes", "marker_size", "marker",
               "key", "reason"]
PLOT_HEIGHT = 440
LEGEND = {"legend_position": "right", "show_legend": True}


def y_ticks():
    """Tick labels of a fraction axis in % (or percentage points): 0.9712 -> '97.12'."""
    from bokeh.models import CustomJSTickFormatter
    return CustomJSTickFormatter(code="return parseFloat((tick * 100).toFixed(2)).toString();")


def _marker_per_point(plot, element) -> None:
    """Keep each point's marker read from its ``marker`` column. HoloViews turns a column whose
    values are all equal into one fixed marker and keeps it when points of another tier arrive
    (the first confirmed point would be drawn as a circle); this hook runs after every update."""
    from bokeh.core.properties import field
    renderer = plot.handles.get("glyph_renderer")
    for name in ("glyph", "selection_glyph", "nonselection_glyph", "hover_glyph", "muted_glyph"):
        glyph = getattr(renderer, name, None)
        if glyph is not None and not isinstance(glyph, str) and hasattr(glyph, "marker"):
            glyph.marker = field("marker")


def points_element(frame: pd.DataFrame, x: str, y: str) -> hv.Scatter:
    """Every point, its colour and marker by tier (estimated, quick, confirmed; failed ones a red
    crossed square on the bottom strip), one legend entry each."""
    data = frame if len(frame) else pd.DataFrame({c: [] for c in ["x", *POINT_VDIMS]})
    return hv.Scatter(data, "x", POINT_VDIMS).opts(
        color="kind", cmap=KIND_COLORS, size="marker_size", marker="marker", line_color="white",
        tools=["hover", "tap", "box_select"], active_tools=["tap"], xlabel=X_AXES[x], ylabel=y_label(y), yformatter=y_ticks(),
        logx=X_SCALE[x] == "log", responsive=True, height=PLOT_HEIGHT, framewise=True, padding=0.08,
        hover_tooltips=[("plan", "@label"), ("tier", "@kind"), ("layers", "@summary"), ("accuracy", "@acc_text"),
                        ("throughput", "@throughput{0.00a} inf/s"), ("size", "@size_bytes{0.0a} B")],
        nonselection_alpha=0.35, hooks=[_marker_per_point], title="Accuracy vs " + X_AXES[x].split(" (")[0])


def front_element(front: pd.DataFrame | None, x: str, y: str) -> hv.Curve:
    f = front_frame(front, x, y)
    return hv.Curve(f, "x", "y", label="Pareto frontier").opts(
        interpolation="steps-pre" if x == "throughput" else "steps-post", color="#333", line_dash="dashed",
        framewise=True)


def reference_element(points: pd.DataFrame, frame: pd.DataFrame, y: str) -> hv.Curve:
    """The FP32 baseline on the same split, as a horizontal line across the points."""
    ref = reference_accuracy(points, y)
    xs = frame["x"].dropna() if len(frame) else pd.Series(dtype=float)
    if ref is None or xs.empty:
        return hv.Curve([], "x", "y", label="FP32 reference").opts(framewise=True)
    span = (xs.max() - xs.min()) or abs(xs.max()) or 1.0
    lo, hi = xs.min() - 0.06 * span, xs.max() + 0.06 * span
    name = "FP32 reference" + ("" if y.endswith("vs_fp32") else f" {100 * ref:.2f} %")
    return hv.Curve(pd.DataFrame({"x": [lo, hi], "y": [ref, ref]}), "x", "y", label=name).opts(
        color="#5b6ee1", line_width=2, line_dash="dotdash", framewise=True)


def links_element(points: pd.DataFrame, x: str, y: str) -> hv.Segments:
    """Segments from a plan's no-training estimate to its fine-tuned accuracy (same x)."""
    links = estimate_links(points, x, y)
    links = links.assign(gain_pts=100 * links["gain"].astype(float))
    return hv.Segments(links, ["x0", "y0", "x1", "y1"], ["label", "gain_pts"], label="estimate → fine-tuned").opts(
        color="#2a7f62", line_width=2, alpha=0.55, tools=["hover"], framewise=True,
        hover_tooltips=[("plan", "@label"), ("fine-tuning gained", "@gain_pts{+0.00} pts")])


def frontier_overlay(points: pd.DataFrame, front: pd.DataFrame | None, x: str, y: str) -> hv.Overlay:
    """The whole frontier plot as one overlay (the HTML export; the app layers the same elements)."""
    frame = plot_frame(points, x, y)
    return (links_element(points, x, y) * front_element(front, x, y) * reference_element(points, frame, y)
            * points_element(frame, x, y)).opts(**LEGEND)
