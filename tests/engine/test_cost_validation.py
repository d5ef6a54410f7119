"""Published cases from costmodel.md section 4.3, each with its tolerance (T1-T5, T8, T12-T14)."""
import math

import pytest

from engine.cost import cost_plan, load_profile
from engine.cost.calibrate import fit_profile
from engine.cost.formulas import bitfusion_perf_factor, mac_energy_pj, nm_bits_per_weight
from engine.cost.geometry import geometry
from engine.cost.reference import (
    HAWQ_PARAMS,
    HAWQ_T4_BATCH,
    HAWQ_T4_INT4_MS,
    HAWQ_T4_INT8_MS,
    hawq_t4_measurements,
    resnet18_bitfusion_layers,
    resnet18_hawq_layers,
)
from engine.plans.plan import LayerConfig


def conv(name="c", cin=64, cout=64, k=3, hw=56, stride=1, groups=1):
    return {"name": name, "kind": "conv2d", "in_channels": cin, "out_channels": cout, "kernel": (k, k),
            "stride": (stride, stride), "groups": groups, "in_hw": (hw, hw), "out_hw": (hw // stride, hw // stride),
            "steps": 1, "bias": False}


@pytest.mark.parametrize("a,w,factor", [(8, 8, 1), (4, 4, 4), (2, 2, 16), (8, 2, 4), (3, 3, 4), (5, 8, 1), (1, 1, 16)])
def test_t1_bitfusion_perf_factor_rounds_widths_up(a, w, factor):
    """T1 (exact): floor(8/max(a,2)) * floor(8/max(w,2)); also what the profile's rate table holds."""
    assert bitfusion_perf_factor(a, w) == factor
    prof = load_profile("bitfusion")
    assert prof.tables.rate[w - 1][a - 1] == pytest.approx(2.56e11 * factor)


def test_t2_bitfusion_resnet18_layer_cycles():
    """T2 (exact): 3x3 conv 64->64 at 56x56, B=16, 4/4 bits, N=16, M=32: 903,168 compute cycles."""
    rep = cost_plan([conv()], {"c": LayerConfig(4, 4)}, "bitfusion", batch=16)
    cycles = rep.layers[0].compute_s * 500e6
    assert cycles == pytest.approx(903_168, rel=1e-12)
    assert rep.layers[0].exec == "W4A4"


def test_t3_bitfusion_simulator_is_out_of_reach_without_calibration():
    """T3 (out of reach by design): the released Bit Fusion simulator takes 6.13 ms/image for ResNet-18
    'TWN' (8-bit stem, 4-bit elsewhere, B=16) because under 112 KB of SRAM it moves 20-28x the compulsory
    DRAM traffic and its non-stall cycles are 3.3-3.9x the ideal compute formula. This model uses the
    ideal formula plus a capacity-aware re-fetch term, so it is optimistic by ~3x here (costmodel.md
    expects ~4x for a compulsory roofline). The check pins that known gap (2x..4x) so a change that
    silently moves it is noticed; closing it takes calibrate.fit_profile on simulator or device numbers."""
    layers = resnet18_bitfusion_layers()
    cfg = {layer["name"]: LayerConfig(4, 4) for layer in layers}
    cfg["conv1"] = LayerConfig(8, 8)
    rep = cost_plan(layers, cfg, "bitfusion", batch=16)
    per_image_ms = rep.batch_time_s / 16 * 1e3
    assert 6.13 / 4 < per_image_ms < 6.13 / 2


def test_t4_t5_t4_gpu_int8_vs_int4_layers():
    """T4 (+-5 %): ResNet-18 3x3 64->64 at 56x56, batch 8 on a T4: INT8 0.362 ms, INT4 0.211 ms.
    T5 (+-5 %, ratio +-0.03): the 19 layers sum to INT8 5.34 ms, INT4 3.15 ms (ratio 0.59, not 0.5).
    The t4 profile's kernel efficiencies and overhead were fitted to these 38 measurements (its
    'fit' record); the datasheet-only model predicts the naive 0.5 ratio."""
    layers = resnet18_hawq_layers()
    assert [geometry(x).weights for x in layers] == HAWQ_PARAMS
    t4 = load_profile("t4")
    r8 = cost_plan(layers, [LayerConfig(8, 8)] * 19, t4, HAWQ_T4_BATCH)
    r4 = cost_plan(layers, [LayerConfig(4, 4)] * 19, t4, HAWQ_T4_BATCH)
    # isolated layers write their output at their own precision, as measured
    assert r8.layers[0].time_s * 1e3 == pytest.approx(0.362, rel=0.05)
    assert r4.layers[0].time_s * 1e3 == pytest.approx(0.211, rel=0.05)
    assert r8.batch_time_s * 1e3 == pytest.approx(sum(HAWQ_T4_INT8_MS), rel=0.05)
    assert r4.batch_time_s * 1e3 == pytest.approx(sum(HAWQ_T4_INT4_MS), rel=0.05)
    assert r4.batch_time_s / r8.batch_time_s == pytest.approx(0.59, abs=0.03)
    naive = t4.with_changes({"compute.efficiency": 1.0, "compute.overhead_s": 0.0})
    ratio = (cost_plan(layers, [LayerConfig(4, 4)] * 19, naive, 8).batch_time_s
             / cost_plan(layers, [LayerConfig(8, 8)] * 19, naive, 8).batch_time_s)
    assert ratio == pytest.approx(0.5, abs=0.02)


def test_t4_t5_calibration_from_datasheet_profile():
    """Starting from datasheet rates (efficiency 1, no overhead) the least-squares fit reaches an rms
    log error below 0.1 on the 38 T4 measurements and lands on the 3-4 % of peak the notes report."""
    start = load_profile("t4").with_changes({"compute.efficiency": 1.0, "compute.overhead_s": 1e-9})
    fit = fit_profile(start, hawq_t4_measurements())
    assert fit.before["rms_log"] > 1.0
    assert fit.after["rms_log"] < 0.1
    assert 0.03 < fit.params["compute.efficiency.4"] < 0.045
    assert 0.03 < fit.params["compute.efficiency.8"] < 0.05
    assert fit.profile.status == "fitted"


def _lin(name, i, o, steps=128):
    return {"name": name, "kind": "linear", "in_channels": i, "out_channels": o, "steps": steps, "bias": True}


def test_t8_a100_2to4_end_to_end_gain_is_not_2x():
    """T8 (range): 2:4 doubles peak math, but end to end the A100 gains 1.2-1.5x (BERT-Large INT8
    1.5x; TensorRT ~20 % at small batch). A BERT-Large-like stack of 96 INT8 linear layers (seq 128)
    must gain between 1.1x and 1.55x at every batch, more at larger batch, never 2x."""
    bert = []
    for b in range(24):
        bert += [_lin(f"b{b}.qkv", 1024, 3072), _lin(f"b{b}.o", 1024, 1024), _lin(f"b{b}.ff1", 1024, 4096),
                 _lin(f"b{b}.ff2", 4096, 1024)]
    dense = [LayerConfig(8, 8)] * len(bert)
    sparse = [LayerConfig(8, 8, sparsity="2:4")] * len(bert)
    gains = []
    for batch in (1, 8, 64):
        gains.append(cost_plan(bert, sparse, "a100", batch).throughput / cost_plan(bert, dense, "a100", batch).throughput)
    assert all(1.1 < g < 1.55 for g in gains), gains
    assert gains == sorted(gains)


def test_t12_widening_arithmetic():
    """T12 (exact): k=2 on an interior 3x3 conv: MACs x4, params x4, activations x2; depthwise MACs x2."""
    base, wide = geometry(conv(cin=32, cout=32)), geometry(conv(cin=64, cout=64))
    assert wide.macs == 4 * base.macs and wide.weights == 4 * base.weights
    assert wide.act_in == 2 * base.act_in and wide.act_out == 2 * base.act_out
    dw, dw2 = geometry(conv(cin=32, cout=32, groups=32)), geometry(conv(cin=64, cout=64, groups=64))
    assert dw2.macs == 2 * dw.macs and dw2.weights == 2 * dw.weights


def test_t13_2to4_storage_accounting():
    """T13 (exact): 2:4 stores 8-bit weights in 5 bits/element (62.5 %), 4-bit in 3 bits (75 %)."""
    assert nm_bits_per_weight(8, 2, 4) == 5 and nm_bits_per_weight(4, 2, 4) == 3
    layer = [conv(cin=64, cout=64)]
    for w, frac in ((8, 0.625), (4, 0.75)):
        dense = cost_plan(layer, [LayerConfig(w, 8)], "a100").layers[0].weight_bytes
        sparse = cost_plan(layer, [LayerConfig(w, 8, sparsity="2:4")], "a100").layers[0].weight_bytes
        assert sparse / dense == pytest.approx(frac, rel=1e-12)


@pytest.mark.parametrize("bits,synth_pj", [(2, 0.057), (4, 0.120), (8, 0.298), (16, 0.947)])
def test_t14_mac_energy_vs_bitfusion_synthesised_pes(bits, synth_pj):
    """T14 (13 %): the two-term Horowitz MAC energy (log2 K = 10) vs the Bit Fusion authors' 45 nm
    fixed-precision PE synthesis: 0.057/0.120/0.298/0.947 pJ (the notes report 3-12 % errors)."""
    model = mac_energy_pj(bits, bits, 1024)
    assert abs(model / synth_pj - 1) < 0.13
    assert math.isclose(mac_energy_pj(bits, bits, 1024), mac_energy_pj(bits, bits, 513))  # ceil(log2 K)
