"""``bitscape measure``: tidy rows for the packed and onnxruntime targets (schema only, never timing)."""
import json

import pandas as pd
import pytest

from engine.cost.measure import (
    COLUMNS,
    MeasureError,
    Timed,
    attribute_nodes,
    mean_timed,
    measure,
    plans_path,
    random_plans,
    read_rows,
    uniform_plans,
    write,
)

LENET = ["conv1", "conv2", "fc1", "fc2", "fc3"]


def test_packed_and_onnxruntime_rows_are_tidy(tmp_path):
    plans = uniform_plans([2]) + random_plans(LENET, 1, seed=3)
    targets = ["packed", "onnxruntime", "onnxruntime-integer"]
    rows, plan_map = measure("lenet5", "digits", plans, targets, batches=[1], repeats=2)
    out, side = write(rows, plan_map, tmp_path / "m.csv")
    df = pd.read_csv(out, dtype={"plan_hash": str})
    assert list(df.columns) == COLUMNS
    assert set(df["target"]) == set(targets)
    assert set(df["plan_hash"]) == {p.digest() for p in plans} == set(json.loads(side.read_text()))
    assert (df["seconds"] > 0).all() and (df["repeats"] == 2).all() and (df["batch"] == 1).all()
    assert (df["weights"] == "baseline").all() and df["machine"].str.len().gt(0).all()
    for (target, h), g in df.groupby(["target", "plan_hash"]):
        assert list(g["layer"]) == LENET + ["total"], (target, h)   # one row per layer, then the total
    assert side == plans_path(out)


def test_instances_and_calls_per_run_are_recorded(tmp_path):
    """--instances times fresh deployments of every plan and averages them; --min-time's calls per run
    and the instances are columns of the CSV."""
    plans = uniform_plans([8, 2])
    rows, plan_map = measure("mlp", "digits", plans, ["packed"], batches=[1], repeats=2, random_weights=True,
                             min_time=0.002, instances=2)
    df = pd.read_csv(write(rows, plan_map, tmp_path / "m.csv")[0], dtype={"plan_hash": str})
    assert (df["instances"] == 2).all() and (df["number"] >= 1).all() and (df["seconds"] > 0).all()
    assert len(df[df["layer"] == "total"]) == len(plans)
    with pytest.raises(MeasureError, match="--instances"):
        measure("mlp", "digits", plans, ["packed"], random_weights=True, instances=0)


def test_mean_timed_averages_instances_over_the_layers_all_of_them_have():
    a = Timed({"fc1": 1.0, "fc2": 4.0}, 10.0, 3)
    b = Timed({"fc1": 3.0}, 20.0, 5)
    assert mean_timed([a, b]) == Timed({"fc1": 2.0}, 15.0, 3)


def test_random_plans_are_seeded_and_in_range():
    a, b = random_plans(LENET, 3, seed=7), random_plans(LENET, 3, seed=7)
    assert [p.digest() for p in a] == [p.digest() for p in b]
    assert len({p.digest() for p in a}) == 3
    for p in a:
        for c in p.resolve(LENET).values():
            assert 1 <= c.w_bits <= 8 and 1 <= c.a_bits <= 8
            assert (c.quantizer == "binary") == (c.w_bits == 1)


def test_ort_profile_nodes_go_to_their_layer_and_unnamed_ones_to_the_layer_before():
    ev = [{"cat": "Node", "name": "conv1/Conv_kernel_time", "dur": 10},
          {"cat": "Node", "name": "MaxPool_kernel_time", "dur": 5},
          {"cat": "Node", "name": "fc1/Gemm_kernel_time", "dur": 7},
          {"cat": "Node", "name": "fc1/Gemm_fence_before", "dur": 99},
          {"cat": "Session", "name": "model_run", "dur": 40},
          {"cat": "Node", "name": "conv1/Conv_kernel_time", "dur": 12},
          {"cat": "Session", "name": "model_run", "dur": 20}]
    runs = attribute_nodes(ev, ["conv1", "fc1"])
    assert runs == [{"conv1": pytest.approx(15e-6), "fc1": pytest.approx(7e-6)}, {"conv1": pytest.approx(12e-6)}]


def test_bad_requests_are_clear_errors(tmp_path):
    with pytest.raises(MeasureError, match="unknown target 'tpu'"):
        measure("lenet5", "digits", uniform_plans([8]), ["tpu"])
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(MeasureError, match="no GPU"):
            measure("lenet5", "digits", uniform_plans([8]), ["torch-cuda"])
    with pytest.raises(MeasureError, match="no FP32 baseline"):
        measure("resnet20", "cifar10", uniform_plans([8]), ["packed"])
    bad = tmp_path / "bad.csv"
    bad.write_text("target,model,plan_hash,layer,batch\npacked,lenet5,x,total,1\n")
    with pytest.raises(MeasureError, match="missing column"):
        read_rows(bad)
    bad.write_text("target,model,plan_hash,layer,batch,seconds\npacked,lenet5,x,total,1,-3\n")
    with pytest.raises(MeasureError, match="row 2: seconds must be a positive"):
        read_rows(bad)


def test_plans_from_a_file_or_a_directory(tmp_path):
    from engine.cost.measure import load_plans
    d = tmp_path / "plans"
    d.mkdir()
    for p in uniform_plans([2, 4]):
        (d / f"{p.name.lower()}.json").write_text(p.to_json())
    (d / "unnamed.json").write_text(json.dumps({"version": 1, "default": {"w_bits": 3, "a_bits": 5}}))
    plans = load_plans(d)
    assert [p.name for p in plans] == ["unnamed", "W2A2", "W4A4"]     # sorted by file name; stem names the rest
    assert [p.name for p in load_plans(d / "w4a4.json")] == ["W4A4"]
    with pytest.raises(MeasureError, match="does not exist"):
        load_plans(tmp_path / "nope.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MeasureError, match="holds no .json plan"):
        load_plans(empty)


def test_append_keeps_earlier_rows_and_plans(tmp_path):
    row = {"target": "packed", "model": "lenet5", "dataset": "digits", "plan_hash": "a", "plan": "A",
           "layer": "total", "batch": 1, "seconds": 1e-3, "repeats": 1, "machine": "m", "weights": "baseline"}
    write([row], {"a": {"plan": {}}}, tmp_path / "m.csv")
    write([{**row, "plan_hash": "b", "plan": "B"}], {"b": {"plan": {}}}, tmp_path / "m.csv", append=True)
    df = read_rows(tmp_path / "m.csv")
    assert list(df["plan_hash"]) == ["a", "b"]
    assert set(json.loads(plans_path(tmp_path / "m.csv").read_text())) == {"a", "b"}


def test_a_plan_the_target_cannot_run_is_skipped_not_the_target(monkeypatch):
    from engine.cost import measure as M
    from engine.errors import UserError
    real = M.ort_bytes

    def refuse_w2(prep, integer=False):
        if prep.plan.name == "W2A2":
            raise UserError("exporter refuses it")
        return real(prep, integer)
    monkeypatch.setattr(M, "ort_bytes", refuse_w2)
    plans = uniform_plans([2, 8])
    with pytest.raises(UserError, match="exporter refuses it"):
        measure("lenet5", "digits", plans, ["onnxruntime"], repeats=1, per_layer=False)
    skipped: list = []
    rows, _ = measure("lenet5", "digits", plans, ["onnxruntime"], repeats=1, per_layer=False, skipped=skipped)
    assert [r["plan"] for r in rows] == ["W8A8"]
    assert skipped[0]["plan"] == "W2A2" and "exporter refuses it" in skipped[0]["reason"]


@pytest.mark.slow
def test_measure_cli_instances_and_min_time_as_a_subprocess(tmp_path):
    """'bitscape measure' with --instances and --min-time, run as the README runs it: the CSV records
    them; a bad --instances is a one-line error (exit 2, no traceback) that leaves the CSV as it was."""
    import os
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "explorer.cli", "measure", "--model", "lenet5",
                               "--target", "packed", "--uniform", "8,2", "--repeats", "2", "--out", "m.csv", *args],
                              cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    r = run("--instances", "2", "--min-time", "0.002")
    assert r.returncode == 0, r.stderr
    before = (tmp_path / "m.csv").read_text()
    df = pd.read_csv(tmp_path / "m.csv")
    assert (df["instances"] == 2).all() and (df["number"] >= 1).all() and len(df[df["layer"] == "total"]) == 2
    for bad, flag in ((("--instances", "0"), "--instances"), (("--min-time", "-1"), "--min-time")):
        r = run(*bad)
        assert r.returncode == 2 and flag in r.stderr and "Traceback" not in r.stderr
        assert (tmp_path / "m.csv").read_text() == before


@pytest.mark.fashion
def test_a_narrow_plan_exports_for_timing_when_checked_on_the_data_it_is_timed_on():
    """Random plan 71 of seed 1 on the CNN (conv4 at 2-bit activations, fc1 at 2-bit weights) passes
    every layer's check, but on standard-normal inputs a few activations sit on rounding boundaries and
    the 2-bit layers compound them past the end-to-end tolerance; ``measure`` checks the export on the
    dataset's inputs it times, as ``export`` does on validation data."""
    import torch

    from engine.cost.measure import model_source, ort_bytes, prepare_plan, random_plans
    from engine.export import ExportError, onnx_model_bytes
    src = model_source("cnn", "fashion-mnist", random_weights=True, calib_size=16)
    assert src.weights == "baseline"
    prep = prepare_plan(src, random_plans(src.names, 200, 1)[71])
    assert len(ort_bytes(prep)) > 0 and len(ort_bytes(prep, integer=True)) > 0
    with pytest.raises(ExportError, match="the network's output differs"):
        onnx_model_bytes(prep.applied, src.input_shape, prep.plan,
                         check_inputs=torch.randn(8, *src.input_shape, generator=torch.Generator().manual_seed(0)))


@pytest.mark.fashion
def test_measure_cli_times_that_narrow_plan_on_both_onnx_forms(tmp_path):
    """The same plan through ``bitscape measure`` as the README runs it (a subprocess, a plan file, the
    CLI's own 256 calibration images): both ONNX forms are exported, checked on the dataset's inputs
    and timed; nothing is skipped (the refusal itself is pinned by the test above)."""
    import subprocess
    import sys
    from pathlib import Path

    from engine.cost.measure import model_source, random_plans
    names = model_source("cnn", "fashion-mnist", random_weights=True, calib_size=16).names
    (tmp_path / "plan.json").write_text(json.dumps(random_plans(names, 200, 1)[71].to_dict()))
    bitscape = Path(sys.executable).with_name("bitscape")
    r = subprocess.run([str(bitscape), "measure", "--model", "cnn", "--dataset", "fashion-mnist", "--target",
                        "onnxruntime,onnxruntime-integer", "--plan", "plan.json", "--repeats", "1", "--out", "m.csv"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "skipped" not in r.stdout + r.stderr
    df = pd.read_csv(tmp_path / "m.csv")
    assert set(df[df["layer"] == "total"]["target"]) == {"onnxruntime", "onnxruntime-integer"}
