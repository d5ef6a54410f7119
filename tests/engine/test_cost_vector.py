"""The vectorised sweep path gives the scalar path's numbers, plan for plan."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cost import LayerTable, PlanArrays, cost_batch, cost_plan, encode_plans
from engine.cost.speed import configs_from_arrays, random_arrays, synthetic_layers
from engine.plans.plan import BIT_CHOICES, LayerConfig, Plan, PlanError

PROFILES = ["bops", "bismo", "bitfusion", "a100", "h100", "t4", "dlac", "cpu"]
KEYS = ("throughput", "latency_s", "batch_time_s", "energy_j", "size_bytes", "bops", "macs")


@pytest.fixture(scope="module")
def topos():
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    out = {}
    for m, shape in (("resnet20", (3, 32, 32)), ("lstm", (1, 8, 8)), ("cnn", (1, 28, 28)), ("mlp", (1, 8, 8)),
                     ("mobilenetv2", (1, 28, 28))):
        out[m] = analyze(build_model(m, shape, 10), shape)
    return out


def _random_configs(topo, rng):
    ks = {sid: (1.0 if sp.fixed else float(rng.choice([1.0, 1.25, 1.5, 2.0]))) for sid, sp in topo.spaces.items()}
    cfgs = {}
    for layer in topo.layers:
        w, a = (int(rng.choice(BIT_CHOICES)) for _ in range(2))
        mode = rng.integers(0, 4)
        kw = dict(widen=ks[layer.out_space])
        depthwise = layer.kind == "conv2d" and layer.groups > 1 and layer.groups == layer.in_channels
        if mode in (1, 3) and depthwise:   # 3x3 depthwise filters cannot be N:4 (9 weights)
            mode = 0
        if mode == 1:
            kw["sparsity"] = "2:4"
        elif mode == 2:
            kw.update(sparsity="unstructured", sparsity_fraction=float(rng.choice([0.5, 0.9, 0.97])))
        elif mode == 3:
            kw["sparsity"] = "1:4"
        cfgs[layer.name] = LayerConfig(w, a, **kw)
    return cfgs


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), profile=st.sampled_from(PROFILES), batch=st.sampled_from([1, 3, 16]),
       model=st.sampled_from(["resnet20", "lstm", "cnn", "mlp", "mobilenetv2"]))
def test_vectorised_equals_scalar(topos, seed, profile, batch, model):
    topo = topos[model]
    rng = np.random.default_rng(seed)
    plans = [_random_configs(topo, rng) for _ in range(4)]
    table = LayerTable.from_topology(topo)
    bc = cost_batch(table, encode_plans(table, plans), profile, batch, keep_layers=True)
    assert bc.valid.all()
    for i, cfgs in enumerate(plans):
        rep = cost_plan(topo.widened(cfgs), cfgs, profile, batch)
        for k in KEYS:
            assert getattr(bc, k)[i] == pytest.approx(getattr(rep, k), rel=1e-9), k
        assert bc.layer_time_s[i] == pytest.approx([x.time_s for x in rep.layers], rel=1e-9)


def test_table_from_dict_topology_matches_object(topos):
    topo = topos["resnet20"]
    arr = random_arrays(50, len(topo.layers), seed=1)
    a = cost_batch(LayerTable.from_topology(topo), arr, "a100", 8)
    b = cost_batch(LayerTable.from_topology(topo.to_dict()), arr, "a100", 8)
    for k in KEYS:
        assert np.array_equal(getattr(a, k), getattr(b, k))


def test_invalid_widening_is_flagged_not_costed(topos):
    topo = topos["resnet20"]
    table = LayerTable.from_topology(topo)
    arr = PlanArrays.uniform(3, table.n, 8, 8)
    arr.widen[1, table.names.index("fc")] = 2.0           # the output layer cannot widen
    arr.widen[2, table.names.index("layer1.0.conv2")] = 2.0   # residual channels disagree
    with pytest.raises(PlanError):
        topo.space_factors({n: LayerConfig(8, 8, widen=float(arr.widen[2, j])) for j, n in enumerate(table.names)})
    bc = cost_batch(table, arr, "a100")
    assert bc.valid.tolist() == [True, False, False]
    assert np.isfinite(bc.throughput[0]) and np.isnan(bc.throughput[1:]).all()


def test_synthetic_sweep_path_matches_scalar_on_50_layers():
    layers = synthetic_layers(50)
    names = [x["name"] for x in layers]
    arr = random_arrays(20, 50, seed=5)
    bc = cost_batch(LayerTable.from_layers(layers), arr, "bitfusion")
    for i in range(20):
        rep = cost_plan(layers, configs_from_arrays(arr, names, i), "bitfusion")
        assert bc.throughput[i] == pytest.approx(rep.throughput, rel=1e-9)


def test_encode_plans_accepts_plan_objects(topos):
    topo = topos["mlp"]
    table = LayerTable.from_topology(topo)
    plan = Plan.uniform(4, 4, keep={"fc3": LayerConfig(8, 8)})
    arr = encode_plans(table, [plan])
    assert arr.w_bits[0].tolist() == [4, 4, 8]
    with pytest.raises(ValueError, match="channel spaces"):
        LayerTable.from_layers(topo.layers).widened(np.full((1, 3), 2.0))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), batch=st.sampled_from([1, 16]),
       model=st.sampled_from(["resnet20", "cnn", "mobilenetv2"]), integer=st.booleans())
def test_per_operand_rules_and_unpacking_match_scalar(topos, seed, batch, model, integer):
    """A fixed profile whose unit follows the weight (compute.operand, compute.width_map) and that
    unpacks narrow weights at every call (host.unpack_s), clamps narrow activations (host.clip_s) and
    runs unfused convolutions in float (compute.unfused_conv_bits, compute.folds_bn,
    compute.clamps_signed_in_float) and max-pools integer codes (host.pool_s): the sweep path agrees
    with the scalar one."""
    from engine.cost.bases import ort_base
    prof = ort_base(integer=integer).with_changes({"host.unpack_s": 3e-9, "host.clip_s": 2e-6,
                                                   "host.dequant_s": 5e-10, "host.pool_s": 4e-10})
    topo = topos[model]
    rng = np.random.default_rng(seed)
    plans = [_random_configs(topo, rng) for _ in range(4)]
    table = LayerTable.from_topology(topo)
    bc = cost_batch(table, encode_plans(table, plans), prof, batch, keep_layers=True)
    for i, cfgs in enumerate(plans):
        rep = cost_plan(topo.widened(cfgs), cfgs, prof, batch)
        assert bc.latency_s[i] == pytest.approx(rep.latency_s, rel=1e-9)
        assert bc.layer_time_s[i] == pytest.approx([x.time_s for x in rep.layers], rel=1e-9)


def test_unpacking_is_paid_per_weight_at_4_bits_only():
    from engine.cost.bases import ort_base
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    topo = analyze(build_model("lenet5", (1, 8, 8), 10), (1, 8, 8))
    prof = ort_base(integer=False)
    fc1 = next(x for x in topo.layers if x.name == "fc1")
    cost = {}
    for u in (0.0, 1e-8):
        p = prof.with_changes({"host.unpack_s": u})
        for w in (3, 4, 8):
            cfgs = {x.name: LayerConfig(w if x.name == "fc1" else 8, 8) for x in topo.layers}
            cost[(u, w)] = cost_plan(topo.widened(cfgs), cfgs, p, 1).latency_s
    assert cost[(1e-8, 4)] - cost[(0.0, 4)] == pytest.approx(1e-8 * fc1.weights, rel=1e-6)
    assert cost[(1e-8, 3)] == cost[(0.0, 3)] and cost[(1e-8, 8)] == cost[(0.0, 8)]


def test_a_clamp_is_paid_per_layer_below_8_activation_bits():
    from engine.cost.bases import ort_base
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    topo = analyze(build_model("lenet5", (1, 8, 8), 10), (1, 8, 8))
    cost = {}
    for c in (0.0, 1e-6):
        p = ort_base(integer=False).with_changes({"host.clip_s": c})
        for a in (1, 4, 7, 8, 32):
            cfgs = {x.name: LayerConfig(8, a if x.name == "fc2" else 8) for x in topo.layers}
            cost[(c, a)] = cost_plan(topo.widened(cfgs), cfgs, p, 1).latency_s
    for a in (1, 4, 7):
        assert cost[(1e-6, a)] - cost[(0.0, a)] == pytest.approx(1e-6, rel=1e-6)
    assert cost[(1e-6, 8)] == cost[(0.0, 8)] and cost[(1e-6, 32)] == cost[(0.0, 32)]


def test_a_max_pool_over_codes_is_paid_per_element_and_bit_of_the_next_layers_codes():
    """The CNN max-pools conv2's output as conv3's codes (onnxruntime's uint8 MaxPool): host.pool_s
    per conv2 output element and conv3 activation bit, per sample; nothing where conv3 runs in float
    or for a layer whose output is not pooled (conv3)."""
    from engine.cost.bases import ort_base
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    topo = analyze(build_model("cnn", (1, 28, 28), 10), (1, 28, 28))
    conv2 = next(x for x in topo.layers if x.name == "conv2")
    n = conv2.out_channels * conv2.out_hw[0] * conv2.out_hw[1]

    def extra(a3, batch=1, a4=8):
        t = []
        for s in (0.0, 1e-10):
            cfgs = {x.name: LayerConfig(8, {"conv3": a3, "conv4": a4}.get(x.name, 8)) for x in topo.layers}
            t.append(cost_plan(topo.widened(cfgs), cfgs, ort_base().with_changes({"host.pool_s": s}), batch))
        return {x.name: y.time_s - x.time_s for x, y in zip(t[0].layers, t[1].layers)}
    cfgs = {x.name: LayerConfig(8, 3) for x in topo.layers}
    notes = {x.name: x.note for x in cost_plan(topo.widened(cfgs), cfgs, ort_base(), 1).layers}
    assert "max-pooled as the next layer's 3-bit codes" in notes["conv2"] and "max-pooled" not in notes["conv3"]
    for a in (1, 3, 8):
        assert extra(a)["conv2"] == pytest.approx(1e-10 * n * a, rel=1e-6)
        assert extra(a)["conv3"] == 0.0 and extra(a)["conv1"] == 0.0
    assert extra(2, batch=16)["conv2"] == pytest.approx(16 * 1e-10 * n * 2, rel=1e-6)
    assert extra(32)["conv2"] == 0.0


def test_binary_terms_follow_the_kernel_row_on_the_cpu_profile():
    """1-bit weights pay the {0, 1} correction only where they run on a 1-bit-weight (popcount) row:
    W1A1 and W1A2, not W1A8 (the int8 kernel takes {-1, +1} as signed codes)."""
    from engine.cost import load_profile
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    topo = analyze(build_model("lenet5", (1, 8, 8), 10), (1, 8, 8))
    extra = {}
    for a in (1, 2, 8):
        cost = []
        for b in (0.0, 1e-5):
            p = load_profile("cpu").with_changes({"host.binary_s": b})
            cfgs = {x.name: LayerConfig(1 if x.name == "fc2" else 8, a if x.name == "fc2" else 8) for x in topo.layers}
            cost.append(cost_plan(topo.widened(cfgs), cfgs, p, 1).latency_s)
        extra[a] = cost[1] - cost[0]
    assert extra[1] == pytest.approx(1e-5) and extra[2] == pytest.approx(1e-5) and extra[8] == 0.0


def test_unfused_convolutions_run_in_float_with_their_weights_dequantized_per_call():
    """onnxruntime fuses a convolution into an integer kernel only when its output is requantized for
    the next layer (after its batch norm is folded, in the integer form): ResNet-20's second convolution
    of a block (its output meets the shortcut) runs in float, its weights dequantized at every call."""
    from engine.cost.bases import ort_base
    from engine.cost.profiles import Profile
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    topo = analyze(build_model("resnet20", (3, 32, 32), 10), (3, 32, 32))
    cfgs = {x.name: LayerConfig(4, 4) for x in topo.layers}

    def layers(prof):
        return {x.name: x for x in cost_plan(topo.widened(cfgs), cfgs, prof, 1).layers}
    for integer in (True, False):
        prof = ort_base(integer=integer).with_changes({"host.dequant_s": 1e-9})
        d = prof.to_dict()
        del d["compute"]["unfused_conv_bits"]
        fused, base = layers(Profile(d, "<all fused>")), layers(prof)
        conv1, conv2 = base["layer1.0.conv1"], base["layer1.0.conv2"]
        weights = next(x for x in topo.layers if x.name == "layer1.0.conv2").weights
        assert conv2.compute_s > fused["layer1.0.conv2"].compute_s      # float rate
        assert conv2.time_s - fused["layer1.0.conv2"].time_s > 1e-9 * weights
        assert "not fused: runs in float" in conv2.note
        if integer:   # its batch norm folded: the block's first convolution is an integer kernel
            assert conv1.time_s == fused["layer1.0.conv1"].time_s and "not fused" not in conv1.note
        else:         # the batch norm between it and the requantization keeps it in float
            assert conv1.time_s > fused["layer1.0.conv1"].time_s
        assert base["fc"].time_s == fused["fc"].time_s                # a matmul needs no requantization
