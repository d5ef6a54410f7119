"""The Frontier tab: every point with its FP32 reference and Pareto line, a brushable results
table, the selected point's loss curve, a per-layer heat map, a two-profile comparison and a
two-plan comparison. The pieces live in frontier_plot, heatmap_view, loss_view and
profile_compare_view; data shaping is in explorer.state.frontier."""
from __future__ import annotations

import html

import holoviews as hv
import pandas as pd
import panel as pn
import param

from explorer.state.frontier import (
    TABLE_COLUMNS,
    brushed_keys,
    plot_frame,
    reference_accuracy,
    table_frame,
)
from explorer.state.workspace import X_AXES, Y_AXES, Workspace

from .frontier_plot import (
    LEGEND,
    front_element,
    links_element,
    points_element,
    reference_element,
)
from .heatmap_view import HeatmapView
from .loss_view import LossView
from .profile_compare_view import ProfileCompareView
from .tier_controls import TierControls

PLOT_DEPS = ("points", "x_axis", "y_axis", "only_finetuned")


def frontier_elements(ws: Workspace, points: pd.DataFrame):
    """(points, everything else) of the frontier plot on the workspace's axes (for exports)."""
    x, y = ws.x_axis, ws.y_axis
    frame = plot_frame(points, x, y)
    rest = links_element(points, x, y) * front_element(ws.frontier(), x, y) * reference_element(points, frame, y)
    return points_element(frame, x, y), rest


def failed_jobs(ws: Workspace) -> pd.DataFrame:
    """This session's failed jobs on this model and dataset that left no evaluation behind (they
    failed before scoring, e.g. no FP32 baseline, or the worker died): label and reason."""
    cols = ["id", "label", "reason"]
    jobs = ws.jobs
    if jobs is None or jobs.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for r in jobs[jobs["state"] == "failed"].to_dict("records"):
        try:
            info = ws.runner.status(r["id"])
        except KeyError:
            continue
        if info.result is None and (info.model, info.dataset) == (ws.model, ws.dataset):
            rows.append({"id": r["id"], "label": r["label"], "reason": r["error"] or r["message"] or "failed"})
    return pd.DataFrame(rows, columns=cols)


def _formatters() -> dict:
    """Accuracy with 2 decimals; other numbers as rounded (3 significant digits), no trailing zeros."""
    from bokeh.models.widgets.tables import NumberFormatter
    fixed = NumberFormatter(format="0.00", text_align="right")
    plain = NumberFormatter(format="0,0.[000000]", text_align="right")
    return {**{c: fixed for c in ("test acc %", "val acc %", "vs FP32 (pts)")},
            **{c: plain for c in ("inferences/s", "latency ms", "energy mJ", "size KB")}}


def _axis_picker(ws: Workspace, name: str, labels: dict, title: str, width: int) -> pn.widgets.Select:
    """A select showing the axes' readable names, kept in step with the workspace both ways."""
    sel = pn.widgets.Select(name=title, options={v: k for k, v in labels.items()}, value=getattr(ws, name),
                            width=width)
    sel.param.watch(lambda e: e.new and setattr(ws, name, e.new), "value")
    ws.param.watch(lambda e: setattr(sel, "value", e.new), name)
    return sel


class FrontierView(pn.viewable.Viewer):
    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        ws = self.workspace
        self.state = fs = ws.frontier_state
        deps = [ws.param[d] for d in PLOT_DEPS] + [ws.tiers.param.only_confirmed]
        # one DynamicMap per layer; the streams' source is the points layer alone
        self._points = hv.DynamicMap(pn.bind(self._points_el, *deps))
        layers = [hv.DynamicMap(pn.bind(fn, *deps)) for fn in (self._links_el, self._front_el, self._ref_el)]
        self.selection = hv.streams.Selection1D(source=self._points)
        self.bounds = hv.streams.BoundsXY(source=self._points)
        self.selection.param.watch(self._on_tap, "index")
        self.bounds.param.watch(self._on_brush, "bounds")
        overlay = (layers[0] * layers[1] * layers[2] * self._points).opts(**LEGEND)
        self.plot = pn.pane.HoloViews(overlay, sizing_mode="stretch_width", height=460, name="frontier-plot")
        self.x = _axis_picker(ws, "x_axis", X_AXES, "x axis", 230)
        self.y = _axis_picker(ws, "y_axis", Y_AXES, "y axis", 300)
        self.only = pn.widgets.Checkbox.from_param(ws.param.only_finetuned, name="frontier from fine-tuned only")
        self.tier_controls = TierControls(workspace=ws)
        self.reference = pn.pane.HTML("", name="frontier-reference", margin=(0, 10))
        self.brush_note = pn.pane.HTML("", name="brush-note", margin=(0, 10))
        self.clear_brush = pn.widgets.Button(name="Show all points", button_type="light", width=140, visible=False)
        self.clear_brush.on_click(lambda _: setattr(fs, "brushed", None))
        self.table = pn.widgets.Tabulator(table_frame(None, ws.y_axis), selectable=1, show_index=False,
                                          disabled=True, height=260, sizing_mode="stretch_width",
                                          layout="fit_data_stretch", name="results-table",
                                          hidden_columns=["key"], formatters=_formatters())
        self.table.param.watch(self._on_row, "selection")
        self.loss = LossView(workspace=ws)
        self.heatmap = HeatmapView(workspace=ws)
        self.profiles = ProfileCompareView(workspace=ws)
        self.compare_a = pn.widgets.Select(name="compare A", options={}, width=260)
        self.compare_b = pn.widgets.Select(name="compare B", options={}, width=260)
        # a watcher, not .link: an emptied option list sets the widget to None, which the
        # workspace's string parameter refuses (switching model raised ValueError here)
        self.compare_a.param.watch(lambda e: setattr(ws, "compare_a", e.new or ""), "value")
        self.compare_b.param.watch(lambda e: setattr(ws, "compare_b", e.new or ""), "value")
        self.compare_table = pn.widgets.Tabulator(ws.compare(), disabled=True, show_index=False, height=240,
                                                  sizing_mode="stretch_width", name="compare-table")
        self._failed_job_ids: tuple = ()
        ws.param.watch(self._refresh, list(PLOT_DEPS))
        ws.param.watch(self._on_jobs, "jobs")
        ws.param.watch(self._forget_brush, ["model", "dataset"])
        ws.param.watch(self._refresh_compare, ["compare_a", "compare_b", "points"])
        fs.param.watch(self._refresh, ["brushed"])
        ws.tiers.param.watch(self._refresh, ["only_confirmed"])
        self._refresh()

    # ---- plot layers ----------------------------------------------------------------------
    def _drawn(self) -> pd.DataFrame:
        ws = self.workspace
        return plot_frame(ws.points, ws.x_axis, ws.y_axis)

    def _points_el(self, *_):
        ws = self.workspace
        return points_element(self._drawn(), ws.x_axis, ws.y_axis)

    def _links_el(self, *_):
        ws = self.workspace
        return links_element(ws.points, ws.x_axis, ws.y_axis)

    def _front_el(self, *_):
        ws = self.workspace
        return front_element(ws.frontier(), ws.x_axis, ws.y_axis)

    def _ref_el(self, *_):
        ws = self.workspace
        return reference_element(ws.points, self._drawn(), ws.y_axis)

    # ---- table and notes ------------------------------------------------------------------
    def _refresh(self, *_):
        ws = self.workspace
        pts = ws.points
        brushed = self.state.brushed
        self._failed_jobs = failed_jobs(ws)
        self.table.value = table_frame(pts, ws.y_axis, brushed, self._failed_jobs)
        n = 0 if pts is None else len(pts)
        if brushed is None:
            self.brush_note.object = ("<i>Drag with the box-select tool to list only the points in a region.</i>"
                                      if n else "")
        else:
            self.brush_note.object = f"Table: <b>{len(brushed)} of {n}</b> points inside the brushed box."
        self.clear_brush.visible = brushed is not None
        self.reference.object = self._reference_text()
        options = {f"{r['label']} ({r['key'][:6]})": r["key"] for r in pts.to_dict("records")} if n else {}
        self.compare_a.options = options
        self.compare_b.options = options
        self._mark_selected()

    def _reference_text(self) -> str:
        ws = self.workspace
        pts = ws.points
        fj = self._failed_jobs
        unscored = "".join(f"<br><span style='color:#c0392b'>Job {html.escape(str(r['label']))} failed before it "
                           f"was scored (nothing to plot): {html.escape(str(r['reason']))}</span>"
                           for r in fj.to_dict("records"))
        if pts is None or pts.empty:
            return ("<i>No points yet: run an estimate (0 steps) or a fine-tune of the plan; "
                    "its point appears here.</i>") + unscored
        test, val = reference_accuracy(pts, "test_accuracy"), reference_accuracy(pts, "val_accuracy")
        parts = [f"{name} {100 * v:.2f} %" for name, v in (("test", test), ("validation", val)) if v is not None]
        text = (f"FP32 reference ({html.escape(ws.model)} on {html.escape(ws.dataset)}): " + ", ".join(parts)
                if parts else "No FP32 reference recorded with these points.")
        failed = int((pts["status"] == "failed").sum())
        if failed:
            text += f" · <span style='color:#c0392b'>{failed} failed (red crossed squares at the bottom; reason in the table)</span>"
        return text + unscored

    def _mark_selected(self):
        key = self.workspace.selected
        keys = list(self.table.value["key"]) if len(self.table.value) else []
        want = [keys.index(key)] if key in keys else []
        if self.table.selection != want:
            self.table.selection = want

    def _refresh_compare(self, *_):
        self.compare_table.value = self.workspace.compare()

    def _on_jobs(self, event):
        jobs = event.new
        ids = tuple(jobs.loc[jobs["state"] == "failed", "id"]) if jobs is not None and len(jobs) else ()
        if ids != self._failed_job_ids:  # the table follows failures, not every progress tick
            self._failed_job_ids = ids
            self._refresh()

    def _forget_brush(self, *_):
        self.state.brushed = None

    # ---- interaction ----------------------------------------------------------------------
    def _select(self, key: str | None):
        ws = self.workspace
        if key and not key.startswith("job:") and key != ws.selected:
            ws.select(key, load=not ws.read_only)
        self._mark_selected()

    def _on_tap(self, event):
        if len(event.new) == 1:  # a box holding several points is a brush, not a pick
            frame = self._drawn()
            i = event.new[0]
            if 0 <= i < len(frame):
                self._select(frame.iloc[i]["key"])

    def _on_brush(self, event):
        if event.new is not None:
            self.state.brushed = brushed_keys(self._drawn(), event.new)

    def _on_row(self, event):
        if event.new:
            df = self.table.value
            i = event.new[0]
            if 0 <= i < len(df):
                self._select(df.iloc[i]["key"])

    def __panel__(self):
        return pn.Column(pn.Row(self.x, self.y, self.only, self.tier_controls.only, align="end"), self.reference,
                         self.plot, self.tier_controls,
                         pn.Row(self.brush_note, self.clear_brush), self.table, self.loss,
                         pn.layout.Divider(), self.heatmap,
                         pn.layout.Divider(), self.profiles,
                         pn.layout.Divider(), pn.pane.Markdown("**Compare two plans, layer by layer**"),
                         pn.Row(self.compare_a, self.compare_b), self.compare_table, sizing_mode="stretch_width")


__all__ = ["TABLE_COLUMNS", "FrontierView", "frontier_elements"]
