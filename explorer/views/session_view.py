"""Save, open, share, export and import sessions; download results and the frontier."""
from __future__ import annotations

import io

import panel as pn
import param

from explorer.state.workspace import Workspace

from .figures import frontier_html, frontier_png
from .frontier_view import frontier_elements


class SessionView(pn.viewable.Viewer):
    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        ws = self.workspace
        self.name_input = pn.widgets.TextInput(name="session name", placeholder="e.g. lenet5 4-bit study", width=220)
        self.save = pn.widgets.Button(name="Save session", button_type="primary", width=130)
        self.save.on_click(self._on_save)
        self.sessions = pn.widgets.Select(name="saved sessions", options={}, width=260)
        self.open = pn.widgets.Button(name="Open", width=80)
        self.open.on_click(self._on_open)
        self.link = pn.pane.HTML("", name="share-link")
        self.status = pn.pane.Alert("", alert_type="info", visible=False, name="session-status")
        self.import_file = pn.widgets.FileInput(accept=".json", name="import session file", width=230)
        self.import_file.param.watch(self._on_import, "value")
        self.export_file = pn.widgets.FileDownload(callback=lambda: io.StringIO(ws.export_session_file()),
                                                   filename="bitscape-session.json", label="Export session file",
                                                   width=180)
        self.csv = pn.widgets.FileDownload(callback=lambda: io.StringIO(ws.results_csv()), filename="results.csv",
                                           label="Results (CSV)", width=140)
        self.png = pn.widgets.FileDownload(callback=self._png, filename="frontier.png", label="Frontier (PNG)",
                                           width=140)
        self.html = pn.widgets.FileDownload(callback=self._html, filename="frontier.html",
                                            label="Frontier (HTML)", width=140)
        self.onnx = pn.widgets.FileDownload(callback=lambda: self._network("onnx"), filename="bitscape-model.onnx",
                                            label="Selected point: ONNX", width=180)
        self.packed = pn.widgets.FileDownload(callback=lambda: self._network("packed"),
                                              filename="bitscape-model.packed.safetensors",
                                              label="Selected point: packed model", width=210)
        ws.param.watch(self._sync, ["session_id", "message", "read_only"])
        self._sync()
        self.refresh_sessions()

    def refresh_sessions(self):
        self.sessions.options = {f"{s['name']} ({s['model']} on {s['dataset']})": s["id"]
                                 for s in self.workspace.saved_sessions()}

    def _on_save(self, _):
        try:
            self.workspace.save_session(self.name_input.value)
        except ValueError as e:
            self.workspace.message = str(e)
        self.refresh_sessions()

    def _on_open(self, _):
        if self.sessions.value:
            self.workspace.open_session(self.sessions.value)

    def _on_import(self, event):
        if event.new:
            self.workspace.import_session_file(event.new)
            self.refresh_sessions()

    def _network(self, kind: str):
        blob = self.workspace.export_selected(kind)
        return io.BytesIO(blob if blob is not None else b"")

    def _png(self):
        ws = self.workspace
        return io.BytesIO(frontier_png(ws.points, ws.frontier(), ws.x_axis, ws.y_axis,
                                       f"{ws.model} on {ws.dataset}, profile {ws.profile}"))

    def _html(self):
        ws = self.workspace
        scatter, curve = frontier_elements(ws, ws.points.reset_index(drop=True))
        return io.StringIO(frontier_html(scatter * curve))

    def _sync(self, *_):
        ws = self.workspace
        saved = ws.session_id and ws.session_name
        self.link.object = (f'Share link: <a class="share-link" href="?session={ws.session_id}">?session={ws.session_id}</a>'
                            " (opens read-only)" if saved else "Save the session to get a share link.")
        self.status.object = ws.message
        self.status.visible = bool(ws.message)
        self.status.alert_type = "danger" if "refused" in ws.message or "no such" in ws.message else "info"
        self.save.name = "Save a copy" if ws.read_only else "Save session"

    def __panel__(self):
        return pn.Column(self.status, pn.Row(self.name_input, pn.Column(pn.Spacer(height=18), self.save)),
                         pn.Row(self.sessions, pn.Column(pn.Spacer(height=18), self.open)), self.link,
                         pn.Row(self.export_file, self.import_file),
                         pn.pane.Markdown("**Downloads**"), pn.Row(self.csv, self.png, self.html),
                         pn.Row(self.onnx, self.packed),
                         sizing_mode="stretch_width")
