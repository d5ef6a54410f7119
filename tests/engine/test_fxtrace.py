"""engine.plans.fxtrace: a trace in one thread neither breaks nor is broken by work in others."""
import threading

import pytest
import torch
import torch.fx
import torch.nn as nn

from engine.plans.fxtrace import Tracer


class _Gate(nn.Module):
    """Blocks the trace inside forward (while torch.fx's patches are installed) until released."""

    def __init__(self, entered: threading.Event, release: threading.Event):
        super().__init__()
        self.entered, self.release = entered, release
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        self.entered.set()
        assert self.release.wait(30)
        return self.fc(x)


def _start_paused_trace(tracer_cls):
    entered, release = threading.Event(), threading.Event()
    out: dict = {}

    def run():
        try:
            out["graph"] = tracer_cls().trace(_Gate(entered, release))
        except Exception as e:
            out["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(30)
    return thread, release, out


def test_plain_fx_tracer_hijacks_other_threads_forward():
    """The hazard this module exists for: under torch.fx's own Tracer a forward pass in another
    thread is routed into the tracer while it traces."""
    original = nn.Module.__call__
    thread, release, _ = _start_paused_trace(torch.fx.Tracer)
    try:
        with pytest.raises(NameError, match="not installed as a submodule"):
            nn.Linear(4, 2)(torch.ones(1, 4))
    finally:
        release.set()
        thread.join(30)
    assert nn.Module.__call__ is original


def test_other_threads_run_forward_and_wait_to_trace_while_one_traces():
    original = nn.Module.__call__
    thread, release, out = _start_paused_trace(Tracer)
    second: dict = {}
    try:
        layer = nn.Linear(4, 2)
        assert torch.equal(layer(torch.ones(1, 4)), layer.weight.sum(1, keepdim=True).T + layer.bias)
        waiter = threading.Thread(target=lambda: second.setdefault("graph", Tracer().trace(nn.Sequential(nn.Linear(2, 2)))))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and "graph" not in second  # the lock holds the second trace back
    finally:
        release.set()
        thread.join(30)
    waiter.join(30)
    assert "error" not in out
    assert [n.op for n in out["graph"].nodes] == ["placeholder", "call_module", "output"]
    assert [n.op for n in second["graph"].nodes] == ["placeholder", "call_module", "output"]
    assert nn.Module.__call__ is original
