"""The integer export (``--integer``): batch norm folded into quantized convolutions with int32 biases
(``engine.export.fold``), so that onnxruntime runs them as integer convolutions."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cost.measure import model_source, prepare_plan
from engine.export import ExportError, build_onnx, onnx_model_bytes, verify
from engine.export import fold as fold_mod
from engine.export.qdq import ActQ, WeightQ
from engine.plans.plan import LayerConfig, Plan


def _bn(c, seed, negative=True):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=g) if negative else torch.rand(c, generator=g) + 0.1)
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.05)
    return bn


def _weight(bits, c, seed, per_channel=False):
    rng = np.random.default_rng(seed)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = rng.integers(lo, hi + 1, size=(c, 3, 3, 3)).astype(np.int8)
    codes[0, 0, 0, 0] = lo                      # the range's ends in use
    codes[-1, 0, 0, 0] = hi
    scale = (rng.random(c) + 0.01 if per_channel else np.array(rng.random() + 0.01)).astype(np.float32)
    wq = WeightQ(codes, scale, bits, np.zeros(codes.shape, np.float32), lo, hi)
    return wq, wq.dequantized()


def test_bn_affine_is_the_eval_batch_norm():
    bn = _bn(6, 0)
    y = torch.randn(4, 6, 5, 5)
    factor, shift = fold_mod.bn_affine(bn)
    got = y.numpy() * factor.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(got, bn(y).detach().numpy(), rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), seed=st.integers(0, 10_000), per_channel=st.booleans(), bias=st.booleans())
def test_folded_weight_and_bias_compute_the_batch_norm_of_the_convolution(bits, seed, per_channel, bias):
    c = 5
    wq, w = _weight(bits, c, seed, per_channel)
    bn = _bn(c, seed)
    b = np.random.default_rng(seed + 1).standard_normal(c).astype(np.float32) if bias else None
    x = ActQ("qdq", 0.05, 0, 255, False, 8)
    f = fold_mod.fold(wq, b, bn, x)
    assert f is not None
    # the stored codes fit their container: int8 within +-64 (u8s8 pair sums cannot saturate), or uint8 - 128
    if f.zero_point:
        assert f.codes.min() >= -128 and f.codes.max() <= 127
    else:
        assert np.abs(f.codes).max() <= 64
    # the same folded weight: codes * scale == w * factor, channel by channel
    factor, shift = fold_mod.bn_affine(bn)
    folded_w = f.codes.astype(np.float64) * f.scale.reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(folded_w, w * factor.reshape(-1, 1, 1, 1), rtol=1e-5, atol=1e-6)
    # the int32 bias is the float bias to within half its step, which is the slack the check allows
    want = shift if b is None else b * factor + shift
    err = np.abs(f.bias * f.bias_scale.astype(np.float64) - want)
    assert np.all(err <= f.slack + 1e-6 * np.abs(want))
    assert np.all(f.slack <= 0.5 * np.abs(f.bias_scale) * (1 + 1e-5))


def test_narrow_codes_are_scaled_so_the_bias_step_shrinks():
    wq, _ = _weight(2, 4, 0)
    f = fold_mod.fold(wq, None, _bn(4, 0, negative=False), ActQ("qdq", 0.1, 0, 3, False, 2))
    assert np.abs(f.codes).max() == 64          # codes -2..1 times 32
    assert f.zero_point == 0 and np.all(f.scale > 0)


def test_a_zero_batch_norm_factor_leaves_the_batch_norm_alone():
    wq, _ = _weight(4, 3, 0)
    bn = _bn(3, 0)
    with torch.no_grad():
        bn.weight[1] = 0.0
    assert fold_mod.fold(wq, None, bn, ActQ("qdq", 0.1, 0, 15, False, 4)) is None


@pytest.fixture(scope="module")
def cnn():
    return model_source("cnn", "digits", random_weights=True, calib_size=64)


def _ort_ops(blob):
    """The operators onnxruntime runs, after the default (all) graph optimizations."""
    import tempfile

    import onnxruntime as ort
    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as d:
        o.optimized_model_filepath = f"{d}/opt.onnx"
        ort.InferenceSession(blob, o, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(o.optimized_model_filepath).graph.node]


@pytest.mark.parametrize("plan", [Plan.uniform(6, 6, name="W6A6"),
                                  Plan(default=LayerConfig(2, 3), layers={"conv1": {"w_bits": 8, "a_bits": 8}},
                                       name="mixed")], ids=lambda p: p.name)
def test_integer_export_runs_the_convolutions_as_integers(cnn, plan):
    prep = prepare_plan(cnn, plan)
    x = torch.from_numpy(cnn.sample[:64])
    faithful = onnx_model_bytes(prep.applied, cnn.input_shape, plan, check_inputs=x[:8])
    integer = onnx_model_bytes(prep.applied, cnn.input_shape, plan, check_inputs=x[:8], integer=True)
    assert "BatchNormalization" in [n.op_type for n in onnx.load_from_string(faithful).graph.node]
    exported = onnx.load_from_string(integer)
    assert "BatchNormalization" not in [n.op_type for n in exported.graph.node]
    assert "int32" in {p.key: p.value for p in exported.metadata_props}["bitscape.bias"]
    ops = _ort_ops(integer)
    assert ops.count("QLinearConv") == 4 and "Conv" not in ops, ops
    assert "QLinearConv" not in _ort_ops(faithful)
    with torch.no_grad():
        y = torch.from_numpy(prep.applied.model.eval()(x).numpy().argmax(1))
    assert verify(integer, prep.applied.model, x, y).agreement >= 0.9


def test_a_wrong_fold_is_refused_naming_the_layer(cnn, monkeypatch):
    prep = prepare_plan(cnn, Plan.uniform(6, 6))
    real = fold_mod.fold

    def off_by_a_lot(w, bias, bn, x):
        f = real(w, bias, bn, x)
        f.bias = f.bias + 1000
        return f
    monkeypatch.setattr("engine.export.onnx_layers.fold", off_by_a_lot)
    with pytest.raises(ExportError, match="layer 'conv1'"):
        onnx_model_bytes(prep.applied, cnn.input_shape, integer=True)


def test_the_faithful_export_folds_nothing(cnn):
    prep = prepare_plan(cnn, Plan.uniform(4, 4))
    built = build_onnx(prep.applied.model, cnn.input_shape, prep.applied.configs)
    assert not built.output_of and not built.slack
    built = build_onnx(prep.applied.model, cnn.input_shape, prep.applied.configs, integer=True)
    assert built.output_of == {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3", "conv4": "bn4"}


@pytest.mark.slow
@pytest.mark.fashion
def test_export_onnx_integer_from_the_command_line(tmp_path):
    """`bitscape export onnx --integer --verify --json` as the README runs it, on the shipped CNN."""
    from engine.evaluation import Settings
    from engine.explore.pipeline import evaluate_plan
    from engine.models.checkpoint import save_planned
    run = evaluate_plan("cnn", "fashion-mnist", Plan.uniform(4, 4), Settings(steps=2))
    ck = tmp_path / "cnn.safetensors"
    save_planned(run, ck)
    out = tmp_path / "cnn.onnx"
    p = subprocess.run([sys.executable, "-m", "explorer.cli", "export", "onnx", "--checkpoint", str(ck), "--out",
                        str(out), "--integer", "--verify", "--json"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert "int32" in r["bias"] and r["examples"] == 10_000
    assert r["agreement"] >= 0.95, r
    assert abs(r["candidate_accuracy"] - r["reference_accuracy"]) <= 0.01, r
    assert "QLinearConv" in _ort_ops(out.read_bytes())


@pytest.mark.parametrize("model_id,dataset,unfused", [("resnet20", "cifar10", 0), ("mobilenetv2", "fashion-mnist", 1)])
def test_batch_normed_zoo_models_export_in_integer_form(model_id, dataset, unfused):
    """ResNet-20 (residual adds: only the first convolution of a block is requantized) and MobileNetV2
    (depthwise and pointwise convolutions) pass the layer-by-layer check in integer form; onnxruntime
    runs the requantized convolutions as integer kernels -- all but MobileNetV2's last projection,
    whose output (a linear bottleneck, signed) is clamped in float before the head's QuantizeLinear;
    the cost model's onnxruntime-integer base counts the same convolutions unfused."""
    src = model_source(model_id, dataset, random_weights=True, calib_size=16)
    prep = prepare_plan(src, Plan.uniform(5, 5))
    blob = onnx_model_bytes(prep.applied, src.input_shape, integer=True, check_inputs=torch.from_numpy(src.sample[:4]))
    built = build_onnx(prep.applied.model, src.input_shape, prep.applied.configs, integer=True)
    requantized = {x.name for x in prep.applied.topology.layers if x.requantized == "after_bn"}
    assert requantized and set(built.output_of) >= requantized
    assert _ort_ops(blob).count("QLinearConv") == len(requantized) - unfused
    from engine.cost.bases import ort_base
    from engine.cost.model import cost_plan
    topo = prep.applied.topology
    costed = cost_plan(topo.layers, prep.applied.configs, ort_base(integer=True), 1).layers
    assert sum("not fused" in x.note for x in costed if x.name in requantized) == unfused
