"""ResNet-20 exports to ONNX: its residual blocks' pass-through shortcuts (nn.Identity) used to give a
layer whose input and output are one tensor, and the per-layer check built a model defining that
tensor twice ("Duplicate definition of name (relu:out)")."""
import onnx
import pytest
import torch

from engine.cost.measure import model_source, prepare_plan
from engine.export import build_onnx, onnx_model_bytes, verify
from engine.plans.plan import LayerConfig, Plan


@pytest.fixture(scope="module")
def source():
    # seeded fresh weights calibrated on standard-normal inputs: the export does not need CIFAR-10
    return model_source("resnet20", "cifar10", random_weights=True, calib_size=16)


@pytest.mark.parametrize("plan", [Plan.uniform(4, 4, name="W4A4"),
                                  Plan(default=LayerConfig(2, 3), layers={"fc": {"w_bits": 8, "a_bits": 8}},
                                       name="mixed")], ids=lambda p: p.name)
def test_resnet20_exports_and_onnxruntime_agrees(source, plan):
    prep = prepare_plan(source, plan)
    x = torch.from_numpy(source.sample[:8])
    blob = onnx_model_bytes(prep.applied, source.input_shape, plan, "resnet20", "cifar10", check_inputs=x)
    m = onnx.load_from_string(blob)
    onnx.checker.check_model(m, full_check=True)
    outs = [o for n in m.graph.node for o in n.output]
    assert len(outs) == len(set(outs))
    with torch.no_grad():
        logits = prep.applied.model.eval()(x).numpy()
    y = torch.from_numpy(logits.argmax(1))
    r = verify(blob, prep.applied.model, x, y)
    assert r.examples == 8 and r.agreement == 1.0, r


def test_identity_shortcuts_are_not_checked_as_layers(source):
    prep = prepare_plan(source, Plan.uniform(8, 8))
    built = build_onnx(prep.applied.model, source.input_shape, prep.applied.configs)
    assert "layer1.0.shortcut" not in built.layer_outputs
    assert "layer2.0.shortcut.0" in built.layer_outputs          # a projection shortcut is a real layer
    assert all(built.layer_inputs[k] != v for k, v in built.layer_outputs.items())
