"""The bitscape dashboard: an app factory (importing this module starts nothing)."""
from __future__ import annotations

import panel as pn
from panel.io.callbacks import PeriodicCallback

from explorer.identity import current_owner
from explorer.state.workspace import Workspace
from explorer.views.batch_input import BatchInput
from explorer.views.cost_view import CostView
from explorer.views.frontier_view import FrontierView
from explorer.views.jobs_view import JobsView
from explorer.views.notice import notice_html
from explorer.views.plan_editor import PlanEditor
from explorer.views.search_view import SearchView
from explorer.views.sensitivity_view import SensitivityView
from explorer.views.session_view import SessionView

POLL_MS = 500
AUTOSAVE_MS = 1500        # edits are written to the working copy at most this often (a debounce)
SESSION_LIST_MS = 10_000  # the session list rereads the store this often (one cheap query)


def build_pickers(ws: Workspace) -> tuple[pn.Column, list]:
    """Model, dataset, profile and batch pickers; their labels say what is missing to use an option."""
    model = pn.widgets.Select.from_param(ws.param.model, name="model")
    dataset = pn.widgets.Select.from_param(ws.param.dataset, name="dataset")
    profile = pn.widgets.Select.from_param(ws.param.profile, name="accelerator profile")
    batch = BatchInput(workspace=ws)

    def relabel(*_):
        # labelled options: the browser sees the label, the workspace only ever gets a listed value
        ws.param.model.objects = ws.model_options
        ws.param.dataset.objects = ws.dataset_options

    ws.param.watch(relabel, ["model", "dataset"])
    relabel()
    return pn.Column(model, dataset, profile, batch, sizing_mode="stretch_width"), [model, dataset, profile, batch.input]


def banner_html(ws: Workspace) -> str:
    if not ws.read_only:
        return ""
    return notice_html(f"Read-only view of session \u201c{ws.session_name}\u201d. "
                       "Use \u201cSave a copy\u201d under Session & export to edit it.", "warning",
                       css_class="bs-notice readonly-banner")


def lock_when_read_only(ws: Workspace, widgets: list) -> None:
    """Disable every listed control while the workspace is read-only (the workspace refuses too)."""
    widgets = [w for w in widgets if w is not None]

    def sync(*_):
        for w in widgets:
            w.disabled = ws.read_only

    ws.param.watch(sync, ["read_only"])
    sync()


def build_layout(ws: Workspace) -> pn.viewable.Viewable:
    """The dashboard for one workspace (used by the server and by tests)."""
    pn.extension("tabulator", notifications=False)
    pickers, picker_widgets = build_pickers(ws)
    jobs = JobsView(workspace=ws)
    banner = pn.pane.HTML("", visible=False, name="readonly-banner", sizing_mode="stretch_width")

    def _banner(*_):
        banner.object = banner_html(ws)
        banner.visible = ws.read_only

    ws.param.watch(_banner, ["read_only", "session_name"])
    _banner()
    # the jobs view's own settings widgets (steps, distil) change what a job would run: locked too
    lock_when_read_only(ws, picker_widgets + [getattr(jobs, "steps", None), getattr(jobs, "distill", None)])
    sessions = SessionView(workspace=ws)
    plan_tab = pn.Column(PlanEditor(workspace=ws), CostView(workspace=ws), SensitivityView(workspace=ws),
                         sizing_mode="stretch_width")
    tabs = pn.Tabs(("Plan & cost", plan_tab), ("Frontier", FrontierView(workspace=ws)),
                   ("Session & export", sessions), dynamic=True, sizing_mode="stretch_width")
    tabs.param.watch(lambda e: sessions.refresh_sessions() if e.new == 2 else None, ["active"])
    # Bootstrap: every resource is served by Panel itself (the FAST templates fetch fonts from the
    # internet, and their web components cost each browser seconds of script time)
    return pn.template.BootstrapTemplate(
        title="bitscape: low-precision, wide and sparse network explorer",
        sidebar=[pickers, pn.Card(SearchView(workspace=ws), title="Search", sizing_mode="stretch_width"),
                 pn.pane.Markdown("### Jobs"), jobs], main=[pn.Column(banner, tabs, sizing_mode="stretch_width")],
        sidebar_width=330, header_background="#24445c",
        busy_indicator=None)  # Panel's busy flag is process-wide: one user's work would spin everyone's indicator


def local_resources(doc) -> None:
    """Point a session document's stylesheets at this server from the start.

    Panel resolves a model's stylesheet URLs (loading.css, the theme, widget CSS) against the
    document's ``dist_url``, which it sets only when the page's HTML is rendered; models made
    before that point at the CDN (no network here, and a request off the machine). Setting it
    first keeps every resource on this server.
    """
    from panel.io.resources import LOCAL_DIST
    if doc is not None and "dist_url" not in doc._template_variables:
        doc._template_variables["dist_url"] = f"{pn.state.rel_path}/{LOCAL_DIST}" if pn.state.rel_path else LOCAL_DIST


def _keep_url(ws: Workspace) -> None:
    """Put the working copy's id in the address bar (``?ws=<id>``) so that a reload restores it."""
    loc = pn.state.location
    if loc is None:
        return

    def sync(*_):
        if ws.work_id:
            loc.search = f"?ws={ws.work_id}"

    ws.param.watch(sync, ["work_id"])
    sync()


def create_app(store=None, runner=None) -> pn.viewable.Viewable:
    """One fresh workspace per browser session; ``?session=<id>`` opens a shared session read-only and
    ``?ws=<id>`` reopens this browser's autosaved working copy (another browser's: read-only).

    The workspace's owner is this browser's identity (identity.current_owner)."""
    local_resources(pn.state.curdoc)
    ws = Workspace(store=store, runner=runner, owner=current_owner())
    query = pn.state.location.query_params if pn.state.location else {}
    if query.get("ws"):
        ws.sessions.restore(str(query["ws"]))
    elif query.get("session"):
        ws.sessions.open(str(query["session"]), read_only=True)
    layout = build_layout(ws)
    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        # background callbacks: a foreground one would raise Panel's process-wide busy flag, and with
        # it a message to every open session, twice a second per session
        cbs = [PeriodicCallback(callback=ws.poll, period=POLL_MS, background=True),
               PeriodicCallback(callback=ws.sessions.autosave, period=AUTOSAVE_MS, background=True),
               PeriodicCallback(callback=ws.session_list.refresh, period=SESSION_LIST_MS, background=True)]
        for cb in cbs:
            cb.start()
        _keep_url(ws)

        def _stop(ctx):
            for cb in cbs:
                cb.stop()
            ws.sessions.autosave()  # the last edits before the tab closed
            ws.search.cancel()  # no one is left to watch it
        pn.state.on_session_destroyed(_stop)
    layout.workspace = ws  # for tests
    return layout
