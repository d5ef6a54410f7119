"""Exports of a planned network: standard ONNX (QDQ) and the plan as a table or a mapping."""
from .onnx import ExportError, build_onnx, onnx_model_bytes, predict_onnx, read_metadata, verify  # noqa: F401
