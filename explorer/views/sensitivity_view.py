"""Per-layer sensitivity: compute it, look at it, turn it into a mixed-precision suggestion."""
from __future__ import annotations

import html

import holoviews as hv
import panel as pn
import param

from explorer.state.workspace import Workspace


class SensitivityView(pn.viewable.Viewer):
    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        ws = self.workspace
        self.method = pn.widgets.Select.from_param(ws.sens.param.method, name="sensitivity method", width=160)
        self.compute = pn.widgets.Button(name="Compute sensitivity", width=160)
        self.compute.on_click(lambda e: ws.sens.compute())
        self.suggest = pn.widgets.Button(name="Apply suggestion (8/4/2 bits by rank)", button_type="primary",
                                         width=270)
        self.suggest.on_click(lambda e: ws.sens.suggest())
        self.status = pn.pane.HTML("", name="sensitivity-status")
        self.chart = pn.pane.HoloViews(sizing_mode="stretch_width", height=240)
        ws.sens.param.watch(self._update, ["scores", "status"])
        ws.param.watch(self._update, ["read_only"])
        self._update()

    def _update(self, *_):
        ws = self.workspace
        self.status.object = f'<span style="color:#555">{html.escape(ws.sens.status)}</span>'
        df = ws.sens.scores
        self.suggest.disabled = df is None or df.empty or ws.read_only
        self.method.disabled = self.compute.disabled = ws.read_only
        if df is None or df.empty:
            self.chart.object = None
            return
        self.chart.object = hv.Bars(df, "layer", ["score", "rank"]).opts(
            tools=["hover"], xrotation=45, color="#a5573b", responsive=True, height=220, xlabel="",
            ylabel=f"{ws.sens.method} score", title="Layer sensitivity (higher = keep more bits)")

    def __panel__(self):
        return pn.Column(pn.Row(self.method, self.compute, self.suggest, align="end"), self.status, self.chart,
                         sizing_mode="stretch_width")
