"""analyze() marks the layers whose input can be negative: the cost model prices their signed 1-bit
activations as the deployment runs them."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.models.zoo import build_model
from engine.plans.graph import analyze

SIGNED = {"lenet5": ((1, 8, 8), ["conv1"]), "cnn": ((1, 28, 28), ["conv1"]), "mlp": ((1, 8, 8), ["fc1"]),
          "resnet20": ((3, 32, 32), ["conv1"]), "lstm": ((1, 8, 8), ["lstm", "fc"])}


@pytest.mark.parametrize("model_id", list(SIGNED))
def test_zoo_models_signed_inputs(model_id):
    shape, signed = SIGNED[model_id]
    topo = analyze(build_model(model_id, shape, 10).eval(), shape)
    assert [layer.name for layer in topo.layers if layer.signed_input] == signed
    assert all(layer.signed_input is not None for layer in topo.layers)


class _Mixed(nn.Module):
    """Every way a value's sign is kept, lost or made non-negative before a layer."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)     # after batch norm: signed
        self.c3 = nn.Conv2d(4, 4, 3, padding=1)     # after ReLU and max-pool: non-negative
        self.c4 = nn.Conv2d(4, 4, 1)                # after relu(a) + sigmoid(b): non-negative
        self.c5 = nn.Conv2d(4, 4, 1)                # after tanh: signed
        self.fc = nn.Linear(4 * 4 * 4, 3)           # after F.relu and flatten: non-negative

    def forward(self, x):
        a = self.c2(self.bn(self.c1(x)))
        b = self.c3(F.max_pool2d(torch.relu(a), 2))
        c = self.c4(F.relu(b) + torch.sigmoid(b))
        d = self.c5(torch.tanh(c))
        return self.fc(torch.flatten(F.relu(d), 1))


def test_sign_follows_the_ops_between_layers():
    topo = analyze(_Mixed().eval(), (1, 8, 8))
    assert {layer.name: layer.signed_input for layer in topo.layers} == {
        "c1": True, "c2": True, "c3": False, "c4": False, "c5": True, "fc": False}


def test_analysis_agrees_with_the_calibrated_quantizers():
    """What calibration on real digits finds (an activation quantizer turns signed where it sees a
    value below zero) is what analyze() predicts for every layer of lenet5 and the MLP."""
    from engine.cost.measure import model_source, prepare_plan
    from engine.plans.plan import Plan
    for model_id in ("lenet5", "mlp"):
        src = model_source(model_id, "digits")
        topo = analyze(src.base, src.input_shape)
        applied = prepare_plan(src, Plan.uniform(4, 4)).applied
        mods = dict(applied.model.named_modules())
        seen = {layer.name: bool(mods[layer.name].aq.signed) for layer in topo.layers}
        assert seen == {layer.name: layer.signed_input for layer in topo.layers}, model_id
