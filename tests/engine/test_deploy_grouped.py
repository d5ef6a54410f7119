"""Grouped and depthwise convolutions: packed deployment (direct depthwise kernel, one GEMM per group)
reproduces the fake-quantized model, saves and loads, and the MobileNetV2-style zoo network with a
plan mixing 2/4/8 bits and 2:4 pointwise layers deploys packed and exports to ONNX with agreement 1.0."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.deploy import DeployError, deploy, load_packed, reference_logits, save_packed
from engine.evaluation import Settings
from engine.explore.pipeline import prepare
from engine.export import onnx_model_bytes, verify
from engine.models.data import load_dataset
from engine.plans.apply import apply_plan, calibrate
from engine.plans.plan import LayerConfig, Plan
from tests.engine.test_deploy import assert_same_predictions

MIXED = {"stem": {"w_bits": 8, "a_bits": 8}, "fc": {"w_bits": 8, "a_bits": 8},
         "blocks.1.expand.0": {"w_bits": 2, "a_bits": 4, "sparsity": "2:4"},
         "blocks.1.project": {"w_bits": 4, "a_bits": 4, "sparsity": "2:4"},
         "blocks.2.expand.0": {"w_bits": 8, "a_bits": 8, "sparsity": "2:4"},
         "blocks.2.dw": {"w_bits": 2, "a_bits": 2}, "blocks.3.dw": {"w_bits": 8, "a_bits": 8},
         "head": {"w_bits": 4, "a_bits": 8, "sparsity": "2:4"}}


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist")


@pytest.fixture(scope="module")
def mobilenet(fashion):
    plan = Plan(default=LayerConfig(4, 4), layers=MIXED)
    applied, _, _ = prepare("mobilenetv2", "fashion-mnist", plan, Settings(steps=0), data=fashion)
    applied.model.eval()
    return applied, plan


@pytest.mark.slow
def test_mobilenetv2_mixed_plan_deploys_packed_with_identical_predictions(mobilenet, fashion, tmp_path):
    applied, _ = mobilenet
    net = deploy(applied)
    x = fashion.x_test[:200]
    ref = reference_logits(applied, x)
    got = net.predict(x.numpy())
    assert_same_predictions(ref, got)
    rows = {r["name"]: r for r in net.summary()["layers"]}
    assert rows["blocks.1.dw"]["type"] == "dwconv2d" and rows["blocks.1.dw"]["kernel"] == "depthwise"
    assert {rows[n]["kernel"] for n in ("blocks.1.expand.0", "blocks.1.project", "blocks.2.expand.0", "head")} == {"nm"}
    assert rows["blocks.2.dw"]["gemms"]["w"]["stored_w_bits"] == 2
    save_packed(net, tmp_path / "m.safetensors")
    again = load_packed(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(again.predict(x.numpy()), got)


@pytest.mark.slow
def test_mobilenetv2_mixed_plan_exports_to_onnx_with_agreement_1(mobilenet, fashion):
    applied, plan = mobilenet
    blob = onnx_model_bytes(applied, fashion.input_shape, plan, "mobilenetv2", "fashion-mnist",
                            check_inputs=fashion.x_val[:16])
    r = verify(blob, applied.model, fashion.x_test[:64], fashion.y_test[:64])
    assert r.agreement == 1.0 and r.disagreements == 0, r


class _Convs(nn.Module):
    """Grouped (groups=2), depth-multiplier (groups=C, out=2C) and depthwise (strided, biased) convs."""

    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.multiplier = nn.Conv2d(6, 12, 3, padding=1, groups=6, bias=False)
        self.dw = nn.Conv2d(12, 12, (3, 2), stride=2, padding=(1, 0), groups=12)
        self.fc = nn.Linear(12 * 4 * 3, 5)

    def forward(self, x):
        x = torch.relu(self.grouped(x))
        x = torch.relu(self.multiplier(x))
        return self.fc(torch.flatten(self.dw(x), 1))


PLANS = {
    "W4A4": Plan.uniform(4, 4),
    "W2A2": Plan.uniform(2, 2),
    "W8A8": Plan.uniform(8, 8),
    "W1A1-binary": Plan.uniform(1, 1, quantizer="binary"),
    "float-acts": Plan.uniform(4, 32),
    "mixed-float": Plan(default=LayerConfig(4, 8), layers={"dw": {"w_bits": 32, "a_bits": 32},
                                                            "grouped": {"w_bits": 32, "a_bits": 32}}),
}


@pytest.mark.parametrize("plan_name", list(PLANS))
def test_grouped_and_depthwise_layers_match_fake_quant(plan_name, tmp_path):
    torch.manual_seed(0)
    applied = apply_plan(_Convs(), PLANS[plan_name], (4, 8, 7))
    calibrate(applied.model, [torch.randn(16, 4, 8, 7)])
    applied.model.eval()
    net = deploy(applied)
    x = torch.randn(32, 4, 8, 7)
    ref = reference_logits(applied, x)
    got = net.predict(x.numpy())
    assert_same_predictions(ref, got)
    kinds = {r["name"]: (r["type"], r["kernel"]) for r in net.summary()["layers"]}
    assert kinds["grouped"][0] == "gconv2d" and kinds["multiplier"][0] == "gconv2d" and kinds["dw"][0] == "dwconv2d"
    if plan_name in ("W4A4", "W2A2", "W8A8", "W1A1-binary"):
        assert kinds["dw"][1] == "depthwise"
    save_packed(net, tmp_path / "g.safetensors")
    np.testing.assert_array_equal(load_packed(tmp_path / "g.safetensors").predict(x.numpy()), got)


def _tamper(path, fn):
    from safetensors.numpy import load, save
    arrs = load(path.read_bytes())
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["bitscape"])
    arrs, meta = fn(arrs, meta)
    path.write_bytes(save(arrs, metadata={"bitscape": json.dumps(meta)}))


def _layer(meta, name):
    return next(lm for lm in meta["layers"] if lm["name"] == name)


def test_corrupt_grouped_files_and_wrong_inputs_are_clear_errors(tmp_path):
    torch.manual_seed(0)
    applied = apply_plan(_Convs(), Plan.uniform(4, 4), (4, 8, 7))
    calibrate(applied.model, [torch.randn(16, 4, 8, 7)])
    net = deploy(applied)
    p = tmp_path / "g.safetensors"
    save_packed(net, p)

    def wrong_groups(arrs, meta):
        _layer(meta, "grouped")["conv"]["groups"] = 3
        return arrs, meta

    def dropped_group(arrs, meta):
        del _layer(meta, "multiplier")["gemms"]["g5"]
        return arrs, meta

    def wide_taps(arrs, meta):
        arrs["layers.dw.w.taps"] = np.full_like(arrs["layers.dw.w.taps"], 100)
        return arrs, meta

    def taps_shape(arrs, meta):
        arrs["layers.dw.w.taps"] = np.zeros((5, 12), np.int8)
        return arrs, meta

    for fn, msg in ((wrong_groups, "geometry"), (dropped_group, "invalid layer kind|geometry"),
                    (wide_taps, "outside the"), (taps_shape, "taps")):
        save_packed(net, p)
        _tamper(p, fn)
        with pytest.raises(DeployError, match=msg):
            load_packed(p)
    with pytest.raises(DeployError, match="expects input of shape|expects"):
        net.predict(np.zeros((2, 3, 8, 7), np.float32))
    with pytest.raises(DeployError, match="layer 'dw' expects \\(B, 12, H, W\\)"):
        net.layers["dw"](np.zeros((1, 6, 8, 7), np.float32))
    with pytest.raises(DeployError, match="layer 'grouped' expects \\(B, 4, H, W\\)"):
        net.layers["grouped"](np.zeros((1, 6, 8, 7), np.float32))


@pytest.mark.parametrize("plan_name", ["W4A4", "W2A2", "W1A1-binary"])
def test_grouped_and_depthwise_layers_export_to_onnx_with_agreement_1(plan_name):
    torch.manual_seed(0)
    applied = apply_plan(_Convs(), PLANS[plan_name], (4, 8, 7))
    calibrate(applied.model, [torch.randn(16, 4, 8, 7)])
    applied.model.eval()
    x = torch.randn(48, 4, 8, 7)
    blob = onnx_model_bytes(applied, (4, 8, 7), PLANS[plan_name], check_inputs=x[:8])
    y = applied.model(x).argmax(1)
    r = verify(blob, applied.model, x, y)
    assert r.agreement == 1.0 and r.disagreements == 0, r


class _Grouped24(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)   # 4 input channels per group
        self.fc = nn.Linear(8 * 6 * 6, 4)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.grouped(torch.relu(self.pw(x)))), 1))


def test_two_four_on_a_grouped_conv_runs_the_sparse_kernel_per_group():
    from engine.plans.graph import analyze
    torch.manual_seed(0)
    plan = Plan(default=LayerConfig(4, 8), layers={"grouped": {"w_bits": 4, "a_bits": 8, "sparsity": "2:4"}})
    applied = apply_plan(_Grouped24(), plan, (3, 6, 6))
    calibrate(applied.model, [torch.randn(16, 3, 6, 6)])
    applied.model.eval()
    net = deploy(applied)
    gemms = net.summary()["layers"][1]["gemms"]
    assert set(gemms) == {"g0", "g1"} and {g["kernel"] for g in gemms.values()} == {"nm"}
    x = torch.randn(24, 3, 6, 6)
    assert_same_predictions(reference_logits(applied, x), net.predict(x.numpy()))
    from engine.plans.plan import PlanError
    topo = analyze(_Convs(), (4, 8, 7))
    cfgs = {n: LayerConfig(4, 8) for n in topo.names}
    cfgs["multiplier"] = LayerConfig(4, 8, sparsity="2:4")   # depthwise with a depth multiplier: 3x3 per filter
    with pytest.raises(PlanError, match="layer 'multiplier': sparsity='2:4' is not possible on a depthwise "
                                        "convolution: each channel's filter has 9 weights"):
        topo.check(cfgs)
    cfgs["multiplier"] = LayerConfig(4, 8)
    cfgs["grouped"] = LayerConfig(4, 8, sparsity="2:4")      # 2 input channels per group
    with pytest.raises(PlanError, match="layer 'grouped': sparsity='2:4' needs the input dimension to be "
                                        "divisible by 4, but it is 2"):
        topo.check(cfgs)
