"""One compute efficiency per layer kind (conv, depthwise, pointwise, linear, recurrent): a profile field
the cost model applies on top of the per-width efficiency, and a structure ``bitscape calibrate`` selects
by cross-validation (onnxruntime runs a QDQ linear layer fused in int8 but a convolution followed by batch
norm unfused in float: the two kinds reach different rates)."""
import numpy as np
import pytest

from engine.cost import LayerTable, cost_batch, cost_plan, encode_plans, load_profile
from engine.cost.bases import ort_base
from engine.cost.calibrate_measured import (
    calibrate,
    default_params,
    kind_groups,
    predict_all,
    rows_from_frame,
    structure_label,
    structures,
)
from engine.cost.geometry import geometry
from engine.cost.measure import uniform_plans
from engine.cost.profiles import Profile
from engine.plans.plan import LayerConfig, Plan
from tests.engine.cost.test_calibrate_structures import LENET, frame

LAYERS = {
    "conv": {"name": "conv", "kind": "conv2d", "in_channels": 8, "out_channels": 16, "kernel": (3, 3),
             "in_hw": (8, 8), "out_hw": (8, 8)},
    "depthwise": {"name": "dw", "kind": "conv2d", "in_channels": 16, "out_channels": 16, "kernel": (3, 3),
                  "groups": 16, "in_hw": (8, 8), "out_hw": (8, 8)},
    "pointwise": {"name": "pw", "kind": "conv2d", "in_channels": 16, "out_channels": 32, "kernel": (1, 1),
                  "in_hw": (8, 8), "out_hw": (8, 8)},
    "linear": {"name": "fc", "kind": "linear", "in_channels": 64, "out_channels": 10},
    "recurrent": {"name": "lstm", "kind": "lstm", "in_channels": 12, "out_channels": 32, "steps": 6},
}


def test_layer_kinds_of_the_geometry():
    assert {k: geometry(v).group for k, v in LAYERS.items()} == {k: k for k in LAYERS}


@pytest.mark.parametrize("kind", list(LAYERS))
def test_kind_efficiency_scales_that_kinds_compute_only(kind):
    base = load_profile("a100")
    fast = Profile({**base.to_dict(), "compute": {**base.to_dict()["compute"], "kind_efficiency": {kind: 4.0}}})
    layers = list(LAYERS.values())
    cfgs = [LayerConfig(8, 8)] * len(layers)
    a, b = cost_plan(layers, cfgs, base, 1), cost_plan(layers, cfgs, fast, 1)
    for x, y, name in zip(a.layers, b.layers, LAYERS):
        assert y.compute_s == pytest.approx(x.compute_s / (4.0 if name == kind else 1.0), rel=1e-12)
    table = LayerTable.from_layers(layers)
    bc = cost_batch(table, encode_plans(table, [dict(zip(table.names, cfgs))]), fast, 1, keep_layers=True)
    assert bc.layer_time_s[0] == pytest.approx([y.time_s for y in b.layers], rel=1e-9)


def test_bad_kind_is_named():
    d = load_profile("cpu").to_dict()
    d["compute"]["kind_efficiency"] = {"attention": 2.0}
    with pytest.raises(Exception, match="kind_efficiency"):
        Profile(d)


def test_per_kind_structures_need_two_kinds_and_leave_the_largest_as_reference():
    base = ort_base(integer=False)
    df, pm = frame(uniform_plans((4, 8)), base, "onnxruntime")
    rows = rows_from_frame(df, pm, "onnxruntime", "both")
    assert set(kind_groups(rows)) == {"conv", "linear"}
    cands = structures(base, rows)
    per_kind = [s for s in cands if s.get("fit.kinds")]
    assert per_kind and len(per_kind) == len(cands) // 2
    assert "one efficiency per layer kind" in structure_label(per_kind[0])
    ps = default_params(base, rows, per_kind[0])
    ref, other = kind_groups(rows)
    assert f"compute.kind_efficiency.{other}" in ps and f"compute.kind_efficiency.{ref}" not in ps
    assert not any(s.get("fit.kinds") for s in structures(base, [r for r in rows if r.index == 0]))


@pytest.mark.slow
def test_per_kind_efficiency_is_selected_and_carries_to_mixed_plans():
    """Linear layers 5x slower than the convolutions: only the per-kind structure fits uniform plans and
    predicts plans that move bits between the kinds."""
    base = ort_base(integer=False)
    truth = base.with_changes({"compute.efficiency.4": 0.01, "compute.efficiency.8": 0.01,   # compute matters
                               "compute.kind_efficiency.linear": 0.2})
    df, pm = frame(uniform_plans(range(1, 9)), truth, "onnxruntime")
    cal = calibrate(base, rows_from_frame(df, pm, "onnxruntime", "both"), folds=4)
    assert cal.structure.get("fit.kinds")
    ke = cal.profile.kind_eff
    assert ke["linear"] / ke["conv"] == pytest.approx(0.2, rel=0.1)
    mixed = [Plan(default=LayerConfig(8, 8), layers={n: {"w_bits": 4, "a_bits": 4}}, name=f"w4 {n}") for n in LENET]
    dm, pmm = frame(mixed, truth, "onnxruntime")
    test = rows_from_frame(dm, pmm, "onnxruntime", "total")
    meas = np.array([r.seconds for r in test])
    assert np.all(np.abs(predict_all(test, cal.profile) / meas - 1) < 0.02)
