"""Depthwise layers in plans: widening carries their channels with their producer (function kept),
N:M where the per-channel filter allows it and a one-line refusal naming the layer where not, and a
cost that prices the per-channel k x k reduction instead of a GEMM padded to the array's tiles."""
import pytest
import torch
import torch.nn as nn

from engine.cost import cost_plan
from engine.deploy import deploy, reference_logits
from engine.models.zoo import build_model
from engine.plans.apply import apply_plan, calibrate
from engine.plans.graph import analyze
from engine.plans.plan import LayerConfig, Plan, PlanError
from engine.plans.widen import widen_model
from tests.engine.test_deploy import assert_same_predictions


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    model = build_model("mobilenetv2", (1, 28, 28), 10).eval()
    with torch.no_grad():   # non-trivial batch-norm statistics so the check means something
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model, analyze(model, (1, 28, 28))


def _space_of(topo, name):
    return topo.layer(name).out_space


def test_depthwise_layers_carry_their_producers_channels(mobilenet):
    model, topo = mobilenet
    dw = topo.layer("blocks.1.dw")
    assert dw.in_space == dw.out_space == _space_of(topo, "blocks.1.expand.0")
    assert "blocks.1.dw" in topo.spaces[dw.out_space].depthwise
    assert not topo.spaces[dw.out_space].fixed


def test_widening_the_producer_widens_the_depthwise_layer_and_keeps_the_function(mobilenet):
    model, topo = mobilenet
    cfgs = {n: LayerConfig(32, 32) for n in topo.names}
    cfgs["blocks.1.expand.0"] = LayerConfig(32, 32, widen=2.0)
    cfgs["blocks.3.expand.0"] = LayerConfig(32, 32, widen=1.5)
    factors = topo.check(cfgs)
    wide = widen_model(model, topo, factors).eval()
    dw = dict(wide.named_modules())["blocks.1.dw"]
    assert dw.in_channels == dw.out_channels == dw.groups == 2 * 64 and dw.weight.shape == (128, 1, 3, 3)
    assert dict(wide.named_modules())["blocks.3.dw"].groups == 144
    rows = {r.name: r for r in topo.widened(cfgs, factors)}
    assert rows["blocks.1.dw"].groups == rows["blocks.1.dw"].in_channels == 128
    assert rows["blocks.1.project"].in_channels == 128
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), model(x), rtol=1e-4, atol=1e-4)


def test_a_depthwise_layer_cannot_widen_on_its_own(mobilenet):
    _, topo = mobilenet
    cfgs = {n: LayerConfig(8, 8) for n in topo.names}
    cfgs["blocks.1.dw"] = LayerConfig(8, 8, widen=2.0)
    with pytest.raises(PlanError, match="layer 'blocks.1.dw' is depthwise: its channels widen with 'blocks.1.expand.0'"):
        topo.check(cfgs)


def test_nm_on_a_3x3_depthwise_layer_is_refused_naming_it(mobilenet):
    _, topo = mobilenet
    cfgs = {n: LayerConfig(4, 4) for n in topo.names}
    cfgs["blocks.2.dw"] = LayerConfig(4, 4, sparsity="2:4")
    with pytest.raises(PlanError, match=r"layer 'blocks.2.dw': sparsity='2:4' is not possible on a depthwise "
                                        r"convolution: each channel's filter has 9 weights \(3x3\), not a multiple of 4"):
        topo.check(cfgs)
    cfgs["blocks.2.dw"] = LayerConfig(4, 4)
    cfgs["blocks.2.project"] = LayerConfig(4, 4, sparsity="2:4")   # pointwise: legal
    topo.check(cfgs)


class _Dw2x2(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(2, 8, 1)
        self.dw = nn.Conv2d(8, 8, 2, groups=8)
        self.fc = nn.Linear(8 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.dw(torch.relu(self.pw(x)))), 1))


def test_nm_on_a_depthwise_layer_with_four_taps_masks_and_deploys():
    torch.manual_seed(0)
    plan = Plan(default=LayerConfig(4, 8), layers={"dw": {"w_bits": 4, "a_bits": 8, "sparsity": "2:4"}})
    applied = apply_plan(_Dw2x2(), plan, (2, 6, 6))
    w = dict(applied.model.named_modules())["dw"].masked_weight()
    assert ((w.reshape(8, 4) != 0).sum(1) <= 2).all()
    calibrate(applied.model, [torch.randn(16, 2, 6, 6)])
    applied.model.eval()
    net = deploy(applied)
    x = torch.randn(24, 2, 6, 6)
    assert_same_predictions(reference_logits(applied, x), net.predict(x.numpy()))


@pytest.mark.parametrize("profile", ["a100", "bitfusion", "bismo", "cpu"])
def test_depthwise_cost_is_its_work_not_a_padded_gemm(mobilenet, profile):
    from engine.cost.profiles import bit_index, load_profile
    _, topo = mobilenet
    cfgs = {n: LayerConfig(8, 8) for n in topo.names}
    rep = {r.name: r for r in cost_plan(topo.widened(cfgs), cfgs, profile, 1).layers}
    dw = rep["blocks.2.dw"]
    assert "depthwise: 3x3 reduction per channel" in dw.note
    prof = load_profile(profile)
    i = bit_index(8)
    rate = prof.tables.rate[i][i] * prof.tables.eff[i][i]
    assert dw.compute_s == pytest.approx(dw.macs / rate, rel=1e-9)   # every MAC once, no tile padding
    layer = topo.layer("blocks.2.dw")
    padded = layer.groups * prof.tile_n * (-(-9 // prof.tables.tile_k[i][i]) * prof.tables.tile_k[i][i]) \
        * (-(-layer.positions // prof.tile_m) * prof.tile_m) / rate
    assert padded > 2 * dw.compute_s     # what the GEMM view would have charged
    if profile in ("a100", "bitfusion"):
        assert dw.memory_s > dw.compute_s   # its time follows the bits it moves (beyond fixed overhead)


def test_a_widened_depthwise_block_deploys_and_exports(mobilenet):
    from engine.export import onnx_model_bytes, verify
    model, _ = mobilenet
    plan = Plan(default=LayerConfig(4, 4), layers={"blocks.1.expand.0": {"widen": 2.0},
                                                   "blocks.1.dw": {"widen": 2.0, "w_bits": 8, "a_bits": 8}})
    applied = apply_plan(model, plan, (1, 28, 28))
    dw = dict(applied.model.named_modules())["blocks.1.dw"]
    assert dw.groups == dw.in_channels == dw.out_channels == 128
    calibrate(applied.model, [torch.randn(16, 1, 28, 28)])
    applied.model.eval()
    x = torch.randn(24, 1, 28, 28)
    net = deploy(applied)
    assert {r["name"]: r["type"] for r in net.summary()["layers"]}["blocks.1.dw"] == "dwconv2d"
    assert_same_predictions(reference_logits(applied, x), net.predict(x.numpy()))
    blob = onnx_model_bytes(applied, (1, 28, 28), plan, check_inputs=x[:4])
    r = verify(blob, applied.model, x, applied.model(x).argmax(1))
    assert r.agreement == 1.0, r
