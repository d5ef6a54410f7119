"""Cyclic precision training: the schedule, bits changes with step rescaling, range test."""
import pytest
import torch

from engine.errors import UserError
from engine.evaluation import Settings
from engine.models.baselines import load_baseline
from engine.models.data import load_dataset
from engine.plans.apply import apply_plan, calibrate
from engine.plans.plan import Plan
from engine.training.methods import cpt


def test_schedule_hits_both_bounds_and_is_cyclic():
    sched = cpt.cpt_schedule(64, 3, 8, 4)
    assert min(sched) == 3 and max(sched) == 8
    period = 16
    for c in range(4):
        cyc = sched[c * period:(c + 1) * period]
        assert cyc == sched[:period]                  # every cycle the same
        assert cyc[0] == 3 and cyc[-1] == 8           # rises from the lower to the upper bound
        assert all(a <= b for a, b in zip(cyc, cyc[1:]))  # cosine ramp, monotone within a cycle
    sym = cpt.cpt_schedule(64, 2, 6, 2, symmetric=True)
    assert sym[0] == 2 and max(sym) == 6 and sym[:32] == sym[32:]
    assert cpt.cpt_schedule(10, 4, 4, 3) == [4] * 10
    with pytest.raises(UserError):
        cpt.cpt_bits(0, 10, 5, 4, 2)


def _planned(plan):
    d = load_dataset("digits")
    base = load_baseline("mlp", "digits", d)
    ap = apply_plan(base, plan, d.input_shape)
    calibrate(ap.model, [d.x_train[:256]])
    return ap, d


def test_set_bits_keeps_the_clipping_range():
    ap, _ = _planned(Plan.uniform(8, 8))
    wq = ap.model.fc1.wq
    s8 = float(wq.step.detach())
    cpt.set_bits(wq, 4)
    assert wq.bits == 4 and float(wq.step.detach()) * 7 == pytest.approx(s8 * 127, rel=1e-5)
    cpt.set_bits(wq, 8)
    assert float(wq.step.detach()) == pytest.approx(s8, rel=1e-5)
    cpt.set_bits(wq, 3, rescale="memory")
    wq.step.data.fill_(0.5)
    cpt.set_bits(wq, 8, rescale="memory")
    assert float(wq.step.detach()) == pytest.approx(s8, rel=1e-5)   # each bit-width keeps its own step
    cpt.set_bits(wq, 3, rescale="memory")
    assert float(wq.step.detach()) == pytest.approx(0.5)


def test_controller_cycles_each_layer_up_to_its_plan_bits_and_restores():
    plan = Plan(default=Plan.uniform(6, 6).default, layers={"fc3": {"w_bits": 4, "a_bits": 8}})
    ap, d = _planned(plan)
    ctl = cpt.CPTController(ap.model, 20, bits_min=2, cycles=2)
    assert ctl.bits_max == 8 and ctl.bits_min == 2
    seen = {"fc1": set(), "fc3": set()}
    for t in range(20):
        ctl(t)
        seen["fc1"].add(ap.model.fc1.wq.bits)
        seen["fc3"].add(ap.model.fc3.wq.bits)
    assert min(seen["fc1"]) == 2 and max(seen["fc1"]) == 6
    assert max(seen["fc3"]) == 4
    ctl.finish()
    assert ap.model.fc1.wq.bits == 6 and ap.model.fc3.wq.bits == 4 and ap.model.fc3.aq.bits == 8


def test_range_test_and_cpt_finetune():
    torch.set_num_threads(1)
    ap, d = _planned(Plan.uniform(4, 4))
    rt = cpt.precision_range_test(ap.model, d, Settings(), steps_per_bits=4)
    assert rt.upper == 4 and 1 <= rt.lower <= 4 and set(rt.accuracies) == {1, 2, 3, 4}
    assert ap.model.fc1.wq.bits == 4                   # the test ran on a copy
    res = cpt.cpt_finetune("mlp", "digits", Plan.uniform(4, 4), Settings(steps=40), cycles=2, range_steps=3)
    ev = res.evaluation
    assert ev.status == "fine-tuned" and ev.val_accuracy > 0.85
    assert ev.provenance["method"]["name"] == "cpt" and res.range_test is not None
    assert min(res.schedule) == res.range_test.lower and max(res.schedule) == 4
    assert res.applied.model.fc2.wq.bits == 4
