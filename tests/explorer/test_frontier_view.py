"""The Frontier tab without a browser: model switch, legend, brushing, tap, failed jobs, loss, heat map."""

import holoviews as hv
import pandas as pd
import pytest

from tests.explorer.conftest import wait_jobs
from tests.explorer.test_frontier_state import evaluation

pn = pytest.importorskip("panel")


@pytest.fixture
def view(workspace):
    from explorer.views.frontier_view import FrontierView
    hv.extension("bokeh")
    for ev in (evaluation(8, test=0.965, val=0.955, est_val=0.955),
               evaluation(4, test=0.90, val=0.91, est_val=0.91),
               evaluation(4, "fine-tuned", 200, test=0.95, val=0.945, est_val=0.91, loss=(2.0, 1.0, 0.5)),
               evaluation(3, "failed", 200, reason="RuntimeError: loss diverged (nan)")):
        workspace.add_evaluation(ev)
    return FrontierView(workspace=workspace)


@pytest.mark.slow
def test_switching_model_with_the_frontier_open_updates_the_dataset_picker(workspace):
    """Regression: the compare selects' emptied value (None) was linked into a string parameter,
    so changing model raised ValueError and the dataset picker kept the old dataset."""
    from bokeh.document import Document

    from explorer.views.frontier_view import FrontierView
    workspace.add_evaluation(evaluation(4, test=0.9, val=0.9))
    view = FrontierView(workspace=workspace)
    model = pn.widgets.Select.from_param(workspace.param.model)
    dataset = pn.widgets.Select.from_param(workspace.param.dataset)
    pn.Column(model, dataset, view).get_root(Document())
    model.value = "cnn"  # cnn's first dataset is fashion-mnist: the dataset changes too
    assert workspace.model == "cnn" and workspace.dataset == "fashion-mnist"
    assert dataset.value == "fashion-mnist"
    assert workspace.compare_a == "" and view.table.value.empty
    model.value = "lenet5"
    assert dataset.value == workspace.dataset == "digits" and len(view.table.value) == 1


def test_legend_sits_right_of_the_axes(view):
    plot = hv.render(view.plot.object, backend="bokeh")
    assert plot.legend and all(lg in plot.right for lg in plot.legend)
    assert not any(lg in plot.center for lg in plot.legend)
    labels = [getattr(item.label, "value", None) or getattr(item.label, "field", None) for item in plot.legend[0].items]
    assert "Pareto frontier" in labels and any(str(lab).startswith("FP32 reference 97.00 %") for lab in labels)


def test_reference_line_and_drop_axis(view):
    ws = view.workspace
    ref = view._ref_el()
    assert list(ref.dframe()["y"]) == pytest.approx([0.97, 0.97])
    assert "test 97.00 %" in view.reference.object and "1 failed" in view.reference.object
    view.y.value = "test_vs_fp32"  # the picker shows readable names and sets the workspace's axis
    assert ws.y_axis == "test_vs_fp32"
    assert set(view._ref_el().dframe()["y"]) == {0.0}
    assert "drop" in view.y.labels[view.y.values.index("test_vs_fp32")]


def test_estimate_link_layer_joins_estimate_and_fine_tune(view):
    seg = view._links_el().dframe()
    assert len(seg) == 1 and seg.iloc[0]["y0"] == pytest.approx(0.90) and seg.iloc[0]["y1"] == pytest.approx(0.95)


def test_brushing_filters_the_table_and_clears(view):
    ws, fs = view.workspace, view.workspace.frontier_state
    frame = view._drawn()
    view.bounds.event(bounds=(frame["x"].min() - 1, 0.93, frame["x"].max() + 1, 1.0))
    want = sorted(frame.loc[frame["y"] > 0.93, "key"])
    assert sorted(fs.brushed) == want and sorted(view.table.value["key"]) == want
    assert "2 of 4" in view.brush_note.object and view.clear_brush.visible
    view.clear_brush.clicks += 1
    assert fs.brushed is None and len(view.table.value) == 4
    view.bounds.event(bounds=(0, 0, 1, 1e-9))
    assert fs.brushed == [] and view.table.value.empty
    ws.model = "mlp"  # a new model forgets the brush
    assert fs.brushed is None


def test_tap_selects_loads_and_shows_the_loss_curve(view):
    ws = view.workspace
    i = int(ws.points.index[ws.points["label"] == "W4A4 ×5 · 200 steps"][0])
    view.selection.event(index=[i])
    assert ws.selected == ws.points.iloc[i]["key"] and set(ws.rows["w_bits"]) == {4}
    assert view.table.value.iloc[view.table.selection[0]]["key"] == ws.selected
    assert view.loss.plot.visible and list(view.loss.plot.object.dframe()["loss"]) == [2.0, 1.0, 0.5]
    assert "W4A4 ×5 · 200 steps" in view.loss.title.object
    j = int(ws.points.index[ws.points["status"] == "estimated"][0])
    view.selection.event(index=[j])
    assert not view.loss.plot.visible and "no loss curve" in view.loss.title.object
    view.selection.event(index=[0, 1])  # a box over several points is a brush, not a pick
    assert ws.selected == ws.points.iloc[j]["key"]


def test_heatmap_and_profile_comparison_render(view):
    ws = view.workspace
    cells = view.heatmap.cells()
    assert cells["point"].nunique() == len(ws.frontier()) and cells["layer"].nunique() == len(ws.topology.names)
    hv.render(view.heatmap.plot.object, backend="bokeh")
    ws.frontier_state.heatmap_scope = "all points"
    assert view.heatmap.cells()["point"].nunique() == 3
    ws.frontier_state.profile_b = "t4"
    df = view.profiles.frame()
    assert df["x_b"].notna().all() or (df["status"] == "failed").any()
    assert "t4" in view.profiles.summary.object and view.profiles.plot_b.object is not None
    hv.render(view.profiles.plot_b.object, backend="bokeh")


@pytest.mark.slow
def test_failed_job_from_the_runner_is_a_point_with_its_reason(workspace):
    """A job that cannot start its work (no FP32 baseline for the dataset) ends as a failed
    Evaluation: a point on the failed strip, with the runner's reason in the table and the hover."""
    from explorer.views.frontier_view import FrontierView
    view = FrontierView(workspace=workspace)
    workspace.dataset = "fashion-mnist"  # lenet5 ships no fashion-mnist baseline
    workspace.apply_preset("w4a4")
    jid = workspace.submit(steps=0)
    wait_jobs(workspace)
    info = workspace.runner.status(jid)
    assert info.state == "failed" and "baseline" in info.error
    assert info.result is not None and info.result.status == "failed" and info.result.reason == info.error
    points = workspace.points
    assert list(points["status"]) == ["failed"] and points["reason"].iloc[0] == info.error
    assert points["throughput"].notna().all()  # the plan is still costed: the point has its place on x
    row = view.table.value.iloc[0]
    assert row["status"] == "failed" and row["reason"] == info.error and row["label"].endswith("· failed")
    drawn = view._drawn()
    assert (drawn["status"] == "failed").sum() == 1
    workspace.dataset = "digits"  # another dataset's failures are not listed
    assert view.table.value.empty and "failed" not in view.reference.object


def test_failed_evaluation_is_a_distinct_point_with_its_reason(view):
    frame = view._drawn()
    failed = frame[frame["status"] == "failed"].iloc[0]
    assert failed["marker"] == "square_x" and "loss diverged" in failed["acc_text"]
    assert failed["y"] < frame.loc[frame["status"] != "failed", "y"].min()
    plot = hv.render(view.plot.object, backend="bokeh")
    assert any(getattr(item.label, "field", None) for item in plot.legend[0].items)  # statuses in the legend


def test_failed_job_without_an_evaluation_is_listed(workspace):
    """A worker that dies leaves no Evaluation: the table still lists the job and its reason."""
    from engine.explore.jobs import JobInfo
    from explorer.views import frontier_view

    class Runner:  # stands in for a runner whose worker process died mid-job
        def status(self, jid):
            return JobInfo(id=jid, label="W2A2 ×5", model="lenet5", dataset="digits", state="failed",
                           error="worker process died (exit code -9)")

    workspace._runner = Runner()
    view = frontier_view.FrontierView(workspace=workspace)
    workspace.jobs = pd.DataFrame([{"id": "j1", "label": "W2A2 ×5", "state": "failed", "progress": 0.3,
                                    "message": "", "error": "worker process died (exit code -9)"}])
    row = view.table.value.iloc[-1]
    assert row["status"] == "failed" and row["reason"] == "worker process died (exit code -9)"
    view.table.selection = [len(view.table.value) - 1]  # selecting it loads nothing
    assert workspace.selected == ""


@pytest.mark.slow
def test_estimate_then_fine_tune_are_linked_end_to_end(workspace):
    """Real runs: the estimate and the fine-tune of one plan share a digest, so they are linked."""
    from explorer.views.frontier_view import FrontierView
    view = FrontierView(workspace=workspace)
    workspace.apply_preset("w2a2")
    workspace.submit(steps=0)
    workspace.submit(steps=8)
    wait_jobs(workspace)
    assert sorted(workspace.points["status"]) == ["estimated", "fine-tuned"]
    seg = view._links_el().dframe()
    assert len(seg) == 1
    est = workspace.points.set_index("status").loc["estimated", "test_accuracy"]
    assert seg.iloc[0]["y0"] == pytest.approx(est)
    assert workspace.points["plan_digest"].nunique() == 1
