"""``bitscape cost`` and ``bitscape profiles``: tables, JSON, and clear errors with exit code 2."""
import json

import pytest

from engine.cost import load_profile
from explorer.cli import main


def test_cost_json_for_a_plan(tmp_path, capsys):
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"version": 1, "default": {"w_bits": 4, "a_bits": 4},
                                "layers": {"conv1": {"w_bits": 8, "a_bits": 8}}}))
    assert main(["cost", "--model", "lenet5", "--plan", str(plan), "--profile", "a100", "--batch", "8",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"throughput", "latency_s", "energy_j", "size_bytes", "layers"} <= set(d)
    assert d["batch"] == 8 and d["profile"] == "a100"
    assert [x["name"] for x in d["layers"]] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert all({"name", "macs", "time_s", "note"} <= set(x) for x in d["layers"])
    assert d["layers"][1]["exec"] == "INT4"
    # conv1 has 1 input channel: with 2:4 the note must say it is not used
    plan.write_text(json.dumps({"version": 1, "default": {"w_bits": 8, "a_bits": 8, "sparsity": "2:4"},
                                "layers": {"conv1": {"sparsity": "none"}, "conv2": {"sparsity": "none"}}}))
    assert main(["cost", "--model", "lenet5", "--plan", str(plan), "--profile", "a100", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert "2:4 sparse math" in d["layers"][2]["note"] or "2:4 not used" in d["layers"][2]["note"]


def test_cost_table_and_profiles_listing(capsys):
    assert main(["cost", "--model", "mlp", "--profile", "bitfusion"]) == 0
    out = capsys.readouterr().out
    assert "throughput" in out and "fc1" in out and "source:" in out
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name in ("bops", "bismo", "bitfusion", "a100", "dlac", "cpu"):
        assert name in out
    assert main(["profiles", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["source"] for r in rows)


@pytest.mark.parametrize("argv,needle", [
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--profile", "a100", "--batch", "0"], "--batch must be at least 1"),
    (["--profile", "a100", "--plan", "missing.json"], "does not exist"),
])
def test_cost_user_errors_exit_2_without_traceback(capsys, argv, needle):
    assert main(["cost", "--model", "mlp"] + argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_malformed_profile_file_and_bad_plan_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    d = load_profile("a100").to_dict()
    d["memory"]["bytes_per_s"] = -5
    bad.write_text(json.dumps(d))
    assert main(["cost", "--model", "mlp", "--profile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "memory.bytes_per_s" in err
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"version": 1, "layers": {"fc9": {"w_bits": 4}}}))
    assert main(["cost", "--model", "mlp", "--profile", "a100", "--plan", str(plan)]) == 2
    assert "unknown layer 'fc9'" in capsys.readouterr().err
