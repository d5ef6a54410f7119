"""Structure choices of ``bitscape calibrate`` for the packed target: the bit-serial kernel's width-1 and
width-2 efficiencies may be one coefficient (time follows its w x a bit planes), so the extra time of
1-bit weights is learned by the binary-weight host terms and carries to mixed plans where 1-bit weights
run on the int8 kernel (what decides the packed target's mixed-plan ranking)."""
import numpy as np
import pandas as pd
import pytest

from engine.cost.bases import ort_base, packed_base
from engine.cost.calibrate_measured import (
    SERIAL_TIE,
    _fit,
    calibrate,
    default_params,
    fitted_profile,
    predict_all,
    rows_from_frame,
    structure_label,
    structures,
)
from engine.cost.measure import COLUMNS, uniform_plans
from engine.cost.profiles import Profile
from engine.plans.plan import LayerConfig, Plan

LENET = ["conv1", "conv2", "fc1", "fc2", "fc3"]


def frame(plans, truth, target="packed"):
    pm = {p.digest(): {"plan": p.to_dict(), "model": "lenet5", "dataset": "digits"} for p in plans}
    sk = [{"target": target, "model": "lenet5", "dataset": "digits", "plan_hash": p.digest(), "plan": p.name,
           "layer": layer, "batch": 1, "seconds": 1.0, "repeats": 1, "machine": "simulated", "weights": "none"}
          for p in plans for layer in LENET + ["total"]]
    df = pd.DataFrame(sk, columns=COLUMNS)
    df["seconds"] = predict_all(rows_from_frame(df, pm, target, "both"), truth)
    return df, pm


def test_packed_structures_offer_the_tie_and_label_it():
    cands = structures(packed_base())
    tied = [s for s in cands if s.get("fit.tie") == SERIAL_TIE]
    assert tied and len(tied) == len(cands) // 2
    assert "one efficiency for widths 1+2" in structure_label(tied[0])
    # onnxruntime's faithful form has no bit-serial kernel; its tie is one efficiency for INT4 and
    # INT8 (a 4-bit weight's extra time is its unpacking, host.unpack_s); the integer form has no
    # int4 weights, so nothing to tie
    ort_ties = [s["fit.tie"] for s in structures(ort_base(integer=False)) if "fit.tie" in s]
    assert ort_ties and all(t == ["compute.efficiency.4", "compute.efficiency.8"] for t in ort_ties)
    assert not any("fit.tie" in s for s in structures(ort_base(integer=True)))


def test_tied_coefficient_is_one_parameter_written_to_both_paths():
    base = packed_base()
    truth = base.with_changes({"compute.efficiency.default": 0.3, "compute.efficiency.1": 0.1,
                               "compute.efficiency.2": 0.1})
    df, pm = frame(uniform_plans(range(1, 9)), truth)
    rows = rows_from_frame(df, pm, "packed", "both")
    ps = default_params(base, rows, {"fit.tie": SERIAL_TIE})
    assert "compute.efficiency.1|compute.efficiency.2" in ps
    assert "compute.efficiency.1" not in ps and "compute.efficiency.2" not in ps
    f = _fit(base, rows, ps)
    assert f.params["compute.efficiency.1"] == f.params["compute.efficiency.2"]
    eff = f.profile.to_dict()["compute"]["efficiency"]
    assert eff["1"] == eff["2"] == pytest.approx(0.1, rel=0.1)


@pytest.mark.slow
def test_tie_carries_1bit_weight_cost_to_mixed_plans():
    base = packed_base()
    truth = base.with_changes({"compute.efficiency.default": 0.3, "compute.efficiency.1": 0.1,
                               "compute.efficiency.2": 0.1, "host.binary_s": 2e-5})
    df, pm = frame(uniform_plans(range(1, 9)), truth)
    rows = rows_from_frame(df, pm, "packed", "both")
    cal = calibrate(base, rows, structure={"combine": "max", "fit.tie": SERIAL_TIE})
    assert cal.params["host.binary_s"] == pytest.approx(2e-5, rel=0.1)
    # 1-bit weights on the int8 kernel (a = 8): only the tied structure can know what they cost
    mixed = [Plan(default=LayerConfig(8, 8), layers={n: {"w_bits": 1, "a_bits": 8, "quantizer": "binary"}},
                  name=f"w1 {n}") for n in LENET[:3]]
    dm, pmm = frame(mixed, truth)
    test = rows_from_frame(dm, pmm, "packed", "total")
    meas = np.array([r.seconds for r in test])
    assert np.all(np.abs(predict_all(test, cal.profile) / meas - 1) < 0.02)
    # the fitted profile records the tie and loads (what cost / sweep / serve --profile-file read)
    d = fitted_profile(cal, "tied", "0" * 64, "m.csv", "packed", True, "both")
    assert d["fit"]["structure"]["fit.tie"] == SERIAL_TIE and "fit.tie" not in d
    assert Profile(d, "<fitted>").to_dict()["compute"]["efficiency"]["1"] == cal.params["compute.efficiency.2"]


def test_packed_base_prices_the_int8_kernel_by_weight_digits_only():
    """The shipped cpu profile (the packed base): the int8 kernel reads weights as 4-bit digits, so
    W<=4 runs at one rate whatever a is, W5-8 at another; W<=2 A<=2 stays on the bit-serial kernel."""
    from engine.cost.profiles import bit_index
    t = packed_base().tables
    rate = {(w, a): t.rate[bit_index(w)][bit_index(a)] for w in range(1, 9) for a in range(1, 9)}
    one = {rate[(w, a)] for w in range(1, 5) for a in range(1, 9) if not (w <= 2 and a <= 2)}
    two = {rate[(w, a)] for w in range(5, 9) for a in range(1, 9)}
    assert len(one) == 1 and len(two) == 1
    assert one.pop() / two.pop() == pytest.approx(1.75)     # gemm_int8 measured 1.7-1.8x (cpu provenance)
    assert rate[(2, 2)] > rate[(4, 8)] and rate[(1, 1)] == 4 * rate[(2, 2)]


def test_ort_base_follows_the_weight_width():
    from engine.cost.profiles import bit_index
    t = ort_base(integer=False).tables
    assert t.w_exec[bit_index(4)][bit_index(8)] == 4 and t.w_exec[bit_index(8)][bit_index(4)] == 8
    assert t.w_exec[bit_index(3)][bit_index(3)] == 8
    # the integer form: int8 codes within +-64 (u8s8) below 8 bits, full-range uint8 codes (u8u8) at 8
    t = ort_base(integer=True).tables
    assert t.w_exec[bit_index(4)][bit_index(8)] == 7 and t.w_exec[bit_index(1)][bit_index(1)] == 7
    assert t.w_exec[bit_index(8)][bit_index(2)] == 8


@pytest.mark.slow
def test_ort_unpacking_learned_on_uniform_plans_carries_to_4bit_weights_in_mixed_plans():
    """Only W4A4 stores int4 weights among the uniform plans; with one efficiency for INT4 and INT8
    its extra time must go to host.unpack_s (per weight), which prices a 4-bit fc1 in a W8A8 plan."""
    base = ort_base(integer=False)
    truth = base.with_changes({"compute.efficiency.4": 0.5, "compute.efficiency.8": 0.5, "host.unpack_s": 4e-9,
                               "host.clip_s": 1.5e-6})
    df, pm = frame(uniform_plans(range(1, 9)), truth, "onnxruntime")
    tie = next(s for s in structures(base) if s.get("fit.tie") and s.get("combine") == "max")
    cal = calibrate(base, rows_from_frame(df, pm, "onnxruntime", "both"), structure=tie)
    assert cal.params["host.unpack_s"] == pytest.approx(4e-9, rel=0.1)
    assert cal.params["host.clip_s"] == pytest.approx(1.5e-6, rel=0.1)     # W8A8 is the one plan without
    mixed = [Plan(default=LayerConfig(8, 8), layers={n: {"w_bits": 4, "a_bits": 8}}, name=f"w4 {n}") for n in LENET]
    mixed += [Plan(default=LayerConfig(8, 8), layers={n: {"w_bits": 8, "a_bits": 3}}, name=f"a3 {n}") for n in LENET]
    dm, pmm = frame(mixed, truth, "onnxruntime")
    test = rows_from_frame(dm, pmm, "onnxruntime", "total")
    meas = np.array([r.seconds for r in test])
    assert np.all(np.abs(predict_all(test, cal.profile) / meas - 1) < 0.02)


@pytest.mark.slow
def test_ort_max_pool_over_codes_learned_on_uniform_plans_carries_to_one_narrow_layer():
    """Among the uniform plans only the pooled layers' code width grows one bit a plan: host.pool_s
    (per pooled element and code bit) is learned from them and prices one narrow layer after a pool."""
    base = ort_base(integer=False)
    one, one_plans = frame(uniform_plans([8]), base, "onnxruntime")
    assert "host.pool_s" in default_params(base, rows_from_frame(one, one_plans, "onnxruntime", "total"))
    truth = base.with_changes({"compute.efficiency.4": 0.5, "compute.efficiency.8": 0.5, "host.pool_s": 2e-9})
    df, pm = frame(uniform_plans(range(1, 9)), truth, "onnxruntime")
    tie = next(s for s in structures(base) if s.get("fit.tie") and s.get("combine") == "max")
    cal = calibrate(base, rows_from_frame(df, pm, "onnxruntime", "both"), structure=tie)
    assert cal.params["host.pool_s"] == pytest.approx(2e-9, rel=0.1)
    mixed = [Plan(default=LayerConfig(8, 8), layers={n: {"w_bits": 8, "a_bits": a}}, name=f"a{a} {n}")
             for n in ("conv2", "fc1") for a in (1, 4)]
    dm, pmm = frame(mixed, truth, "onnxruntime")
    test = rows_from_frame(dm, pmm, "onnxruntime", "total")
    meas = np.array([r.seconds for r in test])
    assert np.all(np.abs(predict_all(test, cal.profile) / meas - 1) < 0.02)
    # the packed runtime pools in its own way: its base names no pool term, so none is fitted
    assert "host.pool_s" not in default_params(packed_base(), test)
