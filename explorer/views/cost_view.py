"""Live cost of the plan being edited: totals and where the time goes, per layer."""
from __future__ import annotations

import holoviews as hv
import panel as pn
import param

from explorer.state.workspace import Workspace


def _si(v: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}"


class CostView(pn.viewable.Viewer):
    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        self.totals = pn.pane.HTML(sizing_mode="stretch_width", name="cost-totals")
        # a Pipe streams new data into one Bokeh plot instead of rebuilding it on every edit
        self._pipe = hv.streams.Pipe(data=self._frame())
        self.bars = pn.pane.HoloViews(hv.DynamicMap(self._bars, streams=[self._pipe]), sizing_mode="stretch_width",
                                      height=300)
        self.workspace.param.watch(self._update, ["rows", "totals"])
        self._update()

    def _frame(self):
        return self.workspace.rows[["layer", "time_us", "share", "runs_as", "note"]].copy()

    @staticmethod
    def _bars(data):
        return hv.Bars(data, "layer", ["time_us", "share", "runs_as", "note"]).opts(
            tools=["hover"], xrotation=45, ylabel="time per inference (µs)", xlabel="", color="#3b6ea5",
            responsive=True, height=280, title="Where the time goes", default_tools=["save"], framewise=True)

    def _update(self, *_):
        t = self.workspace.totals
        cards = [("throughput", _si(t["throughput"], "inf/s")), ("latency", _si(t["latency_s"], "s")),
                 ("energy", _si(t["energy_j"], "J")), ("model size", _si(t["size_bytes"], "B")),
                 ("bit-ops", _si(t["bops"], "")), ("MACs", _si(t["macs"], ""))]
        html = "".join(f'<div class="bs-card"><div class="bs-k">{k}</div><div class="bs-v" data-metric="{k}">{v}</div></div>'
                       for k, v in cards)
        self.totals.object = (
            "<style>.bs-cards{display:flex;gap:10px;flex-wrap:wrap}.bs-card{border:1px solid #ddd;border-radius:6px;"
            "padding:6px 12px;min-width:110px}.bs-k{font-size:11px;color:#666}.bs-v{font-size:18px;font-weight:600}</style>"
            f'<div class="bs-cards">{html}</div><div style="font-size:11px;color:#666;margin-top:4px">'
            f'profile <b>{t["profile"]}</b> at batch {t["batch"]}: {t.get("title", "")}</div>')
        self._pipe.send(self._frame())

    def __panel__(self):
        return pn.Column(self.totals, self.bars, sizing_mode="stretch_width")
