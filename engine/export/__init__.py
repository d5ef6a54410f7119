"""Exports of a planned network: standard ONNX (QDQ) and the plan as a table or a mapping.

``export_checkpoint`` (``service``) turns a checkpoint written by ``bitscape finetune --save`` into
ONNX bytes; ``onnx_model_bytes`` (``onnx``) does it for a network in memory; ``table_csv`` and
``mapping_json`` give the plan as a per-layer CSV and a layer -> config JSON mapping.
"""
from __future__ import annotations

from engine.export.onnx import (
    ExportError,
    build_onnx,
    onnx_model_bytes,
    predict_onnx,
    read_metadata,
    verify,
)
from engine.export.service import Exported, export_checkpoint
from engine.export.table import mapping, mapping_json, rows, table_csv

__all__ = ["ExportError", "Exported", "build_onnx", "export_checkpoint", "mapping", "mapping_json",
           "onnx_model_bytes", "predict_onnx", "read_metadata", "rows", "table_csv", "verify"]
