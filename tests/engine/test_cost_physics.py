"""What the cost model must get right whatever the numbers: bits, sparsity, widening, notes."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cost import cost_plan, cost_topology, load_profile
from engine.plans.plan import LayerConfig

PROFILES = ["bops", "bismo", "bitfusion", "a100", "h100", "t4", "dlac", "cpu"]


@pytest.fixture(scope="module")
def resnet20():
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    return analyze(build_model("resnet20", (3, 32, 32), 10), (3, 32, 32))


def conv(name="c", cin=64, cout=64, k=3, hw=16, groups=1):
    return {"name": name, "kind": "conv2d", "in_channels": cin, "out_channels": cout, "kernel": (k, k),
            "stride": (1, 1), "groups": groups, "in_hw": (hw, hw), "out_hw": (hw, hw), "steps": 1, "bias": False}


def one(layer, cfg, profile, batch=None):
    return cost_plan([layer], [cfg], profile, batch).layers[0]


@pytest.mark.parametrize("profile", ["bops", "bismo", "a100", "dlac", "cpu"])
def test_halving_weight_bits_halves_weight_bytes(profile):
    lc8 = one(conv(), LayerConfig(8, 8), profile)
    lc4 = one(conv(), LayerConfig(4, 8), profile)
    assert lc4.weight_bytes == pytest.approx(lc8.weight_bytes / 2, rel=1e-12)


@given(w=st.integers(1, 8), a=st.integers(1, 8))
def test_bit_serial_compute_time_scales_with_both_precisions(w, a):
    """BISMO and bops: compute time ~ w * a exactly (tiling does not depend on bits)."""
    for profile in ("bismo", "bops"):
        base = one(conv(), LayerConfig(1, 1), profile).compute_s
        assert one(conv(), LayerConfig(w, a), profile).compute_s == pytest.approx(base * w * a, rel=1e-12)


def test_w3_costs_as_w4_on_the_gpu_and_nothing_below_int4():
    for batch in (1, 64):
        r3 = cost_plan([conv()], [LayerConfig(3, 3)], "a100", batch)
        r4 = cost_plan([conv()], [LayerConfig(4, 4)], "a100", batch)
        r2 = cost_plan([conv()], [LayerConfig(2, 2)], "a100", batch)
        for k in ("throughput", "latency_s", "energy_j", "size_bytes"):
            assert getattr(r3, k) == getattr(r4, k) == getattr(r2, k)
    assert "W3A3 runs as INT4 (no gain below INT4)" in r3.layers[0].note
    # H100 has no INT4 tensor path: 4-bit runs as INT8
    assert one(conv(), LayerConfig(4, 4), "h100").compute_s == one(conv(), LayerConfig(8, 8), "h100").compute_s


def test_2to4_doubles_math_on_a_qualifying_layer_only():
    a100 = load_profile("a100")
    ideal = a100.with_changes({"sparsity.nm.efficiency": 1.0})
    big = conv(cin=64, cout=64, hw=56)
    dense, sparse = one(big, LayerConfig(8, 8), a100, 64), one(big, LayerConfig(8, 8, sparsity="2:4"), a100, 64)
    assert sparse.peak_macs_per_s == 2 * dense.peak_macs_per_s
    assert sparse.compute_s == pytest.approx(dense.compute_s / (2 * 0.75), rel=1e-12)  # realized 1.5x
    assert one(big, LayerConfig(8, 8, sparsity="2:4"), ideal, 64).compute_s == pytest.approx(dense.compute_s / 2)
    assert "2:4 sparse math" in sparse.note
    small = conv(cin=12, cout=64, hw=56)
    d, s = one(small, LayerConfig(8, 8), a100, 64), one(small, LayerConfig(8, 8, sparsity="2:4"), a100, 64)
    assert (s.compute_s, s.time_s, s.peak_macs_per_s) == (d.compute_s, d.time_s, d.peak_macs_per_s)
    assert "2:4 not used: input channels 12 < 16" in s.note
    # the T4 has no sparse tensor cores: nothing changes and the note says why
    t4 = one(big, LayerConfig(8, 8, sparsity="2:4"), "t4", 8)
    assert t4.time_s == one(big, LayerConfig(8, 8), "t4", 8).time_s and "t4 has no sparse math" in t4.note


def test_unstructured_sparsity_needs_high_sparsity_on_gpu_but_always_helps_zero_skipping():
    big = conv(cin=64, cout=64, hw=56)
    half = LayerConfig(8, 8, sparsity="unstructured", sparsity_fraction=0.5)
    very = LayerConfig(8, 8, sparsity="unstructured", sparsity_fraction=0.95)
    dense = LayerConfig(8, 8)
    assert one(big, half, "a100", 64).compute_s == one(big, dense, "a100", 64).compute_s
    assert "not exploited" in one(big, half, "a100", 64).note
    assert one(big, very, "a100", 64).compute_s < one(big, dense, "a100", 64).compute_s
    assert one(big, half, "dlac").compute_s < one(big, dense, "dlac").compute_s


def test_widening_by_k_multiplies_interior_conv_macs_by_k_squared(resnet20):
    names = resnet20.names
    base = {n: LayerConfig(8, 8) for n in names}
    r1 = cost_topology(resnet20, base, "bops", 1)
    # widen every stage-1 block's inner conv (its channels are not shared with the residual path)
    inner = "layer1.0.conv1"
    wide = dict(base, **{inner: LayerConfig(8, 8, widen=2.0)})
    r2 = cost_topology(resnet20, wide, "bops", 1)
    by1 = {x.name: x for x in r1.layers}
    by2 = {x.name: x for x in r2.layers}
    assert by2[inner].macs == 2 * by1[inner].macs            # out channels x2
    assert by2["layer1.0.conv2"].macs == 2 * by1["layer1.0.conv2"].macs   # in channels x2
    # widening a whole residual stage (shared channels) and its inner convs: interior convs x k^2
    stage = {n: LayerConfig(8, 8, widen=2.0) for n in names if n.startswith("layer1.")}
    stage["conv1"] = LayerConfig(8, 8, widen=2.0)
    r3 = cost_topology(resnet20, dict(base, **stage), "bops", 1)
    by3 = {x.name: x for x in r3.layers}
    assert by3["layer1.1.conv1"].macs == 4 * by1["layer1.1.conv1"].macs
    assert by3["layer1.1.conv1"].weight_bytes == 4 * by1["layer1.1.conv1"].weight_bytes


def test_memory_bound_layers_gain_only_from_fewer_bytes():
    """A batch-1 linear layer on the A100 is memory-bound: 8->4 bits halves time only via bytes."""
    fc = {"name": "fc", "kind": "linear", "in_channels": 4096, "out_channels": 4096, "steps": 1, "bias": False}
    a = load_profile("a100").with_changes({"compute.overhead_s": 0.0})
    l8, l4 = one(fc, LayerConfig(8, 8), a, 1), one(fc, LayerConfig(4, 4), a, 1)
    assert l8.bound == "memory" and l4.bound == "memory"
    assert l4.time_s == pytest.approx(l8.time_s / 2, rel=0.01)


@pytest.mark.parametrize("profile", PROFILES)
def test_report_totals_are_consistent(profile, resnet20):
    cfgs = {n: LayerConfig(4, 4) for n in resnet20.names}
    rep = cost_topology(resnet20, cfgs, profile, 4)
    assert rep.throughput == pytest.approx(4 / sum(x.time_s for x in rep.layers))
    assert sum(rep.shares) == pytest.approx(1.0)
    assert rep.energy_j > 0 and rep.size_bytes > 0 and rep.latency_s > 0
    assert rep.latency_s <= rep.batch_time_s
    d = rep.to_dict()
    assert {"throughput", "latency_s", "energy_j", "size_bytes", "layers"} <= set(d)
    assert {"name", "macs", "time_s", "note", "share"} <= set(d["layers"][0])
    assert all(x["note"] for x in d["layers"])


@settings(max_examples=30, deadline=None)
@given(w=st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 32]), a=st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 32]),
       profile=st.sampled_from(PROFILES))
def test_fewer_bits_never_cost_more_time(w, a, profile):
    """One exception, measured: on the cpu profile binary weights ({-1, +1} codes) pay a sum
    correction that 2-bit codes do not (the fitted host.binary terms); see the test below."""
    layer = conv(cin=32, cout=32)
    t = one(layer, LayerConfig(w, a), profile).time_s
    if w > 1 and w != 32 and not (profile == "cpu" and w - 1 == 1):
        assert one(layer, LayerConfig(w - 1, a), profile).time_s <= t
    if a > 1 and a != 32:
        assert one(layer, LayerConfig(w, a - 1), profile).time_s <= t


def test_cpu_binary_weight_correction_is_the_only_extra_cost():
    """W1 vs W2 on the cpu profile differ by no more than the binary correction terms."""
    from engine.cost import load_profile
    prof = load_profile("cpu")
    layer = conv(cin=32, cout=32)
    for a in (2, 3, 4, 8):
        t1 = one(layer, LayerConfig(1, a), "cpu").time_s
        t2 = one(layer, LayerConfig(2, a), "cpu").time_s
        extra = prof.host_binary + prof.host_binary_out * layer["out_channels"] * 16 * 16
        assert t1 <= t2 + extra
