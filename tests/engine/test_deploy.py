"""Packed deployment: the packed network reproduces the fake-quantized torch model on the whole test set."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.deploy import DeployError, deploy, load_packed, reference_logits, save_packed
from engine.evaluation import Settings
from engine.explore.pipeline import evaluate_plan, prepare
from engine.models.checkpoint import save_planned
from engine.models.data import load_dataset
from engine.plans.apply import apply_plan, calibrate
from engine.plans.plan import LayerConfig, Plan
from explorer.cli import main

LAST = {"mlp": "fc3", "lenet5": "fc3", "lstm": "fc"}
FIRST = {"mlp": "fc1", "lenet5": "conv1", "lstm": "lstm"}
SECOND = {"mlp": "fc2", "lenet5": "conv2", "lstm": "lstm"}


def _plans(model):
    last, first, second = LAST[model], FIRST[model], SECOND[model]
    # LeNet-5: conv1 reads 1 channel and conv2 6, so conv1 stays dense and is widened to 12 channels
    nm_skip = {"conv1": {"sparsity": "none", "widen": 2.0}} if model == "lenet5" else {}
    mixed = {first: {"w_bits": 8, "a_bits": 8}, second: {"w_bits": 2, "a_bits": 2},
             last: {"w_bits": 4, "a_bits": 32}}
    if model == "lenet5":
        mixed.update(fc1={"w_bits": 1, "a_bits": 2, "quantizer": "binary"}, fc2={"w_bits": 32, "a_bits": 4})
    if model == "mlp":
        mixed[second] = {"w_bits": 2, "a_bits": 2, "sparsity": "2:4"}
    return {
        "W8A8": Plan.uniform(8, 8),
        "W4A4": Plan.uniform(4, 4),
        "W2A2": Plan.uniform(2, 2),
        "W1A1-binary": Plan.uniform(1, 1, quantizer="binary"),
        "2:4-W4A4": Plan(default=LayerConfig(4, 4, sparsity="2:4"), layers=nm_skip),
        "widened-W4A4": Plan(default=LayerConfig(4, 4, widen=2.0), layers={last: {"widen": 1.0}}),
        "mixed": Plan(default=LayerConfig(4, 8), layers=mixed),
    }


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _prepared(model, plan, data):
    applied, _, _ = prepare(model, "digits", plan, Settings(steps=0), data=data)
    applied.model.eval()
    return applied


def assert_same_predictions(ref, got):
    """Same argmax on every example; logits equal to float tolerance. An activation that lands on a
    rounding boundary may take the neighbouring code (torch's float32 summation order is not ours),
    so a few examples may differ by one quantization step: bounded, and never in the prediction."""
    assert ref.shape == got.shape
    np.testing.assert_array_equal(ref.argmax(1), got.argmax(1))
    diff = np.abs(ref - got).max(axis=1)
    scale = np.abs(ref).max()
    assert np.mean(diff <= 1e-4 * scale) >= 0.98, f"{np.mean(diff > 1e-4 * scale):.1%} examples off"
    assert diff.max() <= 0.05 * scale


CASES = [(m, p) for m in ("mlp", "lenet5", "lstm") for p in _plans(m)]


@pytest.mark.parametrize("model,plan_name", CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_packed_network_matches_fake_quant_on_the_test_set(model, plan_name, digits):
    applied = _prepared(model, _plans(model)[plan_name], digits)
    net = deploy(applied)
    ref = reference_logits(applied, digits.x_test)
    got = net.predict(digits.x_test.numpy())
    assert_same_predictions(ref, got)
    kernels = {r["name"]: r["kernel"] for r in net.summary()["layers"]}
    if plan_name in ("W2A2", "W1A1-binary"):
        assert set(kernels.values()) == {"bitserial"}
    if plan_name in ("W8A8", "W4A4", "widened-W4A4"):
        assert set(kernels.values()) == {"int8"}
    if plan_name == "2:4-W4A4":
        assert kernels[LAST[model]] == "nm" and "nm" in kernels[SECOND[model]]
    if plan_name == "mixed":
        assert kernels[LAST[model]] == "float-act"
        if model == "lenet5":
            assert kernels["fc2"] == "float" and kernels["fc1"] == "bitserial"


def test_kernel_choice_binary_codes_and_memory(digits):
    applied = _prepared("mlp", Plan.uniform(1, 1, quantizer="binary"), digits)
    net = deploy(applied)
    g = net.layers["fc2"].gemms["w"]
    # binary {-1,+1} weights stored as one bit plane; unsigned 1-bit activations after ReLU
    assert g.packed.bits == 1 and not g.packed.signed and (g.w_p, g.w_q) == (2, -1)
    assert g.act.bits == 1 and not g.act.u_signed
    s = net.summary()
    row = {r["name"]: r for r in s["layers"]}["fc2"]
    assert row["packed_bytes"] == 64 * 1 * 4 * 8          # 64 rows x 1 plane x 256-bit padded K
    assert row["fp32_bytes"] == 4 * (128 * 64 + 64)
    assert s["total_packed_bytes"] < s["fp32_bytes"] / 4
    assert s["ideal_weight_bytes"] == (64 * 128 + 128 * 64 + 10 * 64) // 8


def test_binary_weights_on_the_int8_kernel_are_signed_2bit_codes_without_correction(digits):
    """A1 > 2 puts 1-bit weights on the int8 kernel: their {-1, +1} codes go in as signed 2-bit codes
    (one 4-bit digit, the same speed) and need no per-call {0, 1} correction; results unchanged."""
    plan = Plan(default=LayerConfig(8, 8), layers={"fc2": {"w_bits": 1, "a_bits": 8, "quantizer": "binary"}})
    applied = _prepared("mlp", plan, digits)
    net = deploy(applied)
    g = net.layers["fc2"].gemms["w"]
    assert g.kernel == "int8" and g.packed.bits == 2 and g.packed.signed and (g.w_p, g.w_q) == (1, 0)
    assert_same_predictions(reference_logits(applied, digits.x_test), net.predict(digits.x_test.numpy()))


def test_save_load_roundtrip_is_exact_and_has_no_pickle(tmp_path, digits):
    plan = Plan(default=LayerConfig(4, 4, sparsity="2:4"), layers={"conv1": {"sparsity": "none", "widen": 2.0},
                                                                   "conv2": {"w_bits": 2, "a_bits": 2}})
    applied = _prepared("lenet5", plan, digits)
    net = deploy(applied, meta={"model": "lenet5"})
    path = tmp_path / "net.safetensors"
    save_packed(net, path)
    back = load_packed(path)
    x = digits.x_test[:64].numpy()
    np.testing.assert_array_equal(net.predict(x), back.predict(x))
    assert back.meta["model"] == "lenet5"
    raw = path.read_bytes()
    assert b"pickle" not in raw[:64] and raw[8:9] == b"{"   # safetensors: a JSON header, then arrays
    assert net.summary() == back.summary()


def test_bad_packed_files_and_inputs_are_clear_errors(tmp_path, digits):
    applied = _prepared("mlp", Plan.uniform(2, 2), digits)
    net = deploy(applied)
    path = tmp_path / "net.safetensors"
    save_packed(net, path)
    with pytest.raises(DeployError, match="expects input of shape"):
        net.forward(np.zeros((2, 1, 7, 7), np.float32))
    with pytest.raises(DeployError, match="does not exist"):
        load_packed(tmp_path / "missing.safetensors")
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DeployError, match="not a valid safetensors"):
        load_packed(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(DeployError):
        load_packed(junk)
    # a valid safetensors file that is not a packed network (e.g. a checkpoint)
    from safetensors.numpy import load, save
    other = tmp_path / "other.safetensors"
    other.write_bytes(save({"a": np.zeros(3, np.float32)}))
    with pytest.raises(DeployError, match="not a packed network"):
        load_packed(other)
    # arrays that do not match the metadata are caught before any kernel runs
    from safetensors import safe_open
    arrs = load(path.read_bytes())
    with safe_open(str(path), framework="numpy") as f:
        md = f.metadata()
    key = next(k for k in arrs if k.endswith(".planes"))
    arrs[key] = arrs[key][:, :, :2].copy()
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(save(arrs, metadata=md))
    with pytest.raises(DeployError, match="planes"):
        load_packed(tampered)
    meta = json.loads(md["bitscape"])
    meta["ops"][1]["args"] = [{"ref": "nowhere"}]
    tampered.write_bytes(save(load(path.read_bytes()), metadata={"bitscape": json.dumps(meta)}))
    with pytest.raises(DeployError, match="before it is defined"):
        load_packed(tampered)


class _Dilated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, dilation=2)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv1(x), 1))


class _Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc1(torch.flatten(x, 1))
        return self.fc2(h * torch.sigmoid(h))


def test_unsupported_layers_are_named():
    torch.manual_seed(0)
    applied = apply_plan(_Dilated(), Plan.uniform(4, 4), (2, 8, 8))
    calibrate(applied.model, [torch.randn(8, 2, 8, 8)])
    with pytest.raises(DeployError, match="layer 'conv1': dilated convolution"):
        deploy(applied)
    applied = apply_plan(_Gated(), Plan.uniform(4, 4), (1, 4, 4))
    calibrate(applied.model, [torch.randn(8, 1, 4, 4)])
    with pytest.raises(DeployError, match="node 'mul'.*not supported"):
        deploy(applied)


def test_cli_deploy_json_verify_and_bad_input(tmp_path, capsys):
    plan = Plan(default=LayerConfig(2, 2), layers={"fc3": {"w_bits": 8, "a_bits": 8}})
    run = evaluate_plan("mlp", "digits", plan, Settings(steps=5))
    ck = tmp_path / "ck.safetensors"
    save_planned(run, ck)
    out = tmp_path / "net.safetensors"
    assert main(["deploy", "--checkpoint", str(ck), "--out", str(out), "--json", "--verify"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["path"] == str(out) and out.is_file()
    assert [r["kernel"] for r in d["layers"]] == ["bitserial", "bitserial", "int8"]
    assert d["total_packed_bytes"] < d["fp32_bytes"] and all("bytes" in r for r in d["layers"])
    assert d["verify"]["agreement"] == 1.0 and d["verify"]["examples"] == len(load_dataset("digits").y_test)
    assert d["verify"]["candidate_accuracy"] == pytest.approx(run.evaluation.test_accuracy)
    assert d["verify"]["disagreements"] == 0 and d["verify"]["reference_accuracy"] == d["verify"]["candidate_accuracy"]
    # human-readable form
    assert main(["deploy", "--checkpoint", str(ck), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "same prediction on" in text and "fp32" in text
    # bad input: exit 2, nothing written
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    target = tmp_path / "never.safetensors"
    assert main(["deploy", "--checkpoint", str(garbage), "--out", str(target)]) == 2
    assert main(["deploy", "--checkpoint", str(out), "--out", str(target)]) == 2   # a packed file, not a checkpoint
    assert main(["deploy", "--checkpoint", str(ck)]) == 2                          # neither --out nor --verify
    assert not target.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert "error" in capsys.readouterr().err


@pytest.mark.fashion
def test_fashion_cnn_w4a4_matches_on_the_whole_test_set():
    data = load_dataset("fashion-mnist")
    applied, _, _ = prepare("cnn", "fashion-mnist", Plan.uniform(4, 4), Settings(steps=0), data=data)
    applied.model.eval()
    net = deploy(applied)
    ref = reference_logits(applied, data.x_test)
    got = net.predict(data.x_test.numpy())
    assert len(ref) == len(data.y_test)
    assert_same_predictions(ref, got)


def test_forward_spans_cover_the_pass_and_bound_gemms_equal_the_public_kernels(digits):
    from engine import kernels as K
    applied = _prepared("lenet5", Plan.uniform(2, 2), digits)
    net = deploy(applied)
    x = digits.x_test.numpy()[:3]
    spans, calls = {}, {}
    out = net.forward(x, timings=calls, spans=spans)
    assert list(spans) == list(net.layers) and set(calls) == set(net.layers)
    assert all(spans[k] >= calls[k] > 0 for k in calls)
    np.testing.assert_array_equal(out, net.forward(x))
    rng = np.random.default_rng(0)
    w = rng.integers(-2, 2, size=(7, 70)).astype(np.int8)
    a = rng.integers(0, 4, size=(5, 70)).astype(np.uint8)
    for layout, fn in (("planes", K.gemm_bitserial), ("int8", K.gemm_int8)):
        pw = K.pack_weights(w, 2, True, layout)
        np.testing.assert_array_equal(K.bind_gemm(pw, 2, False)(a), fn(pw, a, 2, False))
    bound = K.bind_gemm(K.pack_weights(w, 2, True, "int8"), 2, False)
    with pytest.raises(ValueError, match="activation codes"):
        bound(a[:, :60].copy())
    with pytest.raises(ValueError, match="outside"):      # the C extension still checks the code range
        bound(np.full((2, 70), 9, np.uint8))
