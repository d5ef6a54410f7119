"""Launch a search (sweep) from the dashboard, watch its progress and hypervolume, cancel it."""
from __future__ import annotations

import html

import holoviews as hv
import pandas as pd
import panel as pn
import param

from explorer.state.workspace import Workspace

SERIES = {"hv_estimates": ("estimates", "#f0a202"), "hv_finetuned": ("fine-tuned", "#2a7f62")}
BAR_COLORS = {"running": "primary", "done": "success", "failed": "danger", "cancelled": "warning", "idle": "secondary"}


def hv_chart(history: pd.DataFrame) -> hv.Overlay:
    """Hypervolume of the estimated and of the fine-tuned front against elapsed time, each from its
    first point on, one marker per point (the sweep reports the fine-tuned one once anything is
    fine-tuned)."""
    layers = []
    for col, (label, color) in SERIES.items():
        df = history[history[col] > 0] if len(history) else pd.DataFrame(columns=["elapsed_s", col, "evaluations"])
        df = df.astype({"elapsed_s": float, col: float})
        layers.append(hv.Curve(df, "elapsed_s", [col, "evaluations"], label=label).opts(
            color=color, interpolation="steps-post", line_width=2, framewise=True))
        layers.append(hv.Scatter(df, "elapsed_s", [col, "evaluations"], label=label).opts(
            color=color, size=5, tools=["hover"], framewise=True))
    return hv.Overlay(layers).opts(
        xlabel="elapsed (s)", ylabel="hypervolume", responsive=True, height=190, legend_position="bottom",
        title="Hypervolume", toolbar=None, framewise=True, padding=0.08)


class SearchView(pn.viewable.Viewer):
    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        ws = self.workspace
        s = ws.search
        self.method = pn.widgets.Select.from_param(s.param.method, name="method", width=85)
        self.budget = pn.widgets.IntInput.from_param(s.param.budget, name="estimates", width=72)
        self.finetune = pn.widgets.IntInput.from_param(s.param.finetune, name="fine-tunes", width=72)
        self.steps = pn.widgets.IntInput.from_param(s.param.steps, name="steps each", width=90)
        self.profile = pn.widgets.Select.from_param(s.param.profile, name="profile (throughput)", width=150)
        self.confirm = pn.widgets.Checkbox.from_param(s.param.confirm, name="confirm the Pareto points at the end")
        self.plan_text = pn.pane.HTML("", sizing_mode="stretch_width", name="search-plan", margin=(0, 5))
        self.start = pn.widgets.Button(name="Start search", button_type="primary", width=120)
        self.stop = pn.widgets.Button(name="Cancel search", button_type="light", width=120)
        self.start.on_click(lambda e: s.start())
        self.stop.on_click(lambda e: s.cancel())
        self.bar = pn.indicators.Progress(value=0, max=1, height=14, bar_color="secondary",
                                         sizing_mode="stretch_width")
        self.status = pn.pane.HTML("", sizing_mode="stretch_width", name="search-status", margin=(0, 5))
        self.chart = pn.pane.HoloViews(hv.DynamicMap(pn.bind(hv_chart, s.param.hv_history)),
                                       sizing_mode="stretch_width", height=200, name="search-hv")
        # shown from the first point on (toggling the HoloViews pane's own ``visible`` trips Panel 1.9)
        self.chart_box = pn.Column(self.chart, visible=False, sizing_mode="stretch_width", margin=0)
        s.param.watch(self._render, ["status", "running", "phase", "done", "total", "message", "elapsed_s",
                                     "plan_text", "hv_history"])
        ws.param.watch(self._render, ["read_only"])
        s.describe_time()
        self._render()

    def _render(self, *_):
        s, ro = self.workspace.search, self.workspace.read_only
        for w in (self.method, self.budget, self.finetune, self.steps, self.profile, self.confirm):
            w.disabled = s.running or ro
        self.start.disabled = s.running or ro
        self.stop.disabled = not s.running
        self.plan_text.object = f'<span style="color:#555;font-size:12px">{html.escape(s.plan_text)}</span>'
        self.bar.max = max(1, s.total)
        self.bar.value = min(s.done, self.bar.max)
        self.bar.bar_color = BAR_COLORS.get(s.status, "secondary")
        phase = f"{s.phase} " if s.running else ""
        head = "" if s.status == "idle" else (
            f'<b class="search-state">{html.escape(s.status)}</b> '
            f'{html.escape(phase)}{s.done}/{s.total} &middot; {s.elapsed_s:.0f} s<br>')
        self.status.object = f'{head}<span style="color:#555;font-size:12px">{html.escape(s.message)}</span>'
        self.chart_box.visible = len(s.hv_history) > 0

    def __panel__(self):
        return pn.Column(pn.Row(self.method, self.budget, self.finetune), pn.Row(self.steps, self.profile),
                         self.confirm, self.plan_text, pn.Row(self.start, self.stop), self.bar, self.status, self.chart_box,
                         sizing_mode="stretch_width", name="search-card")
