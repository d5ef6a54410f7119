"""Launch fine-tunes and estimates; watch their progress; cancel; see why one failed.

Each job keeps one row of widgets for its whole life, updated in place on every poll: a row
rebuilt twice a second would swap its Cancel button for a new one under the user's click.
"""
from __future__ import annotations

from html import escape

import panel as pn
import param

from explorer.state.workspace import Workspace

COLORS = {"queued": "secondary", "running": "primary", "done": "success", "failed": "danger", "cancelled": "warning"}
ACTIVE = ("queued", "running")
EMPTY = '<span style="color:#666">No jobs yet.</span>'


class JobRow:
    """The widgets of one job: label, state and detail; a progress bar; a Cancel button."""

    def __init__(self, job_id: str, on_cancel):
        self.id = job_id
        self.text = pn.pane.HTML("", width=280, margin=(2, 5))
        self.bar = pn.indicators.Progress(value=0, max=100, width=200, height=14, bar_color="secondary")
        self.cancel = pn.widgets.Button(name="Cancel", width=70, button_type="light", css_classes=["job-cancel"])
        self.cancel.on_click(lambda e: on_cancel(self.id))
        self.panel = pn.Column(self.text, pn.Row(self.bar, self.cancel, margin=(0, 5)), css_classes=["job-row"])
        self._shown: dict = {}

    def update(self, r: dict, read_only: bool = False) -> None:
        """Show a job's current state; only what changed is sent to the browser."""
        state = r["state"]
        detail = {"failed": r["error"], "running": r["message"]}.get(state, "")
        html = (f'<b>{escape(str(r["label"] or ""))}</b><br><span class="job-state">{escape(state)}</span> '
                f'<span class="job-detail" style="color:#666;font-size:11px">{escape(str(detail or ""))}</span>')
        new = {"html": html, "value": round(100 * float(r["progress"])),
               "color": COLORS.get(state, "secondary"), "cancellable": state in ACTIVE and not read_only}
        if new == self._shown:
            return
        if new["html"] != self._shown.get("html"):
            self.text.object = new["html"]
        if new["value"] != self._shown.get("value"):
            self.bar.value = new["value"]
        if new["color"] != self._shown.get("color"):
            self.bar.bar_color = new["color"]
        if new["cancellable"] != self._shown.get("cancellable"):
            self.cancel.visible = new["cancellable"]
        self._shown = new


class JobsView(pn.viewable.Viewer):
    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        ws = self.workspace
        self.steps = pn.widgets.IntInput.from_param(ws.param.steps, name="fine-tune steps", width=110)
        self.distill = pn.widgets.Checkbox.from_param(ws.param.distill, name="distil from FP32 teacher", width=160)
        self.finetune = pn.widgets.Button(name="Fine-tune plan", button_type="primary", width=120)
        self.estimate = pn.widgets.Button(name="Estimate (no training)", width=160)
        self.finetune.on_click(lambda e: ws.submit())
        self.estimate.on_click(lambda e: ws.submit(steps=0))
        self.rows: dict[str, JobRow] = {}
        self._empty = pn.pane.HTML(EMPTY)
        self.list = pn.Column(self._empty, sizing_mode="stretch_width", name="job-list")
        ws.param.watch(self._render, ["jobs"])
        ws.param.watch(self._readonly, ["read_only"])
        self._render()
        self._readonly()

    def _readonly(self, *_):
        for w in (self.finetune, self.estimate):
            w.disabled = self.workspace.read_only
        self._render()

    def _cancel(self, job_id: str) -> None:
        self.workspace.cancel(job_id)

    def _render(self, *_):
        df = self.workspace.jobs
        records = [] if df is None else df.to_dict("records")
        ids = [r["id"] for r in records]
        for r in records:
            row = self.rows.get(r["id"])
            if row is None:
                row = self.rows[r["id"]] = JobRow(r["id"], self._cancel)
            row.update(r, self.workspace.read_only)
        gone = set(self.rows) - set(ids)
        for jid in gone:
            del self.rows[jid]
        order = [self.rows[j].panel for j in reversed(ids)] or [self._empty]  # newest first
        if [id(o) for o in self.list.objects] != [id(o) for o in order]:
            self.list.objects = order

    def __panel__(self):
        return pn.Column(pn.Row(self.steps, self.distill, align="end"), pn.Row(self.finetune, self.estimate),
                         self.list, sizing_mode="stretch_width")
