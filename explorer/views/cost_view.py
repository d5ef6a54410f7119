"""Live cost of the plan being edited: totals and where the time goes, per layer."""
from __future__ import annotations

from functools import partial
from html import escape

import panel as pn
import param
from bokeh.models import ColumnDataSource, FactorRange, HoverTool
from bokeh.plotting import figure
from panel.io.state import set_curdoc

from explorer.state.workspace import Workspace


def _si(v: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}"


def cards(t: dict) -> list[tuple[str, str, str]]:
    """(metric, label, value) of each cost card; the label says what the number measures."""
    b = int(t["batch"])
    return [("throughput", f"throughput (batch {b})", _si(t["throughput"], "inf/s")),
            ("latency", "latency (batch 1, one inference)", _si(t["latency_s"], "s")),
            ("energy", f"energy (per inference, batch {b})", _si(t["energy_j"], "J")),
            ("model size", "model size", _si(t["size_bytes"], "B")),
            ("bit-ops", "bit-ops (per inference)", _si(t["bops"], "")),
            ("MACs", "MACs (per inference)", _si(t["macs"], ""))]


CARDS_CSS = (".bs-cards{display:flex;gap:10px;flex-wrap:wrap}.bs-card{border:1px solid #ddd;border-radius:6px;"
             "padding:6px 12px;min-width:110px}.bs-k{font-size:11px;color:#666}.bs-v{font-size:18px;font-weight:600}"
             ".bs-foot{font-size:11px;color:#666;margin-top:4px}")


class CostView(pn.viewable.Viewer):
    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        self.totals = pn.pane.HTML(sizing_mode="stretch_width", name="cost-totals", stylesheets=[CARDS_CSS])
        # one Bokeh figure per session whose data source is replaced on every edit: only the new
        # columns travel to the browser, and no plot is rebuilt on the server
        self._revision = 0  # shown as data-revision: browser tests and the load test wait on it
        self._source = ColumnDataSource(self._data())
        self.bars = pn.pane.Bokeh(self._figure(self._source), sizing_mode="stretch_width", height=300)
        self.workspace.param.watch(self._update, ["rows"])  # totals are always set just before rows
        self._update()

    def _data(self) -> dict:
        rows = self.workspace.rows
        return {c: list(rows[c]) for c in ("layer", "time_us", "share", "runs_as", "note")}

    @staticmethod
    def _figure(source: ColumnDataSource):
        fig = figure(x_range=FactorRange(*source.data["layer"]), height=280, sizing_mode="stretch_width",
                     title="Where the time goes", tools="save", toolbar_location="above")
        fig.vbar(x="layer", top="time_us", width=0.8, source=source, color="#3b6ea5")
        fig.add_tools(HoverTool(tooltips=[("layer", "@layer"), ("time", "@time_us{0.000} µs"),
                                          ("share", "@share{0.0} %"), ("runs as", "@runs_as"), ("note", "@note")]))
        fig.y_range.start = 0
        fig.yaxis.axis_label = "time per inference (µs)"
        fig.xaxis.major_label_orientation = 0.8
        fig.xgrid.grid_line_color = None
        return fig

    def _update(self, *_):
        self._revision += 1
        t = self.workspace.totals
        html = "".join(f'<div class="bs-card"><div class="bs-k">{escape(label)}</div>'
                       f'<div class="bs-v" data-metric="{k}">{v}</div></div>' for k, label, v in cards(t))
        self.totals.object = (
            f'<div class="bs-cards" data-revision="{self._revision}">{html}</div><div class="bs-foot">'
            f'profile <b>{escape(str(t["profile"]))}</b> at batch {int(t["batch"])}: '
            f'{escape(str(t.get("title", "")))}</div>')
        data = self._data()
        doc = self._source.document
        if doc is None:
            self._show(data)
        else:  # a raw Bokeh model: on the session's thread under its lock, wherever the edit came from
            with set_curdoc(doc):
                pn.state.execute(partial(self._show, data))

    def _show(self, data: dict) -> None:
        if data["layer"] != self._source.data["layer"]:
            self.bars.object.x_range.factors = data["layer"]
        self._source.data = data

    def __panel__(self):
        return pn.Column(self.totals, self.bars, sizing_mode="stretch_width")
