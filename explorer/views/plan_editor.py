"""The per-layer plan editor: a Tabulator of layers with presets, bulk edits and plan files."""
from __future__ import annotations

import io

import panel as pn
import param

from engine.plans.plan import BIT_CHOICES, QUANTIZERS
from explorer.state.plan_table import CARRIED, EDITABLE
from explorer.state.workspace import Workspace

from .notice import Notice

SPARSITY_CHOICES = ["none", "unstructured", "2:4", "1:4", "4:8"]
TITLES = {"layer": "layer", "kind": "kind", "shape": "shape", "macs": "MACs", "w_bits": "W bits", "a_bits": "A bits",
          "widen": "widen", "sparsity": "sparsity", "sparsity_fraction": "pruned", "quantizer": "quantizer",
          "time_us": "time µs", "share": "% time", "runs_as": "runs as", "note": "target note"}


class PlanEditor(pn.viewable.Viewer):
    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        ws = self.workspace
        editors = {c: None for c in (*TITLES, *CARRIED) if c not in EDITABLE}
        editors.update({
            "w_bits": {"type": "list", "values": list(BIT_CHOICES)},
            "a_bits": {"type": "list", "values": list(BIT_CHOICES)},
            "widen": {"type": "number", "min": 1, "max": 8, "step": 0.25},
            "sparsity": {"type": "list", "values": SPARSITY_CHOICES},
            "sparsity_fraction": {"type": "number", "min": 0, "max": 0.95, "step": 0.05},
            "quantizer": {"type": "list", "values": list(QUANTIZERS)},
        })
        self.table = pn.widgets.Tabulator(
            ws.rows, editors=editors, titles=TITLES, show_index=False, selectable="checkbox", hidden_columns=["kind", *CARRIED],
            frozen_columns=["layer"],
            layout="fit_data_stretch", height=min(520, 60 + 32 * len(ws.rows)), sizing_mode="stretch_width",
            formatters={"macs": {"type": "money", "precision": 0, "thousand": ","}}, name="plan-table")
        self.table.on_edit(self._on_edit)
        self.error = Notice(name="plan-error")
        self.preset = pn.widgets.Select.from_param(
            ws.param.preset, name="preset", width=130,
            description="Uniform bits, 2x wide or 2:4 on every layer; below 8 bits the layers reading the "
                        "network input keep it at 8 bits (the data's own precision).")
        self.apply_preset = pn.widgets.Button(name="Apply preset", button_type="primary", width=120)
        self.apply_preset.on_click(lambda e: ws.apply_preset())
        self.bulk_column = pn.widgets.Select(name="bulk edit column", options=list(EDITABLE), value="w_bits", width=150)
        self.bulk_value = pn.widgets.TextInput(name="value", value="4", width=90)
        self.bulk_apply = pn.widgets.Button(name="Apply to selected", width=140)
        self.bulk_apply.on_click(self._on_bulk)
        self.upload = pn.widgets.FileInput(accept=".json", name="load plan", width=200)
        self.upload.param.watch(self._on_upload, ["value", "filename"])
        self.download = pn.widgets.FileDownload(callback=self._plan_file, filename="plan.json",
                                                label="Download plan (JSON)", button_type="success", width=190)
        ws.param.watch(self._sync_table, ["rows"])
        ws.param.watch(self._sync_error, ["edit_error"])
        ws.param.watch(self._sync_readonly, ["read_only"])
        self._sync_readonly()

    def _on_edit(self, event):
        self.workspace.set_cell(event.row, event.column, event.value)

    def _on_bulk(self, _):
        self.workspace.bulk_edit(list(self.table.selection), self.bulk_column.value, self.bulk_value.value)

    def _on_upload(self, *_):
        value, fname = self.upload.value, self.upload.filename
        if value is None and not fname:
            return  # the widget was cleared
        # an empty file arrives as no value with a file name: refused with a reason, not ignored
        ws = self.workspace
        if not ws.load_plan_json(value if value is not None else b"") and fname:
            ws.edit_error = ws.edit_error.replace("plan not loaded", f"plan file {fname!r} not loaded", 1)

    def _plan_file(self):
        return io.StringIO(self.workspace.plan_json())

    def _sync_table(self, *_):
        """Patch only the cells that changed (an open editor elsewhere survives); replace on a new model."""
        new, old = self.workspace.rows, self.table.value
        if old is None or list(new["layer"]) != list(old["layer"]) or list(new.columns) != list(old.columns):
            self.table.value = new
            return
        patch = {}
        for col in new.columns:
            changed = [(i, new.at[i, col]) for i in range(len(new)) if new.at[i, col] != old.at[i, col]]
            if changed:
                patch[col] = changed
        if patch:
            self.table.patch(patch, as_index=False)
        elif self.workspace.edit_error:
            self.table.value = new  # an edit was refused: put the old value back in the cell

    def _sync_error(self, *_):
        self.error.show(self.workspace.edit_error, "danger")

    def _sync_readonly(self, *_):
        ro = self.workspace.read_only
        self.table.disabled = ro
        for w in self.locked_widgets():
            w.disabled = ro

    def locked_widgets(self) -> list:
        """Every control here that changes the plan (disabled in a read-only view)."""
        return [self.preset, self.apply_preset, self.bulk_column, self.bulk_value, self.bulk_apply, self.upload]

    def __panel__(self):
        return pn.Column(
            pn.Row(self.preset, self.apply_preset, pn.Spacer(width=20), self.bulk_column, self.bulk_value,
                   self.bulk_apply, align="end"),
            self.error, self.table,
            pn.Row(self.download, self.upload),
            sizing_mode="stretch_width")
