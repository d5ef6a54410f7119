"""``bench runtime``: packed vs onnxruntime vs torch FP32 side by side; the bookkeeping (every point
timed, ratios from those times, the moonshot tally), never the figures."""
import json

import pytest

from engine.benchmarks import runtime as R


@pytest.fixture(scope="module")
def mlp():
    return R.bench_model("mlp", "digits", bits=(8, 2), batches=(1, 4), repeats=1)


def test_every_plan_and_batch_is_timed_on_the_three_runtimes(mlp):
    rows = mlp["rows"]
    assert [(r["plan"], r["batch"]) for r in rows] == [("W8A8", 1), ("W8A8", 4), ("W2A2", 1), ("W2A2", 4)]
    assert not mlp["skipped"]
    for r in rows:
        assert r["packed_s"] > 0 and r["onnxruntime_s"] > 0 and r["torch_fp32_s"] > 0
        assert r["packed_vs_ort"] == pytest.approx(r["onnxruntime_s"] / r["packed_s"])
        assert r["packed_vs_torch"] == pytest.approx(r["torch_fp32_s"] / r["packed_s"])
        assert r["ort_vs_torch"] == pytest.approx(r["torch_fp32_s"] / r["onnxruntime_s"])
    # one torch FP32 point per batch, shared by every plan
    assert len({(r["batch"], r["torch_fp32_s"]) for r in rows}) == 2


def test_moonshot_counts_only_w2a2_and_below():
    rows = [{"bits": 8, "packed_vs_ort": 0.5}, {"bits": 2, "packed_vs_ort": 2.5}, {"bits": 1, "packed_vs_ort": 1.5},
            {"bits": 1, "packed_vs_ort": None}]
    m = R.moonshot(rows)
    assert (m["points"], m["met_points"], m["min"], m["max"], m["met"]) == (2, 1, 1.5, 2.5, False)
    assert R.moonshot(rows[:2])["met"] is True
    assert R.moonshot(rows[:1])["met"] is False          # no point at W2A2 or below: nothing met


def test_cli_json_and_bad_input(capsys):
    from explorer.cli import main
    assert main(["bench", "runtime", "--json", "--models", "mlp:digits", "--bits", "1", "--batch", "1",
                 "--repeats", "1"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [r["plan"] for r in d["results"][0]["rows"]] == ["W1A1"]
    assert d["moonshot"]["points"] == 1
    assert main(["bench", "runtime", "--bits", "9"]) == 2
    assert "--bits" in capsys.readouterr().err
    assert main(["bench", "runtime", "--min-time", "-1"]) == 2
    assert "--min-time" in capsys.readouterr().err
    assert main(["bench", "runtime", "--models", "mlp"]) == 2
