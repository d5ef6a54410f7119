"""`bitscape export onnx|table|mapping`: files, --verify/--json, and clear errors (exit 2, nothing written)."""
import csv
import io
import json

import onnx
import pytest

from engine.evaluation import Settings
from engine.explore.pipeline import evaluate_plan
from engine.export import mapping, table_csv
from engine.models.checkpoint import save_planned
from engine.models.zoo import build_model
from engine.plans.graph import analyze
from engine.plans.plan import LayerConfig, Plan
from explorer.cli import main

PLAN = Plan(default=LayerConfig(4, 4), layers={"fc3": {"w_bits": 8, "a_bits": 8, "widen": 1.0},
                                               "fc1": {"widen": 2.0, "sparsity": "2:4"}})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = evaluate_plan("mlp", "digits", PLAN, Settings(steps=3))
    assert run.evaluation.status == "fine-tuned", run.evaluation.reason
    path = tmp_path_factory.mktemp("ckpt") / "mlp.safetensors"
    save_planned(run, path)
    return path


def test_export_onnx_with_verify_json(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    rc = main(["export", "onnx", "--model", "mlp", "--dataset", "digits", "--checkpoint", str(checkpoint),
               "--out", str(out), "--verify", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["agreement"] == 1.0 and r["candidate_accuracy"] == r["reference_accuracy"] and r["disagreements"] == 0 and r["examples"] == 359
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    md = {p.key: p.value for p in m.metadata_props}
    assert json.loads(md["bitscape.plan"])["layers"]["fc3"]["w_bits"] == 8


def test_export_onnx_text(checkpoint, tmp_path, capsys):
    rc = main(["export", "onnx", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--verify"])
    text = capsys.readouterr().out
    assert rc == 0 and "agreement 100.00%" in text and "onnxruntime" in text and "engine" in text


@pytest.mark.parametrize("case", ["missing", "not-planned", "wrong-model"])
def test_bad_input_exits_2_and_writes_nothing(case, checkpoint, tmp_path, capsys):
    from engine.models.baselines import SHIPPED
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")
    ck = {"missing": tmp_path / "nope.safetensors", "not-planned": SHIPPED / "mlp-digits.safetensors",
          "wrong-model": checkpoint}[case]
    extra = ["--model", "lenet5"] if case == "wrong-model" else []
    rc = main(["export", "onnx", "--checkpoint", str(ck), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("bitscape: error:") and "Traceback" not in err
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_table_and_mapping_commands(tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    PLAN.save(plan_path)
    assert main(["export", "table", "--model", "mlp", "--plan", str(plan_path), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert [r["layer"] for r in rows] == ["fc1", "fc2", "fc3"]
    assert rows[0]["sparsity"] == "2:4" and rows[0]["widened_out_channels"] == "256"
    assert rows[1]["widened_in_channels"] == "256" and rows[2]["w_bits"] == "8"
    # both sizes, named: fc1 (64 -> 128) is widened to 64 -> 256, so fc2 reads 256 inputs
    assert (rows[0]["original_out_channels"], rows[0]["original_weights"], rows[0]["widened_weights"]) == \
        ("128", str(64 * 128), str(64 * 256))
    assert (rows[1]["original_macs"], rows[1]["widened_macs"]) == (str(128 * 64), str(256 * 64))
    assert rows[2]["original_weights"] == rows[2]["widened_weights"] == str(64 * 10)
    assert "weights" not in rows[0] and "macs" not in rows[0]   # no unlabelled column left to misread
    # the widened MACs are the ones the cost model prices
    from engine.cost import cost_topology, load_profile
    from engine.models.data import dataset_spec
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    spec = dataset_spec("digits")
    topo = analyze(build_model("mlp", spec.input_shape, spec.num_classes), spec.input_shape)
    rep = cost_topology(topo, PLAN.resolve(topo.names), load_profile("bops"))
    assert [str(int(lc.macs)) for lc in rep.layers] == [r["widened_macs"] for r in rows]
    assert main(["export", "mapping", "--model", "mlp", "--plan", str(plan_path),
                 "--out", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    resolved = PLAN.resolve(["fc1", "fc2", "fc3"])
    assert {k: LayerConfig(**v) for k, v in m["layers"].items()} == resolved
    assert m["model"] == "mlp" and m["dataset"] == "digits" and m["plan_hash"] == PLAN.digest()
    assert main(["export", "table", "--model", "mlp", "--plan", str(plan_path)]) == 0   # stdout
    assert capsys.readouterr().out.startswith("layer,kind,w_bits")


def test_table_from_checkpoint_and_bad_plan(checkpoint, tmp_path, capsys):
    assert main(["export", "mapping", "--checkpoint", str(checkpoint)]) == 0
    assert json.loads(capsys.readouterr().out)["layers"]["fc1"]["widen"] == 2.0
    bad = tmp_path / "bad.json"
    Plan(layers={"fc9": {"w_bits": 4}}).save(bad)
    assert main(["export", "table", "--model", "mlp", "--plan", str(bad), "--out", str(tmp_path / "t.csv")]) == 2
    assert "unknown layer 'fc9'" in capsys.readouterr().err and not (tmp_path / "t.csv").exists()


def test_table_engine_functions():
    topo = analyze(build_model("lenet5", (1, 8, 8), 10), (1, 8, 8))
    plan = Plan(default=LayerConfig(2, 2, widen=2.0), layers={"fc3": {"widen": 1.0}})
    text = table_csv(plan, topo)
    assert text.splitlines()[0].startswith("layer,kind,w_bits,a_bits")
    assert len(text.splitlines()) == 1 + len(topo.names)
    assert list(mapping(plan, topo)["layers"]) == topo.names
