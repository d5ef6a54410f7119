"""ONNX export: onnxruntime reproduces the engine's fake-quantized predictions exactly."""
import json

import numpy as np
import onnx
import pytest
import torch.nn as nn

from engine.evaluation import Settings
from engine.explore.pipeline import prepare
from engine.export import ExportError, build_onnx, onnx_model_bytes, read_metadata, verify
from engine.models.data import load_dataset
from engine.plans.plan import LayerConfig, Plan
from engine.training.finetune import train

_DATA = {}


def _data(name):
    if name not in _DATA:
        _DATA[name] = load_dataset(name)
    return _DATA[name]


def _tuned(model_id, dataset_id, plan, steps=2):
    """A planned network, calibrated and briefly fine-tuned (learned steps move off their init)."""
    data = _data(dataset_id)
    s = Settings(steps=steps, batch_size=32, seed=0)
    applied, _, _ = prepare(model_id, dataset_id, plan, s, data=data)
    train(applied.model, data, s)
    applied.model.eval()
    return applied, data


def _export(applied, data, plan, model_id, dataset_id):
    blob = onnx_model_bytes(applied, data.input_shape, plan, model_id, dataset_id, check_inputs=data.x_val[:32])
    onnx.checker.check_model(onnx.load_from_string(blob), full_check=True)
    return blob


def _assert_same(blob, applied, x, y):
    r = verify(blob, applied.model, x, y)
    assert r.examples == len(y)
    assert r.agreement == 1.0 and r.disagreements == 0, r
    assert r.candidate_accuracy == r.reference_accuracy
    return r


def _plans(last, first, sparse="fc*"):
    return {
        "W8A8": Plan.uniform(8, 8),
        "W4A4": Plan.uniform(4, 4),
        "W2A2": Plan.uniform(2, 2),
        "mixed": Plan(default=LayerConfig(4, 4), layers={first: {"w_bits": 8, "a_bits": 8},
                                                          last: {"w_bits": 3, "a_bits": 5}}),
        "2:4": Plan(default=LayerConfig(4, 8), layers={sparse: {"sparsity": "2:4"}}),
        "widened": Plan(default=LayerConfig(4, 4, widen=2.0), layers={last: {"widen": 1.0}}),
    }


DIGITS_CASES = [(m, k) for m in ("mlp", "lenet5") for k in ("W8A8", "W4A4", "W2A2", "mixed", "2:4", "widened")]


@pytest.mark.parametrize("model_id,plan_name", DIGITS_CASES)
def test_digits_exports_agree_on_the_whole_test_set(model_id, plan_name):
    plan = _plans("fc3", "fc1" if model_id == "mlp" else "conv1")[plan_name]
    applied, data = _tuned(model_id, "digits", plan)
    blob = _export(applied, data, plan, model_id, "digits")
    r = _assert_same(blob, applied, data.x_test, data.y_test)
    assert r.max_abs_logit_diff < 0.05
    if plan_name == "W4A4":  # says how 4-bit activations are held (int4, or int8 clipped to 16 levels)
        assert read_metadata(blob)["bitscape.act_containers"]


QUANTIZER_PLANS = {
    # binary (XNOR) and ternary (TWN) weights are codes {-1, 0, +1} with per-channel alpha; WRPN's grid
    "binary-ternary-wrpn": Plan(default=LayerConfig(4, 4, quantizer="wrpn"),
                                layers={"fc1": {"w_bits": 1, "a_bits": 1, "quantizer": "binary"},
                                        "fc2": {"w_bits": 2, "quantizer": "ternary"}}),
    # LSQ's 1-bit codes {-1, +1}, per-channel steps, weight-only and activation-only layers
    "lsq1-perchannel-float": Plan(default=LayerConfig(1, 1),
                                  layers={"fc2": {"w_bits": 5, "a_bits": 6, "per_channel": True},
                                          "fc3": {"w_bits": 32, "a_bits": 3}}),
    "weight-only": Plan(default=LayerConfig(8, 32), layers={"fc2": {"w_bits": 6}}),
}


@pytest.mark.parametrize("name", list(QUANTIZER_PLANS))
def test_other_quantizers_export_exactly(name):
    plan = QUANTIZER_PLANS[name]
    applied, data = _tuned("mlp", "digits", plan, steps=2)
    blob = _export(applied, data, plan, "mlp", "digits")
    _assert_same(blob, applied, data.x_test, data.y_test)


def test_lstm_exports_unrolled():
    plan = Plan(default=LayerConfig(4, 4), layers={"fc": {"w_bits": 8, "a_bits": 8}})
    applied, data = _tuned("lstm", "digits", plan, steps=2)
    blob = _export(applied, data, plan, "lstm", "digits")
    r = _assert_same(blob, applied, data.x_test, data.y_test)
    assert r.max_abs_logit_diff < 0.1


def _initializer_types(m):
    return {t.name: t.data_type for t in m.graph.initializer}


def test_graph_is_qdq_with_the_learned_scales_and_the_plan_in_metadata():
    plan = Plan(default=LayerConfig(4, 4), layers={"fc1": {"w_bits": 8, "a_bits": 8}, "fc3": {"w_bits": 2, "a_bits": 3}})
    applied, data = _tuned("mlp", "digits", plan, steps=2)
    m = onnx.load_from_string(_export(applied, data, plan, "mlp", "digits"))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") == 3 and ops.count("DequantizeLinear") == 6
    assert m.opset_import[0].version >= 21
    types = _initializer_types(m)
    T = onnx.TensorProto
    assert types["fc1.weight_quantized"] in (T.INT8, T.UINT8)
    assert types["fc2.weight_quantized"] == T.INT4           # 4-bit weights use the opset's int4
    assert types["fc3.weight_quantized"] == T.INT8
    # 3-bit activations: quantize, clip to the 3-bit code range, dequantize
    clip = next(n for n in m.graph.node if n.op_type == "Clip" and n.name.startswith("fc3/aq"))
    lo, hi = (onnx.numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == clip.input[i]))
              for i in (1, 2))
    assert (int(lo), int(hi)) == (0, 7)   # after ReLU: unsigned
    # the learned activation step is the scale
    scale = onnx.numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "fc2.aq.scale"))
    assert float(scale) == pytest.approx(float(applied.model.fc2.aq.step.detach().abs()), rel=1e-6)
    md = {p.key: p.value for p in m.metadata_props}
    assert json.loads(md["bitscape.plan"]) == json.loads(plan.to_json())
    assert json.loads(md["bitscape.layers"])["fc3"]["a_bits"] == 3
    assert md["bitscape.model"] == "mlp" and md["bitscape.dataset"] == "digits"


def test_4bit_activations_are_clipped_int8_unless_int4_is_asked_for():
    """onnxruntime has no int4 kernels (an int4 activation QDQ pair is not fused), so 4-bit activations
    are uint8 clipped to the 16 levels like every width below 8; act_int4 keeps the opset's uint4."""
    plan = Plan(default=LayerConfig(8, 8), layers={"fc2": {"a_bits": 4}})
    applied, data = _tuned("mlp", "digits", plan, steps=1)
    T = onnx.TensorProto
    for int4, zp_type, clips in ((False, T.UINT8, 1), (True, T.UINT4, 0)):
        blob = onnx_model_bytes(applied, data.input_shape, plan, "mlp", "digits", check_inputs=data.x_val[:32],
                                act_int4=int4)
        m = onnx.load_from_string(blob)
        assert _initializer_types(m)["fc2.aq.zero_point"] == zp_type
        assert sum(n.op_type == "Clip" and n.name.startswith("fc2/aq") for n in m.graph.node) == clips
        assert read_metadata(blob)["bitscape.act_containers"] == ("int4 where 4-bit" if int4 else "int8/uint8")
        _assert_same(blob, applied, data.x_test, data.y_test)


def test_sparsity_mask_is_in_the_stored_codes():
    plan = Plan(default=LayerConfig(8, 8, sparsity="2:4"))
    applied, data = _tuned("mlp", "digits", plan, steps=1)
    m = onnx.load_from_string(_export(applied, data, plan, "mlp", "digits"))
    init = {t.name: t for t in m.graph.initializer}
    codes = onnx.numpy_helper.to_array(init["fc2.weight_quantized"]).astype(np.int32)
    zp = onnx.numpy_helper.to_array(init["fc2.weight_zero_point"]).astype(np.int32)
    nonzero = (codes - zp) != 0
    assert (nonzero.reshape(codes.shape[0], -1, 4).sum(-1) <= 2).all()
    assert np.array_equal(nonzero, applied.model.fc2.mask.numpy() != 0) or nonzero.sum() <= applied.model.fc2.mask.sum()


def test_widened_layers_are_at_their_real_size():
    plan = Plan(default=LayerConfig(4, 4, widen=2.0), layers={"fc3": {"widen": 1.0}})
    applied, data = _tuned("mlp", "digits", plan, steps=1)
    m = onnx.load_from_string(_export(applied, data, plan, "mlp", "digits"))
    dims = {t.name: list(t.dims) for t in m.graph.initializer}
    assert dims["fc1.weight_quantized"] == [256, 64] and dims["fc2.weight_quantized"] == [128, 256]
    assert dims["fc3.weight_quantized"] == [10, 128]


def test_unsupported_layer_is_named():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ELU(), nn.Linear(8, 3)).eval()
    with pytest.raises(ExportError, match=r"layer '2' \(ELU\)"):
        build_onnx(net, (1, 4, 4))


def test_a_layer_that_would_silently_differ_is_refused(monkeypatch):
    from engine.export import qdq as ex  # the quantizer parameters every layer handler reads
    plan = Plan.uniform(4, 4)
    applied, data = _tuned("mlp", "digits", plan, steps=1)
    real = ex.act_params

    def wrong(aq, per, where):
        p = real(aq, per, where)
        if where == "fc2":
            p.scale *= 1.5
        return p
    monkeypatch.setattr(ex, "act_params", wrong)
    with pytest.raises(ExportError, match="layer 'fc2'.*differs"):
        onnx_model_bytes(applied, data.input_shape, plan, check_inputs=data.x_val[:32])


def test_uncalibrated_network_is_refused():
    from engine.models.zoo import build_model
    from engine.plans.apply import apply_plan
    data = _data("digits")
    applied = apply_plan(build_model("mlp", data.input_shape, 10).eval(), Plan.uniform(4, 4), data.input_shape)
    with pytest.raises(ExportError, match="layer 'fc1'.*never calibrated"):
        onnx_model_bytes(applied, data.input_shape)


@pytest.mark.fashion
@pytest.mark.parametrize("plan_name", ["W4A4", "mixed", "2:4", "widened"])
def test_fashion_cnn_exports_agree(plan_name):
    """W4A4 over the whole Fashion-MNIST test set; the others on its first 500 images (time)."""
    data = _data("fashion-mnist")
    plan = _plans("fc2", "conv1", sparse="conv[234]")[plan_name]
    applied, _ = _tuned("cnn", "fashion-mnist", plan, steps=1)
    blob = _export(applied, data, plan, "cnn", "fashion-mnist")
    n = len(data.y_test) if plan_name == "W4A4" else 500
    _assert_same(blob, applied, data.x_test[:n], data.y_test[:n])
