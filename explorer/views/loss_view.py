"""The training loss of the selected point's fine-tune."""
from __future__ import annotations

import html

import holoviews as hv
import panel as pn
import param

from explorer.state.frontier import loss_frame
from explorer.state.workspace import Workspace


class LossView(pn.viewable.Viewer):
    """Follows the workspace's selected point: its loss curve, or why there is none."""

    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        self.title = pn.pane.HTML("", name="loss-title", margin=(0, 10))
        self.plot = pn.pane.HoloViews(None, sizing_mode="stretch_width", height=260, name="loss-plot",
                                      visible=False)
        self.workspace.param.watch(self.refresh, ["selected", "points"])
        self.refresh()

    def refresh(self, *_):
        ws = self.workspace
        ev = ws.evaluation(ws.selected) if ws.selected else None
        label = ""
        if ev is not None and ws.points is not None:
            match = ws.points[ws.points["key"] == ws.selected]
            label = match.iloc[0]["label"] if len(match) else ws.selected
        df = loss_frame(ev) if ev is not None else None
        if ev is None:
            self.title.object = "<i>Tap a point on the frontier to see its training loss.</i>"
        elif df is None or df.empty:
            why = ("a no-training estimate has no loss curve" if ev.status == "estimated"
                   else f"it failed: {ev.reason or 'no reason recorded'}" if ev.status == "failed"
                   else "no loss was recorded")
            self.title.object = f"<b>{html.escape(label)}</b>: {html.escape(why)}."
        else:
            self.title.object = (f"<b>Training loss of {html.escape(label)}</b> "
                                 f"({len(df)} logged values over {ev.steps} steps)")
        has_curve = df is not None and not df.empty
        self.plot.visible = has_curve
        if has_curve:
            self.plot.object = hv.Curve(df, "step", "loss").opts(
                color="#2a7f62", line_width=2, tools=["hover"], responsive=True, height=240,
                xlabel="fine-tuning step", ylabel="training loss")

    def __panel__(self):
        return pn.Column(self.title, self.plot, sizing_mode="stretch_width")
