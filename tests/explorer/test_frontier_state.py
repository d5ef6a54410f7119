"""The frontier's data shaping, without Panel: labels, rounding, reference, links, brush, heat map."""
import math

import numpy as np
import pandas as pd
import pytest

from engine.cost import cost_topology, load_profile
from engine.evaluation import Evaluation, Settings
from engine.plans.plan import Plan
from explorer.state import frontier as fr
from explorer.state.workspace import Workspace


def evaluation(bits, status="estimated", steps=0, test=None, val=None, est_val=None, base=(0.97, 0.96),
               reason=None, loss=(), seed=0):
    plan = Plan.uniform(bits, bits)
    return Evaluation(plan=plan.to_dict(), model="lenet5", dataset="digits",
                      settings=Settings(steps=steps, seed=seed).to_dict(), status=status, reason=reason,
                      test_accuracy=test, val_accuracy=val, estimate_val_accuracy=est_val,
                      baseline_test_accuracy=base[0], baseline_val_accuracy=base[1], steps=steps,
                      loss_curve=list(loss), provenance={"plan_hash": plan.digest(), "seed": seed})


@pytest.fixture
def ws():
    w = Workspace()
    for ev in (evaluation(8, test=0.965, val=0.955, est_val=0.955),
               evaluation(4, test=0.90, val=0.91, est_val=0.91),
               evaluation(4, "fine-tuned", 200, test=0.95, val=0.945, est_val=0.91, loss=(2.0, 1.0, 0.5, 0.4)),
               evaluation(2, "fine-tuned", 200, test=0.80, val=0.81, est_val=0.30, loss=(2.5, 1.5)),
               evaluation(3, "failed", 200, reason="RuntimeError: loss diverged (nan)")):
        w.add_evaluation(ev)
    return w


def test_point_labels_carry_the_budget(ws):
    assert fr.point_label("W4A4 ×5", "fine-tuned", 400) == "W4A4 ×5 · 400 steps"
    assert fr.point_label("W4A4 ×5", "estimated", 0) == "W4A4 ×5 · estimate"
    assert fr.point_label("W3A3", "failed", 400) == "W3A3 · failed"
    labels = set(ws.points["label"])
    assert {"W4A4 ×5 · estimate", "W4A4 ×5 · 200 steps", "W3A3 ×5 · failed"} <= labels


def test_sig_rounds_to_significant_digits():
    assert fr.sig(3731.042834) == 3730.0
    assert fr.sig(0.000268345) == 0.000268
    assert fr.sig(0) == 0.0 and math.isnan(fr.sig(None)) and math.isnan(fr.sig(float("nan")))


def test_points_carry_the_fp32_reference_and_the_change_vs_fp32(ws):
    p = ws.points.set_index("label")
    assert p.loc["W8A8 ×5 · estimate", "test_vs_fp32"] == pytest.approx(0.965 - 0.97)
    assert p.loc["W4A4 ×5 · 200 steps", "val_vs_fp32"] == pytest.approx(0.945 - 0.96)
    assert np.isnan(p.loc["W3A3 ×5 · failed", "test_vs_fp32"])
    assert fr.reference_accuracy(ws.points, "test_accuracy") == pytest.approx(0.97)
    assert fr.reference_accuracy(ws.points, "val_accuracy") == pytest.approx(0.96)
    assert fr.reference_accuracy(ws.points, "test_vs_fp32") == 0.0
    assert fr.reference_accuracy(ws.points.iloc[0:0], "test_accuracy") is None


def test_drop_axis_frontier_keeps_accuracy_up(ws):
    ws.y_axis = "test_vs_fp32"
    front = ws.frontier()
    ws.y_axis = "test_accuracy"
    same = ws.frontier()
    assert list(front["key"]) == list(same["key"])  # the same baseline for all: the same Pareto set


def test_plot_frame_puts_failed_points_below_the_scored_ones_in_order(ws):
    frame = fr.plot_frame(ws.points, "throughput", "test_accuracy")
    assert list(frame["key"]) == list(ws.points["key"])  # a selection index maps straight back
    failed = frame[frame["status"] == "failed"]
    assert len(failed) == 1 and failed.iloc[0]["y"] < frame.loc[frame["status"] != "failed", "y"].min()
    assert failed.iloc[0]["marker"] != "circle" and "loss diverged" in failed.iloc[0]["acc_text"]
    assert frame.loc[frame["status"] == "estimated", "acc_text"].str.endswith(" %").all()


def test_estimate_links_join_a_plan_estimate_to_its_fine_tune(ws):
    links = fr.estimate_links(ws.points, "throughput", "test_accuracy")
    # W4A4 has an estimated point: linked on the test axis; W2A2 has none, so no test-axis link
    assert len(links) == 1
    row = links.iloc[0]
    assert row["x0"] == row["x1"] and row["y0"] == pytest.approx(0.90) and row["y1"] == pytest.approx(0.95)
    val = fr.estimate_links(ws.points, "throughput", "val_accuracy")
    by_y1 = dict(zip(val["y1"].round(3), val["y0"].round(3)))
    assert by_y1 == {0.945: 0.91, 0.81: 0.30}  # W2A2 falls back to its own no-training estimate
    drop = fr.estimate_links(ws.points, "throughput", "val_vs_fp32")
    assert sorted(drop["y0"].round(3)) == [round(0.30 - 0.96, 3), round(0.91 - 0.96, 3)]


def test_brushed_keys_are_the_points_inside_the_box(ws):
    frame = fr.plot_frame(ws.points, "throughput", "test_accuracy")
    top = frame[frame["y"] > 0.93]
    box = (frame["x"].min() - 1, 0.93, frame["x"].max() + 1, 1.0)
    assert sorted(fr.brushed_keys(frame, box)) == sorted(top["key"])
    assert fr.brushed_keys(frame, (box[2], box[3], box[0], box[1])) == fr.brushed_keys(frame, box)
    assert fr.brushed_keys(frame, None) == []


def test_table_is_rounded_filtered_by_the_brush_and_lists_failed_jobs(ws):
    t = fr.table_frame(ws.points, "test_accuracy")
    assert list(t.columns[:2]) == ["label", "status"]
    row = t.set_index("label").loc["W4A4 ×5 · 200 steps"]
    assert row["test acc %"] == 95.0 and row["vs FP32 (pts)"] == pytest.approx(-2.0)
    assert row["inferences/s"] == fr.sig(ws.points.set_index("label").loc["W4A4 ×5 · 200 steps", "throughput"])
    assert t.set_index("label").loc["W3A3 ×5 · failed", "reason"] == "RuntimeError: loss diverged (nan)"
    keys = list(ws.points["key"][:2])
    assert list(fr.table_frame(ws.points, "test_accuracy", brushed=keys)["key"]) == keys
    assert fr.table_frame(ws.points, "test_accuracy", brushed=[]).empty
    jobs = pd.DataFrame([{"id": "abc", "label": "W2A2 ×5", "reason": "worker process died (exit code -9)"}])
    t2 = fr.table_frame(ws.points, "test_accuracy", failed_jobs=jobs)
    last = t2.iloc[-1]
    assert last["status"] == "failed" and last["reason"].startswith("worker process died") and last["key"] == "job:abc"


def test_heatmap_rows_are_pareto_points_and_columns_layers(ws):
    keys = fr.heatmap_keys(ws.points, ws.frontier(), "Pareto points", "test_accuracy")
    assert keys == list(ws.frontier().sort_values("test_accuracy", ascending=False)["key"])
    evals = {k: ws.evaluation(k) for k in keys}
    cells = fr.heatmap_frame(evals, keys, {k: k[:6] for k in keys}, list(ws.topology.names))
    assert len(cells) == len(keys) * len(ws.topology.names)
    assert list(cells["layer"][: len(ws.topology.names)]) == [f"{i + 1} {n}" for i, n in enumerate(ws.topology.names)]
    first = cells[cells["key"] == keys[0]]
    assert set(first["w_bits"]) == {Plan.from_dict(ws.evaluation(keys[0]).plan).resolve(ws.topology.names)["conv1"].w_bits}
    all_keys = fr.heatmap_keys(ws.points, ws.frontier(), "all points", "test_accuracy")
    assert len(all_keys) == 4  # every scored point, failed ones left out


def test_loss_frame_spreads_the_curve_over_the_steps(ws):
    key = ws.points.set_index("label").loc["W4A4 ×5 · 200 steps", "key"]
    lf = fr.loss_frame(ws.evaluation(key))
    assert list(lf["loss"]) == [2.0, 1.0, 0.5, 0.4] and list(lf["step"]) == [50, 100, 150, 200]
    assert fr.loss_frame(evaluation(4)).empty


def test_profile_comparison_costs_the_same_plans_on_another_profile(ws):
    costs = ws.costs_on("t4")
    df = fr.profile_compare_frame(ws.points, costs, "throughput", "test_accuracy", True, True)
    assert list(df["key"]) == list(ws.points["key"])
    ev = ws.evaluation(df.iloc[0]["key"])
    rep = cost_topology(ws.topology, Plan.from_dict(ev.plan).resolve(ws.topology.names), load_profile("t4"), ws.batch)
    assert df.iloc[0]["x_b"] == pytest.approx(rep.throughput)
    assert df.iloc[0]["x_a"] == pytest.approx(ws.points.iloc[0]["throughput"])
    assert df["front_a"].any() and df["front_b"].any()
    assert not df.loc[df["status"] == "failed", "front_a"].any()


def test_frontier_state_defaults_to_another_profile(ws):
    fs = ws.frontier_state
    assert fs.profile_b != ws.profile and fs.profile_b in ws.param.profile.objects
    assert fs.brushed is None and fs is ws.frontier_state
