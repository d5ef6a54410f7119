"""The same evaluated plans costed on two accelerator profiles, side by side."""
from __future__ import annotations

import html

import holoviews as hv
import pandas as pd
import panel as pn
import param

from explorer.state.frontier import profile_compare_frame, sig, y_label
from explorer.state.workspace import X_AXES, Workspace

from .frontier_plot import y_ticks

FRONT_COLORS = {"on the Pareto front": "#2a7f62", "dominated": "#9aa5b1"}


def profile_plot(df: pd.DataFrame, side: str, profile: str, x: str, y: str) -> hv.Overlay:
    """One profile's view of the points: x costed on ``profile``, Pareto members highlighted."""
    xcol = f"x_{side}"
    d = df.dropna(subset=[xcol, "y"]).assign(
        where=lambda t: t[f"front_{side}"].map({True: "on the Pareto front", False: "dominated"}))
    d = d.rename(columns={xcol: f"x{side}"})
    pts = hv.Scatter(d, f"x{side}", ["y", "where", "label", "acc_text"]).opts(
        color="where", cmap=FRONT_COLORS, size=10, tools=["hover"], responsive=True, height=320,
        xlabel=f"{X_AXES[x]} on {profile}", ylabel=y_label(y), yformatter=y_ticks(), title=f"profile {profile}", framewise=True, padding=0.1,
        hover_tooltips=[("plan", "@label"), ("accuracy", "@acc_text"), (x, f"@x{side}{{0.000a}}")])
    f = d[d["where"] == "on the Pareto front"].sort_values(f"x{side}")
    line = hv.Curve(f, f"x{side}", "y").opts(color="#333", line_dash="dashed",
                                              interpolation="steps-pre" if x == "throughput" else "steps-post")
    return (line * pts).opts(show_legend=False)  # the summary line says what the colours mean


class ProfileCompareView(pn.viewable.Viewer):
    """Profile A is the workspace's; profile B is picked here."""

    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        ws = self.workspace
        fs = ws.frontier_state
        self.picker = pn.widgets.Select.from_param(fs.param.profile_b, name="compare with profile", width=200)
        self.plot_a = pn.pane.HoloViews(None, sizing_mode="stretch_width", height=340, name="profile-a-plot")
        self.plot_b = pn.pane.HoloViews(None, sizing_mode="stretch_width", height=340, name="profile-b-plot")
        self.summary = pn.pane.HTML("", margin=(0, 10), name="profile-compare-summary")
        ws.param.watch(self.refresh, ["points", "profile", "batch", "x_axis", "y_axis"])
        fs.param.watch(self.refresh, ["profile_b"])
        self.refresh()

    def frame(self) -> pd.DataFrame:
        ws = self.workspace
        x = ws.x_axis
        costs = ws.costs_on(ws.frontier_state.profile_b) if ws.frontier_state.profile_b else {}
        return profile_compare_frame(ws.points, costs, x, ws.y_axis, maximize_x=x == "throughput", maximize_y=True)

    def refresh(self, *_):
        ws = self.workspace
        a, b, x = ws.profile, ws.frontier_state.profile_b, ws.x_axis
        df = self.frame()
        if df.empty or not b:
            self.plot_a.object = self.plot_b.object = None
            self.summary.object = "<i>Evaluated plans appear here, costed on both profiles.</i>"
            return
        self.plot_a.object = profile_plot(df, "a", a, x, ws.y_axis)
        self.plot_b.object = profile_plot(df, "b", b, x, ws.y_axis)
        on_a = set(df.loc[df["front_a"], "label"])
        on_b = set(df.loc[df["front_b"], "label"])
        ratio = (df["x_b"] / df["x_a"]).dropna()
        speed = (f" Median {x} ratio {html.escape(b)}/{html.escape(a)}: {sig(ratio.median())}."
                 if len(ratio) else "")

        def names(s):
            return ", ".join(html.escape(n) for n in sorted(s)) or "none"

        self.summary.object = ("<span style='color:#2a7f62'>●</span> on that profile's Pareto front, "
                               "<span style='color:#9aa5b1'>●</span> dominated. "
                               f"Pareto plans on <b>{html.escape(a)}</b> only: {names(on_a - on_b)}; "
                               f"on <b>{html.escape(b)}</b> only: {names(on_b - on_a)}; on both: {names(on_a & on_b)}."
                               + speed)

    def __panel__(self):
        return pn.Column(pn.Row(pn.pane.Markdown("**Same plans, two accelerator profiles** "
                                                 "(A is the sidebar's profile)"), self.picker),
                         self.summary, pn.Row(self.plot_a, self.plot_b, sizing_mode="stretch_width"),
                         sizing_mode="stretch_width")
