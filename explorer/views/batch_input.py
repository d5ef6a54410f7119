"""The batch-size box: a value outside the workspace's bounds is refused with a visible reason."""
from __future__ import annotations

import panel as pn
import param

from explorer.state.workspace import Workspace


def batch_refusal(value, bounds: tuple[int, int]) -> str:
    """Why ``value`` cannot be the batch size ("" when it can)."""
    lo, hi = bounds
    if value is None:
        return f"batch size refused: give a whole number from {lo} to {hi}"
    if isinstance(value, bool) or int(value) != value or not lo <= value <= hi:
        return f"batch size {value} refused: it must be a whole number from {lo} to {hi}"
    return ""


class BatchInput(pn.viewable.Viewer):
    workspace = param.ClassSelector(class_=Workspace)

    def __init__(self, **params):
        super().__init__(**params)
        ws = self.workspace
        self._resetting = False
        # no start/end on the widget: the browser would clamp silently; the server says why instead
        self.input = pn.widgets.IntInput(name="batch size", value=ws.batch, sizing_mode="stretch_width")
        self.error = pn.pane.Alert("", alert_type="danger", visible=False, name="batch-error", margin=(0, 10))
        self.input.param.watch(self._on_input, "value")
        ws.param.watch(self._on_workspace, "batch")

    def _on_input(self, event) -> None:
        if self._resetting:
            return
        ws = self.workspace
        why = batch_refusal(event.new, ws.param.batch.bounds)
        if why:
            self.error.object, self.error.visible = why, True
            self._resetting = True
            try:
                self.input.value = ws.batch  # the box shows the batch size in use again
            finally:
                self._resetting = False
            return
        self.error.visible = False
        ws.batch = int(event.new)

    def _on_workspace(self, event) -> None:
        if self.input.value != event.new:
            self.input.value = event.new

    def __panel__(self):
        return pn.Column(self.input, self.error, sizing_mode="stretch_width", margin=0)
