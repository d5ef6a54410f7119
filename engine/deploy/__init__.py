"""Packed deployment: a fine-tuned planned network run with the bit-packed kernels only.

- ``runtime`` (with ``operands`` and ``ops``): the packed network executor, torch-free by structure;
- ``packfile``: ``save_packed`` / ``load_packed``, one safetensors file (no pickle), torch-free;
- ``lower`` (with ``kinds``): ``deploy(applied)``, the planned torch network -> ``PackedNetwork``;
- ``verification``: ``verify``, the packed network against the fake-quantized torch model (an ``Agreement``).

The torch-side names (``deploy``, ``verify``, ``reference_logits``) load on first use, so that
``from engine.deploy import load_packed`` runs a packed file without importing torch.
"""
from __future__ import annotations

from engine.deploy.operands import FLOAT, KERNELS, ActSpec, DeployError, Gemm
from engine.deploy.packfile import META_KEY, PACKED_KIND, PACKED_VERSION, load_packed, save_packed
from engine.deploy.runtime import Layer, PackedNetwork

__all__ = ["FLOAT", "KERNELS", "META_KEY", "PACKED_KIND", "PACKED_VERSION", "ActSpec", "DeployError", "Gemm",
           "Layer", "PackedNetwork", "load_packed", "save_packed", "deploy", "verify", "reference_logits"]

_LAZY = {"deploy": "lower", "verify": "verification", "reference_logits": "verification", "LOWER": "kinds"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
