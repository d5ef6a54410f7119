"""The export service: a checkpoint written by ``bitscape finetune --save`` -> checked ONNX bytes
(what the command line writes and a dashboard download serves)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Exported:
    """ONNX bytes of a planned checkpoint, with what it was made from (for --verify)."""

    data: bytes
    applied: object
    meta: dict
    dataset: object


def export_checkpoint(checkpoint: str | Path, model_id: str | None = None, dataset_id: str | None = None,
                      data_root: str | None = None, integer: bool = False) -> Exported:
    """Load a fine-tuned planned checkpoint and export it; model/dataset, if given, must match it.
    ``integer``: the integer form (``onnx_model_bytes``)."""
    from engine.errors import UserError
    from engine.export.onnx import onnx_model_bytes
    from engine.fileio import clip
    from engine.models.checkpoint import load_planned, load_state, planned_meta
    from engine.models.data import load_dataset
    _, meta0 = load_state(checkpoint)
    pm = planned_meta(meta0, checkpoint)   # checked before any name in it is resolved
    for what, given, held in (("model", model_id, pm.model), ("dataset", dataset_id, pm.dataset)):
        if given is not None and given != held:
            raise UserError(f"checkpoint {str(checkpoint)!r} holds {what} {clip(held)}, not {clip(given)}")
    data = load_dataset(pm.dataset, root=data_root)
    applied, meta = load_planned(checkpoint, data)
    ev = meta.get("evaluation") or {}
    extra = {"status": ev.get("status", ""), "test_accuracy": ev.get("test_accuracy"),
             "settings": meta.get("settings", {})}
    blob = onnx_model_bytes(applied, data.input_shape, meta["plan"], meta["model"], meta["dataset"],
                            check_inputs=data.x_val[:64], extra_metadata=extra, integer=integer)
    return Exported(blob, applied, meta, data)
