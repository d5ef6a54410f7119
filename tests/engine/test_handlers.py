"""Registered module handlers: deploy lowering and ONNX building dispatch by type, not isinstance chains."""
import subprocess
import sys

import pytest
import torch.nn as nn

from engine.plans.handlers import Handlers
from engine.plans.layers import QuantConv2d, QuantGRU, QuantLinear, QuantLSTM
from engine.plans.plan import LayerConfig


def test_most_specific_class_wins_and_duplicates_are_refused():
    h = Handlers("test")

    @h.register(nn.Linear)
    def plain(m):
        return "linear"

    @h.register(QuantLinear)
    def quant(m):
        return "quant"

    assert h.lookup(nn.Linear(2, 2)) is plain
    assert h.lookup(QuantLinear(2, 2)) is quant

    class MyLinear(nn.Linear):
        pass

    assert h.lookup(MyLinear(2, 2)) is plain   # a subclass finds its base's handler
    assert h.lookup(nn.ReLU()) is None and nn.ReLU() not in h and nn.Linear(1, 1) in h
    with pytest.raises(ValueError, match="Linear already has a handler"):
        h.register(nn.Linear)(lambda m: None)


def test_deploy_and_onnx_tables_cover_the_layer_kinds():
    from engine.deploy.kinds import LOWER, conv2d, linear, lstm, quant_lstm
    from engine.export.onnx_layers import BUILD
    assert LOWER.lookup(QuantLinear(2, 2)) is linear and LOWER.lookup(nn.Linear(2, 2)) is linear
    assert LOWER.lookup(nn.Conv2d(1, 1, 1)) is conv2d and LOWER.lookup(QuantConv2d(1, 1, 1)) is conv2d
    assert LOWER.lookup(nn.LSTM(2, 2)) is lstm
    assert LOWER.lookup(QuantLSTM(2, 2, LayerConfig())) is quant_lstm
    assert QuantGRU not in LOWER.types() and QuantGRU not in BUILD.types()
    for t in (nn.Linear, nn.Conv2d, nn.LSTM, QuantLSTM, nn.BatchNorm2d, nn.ReLU, nn.Flatten, nn.MaxPool2d):
        assert t in BUILD.types()


def test_a_new_kind_is_one_registered_handler():
    """Registering a handler for a new module type is all the deploy lowering needs to accept it."""
    import numpy as np
    import torch

    from engine.deploy import deploy
    from engine.deploy.kinds import LOWER, linear
    from engine.plans.apply import apply_plan
    from engine.plans.plan import Plan

    class Scaled(nn.Module):          # a layer kind the deployment does not know
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(6, 3)

        def forward(self, x):
            return self.inner(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)
            self.head = Scaled()

        def forward(self, x):
            return self.head(torch.relu(self.fc(x)))

    torch.manual_seed(0)
    applied = apply_plan(Net(), Plan.uniform(32, 32), (4,))
    net = deploy(applied)
    assert set(net.layers) == {"fc", "head.inner"}     # traced through: not a layer of its own
    from engine.plans import fxtrace
    LOWER.register(Scaled)(lambda name, mod, cfg, per, threads: linear(name, mod.inner, cfg, per, threads))
    fxtrace.register_leaf(Scaled)          # keep it whole in the trace
    try:
        net2 = deploy(applied)
    finally:
        LOWER.unregister(Scaled)
        fxtrace.unregister_leaf(Scaled)
    assert set(net2.layers) == {"fc", "head"}
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(net2(x), net(x), rtol=1e-5, atol=1e-6)
    assert Scaled not in fxtrace.leaf_types() and LOWER.lookup(Scaled()) is None


def test_one_leaf_rule_for_analysis_deploy_and_export():
    """Quantized layers and subclasses of the quantizable torch layers stay whole in every trace."""
    from engine.plans.fxtrace import Tracer

    class MyConv(nn.Conv2d):       # defined outside torch.nn: torch.fx alone would trace into it
        pass

    net = nn.Sequential(MyConv(1, 2, 3), nn.ReLU(), nn.Flatten(), QuantLinear(8, 2))
    targets = [n.target for n in Tracer().trace(net).nodes if n.op == "call_module"]
    assert targets == ["0", "1", "2", "3"]


def test_the_packed_runtime_imports_no_torch():
    """runtime, operands, ops and packfile are numpy + engine.kernels only: loading and running a
    packed file needs no torch."""
    code = ("import sys; import engine.deploy.runtime, engine.deploy.packfile, engine.agreement; "
            "from engine.deploy import load_packed, PackedNetwork; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
