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
                      data_root: str | None = None) -> Exported:
    """Load a fine-tuned planned checkpoint and export it; model/dataset, if given, must match it."""
    from ..checkpoint import load_state
    from ..data import load_dataset
    from ..errors import UserError
    from ..pipeline import load_planned
    from .onnx import onnx_model_bytes
    _, meta = load_state(checkpoint)
    if meta.get("kind") != "planned-model":
        raise UserError(f"checkpoint {str(checkpoint)!r} is not a planned model written by "
                        "`bitscape finetune --save` (it carries no plan)")
    for what, given in (("model", model_id), ("dataset", dataset_id)):
        if given is not None and given != meta.get(what):
            raise UserError(f"checkpoint {str(checkpoint)!r} holds {what} {meta.get(what)!r}, not {given!r}")
    data = load_dataset(meta["dataset"], root=data_root)
    applied, meta = load_planned(checkpoint, data)
    ev = meta.get("evaluation") or {}
    extra = {"status": ev.get("status", ""), "test_accuracy": ev.get("test_accuracy"),
             "settings": meta.get("settings", {})}
    blob = onnx_model_bytes(applied, data.input_shape, meta["plan"], meta["model"], meta["dataset"],
                            check_inputs=data.x_val[:64], extra_metadata=extra)
    return Exported(blob, applied, meta, data)
