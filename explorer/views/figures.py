"""Static pictures of the frontier for export: PNG (matplotlib) and standalone HTML (Bokeh).

Both draw what the app draws (same units, same axis types, FP32 reference, estimate links)
with the legend outside the axes, so it never hides the best points.
"""
from __future__ import annotations

import html as html_lib
import io

import pandas as pd

from explorer.state.frontier import (
    KIND_COLORS,
    KIND_MARKERS,
    STATUS_COLORS,
    X_SCALE,
    estimate_links,
    front_frame,
    plot_frame,
    reference_accuracy,
    y_label,
)
from explorer.state.workspace import X_AXES

MPL_MARKERS = {"circle": "o", "triangle": "^", "diamond": "D", "square_x": "X"}   # Bokeh's names -> matplotlib's


def frontier_png(points: pd.DataFrame, front: pd.DataFrame | None, x: str, y: str, title: str = "") -> bytes:
    """The frontier as a PNG: points by status, Pareto line, FP32 reference, legend right of the axes."""
    import matplotlib.pyplot as plt
    fig = frontier_figure(points, front, x, y, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def frontier_figure(points: pd.DataFrame, front: pd.DataFrame | None, x: str, y: str, title: str = ""):
    """The matplotlib figure behind ``frontier_png`` (the caller closes it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    frame = plot_frame(points, x, y)
    fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=120)
    for i, (_, link) in enumerate(estimate_links(points, x, y).iterrows()):
        ax.plot([link.x0, link.x1], [link.y0, link.y1], color=STATUS_COLORS["fine-tuned"], alpha=0.5, lw=2,
                label="estimate → fine-tuned" if i == 0 else None)
    for kind, grp in frame.groupby("kind"):
        failed = kind == "failed"
        ax.scatter(grp["x"], grp["y"], label=kind, color=KIND_COLORS.get(kind, "#888"), s=60 if failed else 40,
                   marker=MPL_MARKERS.get(KIND_MARKERS.get(kind), "o"), edgecolors=None if failed else "white",
                   zorder=3)
    f = front_frame(front, x, y)
    if len(f) > 1:
        ax.step(f["x"], f["y"], where="pre" if x == "throughput" else "post", color="#333", linestyle="--",
                label="Pareto frontier")
    ref = reference_accuracy(points, y)
    if ref is not None:
        ax.axhline(ref, color="#5b6ee1", linestyle="-.", lw=1.5,
                   label="FP32 reference" + ("" if y.endswith("vs_fp32") else f" {100 * ref:.2f} %"))
    ax.set_xscale(X_SCALE[x])
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(y_label(y))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g}"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)
    return fig


def frontier_html(element, title: str = "bitscape frontier") -> str:
    """A standalone HTML page of a HoloViews element: BokehJS inlined, no other file or URL loaded.

    Bokeh's own ``INLINE`` bundle is not enough once Panel is imported: it also lists every
    registered extension's scripts (Panel's relative ``static/`` paths, a MathJax CDN URL), so
    the page is built from the plot's ``components`` and BokehJS's raw inline code only.
    """
    import holoviews as hv
    from bokeh.embed import components
    from bokeh.resources import Resources

    if isinstance(element, (hv.Overlay, hv.DynamicMap)):
        element = element.opts(legend_position="right")
    plot = hv.render(element, backend="bokeh")
    script, div = components(plot)
    res = Resources(mode="inline", components=["bokeh", "bokeh-gl", "bokeh-widgets"])
    js = "\n".join(f"<script type=\"text/javascript\">\n{code}\n</script>" for code in res.js_raw)
    css = "\n".join(f"<style>\n{code}\n</style>" for code in res.css_raw)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html_lib.escape(title)}</title>\n{css}\n{js}\n"
            f"<style>html, body {{ margin: 0; padding: 8px; font-family: sans-serif; }}</style>\n</head>\n"
            f"<body>\n<div style=\"width: 100%; height: 90vh;\">{div}</div>\n{script}\n</body>\n</html>\n")


def frontier_page(points: pd.DataFrame, front: pd.DataFrame | None, x: str, y: str, title: str) -> str:
    """The app's frontier plot (same elements and axis types) as a standalone HTML page."""
    from .frontier_plot import frontier_overlay
    return frontier_html(frontier_overlay(points, front, x, y).opts(title=title), title=title)
