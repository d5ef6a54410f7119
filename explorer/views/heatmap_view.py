"""Per-layer heat map of the plans on the frontier: what the good plans have in common."""
from __future__ import annotations

import holoviews as hv
import pandas as pd
import panel as pn
import param

from explorer.state.frontier import heatmap_frame, heatmap_keys, pct_text
from explorer.state.workspace import Workspace


def heatmap_element(cells: pd.DataFrame) -> hv.Overlay:
    """Rows = points (best on top), columns = layers, colour = weight bits, text = W/A bits."""
    if cells.empty:
        return hv.HeatMap(pd.DataFrame({"layer": [], "point": [], "w_bits": []}), ["layer", "point"], "w_bits")
    cells = cells.assign(text=[f"{w}/{a}" + (f" ×{wd:g}" if wd != 1 else "")
                               for w, a, wd in zip(cells["w_bits"], cells["a_bits"], cells["widen"])])
    # categorical rows are drawn bottom-up in order of appearance: the best point goes last
    rank = {p: i for i, p in enumerate(dict.fromkeys(cells["point"]))}
    cells = cells.assign(_r=cells["point"].map(rank)).sort_values("_r", ascending=False, kind="stable")
    n_rows = cells["point"].nunique()
    hm = hv.HeatMap(cells, ["layer", "point"], ["w_bits", "a_bits", "widen", "sparsity"]).opts(
        cmap="viridis_r", clim=(1, 32), logz=True, colorbar=True, tools=["hover"], xrotation=30, responsive=True,
        height=120 + 34 * n_rows, xlabel="layer (network order)", ylabel="", title="Bits per layer",
        colorbar_opts={"title": "weight bits"},
        hover_tooltips=[("plan", "@point"), ("layer", "@layer"), ("weight bits", "@w_bits"),
                        ("activation bits", "@a_bits"), ("widen", "@widen"), ("sparsity", "@sparsity")])
    labels = hv.Labels(cells, ["layer", "point"], "text").opts(text_font_size="8pt", text_color="white")
    return hm * labels


class HeatmapView(pn.viewable.Viewer):
    """The heat map with its scope picker (Pareto points or every point)."""

    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        ws = self.workspace
        fs = ws.frontier_state
        self.scope = pn.widgets.RadioButtonGroup.from_param(fs.param.heatmap_scope, name="rows")
        self.plot = pn.pane.HoloViews(None, sizing_mode="stretch_width", name="heatmap-plot")
        self.note = pn.pane.Markdown("", margin=(0, 10))
        ws.param.watch(self.refresh, ["points", "x_axis", "y_axis", "only_finetuned"])
        fs.param.watch(self.refresh, ["heatmap_scope"])
        ws.tiers.param.watch(self.refresh, ["only_confirmed"])
        self.refresh()

    def cells(self) -> pd.DataFrame:
        ws = self.workspace
        pts = ws.points
        keys = heatmap_keys(pts, ws.frontier(), ws.frontier_state.heatmap_scope, ws.y_axis)
        by_key = pts.set_index("key") if pts is not None and len(pts) else pd.DataFrame()
        width = len(str(len(keys)))
        labels = {}
        for i, k in enumerate(keys):
            r = by_key.loc[k]
            labels[k] = f"{i + 1:0{width}d}. {r['label']} ({pct_text(r[ws.y_axis], ws.y_axis)})"
        evals = {k: ws.evaluation(k) for k in keys}
        return heatmap_frame(evals, keys, labels, list(ws.topology.names))

    def refresh(self, *_):
        cells = self.cells()
        self.plot.object = heatmap_element(cells)
        self.plot.height = 120 + 34 * max(1, cells["point"].nunique())
        self.note.object = ("Run some plans to fill the heat map." if cells.empty else
                            "Cells: weight/activation bits (×widening). Rows ranked by accuracy, best on top.")

    def __panel__(self):
        return pn.Column(pn.Row(pn.pane.Markdown("**Bits per layer of**"), self.scope), self.note, self.plot,
                         sizing_mode="stretch_width")
