"""bench cost: plans, the predicted-vs-measured bookkeeping and the re-fit (no wall-clock checks)."""
import json

import numpy as np
import pytest

from engine.benchmarks import cost as B
from engine.cost import load_profile
from engine.cost.profiles import Profile


@pytest.fixture(scope="module")
def records():
    # one tiny real measurement run: digits MLP, every plan, batch 1 and 2, one repeat
    return B.measure(repeats=1, models=(("mlp", "digits"),), batches=(1, 2))


def test_plans_fit_every_model():
    from engine.models.baselines import load_baseline
    from engine.models.data import load_dataset
    from engine.plans.graph import analyze
    data = load_dataset("digits")
    for model in ("mlp", "lenet5", "lstm"):
        topo = analyze(load_baseline(model, "digits", data), data.input_shape)
        plans = B.plans_for(model, topo)
        assert tuple(plans) == B.PLAN_NAMES
        for plan in plans.values():
            topo.check(plan.resolve(topo.names))   # no PlanError


def test_measure_records_every_layer_and_network(records):
    assert {r["plan"] for r in records} == set(B.PLAN_NAMES)
    for r in records:
        names = [l["name"] for l in r["layers"]]
        assert names == ["fc1", "fc2", "fc3"] and set(r["measured_layers_s"]) == set(names)
        assert r["measured_net_s"] > 0 and all(v > 0 for v in r["measured_layers_s"].values())
    kernels = {r["plan"]: r["kernels"] for r in records}
    assert kernels["W1A1"]["fc2"] == "bitserial" and kernels["2:4"]["fc2"] == "nm"
    widened = next(r for r in records if r["plan"] == "widened")
    assert widened["layers"][1]["in_channels"] == 256   # fc2 reads the widened fc1


def test_compare_and_errors_math(records):
    cmp = B.compare(records, "cpu")
    assert len(cmp["net_rows"]) == len(records)
    assert len(cmp["layer_rows"]) == 3 * len(records)
    e = B.errors([{"predicted_s": 2.0, "measured_s": 1.0}, {"predicted_s": 1.0, "measured_s": 2.0},
                  {"predicted_s": 3.0, "measured_s": 3.0}])
    assert e["mape"] == pytest.approx((1.0 + 0.5 + 0.0) / 3) and e["spearman"] == pytest.approx(0.5)
    s = B.summarize(cmp, B.HELD_OUT)
    assert s["layers"]["n"] == 3 * sum(r["plan"] in B.HELD_OUT for r in records)
    assert set(s["per_model"]) == {"mlp"}


@pytest.mark.slow
def test_fit_uses_only_the_fit_plans_and_gives_a_valid_profile(records):
    res = B.fit(records, "cpu")
    assert set(res.params) == set(B.FIT_PARAMS)
    assert len(res.rows) == 3 * sum(r["plan"] in B.FIT_PLANS for r in records)
    d = res.profile.to_dict()
    assert d["status"] == "fitted" and "bench cost" in d["source"] and "held-out" in d["source"]
    Profile(json.loads(json.dumps(d)))          # round-trips through JSON and validates
    # the fit does not make the fit set worse than the starting coefficients
    assert res.after["rms_log"] <= res.before["rms_log"] + 1e-9


def test_shipped_cpu_profile_is_valid_and_says_where_it_came_from():
    prof = load_profile("cpu")
    assert prof.status in ("derived", "fitted")
    if prof.status == "fitted":
        assert "bench cost" in prof.source or "bench kernels" in prof.source
        assert "fit" in prof.to_dict()


@pytest.mark.slow
def test_cli_quick_json(monkeypatch, capsys):
    from explorer.cli import main
    small = [r for r in B.measure(repeats=1, models=(("mlp", "digits"),), batches=(1,))]
    monkeypatch.setattr(B, "measure", lambda **kw: small)
    assert main(["bench", "cost", "--quick", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("shipped", "fitted", "targets", "rows"):
        assert key in d
    assert d["fitted"]["held_out_plans"] == list(B.HELD_OUT)
    assert set(d["fitted"]["met_held_out"]) == {"layer_mape_met", "layer_spearman_met", "net_mape_met",
                                                "net_spearman_met"}
    assert main(["bench", "cost", "--repeats", "0"]) == 2
    assert np.isfinite(d["fitted"]["held_out"]["layers"]["mape"])


@pytest.mark.slow
def test_mixed_protocol_as_the_readme_runs_it_then_rescored_from_its_measurements(tmp_path):
    """``bitscape bench cost --mixed`` in a subprocess on lenet5 (few plans): it times, saves both runs,
    prints the figures; ``--from-measurements`` re-scores the saved CSVs to the same figures without
    timing; a missing folder or model is a one-line error or a named skip."""
    import subprocess
    import sys
    from pathlib import Path

    bitscape = Path(sys.executable).with_name("bitscape")     # the console script the README's install makes
    assert bitscape.is_file()

    def cli(*args):
        return subprocess.run([str(bitscape), "bench", "cost", "--mixed", "--quick",
                               "--models", "lenet5:digits", *args], capture_output=True, text=True, timeout=900)
    r = cli("--random", "6", "--repeats", "3", "--min-time", "0.001", "--repeatability", "--seed", "5",
            "--save-measurements", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "random mixed plans (seed 5)" in r.stdout
    names = {p["plan"].get("name") for p in json.loads((tmp_path / "lenet5-digits.plans.json").read_text()).values()}
    assert {f"random 5:{i}" for i in range(6)} <= names
    lines = [x for x in r.stdout.splitlines() if x.strip().startswith(("packed", "onnxruntime"))]
    assert [x.split()[0] for x in lines] == ["packed", "onnxruntime", "onnxruntime-integer"]
    assert "repeatability: run 1 vs run 2 Spearman" in r.stdout and "/3 met" in r.stdout
    for name in ("lenet5-digits.csv", "lenet5-digits.plans.json", "lenet5-digits.run2.csv"):
        assert (tmp_path / name).is_file()
    again = cli("--from-measurements", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert "re-scored: nothing timed now" in again.stdout
    assert [x for x in again.stdout.splitlines() if x.strip().startswith(("packed", "onnxruntime"))] == lines
    assert "timed" not in again.stderr and "prepared" not in again.stderr   # nothing was measured
    bad = cli("--from-measurements", str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and "is not a folder" in bad.stderr and "Traceback" not in bad.stderr
    other = subprocess.run([str(bitscape), "bench", "cost", "--mixed", "--models",
                            "cnn:fashion-mnist", "--from-measurements", str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 0 and "skipped all targets for cnn on fashion-mnist: no saved measurements" in other.stdout
