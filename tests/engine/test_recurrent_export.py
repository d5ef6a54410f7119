"""GRU and LSTM leave the engine both ways: ONNX (unrolled MatMul + QDQ) and the packed deployment
(gate GEMMs on the packed kernels, gates in float), each agreeing with the fake-quantized network."""
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from engine.deploy import deploy, load_packed, save_packed
from engine.evaluation import Settings
from engine.explore.pipeline import prepare
from engine.export import build_onnx, onnx_model_bytes, verify
from engine.models.data import load_dataset
from engine.plans.apply import apply_plan
from engine.plans.plan import LayerConfig, Plan
from engine.training.finetune import train

_DATA = {}


def _digits():
    if "digits" not in _DATA:
        _DATA["digits"] = load_dataset("digits")
    return _DATA["digits"]


def _tuned(model_id, plan, steps=2):
    data = _digits()
    s = Settings(steps=steps, batch_size=32, seed=0)
    applied, _, _ = prepare(model_id, "digits", plan, s, data=data)
    train(applied.model, data, s)
    applied.model.eval()
    return applied, data


def _plans(rnn: str) -> dict[str, Plan]:
    """Plans for a model whose recurrent layer is named ``rnn`` (its head is ``fc``)."""
    return {
        "W4A4": Plan(default=LayerConfig(4, 4), layers={"fc": {"w_bits": 8, "a_bits": 8}}),
        "W2A2": Plan.uniform(2, 2),
        "mixed-2:4": Plan(default=LayerConfig(8, 4), layers={rnn: {"sparsity": "2:4", "w_bits": 3}}),
        "widened": Plan(default=LayerConfig(4, 4), layers={rnn: {"widen": 2.0}}),
        "weights-only": Plan(default=LayerConfig(4, 32)),
    }


PLAN_NAMES = list(_plans("x"))


@pytest.mark.parametrize("model_id", ["gru", "lstm"])
@pytest.mark.parametrize("plan_name", PLAN_NAMES)
def test_recurrent_exports_to_onnx_with_full_agreement(model_id, plan_name):
    """Every plan kind, weight-only included (an LSTM with float activations used to be refused:
    onnxruntime turned its DequantizeLinear -> MatMul into MatMulNBits, which quantizes the
    activations to 8 bits on the fly)."""
    plan = _plans(model_id)[plan_name]
    applied, data = _tuned(model_id, plan)
    blob = onnx_model_bytes(applied, data.input_shape, plan, model_id, "digits", check_inputs=data.x_val[:32])
    m = onnx.load_from_string(blob)
    onnx.checker.check_model(m, full_check=True)
    if plan.default.w_bits < 32:
        assert any(n.op_type == "DequantizeLinear" and n.name.startswith(f"{model_id}/") for n in m.graph.node)
    r = verify(blob, applied.model, data.x_test, data.y_test)
    assert r.examples == len(data.y_test)
    assert r.agreement == 1.0 and r.candidate_accuracy == r.reference_accuracy, r


def test_float_gru_exports_like_torch():
    torch.manual_seed(0)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(8, 12, batch_first=True)
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            out, h = self.gru(x.flatten(1, 2))
            return self.fc(out[:, -1] + h[0])

    net = Head().eval()
    x = torch.randn(5, 1, 8, 8)
    built = build_onnx(net, (1, 8, 8))
    from engine.export import predict_onnx
    got = predict_onnx(built.model.SerializeToString(), x)
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _assert_same_predictions(ref, got):
    """Same argmax everywhere; logits equal to float tolerance (an activation on a rounding boundary
    may take the neighbouring code: bounded, and never in the prediction)."""
    np.testing.assert_array_equal(ref.argmax(1), got.argmax(1))
    diff = np.abs(ref - got).max(axis=1)
    scale = np.abs(ref).max()
    assert np.mean(diff <= 1e-4 * scale) >= 0.98 and diff.max() <= 0.05 * scale


DEPLOY_PLANS = {**_plans("gru"), "binary-W1A1": Plan.uniform(1, 1, quantizer="binary"),
                "float": Plan.uniform(32, 32)}


@pytest.mark.parametrize("plan_name", list(DEPLOY_PLANS))
def test_gru_deploys_packed_with_identical_predictions(plan_name, tmp_path):
    from engine.deploy import reference_logits
    plan = DEPLOY_PLANS[plan_name]
    applied, data = _tuned("gru", plan)
    net = deploy(applied)
    ref = reference_logits(applied, data.x_test)
    _assert_same_predictions(ref, net.predict(data.x_test.numpy()))
    row = next(r for r in net.summary()["layers"] if r["name"] == "gru")
    assert row["type"] == "gru" and set(row["gemms"]) == {"ih", "hh"}
    if plan_name == "W2A2":
        assert row["kernel"] == "bitserial"
    if plan_name == "mixed-2:4":
        assert row["kernel"] == "nm"
    path = tmp_path / "gru.packed.safetensors"
    save_packed(net, path)
    back = load_packed(path)
    np.testing.assert_array_equal(back.predict(data.x_test.numpy()), net.predict(data.x_test.numpy()))


def test_float_gru_deploys_like_torch():
    torch.manual_seed(0)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(8, 12, batch_first=True)
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            out, h = self.gru(x.flatten(1, 2))
            return self.fc(out[:, -1] + h[0])

    net = Head().eval()
    applied = apply_plan(net, Plan.uniform(32, 32), (1, 8, 8))
    x = torch.randn(5, 1, 8, 8)
    got = deploy(applied).predict(x.numpy())
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_packed_gru_whose_shapes_disagree_is_refused(tmp_path):
    """A packed file whose GRU hidden size does not match its weights fails on load, naming the layer."""
    import json

    from safetensors import safe_open
    from safetensors.numpy import load, save

    from engine.deploy import DeployError
    from engine.deploy.packfile import META_KEY
    applied, data = _tuned("gru", Plan.uniform(4, 4), steps=0)
    path = tmp_path / "gru.safetensors"
    save_packed(deploy(applied), path)
    arrs = load(path.read_bytes())
    with safe_open(str(path), framework="numpy") as f:
        md = f.metadata()
    meta = json.loads(md[META_KEY])
    next(lm for lm in meta["layers"] if lm["name"] == "gru")["hidden"] = 32
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(save(arrs, metadata={**md, META_KEY: json.dumps(meta)}))
    with pytest.raises(DeployError, match=r"layer 'gru'.*(GRU weight shapes|bias)"):
        load_packed(bad)
