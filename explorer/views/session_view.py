"""Save, open, share, export and import sessions; download results and the frontier."""
from __future__ import annotations

import html
import io

import panel as pn
import param

from explorer.state.sessions import MAX_NAME
from explorer.state.workspace import Workspace

from .figures import frontier_html, frontier_png
from .frontier_view import frontier_elements
from .notice import Notice

COPY_JS = """
const text = inp.value;
function fallback() { const el = document.createElement('textarea'); el.value = text; document.body.appendChild(el);
  el.select(); try { document.execCommand('copy'); } catch (e) {} document.body.removeChild(el); }
if (navigator.clipboard && window.isSecureContext) { navigator.clipboard.writeText(text).catch(fallback); } else { fallback(); }
btn.label = 'Copied';
setTimeout(() => { btn.label = 'Copy link'; }, 1500);
"""


def page_base() -> str:
    """The page's absolute address without query or fragment, e.g. 'http://127.0.0.1:5006/' ('' outside a server)."""
    loc = pn.state.location
    href = getattr(loc, "href", "") or ""
    return href.split("#", 1)[0].split("?", 1)[0]


class SessionView(pn.viewable.Viewer):
    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        ws = self.workspace
        self.base = page_base()
        self.name_input = pn.widgets.TextInput(name="session name", placeholder="e.g. lenet5 4-bit study", width=220,
                                               max_length=MAX_NAME)
        self.save = pn.widgets.Button(name="Save session", button_type="primary", width=130)
        self.save.on_click(self._on_save)
        self.sessions = pn.widgets.Select(name="your sessions and those opened by link (name · model · created · id)",
                                          options={}, width=420)
        self.open = pn.widgets.Button(name="Open", width=80)
        self.open.on_click(self._on_open)
        self.delete = pn.widgets.Button(name="Delete", button_type="danger", width=80)
        self.delete.on_click(self._on_delete)
        self.refresh = pn.widgets.Button(name="Refresh list", width=100)
        self.refresh.on_click(lambda e: self.refresh_sessions())
        self.link = pn.pane.HTML("", name="share-link")
        self.link_input = pn.widgets.TextInput(name="share link (opens read-only)", value="", width=520,
                                               visible=False)
        self.copy = pn.widgets.Button(name="Copy link", width=100, visible=False)
        self.copy_callback = self.copy.js_on_click(args={"inp": self.link_input, "btn": self.copy}, code=COPY_JS)
        self.status = Notice(name="session-status")
        self.import_file = pn.widgets.FileInput(accept=".json", name="import session file", width=230)
        self.import_file.param.watch(self._on_import, ["value", "filename"])
        self.export_file = pn.widgets.FileDownload(callback=lambda: io.StringIO(ws.sessions.export_file()),
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
        self.onnx_int = pn.widgets.FileDownload(callback=lambda: self._network("onnx-integer"),
                                                filename="bitscape-model.integer.onnx",
                                                label="ONNX, integer form", width=170)
        self.packed = pn.widgets.FileDownload(callback=lambda: self._network("packed"),
                                              filename="bitscape-model.packed.safetensors",
                                              label="Selected point: packed model", width=210)
        ws.param.watch(self._sync, ["session_id", "session_name", "message", "read_only"])
        ws.session_list.param.watch(self._sync_list, ["entries"])
        self._sync()
        self.refresh_sessions()
        self._sync_list()

    def refresh_sessions(self):
        """Reread the store's session list (also run on save, import, a timer and when the tab opens)."""
        self.workspace.session_list.refresh()

    def _sync_list(self, *_):
        options = self.workspace.session_list.options
        keep = self.sessions.value if self.sessions.value in options.values() else None
        self.sessions.options = options
        if keep is not None:
            self.sessions.value = keep

    def _on_save(self, _):
        try:
            self.workspace.sessions.save(self.name_input.value)
        except ValueError as e:
            self.workspace.message = f"session not saved: {e}"

    def _on_open(self, _):
        if self.sessions.value:
            self.workspace.sessions.open(self.sessions.value)

    def _on_delete(self, _):
        if self.sessions.value:
            self.workspace.sessions.delete(self.sessions.value)

    def _on_import(self, *_):
        value, fname = self.import_file.value, self.import_file.filename
        if value is None and not fname:
            return  # the widget was cleared
        ok = self.workspace.sessions.import_file(value if value is not None else b"")
        if not ok and fname and self.workspace.message.startswith("session file refused"):
            rest = self.workspace.message[len("session file refused"):]
            self.workspace.message = f"session file refused ({fname}){rest}"

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

    def share_url(self) -> str:
        return self.workspace.sessions.share_link(self.base)

    def _sync(self, *_):
        ws = self.workspace
        url = self.share_url() if ws.session_id and ws.session_name else ""
        if url:
            self.link.object = (f'Share link of <b>{html.escape(ws.session_name)}</b>: '
                                f'<a class="share-link" href="{html.escape(url, quote=True)}" target="_blank" '
                                f'rel="noopener">{html.escape(url)}</a> (opens read-only)')
        else:
            self.link.object = "Save the session to get a share link."
        self.link_input.value = url
        self.link_input.visible = self.copy.visible = bool(url)
        msg = ws.message
        bad = any(w in msg for w in ("refused", "no such", "not opened", "not saved", "not valid", "read-only;",
                                       "not deleted", "someone else"))
        self.status.show(msg, "danger" if bad else "info")
        self.save.name = "Save a copy" if ws.read_only else "Save session"
        self.import_file.disabled = ws.read_only

    def __panel__(self):
        return pn.Column(self.status, pn.Row(self.name_input, pn.Column(pn.Spacer(height=18), self.save)),
                         pn.Row(self.sessions,
                                pn.Column(pn.Spacer(height=18), pn.Row(self.open, self.delete, self.refresh))),
                         self.link, pn.Row(self.link_input, pn.Column(pn.Spacer(height=18), self.copy)),
                         pn.Row(self.export_file, self.import_file),
                         pn.pane.Markdown("**Downloads**"), pn.Row(self.csv, self.png, self.html),
                         pn.Row(self.onnx, self.onnx_int, self.packed),
                         sizing_mode="stretch_width")
