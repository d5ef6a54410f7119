import pytest
import torch
import torch.nn as nn

from engine.models.zoo import build_model
from engine.plans.apply import apply_plan
from engine.plans.graph import analyze, widened
from engine.plans.plan import LayerConfig, Plan, PlanError
from engine.plans.widen import widen_model

SHAPES = {"mlp": (1, 8, 8), "lenet5": (1, 8, 8), "cnn": (1, 28, 28), "resnet20": (3, 32, 32), "lstm": (1, 8, 8),
          "gru": (1, 8, 8)}


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
    return model


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("k", [1.5, 2.0, 3.0])
def test_widening_preserves_outputs(name, k):
    torch.manual_seed(0)
    shape = SHAPES[name]
    model = _randomise_bn(build_model(name, shape, 10)).eval()
    topo = analyze(model, shape)
    factors = {sid: (1.0 if sp.fixed else k) for sid, sp in topo.spaces.items()}
    wide = widen_model(model, topo, factors, seed=3).eval()
    x = torch.randn(8, *shape)
    with torch.no_grad():
        assert torch.allclose(model(x), wide(x), atol=1e-4)
    n0 = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in wide.parameters()) > n0


def test_interior_conv_macs_scale_by_k_squared_and_first_by_k():
    topo = analyze(build_model("cnn", (1, 28, 28), 10), (1, 28, 28))
    plan = Plan(default=LayerConfig(widen=2.0), layers={"fc2": {"widen": 1.0}})
    rows = {r.name: r for r in topo.widened(plan.resolve(topo.names))}
    base = {r.name: r for r in topo.layers}
    assert rows["conv2"].macs == 4 * base["conv2"].macs
    assert rows["conv1"].macs == 2 * base["conv1"].macs       # input image is not widened
    assert rows["fc2"].macs == 2 * base["fc2"].macs           # output layer: inputs only
    assert rows["fc1"].in_channels == 2 * base["fc1"].in_channels


def test_residual_connections_tie_widening():
    topo = analyze(build_model("resnet20", (3, 32, 32), 10), (3, 32, 32))
    tied = [sp for sp in topo.spaces.values() if len(sp.producers) > 1]
    assert any({"conv1", "layer1.0.conv2"} <= set(sp.producers) for sp in tied)
    plan = Plan(layers={"layer1.0.conv2": {"widen": 2.0}})
    with pytest.raises(PlanError, match="share channels"):
        topo.check(plan.resolve(topo.names))
    ok = Plan(layers={n: {"widen": 2.0} for n in ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]})
    topo.check(ok.resolve(topo.names))


def test_output_layer_cannot_be_widened():
    topo = analyze(build_model("lenet5", (1, 8, 8), 10), (1, 8, 8))
    with pytest.raises(PlanError, match="layer 'fc3': widen=2 is not possible: it carries the network output"):
        topo.check(Plan.uniform(32, 32, widen=2.0).resolve(topo.names))


def test_nm_checked_on_widened_input():
    topo = analyze(build_model("lenet5", (1, 8, 8), 10), (1, 8, 8))
    # conv2 reads 6 channels (not divisible by 4); widening conv1 by 2 gives 12, which is
    plan = Plan(layers={"conv2": {"sparsity": "2:4"}})
    with pytest.raises(PlanError, match="divisible by 4, but it is 6"):
        topo.check(plan.resolve(topo.names))
    plan.layers["conv1"] = {"widen": 2.0}
    topo.check(plan.resolve(topo.names))


def test_layer_shapes_and_macs():
    topo = analyze(build_model("lenet5", (1, 8, 8), 10), (1, 8, 8))
    c1 = topo.layer("conv1")
    assert (c1.kind, c1.in_channels, c1.out_channels, c1.kernel, c1.out_hw) == ("conv2d", 1, 6, (3, 3), (8, 8))
    assert c1.macs == 6 * 9 * 64
    lstm = analyze(build_model("lstm", (1, 8, 8), 10), (1, 8, 8)).layer("lstm")
    assert (lstm.steps, lstm.macs) == (8, 4 * 64 * (8 + 64) * 8)


def test_widened_rounding():
    assert widened(6, 1.5) == 9 and widened(6, 1.25) == 8 and widened(10, 1.0) == 10


def test_apply_plan_leaves_original_untouched_and_masks_hold():
    torch.manual_seed(0)
    model = build_model("cnn", (1, 28, 28), 10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = Plan(default=LayerConfig(8, 8, sparsity="2:4"), layers={"conv1": {"sparsity": "none"}})
    applied = apply_plan(model, plan, (1, 28, 28))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    conv2 = applied.model.conv2
    w = conv2.masked_weight()
    assert bool(((w != 0).permute(0, 2, 3, 1).reshape(-1, 4).sum(1) <= 2).all())


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


def test_untraceable_model_gives_clear_error():
    with pytest.raises(PlanError, match="cannot trace this model"):
        analyze(Untraceable(), (1, 2, 2))


class WithRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        out, _ = self.rnn(x.flatten(1, 2))
        return self.fc(out[:, -1])


def test_unsupported_recurrent_layers_are_named():
    with pytest.raises(PlanError, match="layer 'rnn': RNN layers are not supported yet"):
        analyze(WithRNN(), (1, 8, 8))


def test_gru_layer_shapes():
    gru = analyze(build_model("gru", (1, 8, 8), 10), (1, 8, 8)).layer("gru")
    assert (gru.kind, gru.gemm_n, gru.reduction, gru.macs) == ("gru", 3 * 64, 8 + 64, 3 * 64 * 72 * 8)


@pytest.mark.parametrize("model_id, shape, first", [
    ("lenet5", (1, 8, 8), "conv1"), ("mlp", (1, 8, 8), "fc1"), ("lstm", (1, 8, 8), "lstm"),
    ("resnet20", (3, 32, 32), "conv1"), ("mobilenetv2", (1, 28, 28), "stem")])
def test_layers_reading_the_network_input_are_found_and_presets_feed_them_8_bits(model_id, shape, first):
    from engine.plans.presets import INPUT_BITS, preset_plan
    topo = analyze(build_model(model_id, shape, 10).eval(), shape)
    assert [layer.name for layer in topo.layers if layer.is_input] == [first]
    for name in ("w4a4", "2x-w2a2", "2:4-w4a4"):
        cfg = preset_plan(name, topo, model_id).resolve(topo.names)
        assert cfg[first].a_bits == INPUT_BITS
        assert {c.a_bits for n, c in cfg.items() if n != first} == {int(name[-1])}
    assert preset_plan("w8a8", topo, model_id).layers == {}
