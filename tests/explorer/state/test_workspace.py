import json

import pytest

from engine.plans.plan import Plan
from explorer.state.workspace import Workspace
from tests.explorer.conftest import wait_jobs


def test_edit_recosts_and_refuses_invalid_edits_in_place(workspace):
    ws = workspace
    before = ws.totals["throughput"]
    bytes_before = ws.totals["size_bytes"]
    assert ws.set_cell(1, "w_bits", 4) and ws.edit_error == ""
    assert ws.rows.loc[1, "w_bits"] == 4
    assert ws.totals["size_bytes"] < bytes_before
    rows_before = ws.rows.copy()
    assert not ws.set_cell(0, "sparsity", "2:4")
    assert "layer 'conv1': sparsity='2:4' needs the input dimension to be divisible by 4, but it is 1" in ws.edit_error
    assert ws.rows.equals(rows_before)
    assert not ws.set_cell(0, "w_bits", 0) and "w_bits=0 is outside 1..8 or 32" in ws.edit_error
    assert not ws.set_cell(4, "widen", 2) and "carries the network output" in ws.edit_error
    assert not ws.set_cell(0, "w_bits", "four") and "not a number" in ws.edit_error
    assert ws.rows.equals(rows_before)
    assert ws.set_cell(0, "w_bits", 8) and ws.edit_error == ""
    assert ws.totals["throughput"] != before or ws.totals["size_bytes"] != bytes_before


def test_widening_updates_shapes_downstream(workspace):
    ws = workspace
    macs = ws.rows.set_index("layer")["macs"].to_dict()
    assert ws.set_cell(0, "widen", 2.0)
    after = ws.rows.set_index("layer")
    assert after.loc["conv1", "macs"] == 2 * macs["conv1"]
    assert after.loc["conv2", "macs"] == 2 * macs["conv2"]
    assert after.loc["conv1", "shape"].startswith("1→12")


def test_bulk_edit_is_all_or_nothing_and_presets_apply(workspace):
    ws = workspace
    assert ws.bulk_edit([1, 2, 3], "a_bits", 4)
    assert list(ws.rows["a_bits"]) == [32, 4, 4, 4, 32]
    before = ws.rows.copy()
    assert not ws.bulk_edit([0, 1], "sparsity", "2:4")  # conv1 cannot take 2:4: nothing changes
    assert ws.rows.equals(before)
    ws.apply_preset("2:4-w8a8")
    assert list(ws.rows["sparsity"]) == ["none", "none", "2:4", "2:4", "2:4"]
    ws.apply_preset("2x-w2a2")
    assert list(ws.rows["widen"]) == [2.0, 2.0, 2.0, 2.0, 1.0]


def test_profile_and_batch_recost(workspace):
    ws = workspace
    ws.apply_preset("w4a4")
    cpu = ws.totals["throughput"]
    ws.profile = "bitfusion"
    assert ws.totals["profile"] == "bitfusion" and ws.totals["throughput"] != cpu
    notes = " ".join(ws.rows["note"])
    ws.profile = "a100"
    assert "INT4" in " ".join(ws.rows["runs_as"]) or "INT4" in notes or "INT8" in " ".join(ws.rows["runs_as"])
    ws.batch = 64
    assert ws.totals["batch"] == 64


@pytest.mark.slow
def test_jobs_make_points_and_a_frontier(workspace):
    ws = workspace
    ws.apply_preset("w4a4")
    ws.steps = 30
    ws.submit(steps=0)
    ws.submit()
    ws.apply_preset("w2a2")
    ws.submit(steps=0)
    wait_jobs(ws)
    assert set(ws.jobs["state"]) == {"done"}
    pts = ws.points
    assert len(pts) == 3
    assert sorted(pts["status"]) == ["estimated", "estimated", "fine-tuned"]
    assert pts["throughput"].notna().all() and pts["test_accuracy"].between(0, 1).all()
    front = ws.frontier()
    assert 1 <= len(front) <= 3
    ws.only_finetuned = True
    assert list(ws.frontier()["status"]) == ["fine-tuned"]
    # tapping a point loads its plan
    w2 = pts[pts["label"].str.contains("W2A2")].iloc[0]["key"]
    ws.select(w2)
    assert ws.selected == w2 and set(ws.rows["w_bits"]) == {2}
    ws.compare_a, ws.compare_b = pts.iloc[0]["key"], w2
    cmp = ws.compare()
    assert len(cmp) == 5 and cmp["differs"].all()


def test_failed_job_shows_its_reason(workspace):
    ws = workspace
    ws.model = "resnet20"  # no baseline shipped for CIFAR-10
    assert "No FP32 baseline" in ws.message
    ws.submit(steps=0)
    wait_jobs(ws)
    row = ws.jobs.iloc[0]
    assert row["state"] == "failed" and "cifar10" in row["error"] and "Traceback" not in row["error"]


@pytest.mark.slow
def test_sessions_save_share_read_only_and_isolation(services):
    store, runner = services
    a = Workspace(store=store, runner=runner)
    b = Workspace(store=store, runner=runner)
    a.steps = 0
    a.submit()
    wait_jobs(a)
    a.set_cell(1, "w_bits", 3)
    assert b.rows.loc[1, "w_bits"] == 32  # another browser session does not see unsaved edits
    sid = a.sessions.save("my study")
    assert a.sessions.share_link("http://h/") == f"http://h/?session={sid}"
    assert len(sid) >= 20
    c = Workspace(store=store, runner=runner)
    assert c.sessions.open(sid, read_only=True)
    assert c.read_only and len(c.points) == len(a.points) == 1
    assert c.rows.loc[1, "w_bits"] == 3
    assert not c.set_cell(0, "w_bits", 4) and "read-only" in c.edit_error
    assert c.submit() is None
    assert not c.sessions.open("not-a-session") and "no such session" in c.message
    assert [s["name"] for s in c.sessions.saved()] == ["my study"]


@pytest.mark.slow
def test_session_file_round_trip_and_tampered_file_refused(services):
    store, runner = services
    a = Workspace(store=store, runner=runner)
    a.submit(steps=0)
    wait_jobs(a)
    a.sessions.save("to share")
    doc = a.sessions.export_file()
    b = Workspace(store=store, runner=runner)
    assert b.sessions.import_file(doc.encode())
    assert list(b.points["key"]) == list(a.points["key"])
    c = Workspace(store=store, runner=runner)
    rows, points = c.rows.copy(), c.points.copy()
    bad = json.loads(doc)
    bad["evaluations"][0]["test_accuracy"] = 0.999
    assert not c.sessions.import_file(json.dumps(bad))
    assert "refused" in c.message
    assert not c.sessions.import_file(b"\x00not json")
    assert c.rows.equals(rows) and c.points.equals(points) and c.session_id == ""


def test_plan_json_round_trip_and_bad_upload(workspace):
    ws = workspace
    ws.apply_preset("2:4-w4a4")
    text = ws.plan_json()
    plan = Plan.from_json(text)
    assert plan.resolve(ws.topology.names) == ws.configs
    ws.apply_preset("fp32")
    assert ws.load_plan_json(text.encode()) and ws.configs == plan.resolve(ws.topology.names)
    assert not ws.load_plan_json(b'{"version": 1, "layers": {"conv9": {}}}')
    assert "unknown layer 'conv9'" in ws.edit_error


def test_model_change_resets_dataset_and_plan(workspace):
    ws = workspace
    ws.model = "cnn"
    assert ws.dataset == "fashion-mnist" and len(ws.rows) == 6
    ws.model = "lstm"
    assert ws.dataset == "digits" and list(ws.rows["layer"]) == ["lstm", "fc"]


@pytest.mark.slow
def test_export_selected_point_as_onnx_and_packed(workspace):
    import onnx

    ws = workspace
    assert ws.export_selected("onnx") is None and "select a point" in ws.message
    ws.apply_preset("w4a4")
    ws.steps = 10
    ws.submit()
    wait_jobs(ws)
    ws.select(ws.points.iloc[0]["key"])
    blob = ws.export_selected("onnx")
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model)
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    recorded = ws.points.iloc[0]["test_accuracy"]
    assert f"saved weights (test accuracy {recorded:.4f})" in ws.message
    packed = ws.export_selected("packed")
    assert packed[:8] and len(packed) > 1000


def test_sensitivity_and_suggestion(workspace):
    ws = workspace
    assert not ws.sens.suggest() and "compute a sensitivity first" in ws.edit_error
    ws.sens.method = "eagl"
    ws.sens.compute(background=False)
    df = ws.sens.scores
    assert list(df["layer"]) == ws.topology.names and sorted(df["rank"]) == [1, 2, 3, 4, 5]
    assert ws.sens.suggest()
    bits = dict(zip(ws.rows["layer"], ws.rows["w_bits"]))
    first = df.sort_values("rank").iloc[0]["layer"]
    last = df.sort_values("rank").iloc[-1]["layer"]
    assert bits[first] == 8 and bits[last] == 2
    ws.model = "mlp"
    assert ws.sens.scores.empty


@pytest.mark.slow
def test_cancel_stops_a_long_job_and_others_finish(workspace):
    import time
    ws = workspace
    ws.steps = 100_000
    long_job = ws.submit()
    short = ws.submit(steps=0)
    deadline = time.time() + 120
    while time.time() < deadline:
        ws.poll()
        if ws.jobs.set_index("id").loc[long_job, "state"] == "running":
            break
        time.sleep(0.2)
    assert ws.cancel(long_job)
    wait_jobs(ws)
    states = ws.jobs.set_index("id")["state"]
    assert states[long_job] == "cancelled" and states[short] == "done"
    assert list(ws.points["status"]) == ["estimated"]
