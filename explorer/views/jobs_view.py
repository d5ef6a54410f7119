"""Launch fine-tunes and estimates; watch their progress; cancel; see why one failed."""
from __future__ import annotations

import panel as pn
import param

from explorer.state.workspace import Workspace

COLORS = {"queued": "secondary", "running": "primary", "done": "success", "failed": "danger", "cancelled": "warning"}


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
        self.list = pn.Column(sizing_mode="stretch_width", name="job-list")
        ws.param.watch(self._render, ["jobs"])
        ws.param.watch(self._readonly, ["read_only"])
        self._render()
        self._readonly()

    def _readonly(self, *_):
        for w in (self.finetune, self.estimate):
            w.disabled = self.workspace.read_only

    def _render(self, *_):
        df = self.workspace.jobs
        items = []
        if df is not None:
            for r in df.iloc[::-1].to_dict("records"):
                bar = pn.indicators.Progress(value=int(100 * r["progress"]), max=100, width=200, height=14,
                                             bar_color=COLORS.get(r["state"], "secondary"))
                cancel = pn.widgets.Button(name="Cancel", width=70, button_type="light",
                                           visible=r["state"] in ("queued", "running"))
                cancel.on_click(lambda e, jid=r["id"]: self.workspace.cancel(jid))
                detail = {"failed": r["error"], "running": r["message"]}.get(r["state"], "")
                items.append(pn.Column(
                    pn.pane.HTML(f'<b>{r["label"]}</b><br><span class="job-state">{r["state"]}</span> '
                                 f'<span style="color:#666;font-size:11px">{detail}</span>', width=280, margin=(2, 5)),
                    pn.Row(bar, cancel, margin=(0, 5)), css_classes=["job-row"]))
        self.list.objects = items or [pn.pane.HTML('<span style="color:#666">No jobs yet.</span>')]

    def __panel__(self):
        return pn.Column(pn.Row(self.steps, self.distill, align="end"), pn.Row(self.finetune, self.estimate),
                         self.list, sizing_mode="stretch_width")
