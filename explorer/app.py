"""The bitscape dashboard: an app factory (importing this module starts nothing)."""
from __future__ import annotations

import panel as pn
from panel.io.callbacks import PeriodicCallback

from explorer.state.workspace import Workspace
from explorer.views.cost_view import CostView
from explorer.views.frontier_view import FrontierView
from explorer.views.jobs_view import JobsView
from explorer.views.plan_editor import PlanEditor
from explorer.views.search_view import SearchView
from explorer.views.sensitivity_view import SensitivityView
from explorer.views.session_view import SessionView

POLL_MS = 500


def build_layout(ws: Workspace) -> pn.viewable.Viewable:
    """The dashboard for one workspace (used by the server and by tests)."""
    pn.extension("tabulator", notifications=False)
    pickers = pn.Column(
        pn.widgets.Select.from_param(ws.param.model, name="model"),
        pn.widgets.Select.from_param(ws.param.dataset, name="dataset"),
        pn.widgets.Select.from_param(ws.param.profile, name="accelerator profile"),
        pn.widgets.IntInput.from_param(ws.param.batch, name="batch size"),
        sizing_mode="stretch_width")
    jobs = JobsView(workspace=ws)
    banner = pn.pane.Alert("", alert_type="warning", visible=False, name="readonly-banner")

    def _banner(*_):
        banner.object = (f"Read-only view of session **{ws.session_name}**. Use *Save a copy* under Session to edit."
                         if ws.read_only else "")
        banner.visible = ws.read_only

    ws.param.watch(_banner, ["read_only", "session_name"])
    _banner()
    plan_tab = pn.Column(PlanEditor(workspace=ws), CostView(workspace=ws), SensitivityView(workspace=ws),
                         sizing_mode="stretch_width")
    tabs = pn.Tabs(("Plan & cost", plan_tab), ("Frontier", FrontierView(workspace=ws)),
                   ("Session & export", SessionView(workspace=ws)), dynamic=True, sizing_mode="stretch_width")
    # Bootstrap: every resource is served by Panel itself (the FAST templates fetch fonts from the
    # internet, and their web components cost each browser seconds of script time)
    return pn.template.BootstrapTemplate(
        title="bitscape: low-precision, wide and sparse network explorer",
        sidebar=[pickers, pn.Card(SearchView(workspace=ws), title="Search", sizing_mode="stretch_width"),
                 pn.pane.Markdown("### Jobs"), jobs], main=[pn.Column(banner, tabs, sizing_mode="stretch_width")],
        sidebar_width=330, header_background="#24445c",
        busy_indicator=None)  # Panel's busy flag is process-wide: one user's work would spin everyone's indicator


def create_app(store=None, runner=None) -> pn.viewable.Viewable:
    """One fresh workspace per browser session; ``?session=<id>`` opens a shared session read-only."""
    ws = Workspace(store=store, runner=runner)
    query = pn.state.location.query_params if pn.state.location else {}
    sid = query.get("session")
    if sid:
        ws.open_session(str(sid), read_only=True)
    layout = build_layout(ws)
    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        # a background callback: a foreground one would raise Panel's process-wide busy flag, and with
        # it a message to every open session, twice a second per session
        cb = PeriodicCallback(callback=ws.poll, period=POLL_MS, background=True)
        cb.start()
        pn.state.on_session_destroyed(lambda ctx: cb.stop())
        pn.state.on_session_destroyed(lambda ctx: ws.search.cancel())  # no one is left to watch it
    layout.workspace = ws  # for tests
    return layout
