"""torch.fx tracing that is safe beside other threads, with bitscape's one leaf-module rule.

While it traces, torch.fx patches ``nn.Module.__call__`` and ``__getattr__`` for the whole
process. Two threads tracing at once (two jobs on a threaded Dask worker) can leave one tracer's
patch installed for good, and a forward pass another thread runs meanwhile is routed into the
tracer and fails. ``Tracer`` takes one process-wide lock for each trace and lets every other
thread's module calls through untouched.

Graph analysis (``engine.plans.graph``), packed deployment (``engine.deploy.lower``) and ONNX export
(``engine.export.builder``) all trace with this ``Tracer``, so they agree on what a layer is: the
quantizable layers, batch norm and bitscape's fake-quantized layers are leaves (as is every
module of ``torch.nn``, torch.fx's own rule); everything else is traced through.
"""
from __future__ import annotations

import functools
import threading

import torch.fx

_LOCK = threading.RLock()


_EXTRA_LEAVES: list[type] = []


@functools.cache
def leaf_types() -> tuple[type, ...]:
    """Module types a trace keeps whole (subclasses included): layers, batch norm, quantized layers,
    and any type given to ``register_leaf``."""
    import torch.nn as nn

    from engine.plans.layers import (
        QUANT_LAYERS,  # imported late: engine.plans.layers imports the plan and quantizers
    )
    return (QUANT_LAYERS + (nn.Linear, nn.Conv2d, nn.LSTM, nn.GRU, nn.RNN, nn.BatchNorm1d, nn.BatchNorm2d)
            + tuple(_EXTRA_LEAVES))


def register_leaf(*types: type) -> None:
    """Keep modules of ``types`` whole in every trace (a new layer kind registers itself here)."""
    _EXTRA_LEAVES.extend(t for t in types if t not in _EXTRA_LEAVES)
    leaf_types.cache_clear()


def unregister_leaf(*types: type) -> None:
    for t in types:
        if t in _EXTRA_LEAVES:
            _EXTRA_LEAVES.remove(t)
    leaf_types.cache_clear()


class Tracer(torch.fx.Tracer):
    """A ``torch.fx.Tracer`` that traces one model at a time per process and ignores other threads."""

    _owner: int | None = None

    def trace(self, root, concrete_args=None):
        with _LOCK:
            self._owner = threading.get_ident()
            try:
                return super().trace(root, concrete_args)
            finally:
                self._owner = None

    def is_leaf_module(self, m, qualname) -> bool:
        return isinstance(m, leaf_types()) or super().is_leaf_module(m, qualname)

    def _foreign(self) -> bool:
        return threading.get_ident() != self._owner

    def call_module(self, m, forward, args, kwargs):
        if self._foreign():
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._foreign():
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def trace(model) -> torch.fx.GraphModule:
    """``model`` traced with ``Tracer`` as a GraphModule (tracing errors propagate as raised)."""
    return torch.fx.GraphModule(model, Tracer().trace(model))
