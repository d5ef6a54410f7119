"""analyze() marks whether each layer's output is requantized for the next layer only (LayerInfo.requantized):
what an integer runtime needs to fuse a convolution into an integer kernel."""
import torch.nn as nn

from engine.cost.geometry import geometry
from engine.models.zoo import build_model
from engine.plans.graph import LayerInfo, analyze


def _requant(model_id, shape):
    return {x.name: x.requantized for x in analyze(build_model(model_id, shape, 10), shape).layers}


def test_chains_of_relu_pool_and_reshape_reach_the_next_layer():
    assert _requant("lenet5", (1, 8, 8)) == {"conv1": "direct", "conv2": "direct", "fc1": "direct",
                                              "fc2": "direct", "fc3": "none"}
    cnn = _requant("cnn", (1, 28, 28))
    assert [cnn[f"conv{i}"] for i in range(1, 5)] == ["after_bn"] * 4 and cnn["fc1"] == "direct"


def test_outputs_max_pooled_on_their_way_to_the_next_layer_are_marked_pooled():
    pooled = {m: {x.name for x in analyze(build_model(m, s, 10), s).layers if x.pooled}
              for m, s in (("lenet5", (1, 8, 8)), ("cnn", (1, 28, 28)), ("resnet20", (3, 32, 32)))}
    assert pooled == {"lenet5": {"conv1", "conv2"}, "cnn": {"conv2", "conv4"}, "resnet20": set()}
    topo = analyze(build_model("cnn", (1, 28, 28), 10), (1, 28, 28))
    d = topo.to_dict()["layers"][1]
    assert LayerInfo.from_dict(d).pooled and geometry(d).pooled
    assert [x.pooled for x in topo.widened({})] == [x.pooled for x in topo.layers]


def test_the_next_layer_reading_signed_codes_is_marked():
    """MobileNetV2's last projection (a linear bottleneck, no ReLU) feeds the head's convolution, which
    reads it as signed codes; every requantized output of lenet5 and the CNN passes a ReLU first."""
    mnv2 = analyze(build_model("mobilenetv2", (1, 28, 28), 10), (1, 28, 28)).layers
    assert [x.name for x in mnv2 if x.next_signed] == ["blocks.5.project"]
    for m, s in (("lenet5", (1, 8, 8)), ("cnn", (1, 28, 28))):
        layers = analyze(build_model(m, s, 10), s).layers
        assert not any(x.next_signed for x in layers)
        assert all(x.next_signed is None for x in layers if x.requantized == "none")


def test_residual_adds_and_fan_out_stop_requantization():
    r = _requant("resnet20", (3, 32, 32))
    assert r["conv1"] == "none"                      # the stem's ReLU feeds a block and its shortcut
    assert r["layer1.0.conv1"] == "after_bn"         # -> bn1 -> relu -> conv2
    assert r["layer1.0.conv2"] == "none"             # -> bn2 -> the add
    assert r["layer2.0.shortcut.0"] == "none" and r["fc"] == "none"
    assert sum(v == "after_bn" for v in r.values()) == 9


def test_a_batch_norm_counts_only_right_after_the_layer():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.bn = nn.BatchNorm2d(4)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.c = nn.Conv2d(4, 2, 3, padding=1)

        def forward(self, x):
            return self.c(self.b(self.bn(self.relu(self.a(x)))).relu())
    r = {x.name: x.requantized for x in analyze(Net(), (1, 6, 6)).layers}
    assert r == {"a": "none", "b": "direct", "c": "none"}


def test_older_topologies_say_unknown():
    topo = analyze(build_model("resnet20", (3, 32, 32), 10), (3, 32, 32))
    d = topo.to_dict()
    assert [LayerInfo.from_dict(x).requantized for x in d["layers"]] == [x.requantized for x in topo.layers]
    assert [x.requantized for x in topo.widened({})] == [x.requantized for x in topo.layers]
    old = {k: v for k, v in d["layers"][1].items() if k != "requantized"}
    assert LayerInfo.from_dict(old).requantized == "unknown" and geometry(old).requant == "unknown"
    assert geometry(d["layers"][1]).requant == "after_bn"
