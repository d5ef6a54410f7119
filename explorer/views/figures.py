"""Static pictures of the frontier for export: PNG (matplotlib) and standalone HTML (Bokeh)."""
from __future__ import annotations

import io

import pandas as pd

from explorer.state.workspace import X_AXES, Y_AXES

STATUS_COLORS = {"estimated": "#f0a202", "fine-tuned": "#2a7f62", "failed": "#c0392b"}


def frontier_png(points: pd.DataFrame, front: pd.DataFrame | None, x: str, y: str, title: str = "") -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for status, grp in points.groupby("status"):
        ax.scatter(grp[x], grp[y].fillna(0.0), label=status, color=STATUS_COLORS.get(status, "#888"), s=40,
                   edgecolors="white")
    if front is not None and len(front) > 1:
        f = front.sort_values(x)
        ax.step(f[x], f[y], where="pre" if x == "throughput" else "post", color="#333", linestyle="--",
                label="Pareto frontier")
    if len(points) and (points[x] > 0).all() and x != "size_bytes":
        ax.set_xscale("log")
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(Y_AXES[y])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def frontier_html(element, title: str = "bitscape frontier") -> str:
    """A standalone HTML page of a HoloViews element (Bokeh's resources inlined, works offline)."""
    import holoviews as hv
    from bokeh.embed import file_html
    from bokeh.resources import INLINE
    return file_html(hv.render(element, backend="bokeh"), INLINE, title)
