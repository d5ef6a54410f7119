"""Host terms of a CPU profile: per-kind call cost, LSTM steps, quantization/epilogue/im2col per element."""
import numpy as np
import pytest

from engine.cost import LayerTable, cost_batch, cost_plan, encode_plans, load_profile
from engine.cost.calibrate import Measurement, fit_profile, predict_layer
from engine.cost.profiles import Profile, ProfileError
from engine.plans.plan import LayerConfig

LAYERS = [
    {"name": "conv", "kind": "conv2d", "in_channels": 3, "out_channels": 16, "kernel": (3, 3), "groups": 1,
     "in_hw": (16, 16), "out_hw": (16, 16), "steps": 1, "bias": True},
    {"name": "lstm", "kind": "lstm", "in_channels": 12, "out_channels": 32, "steps": 6, "bias": True},
    {"name": "fc", "kind": "linear", "in_channels": 32, "out_channels": 10, "steps": 1, "bias": True},
]
HOST = {"layer_s": {"linear": 9e-6, "conv2d": 25e-6, "lstm": 15e-6}, "step_s": 7e-6, "quant_s": 3e-9,
        "out_s": {"linear": 4e-9, "conv2d": 11e-9, "lstm": 6e-9}, "im2col_s": 0.5e-9, "binary_s": 12e-6,
        "binary_out_s": 2e-9}


def _with_host(host, base="cpu"):
    d = load_profile(base).to_dict()
    d.pop("host", None)
    if host is not None:
        d["host"] = host
    return Profile(d)


def test_profile_without_host_terms_costs_as_before():
    for name in ("a100", "bitfusion", "bops", "t4"):
        prof = load_profile(name)
        assert prof.host is False
    cfgs = [LayerConfig(8, 8), LayerConfig(2, 2), LayerConfig(4, 4)]
    plain = _with_host(None)
    zeros = _with_host({"layer_s": {"linear": 0, "conv2d": 0, "lstm": 0}, "step_s": 0, "quant_s": 0, "out_s": 0})
    a = cost_plan(LAYERS, cfgs, plain, 4)
    b = cost_plan(LAYERS, cfgs, zeros, 4)
    assert [x.time_s for x in a.layers] == [x.time_s for x in b.layers]
    assert a.latency_s == b.latency_s and a.energy_j == b.energy_j


def test_host_terms_add_exactly_the_documented_seconds():
    cfgs = [LayerConfig(8, 8), LayerConfig(2, 2), LayerConfig(1, 1)]
    plain, host = _with_host(None), _with_host(HOST)
    b = 3
    a = cost_plan(LAYERS, cfgs, plain, b)
    h = cost_plan(LAYERS, cfgs, host, b)
    conv, lstm, fc = (d_h.time_s - d_a.time_s for d_a, d_h in zip(a.layers, h.layers))
    # conv: call + per sample (quantized input, output elements, im2col elements)
    assert conv == pytest.approx(25e-6 + b * (3e-9 * 3 * 256 + 11e-9 * 16 * 256 + 0.5e-9 * 256 * 27), rel=1e-9)
    # lstm: call + 6 steps + per sample (x and h quantized, both GEMMs' outputs)
    assert lstm == pytest.approx(15e-6 + 6 * 7e-6 + b * (3e-9 * (12 + 32) * 6 + 6e-9 * 2 * 128 * 6), rel=1e-9)
    # linear with 1-bit weights: call + binary correction + per sample
    assert fc == pytest.approx(9e-6 + 12e-6 + b * (3e-9 * 32 + (4e-9 + 2e-9) * 10), rel=1e-9)
    # float activations are not quantized
    f = cost_plan(LAYERS[2:], [LayerConfig(8, 32)], host, 1).layers[0].time_s
    f0 = cost_plan(LAYERS[2:], [LayerConfig(8, 32)], plain, 1).layers[0].time_s
    assert f - f0 == pytest.approx(9e-6 + 4e-9 * 10, rel=1e-9)


def test_bad_host_section_is_named():
    d = load_profile("cpu").to_dict()
    d["host"] = {"layer_s": {"gru": 1e-6}}
    with pytest.raises(ProfileError, match="host"):
        Profile(d)


def test_vectorised_path_equals_scalar_with_host_terms():
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    prof = _with_host(HOST)
    rng = np.random.default_rng(3)
    for model, shape in (("lstm", (1, 8, 8)), ("cnn", (1, 28, 28)), ("mlp", (1, 8, 8))):
        topo = analyze(build_model(model, shape, 10), shape)
        plans = [{l.name: LayerConfig(int(rng.choice([1, 2, 4, 8, 32])), int(rng.choice([1, 2, 4, 8, 32])),
                                      sparsity=str(rng.choice(["none", "2:4"])))
                  for l in topo.layers} for _ in range(6)]
        table = LayerTable.from_topology(topo)
        for batch in (1, 5):
            bc = cost_batch(table, encode_plans(table, plans), prof, batch, keep_layers=True)
            for i, cfgs in enumerate(plans):
                rep = cost_plan(topo.widened(cfgs), cfgs, prof, batch)
                assert bc.batch_time_s[i] == pytest.approx(rep.batch_time_s, rel=1e-9)
                assert bc.latency_s[i] == pytest.approx(rep.latency_s, rel=1e-9)
                assert bc.layer_time_s[i] == pytest.approx([x.time_s for x in rep.layers], rel=1e-9)


def test_fit_recovers_known_host_coefficients_on_synthetic_data():
    truth = _with_host(HOST)
    cfgs = [LayerConfig(8, 8), LayerConfig(2, 2), LayerConfig(1, 1), LayerConfig(4, 4)]
    layers = list(LAYERS)
    for c, hw in ((8, 8), (32, 4), (16, 12)):
        layers.append({"name": f"conv{c}", "kind": "conv2d", "in_channels": c, "out_channels": 2 * c,
                       "kernel": (3, 3), "groups": 1, "in_hw": (hw, hw), "out_hw": (hw, hw), "steps": 1,
                       "bias": True})
    for k, n in ((64, 128), (256, 32), (20, 200)):
        layers.append({"name": f"fc{k}", "kind": "linear", "in_channels": k, "out_channels": n, "steps": 1,
                       "bias": True})
    for cin, h, t in ((8, 64, 8), (32, 16, 3)):
        layers.append({"name": f"lstm{t}", "kind": "lstm", "in_channels": cin, "out_channels": h, "steps": t,
                       "bias": True})
    ms = []
    for lay in layers:
        for cfg in cfgs:
            for b in (1, 7, 64):
                m = Measurement(lay, cfg, 1.0, b)
                ms.append(Measurement(lay, cfg, predict_layer(m, truth), b))
    start = _with_host({"layer_s": {"linear": 1e-5, "conv2d": 1e-5, "lstm": 1e-5}, "step_s": 1e-5,
                        "quant_s": 1e-9, "out_s": {"linear": 1e-9, "conv2d": 1e-9, "lstm": 1e-9},
                        "im2col_s": 1e-9, "binary_s": 1e-6, "binary_out_s": 1e-9})
    params = ["host.layer_s.linear", "host.layer_s.conv2d", "host.layer_s.lstm", "host.step_s", "host.quant_s",
              "host.out_s.linear", "host.out_s.conv2d", "host.out_s.lstm", "host.im2col_s", "host.binary_s",
              "host.binary_out_s"]
    fit = fit_profile(start, ms, params)
    want = {"host.layer_s.linear": 9e-6, "host.layer_s.conv2d": 25e-6, "host.layer_s.lstm": 15e-6,
            "host.step_s": 7e-6, "host.quant_s": 3e-9, "host.out_s.linear": 4e-9, "host.out_s.conv2d": 11e-9,
            "host.out_s.lstm": 6e-9, "host.im2col_s": 0.5e-9, "host.binary_s": 12e-6, "host.binary_out_s": 2e-9}
    for k, v in want.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-3), k
    assert fit.after["rms_log"] < 1e-5 < fit.before["rms_log"]
    # the default parameter list of a host profile names the host terms of the kinds measured
    from engine.cost.calibrate import default_params
    names = default_params(start, ms)
    assert "compute.overhead_s" not in names and set(want) <= set(names)


def test_signed_binary_activations_run_as_the_profiles_width_plus_their_conversion():
    """A convolution reading signed data at 1 bit runs {-1, +1} codes in a 2-bit container (cpu:
    compute.signed_binary_conv_bits) and pays host.sign_s; unsigned 1-bit inputs and linear layers keep
    the 1-bit cell (a linear layer pays the conversion only)."""
    prof = _with_host({**HOST, "sign_s": 7e-6})
    assert prof.signed_binary_conv_bits == 2
    signed_conv, unsigned_conv = ({**LAYERS[0], "signed_input": s} for s in (True, False))
    fc_s, fc_u = ({**LAYERS[2], "signed_input": s} for s in (True, False))

    def t(layer, w, a):
        return cost_plan([layer], [LayerConfig(w, a)], prof, 1).layers[0].time_s

    for w in (1, 2, 8):
        assert t(signed_conv, w, 1) == pytest.approx(t(unsigned_conv, w, 2) + 7e-6, rel=1e-12)
        assert t(signed_conv, w, 2) == t(unsigned_conv, w, 2)
        assert t(unsigned_conv, w, 1) != pytest.approx(t(unsigned_conv, w, 2) + 7e-6, rel=1e-3)
        assert t(fc_s, w, 1) == pytest.approx(t(fc_u, w, 1) + 7e-6, rel=1e-12)
    note = cost_plan([signed_conv], [LayerConfig(8, 1)], prof, 1).layers[0].note
    assert "signed 1-bit activations run as 2-bit" in note
    # a profile without the width keeps the 1-bit cell; the topology's old dicts fall back on is_input
    d = prof.to_dict()
    d["compute"].pop("signed_binary_conv_bits")
    plain = Profile(d)
    legacy = {**LAYERS[0], "is_input": True}
    assert cost_plan([legacy], [LayerConfig(8, 1)], prof, 1).layers[0].time_s == pytest.approx(t(signed_conv, 8, 1))
    assert cost_plan([signed_conv], [LayerConfig(8, 1)], plain, 1).layers[0].time_s == pytest.approx(
        cost_plan([unsigned_conv], [LayerConfig(8, 1)], plain, 1).layers[0].time_s + 7e-6, rel=1e-12)


def test_vectorised_path_equals_scalar_with_signed_inputs():
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    prof = _with_host({**HOST, "sign_s": 7e-6})
    rng = np.random.default_rng(5)
    for model, shape in (("lenet5", (1, 8, 8)), ("lstm", (1, 8, 8)), ("mlp", (1, 8, 8))):
        topo = analyze(build_model(model, shape, 10), shape)
        assert any(layer.signed_input for layer in topo.layers)
        plans = [{l.name: LayerConfig(int(rng.choice([1, 2, 8])), int(rng.choice([1, 2, 8]))) for l in topo.layers}
                 for _ in range(12)]
        table = LayerTable.from_topology(topo)
        bc = cost_batch(table, encode_plans(table, plans), prof, 1, keep_layers=True)
        for i, cfgs in enumerate(plans):
            rep = cost_plan(topo.widened(cfgs), cfgs, prof, 1)
            assert bc.layer_time_s[i] == pytest.approx([x.time_s for x in rep.layers], rel=1e-9)
