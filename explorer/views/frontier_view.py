"""The accuracy-throughput frontier: every point, the Pareto line, a linked table, a compare view."""
from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from explorer.state.workspace import X_AXES, Y_AXES, Workspace

STATUS_COLORS = {"estimated": "#f0a202", "fine-tuned": "#2a7f62", "failed": "#c0392b"}
TABLE_COLUMNS = ["label", "status", "test_accuracy", "val_accuracy", "throughput", "latency_s", "energy_j",
                 "size_bytes", "steps", "distill", "reason"]


def plot_frame(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points ready to draw: failed points sit at accuracy 0 so they stay visible."""
    df = points.copy()
    df["y"] = df[y].fillna(0.0)
    df["x"] = df[x]
    smax = df["size_bytes"].max() if len(df) else 1.0
    df["marker_size"] = 8 + 14 * np.sqrt(df["size_bytes"].fillna(0) / (smax or 1.0))
    return df


def frontier_elements(ws: Workspace, points: pd.DataFrame):
    x, y = ws.x_axis, ws.y_axis
    df = plot_frame(points, x, y)
    vdims = ["y", "status", "label", "summary", "test_accuracy", "val_accuracy", "throughput", "size_bytes",
             "marker_size", "key", "reason"]
    lo = float(df["y"].min()) if len(df) else 0.0
    scatter = hv.Scatter(df, "x", vdims).opts(
        ylim=(max(0.0, lo - 0.05) if lo > 0 else -0.02, 1.01),
        color="status", cmap=STATUS_COLORS, size="marker_size", tools=["hover", "tap"], line_color="white",
        xlabel=X_AXES[x], ylabel=Y_AXES[y], responsive=True, height=420, framewise=True, padding=0.08,
        logx=x != "size_bytes" and len(df) > 1 and bool((df["x"] > 0).all()), show_legend=True,
        hover_tooltips=[("plan", "@label"), ("layers", "@summary"), ("status", "@status"),
                        ("test acc", "@test_accuracy{0.0000}"), ("val acc", "@val_accuracy{0.0000}"),
                        ("throughput", "@throughput{0.00a} inf/s"), ("size", "@size_bytes{0.0a} B"),
                        ("note", "@reason")],
        nonselection_alpha=0.5, title="Accuracy vs " + X_AXES[x].split(" (")[0])
    front = ws.frontier()
    if front is not None and len(front) > 1:
        f = front.sort_values(x)
        curve = hv.Curve(f, x, y).opts(interpolation="steps-pre" if x == "throughput" else "steps-post",
                                       color="#333", line_dash="dashed", framewise=True)
    else:
        curve = hv.Curve([], "x", "y").opts(framewise=True)
    return scatter, curve


class FrontierView(pn.viewable.Viewer):
    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        ws = self.workspace
        deps = (ws.param.points, ws.param.x_axis, ws.param.y_axis, ws.param.only_finetuned)
        self._points = hv.DynamicMap(pn.bind(self._scatter, *deps))
        self._front = hv.DynamicMap(pn.bind(self._curve, *deps))
        self.selection = hv.streams.Selection1D(source=self._points)
        self.selection.param.watch(self._on_tap, "index")
        self.plot = pn.pane.HoloViews(self._points * self._front, sizing_mode="stretch_width", height=440,
                                      name="frontier-plot")
        self.x = pn.widgets.Select.from_param(ws.param.x_axis, name="x axis", width=170)
        self.y = pn.widgets.Select.from_param(ws.param.y_axis, name="y axis", width=170)
        self.only = pn.widgets.Checkbox.from_param(ws.param.only_finetuned, name="frontier from fine-tuned only")
        self.table = pn.widgets.Tabulator(pd.DataFrame(columns=TABLE_COLUMNS), selectable=1, show_index=False,
                                          disabled=True, height=240, sizing_mode="stretch_width",
                                          layout="fit_data_stretch", name="results-table")
        self.table.param.watch(self._on_row, "selection")
        self.compare_a = pn.widgets.Select(name="compare A", options={}, width=220)
        self.compare_b = pn.widgets.Select(name="compare B", options={}, width=220)
        self.compare_a.link(ws, value="compare_a")
        self.compare_b.link(ws, value="compare_b")
        self.compare_table = pn.widgets.Tabulator(ws.compare(), disabled=True, show_index=False, height=240,
                                                  sizing_mode="stretch_width", name="compare-table")
        ws.param.watch(self._refresh, ["points", "x_axis", "y_axis", "only_finetuned"])
        ws.param.watch(self._refresh_compare, ["compare_a", "compare_b", "points"])
        self._refresh()

    def _scatter(self, *_):
        return frontier_elements(self.workspace, self._frame())[0]

    def _curve(self, *_):
        return frontier_elements(self.workspace, self._frame())[1]

    def _frame(self) -> pd.DataFrame:
        return self.workspace.points.reset_index(drop=True)

    def _refresh(self, *_):
        df = self._frame()
        self.table.value = df[TABLE_COLUMNS] if len(df) else pd.DataFrame(columns=TABLE_COLUMNS)
        options = {f"{r['label']} [{r['status']}]": r["key"] for r in df.to_dict("records")}
        self.compare_a.options = options
        self.compare_b.options = options

    def _refresh_compare(self, *_):
        self.compare_table.value = self.workspace.compare()

    def _key_at(self, i: int) -> str | None:
        df = self._frame()
        return df.iloc[i]["key"] if 0 <= i < len(df) else None

    def _on_tap(self, event):
        if event.new:
            key = self._key_at(event.new[0])
            if key:
                self.workspace.select(key, load=not self.workspace.read_only)
                self.table.selection = [event.new[0]]

    def _on_row(self, event):
        if event.new:
            key = self._key_at(event.new[0])
            if key and key != self.workspace.selected:
                self.workspace.select(key, load=not self.workspace.read_only)

    def __panel__(self):
        return pn.Column(pn.Row(self.x, self.y, self.only, align="end"), self.plot, self.table,
                         pn.pane.Markdown("**Compare two plans, layer by layer**"),
                         pn.Row(self.compare_a, self.compare_b), self.compare_table, sizing_mode="stretch_width")
