"""torch.fx tracing that is safe beside other threads.

While it traces, torch.fx patches ``nn.Module.__call__`` and ``__getattr__`` for the whole
process. Two threads tracing at once (two jobs on a threaded Dask worker) can leave one tracer's
patch installed for good, and a forward pass another thread runs meanwhile is routed into the
tracer and fails. ``Tracer`` takes one process-wide lock for each trace and lets every other
thread's module calls through untouched.
"""
from __future__ import annotations

import threading

import torch.fx

_LOCK = threading.RLock()


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
