"""The Frontier tab's tier controls: confirm the selected point or the Pareto points (background
jobs at the confirmed budget), draw the frontier from confirmed points only, and the quick vs
confirmed rank correlation. The work is in explorer.state.tiers."""
from __future__ import annotations

import html

import panel as pn
import param

from explorer.state.workspace import Workspace


class TierControls(pn.viewable.Viewer):
    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        ws = self.workspace
        ts = ws.tiers
        self.only = pn.widgets.Checkbox.from_param(ts.param.only_confirmed, name="frontier from confirmed points only")
        self.confirm_point = pn.widgets.Button(name="Confirm selected point", button_type="primary", width=190)
        self.confirm_front = pn.widgets.Button(name="Confirm the Pareto points", button_type="default", width=210)
        self.confirm_point.on_click(lambda _: ts.confirm([ws.selected] if ws.selected else []))
        self.confirm_front.on_click(lambda _: ts.confirm_pareto())
        self.note = pn.pane.HTML("", name="tier-note", margin=(0, 10), css_classes=["tier-note"],
                                 sizing_mode="stretch_width")
        self.agreement = pn.pane.HTML("", name="tier-agreement", margin=(0, 10), css_classes=["tier-agreement"])
        ws.param.watch(self.refresh, ["points", "selected", "read_only", "y_axis"])
        ts.param.watch(self.refresh, ["message", "budget"])
        self.refresh()

    def refresh(self, *_):
        ws = self.workspace
        ts = ws.tiers
        ev = ws.evaluation(ws.selected) if ws.selected else None
        self.confirm_point.disabled = ws.read_only or ev is None or ev.tier == "confirmed" or ev.status == "failed"
        self.confirm_front.disabled = ws.read_only or ws.points is None or ws.points.empty
        note = html.escape(ts.budget_text())
        if ts.message:
            note += " · " + html.escape(ts.message)
        self.note.object = note
        pts = ws.points
        has_confirmed = pts is not None and len(pts) and bool((pts["tier"] == "confirmed").any())
        self.agreement.object = html.escape(ts.agreement().text()) if has_confirmed else ""
        self.agreement.visible = bool(has_confirmed)

    def __panel__(self):
        return pn.Column(pn.Row(self.confirm_point, self.confirm_front), self.note, self.agreement,
                         sizing_mode="stretch_width")
