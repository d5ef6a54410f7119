"""bench finetune: gaps against the FP32 twin, PASS/MISS per target, and fine-tunes that end
below their own estimate are printed (tiny budgets; no figures asserted)."""
import argparse

import pytest

from engine.benchmarks import finetune as B

TINY = (("mlp", "digits", {"steps": 3}, (("w4a4", 100.0), ("w2a2", -100.0))),)


@pytest.fixture(scope="module")
def rows():
    return B.measure(TINY, seeds=1)


@pytest.mark.slow
def test_rows_hold_each_plan_against_its_fp32_twin(rows):
    by = {r["plan"]: r for r in rows}
    assert list(by) == ["fp32", "w4a4", "w2a2"]
    fp = by["fp32"]
    for r in rows:
        assert r["fp32_finetuned_test"] == fp["finetuned_test"]
        assert r["gap_points"] == pytest.approx(round(100 * (fp["finetuned_test"] - r["finetuned_test"]), 2))
        assert r["steps_run"] == 3 and r["seeds"] == 1 and len(r["kept_steps"]) == 1
    assert by["w4a4"]["met"] is True and by["w2a2"]["met"] is False and fp["met"] is None


def test_harm_names_a_fine_tune_below_its_estimate():
    r = {"failed": [], "seeds": 3, "finetuned_val": 0.90, "estimate_val": 0.91, "finetuned_test": 0.9,
         "estimate_test": 0.9}
    assert "below the estimate" in B.harm(r)
    assert B.harm({**r, "finetuned_val": 0.92}) is None
    assert "test 89.00% below" in B.harm({**r, "finetuned_val": 0.92, "finetuned_test": 0.89})
    assert "1 of 3 runs failed" in B.harm({**r, "failed": ["diverged: x"]})


@pytest.mark.slow
def test_run_prints_pass_miss_and_harm(monkeypatch, capsys):
    monkeypatch.setattr(B, "CASES", TINY)
    p = argparse.ArgumentParser()
    B.add_arguments(p)
    assert B.run(p.parse_args(["--seeds", "1", "--recipe", '{"lr": 0.002}'])) == 0
    out = capsys.readouterr().out
    assert "PASS mlp/digits w4a4" in out and "MISS mlp/digits w2a2" in out
    assert "fine-tunes worse than their own estimate" in out and "lr 0.002" in out


@pytest.mark.parametrize("recipe", ['{"lr": -1}', '[1]', '{"device": "cuda"}', "{nope"])
def test_bad_recipe_is_refused(capsys, recipe):
    p = argparse.ArgumentParser()
    B.add_arguments(p)
    assert B.run(p.parse_args(["--recipe", recipe])) == 2
    assert "--recipe" in capsys.readouterr().err


def test_input4_variant_is_the_preset_with_the_network_input_at_the_preset_bits():
    from engine.models.zoo import build_model
    from engine.plans.graph import analyze
    topo = analyze(build_model("lenet5", (1, 8, 8), 10).eval(), (1, 8, 8))
    preset = B._plan("w4a4", topo, "lenet5").resolve(topo.names)
    low = B._plan("w4a4-input4", topo, "lenet5").resolve(topo.names)
    assert preset["conv1"].a_bits == 8 and low["conv1"].a_bits == 4
    assert {c.a_bits for c in low.values()} == {4} and {c.w_bits for c in low.values()} == {4}
    sparse = B._plan("2:4-w4a4-input4", topo, "lenet5").resolve(topo.names)
    assert sparse["conv1"].a_bits == 4 and sparse["conv1"].sparsity == B._plan("2:4-w4a4", topo, "lenet5").resolve(
        topo.names)["conv1"].sparsity


@pytest.mark.slow
def test_workers_give_the_same_rows_as_one_process(rows):
    side = B.measure(TINY, seeds=1, workers=2)
    drop = ("finetune_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in side] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows]
