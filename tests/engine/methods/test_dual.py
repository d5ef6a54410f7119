"""Dual-precision networks: switching modes, two-phase training, one packed model for both modes."""
import pytest
import torch

from engine.errors import UserError
from engine.evaluation import Settings
from engine.models.data import load_dataset
from engine.training.methods import dual


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    return dual.dual_finetune("mlp", "digits", (8, 8), (4, 4), Settings(steps=60, seed=0))


def test_set_mode_switches_every_quantizer(trained):
    m = trained.applied.model
    qs = dual.dual_quantizers(m)
    assert len(qs) == 6  # three layers, weights and activations
    dual.set_mode(m, "low")
    assert dual.get_mode(m) == "low" and {q.bits for q in qs} == {4}
    assert all(q.step is q.dual_steps["low"] for q in qs)
    x = load_dataset("digits").x_val[:32]
    low = m(x)
    dual.set_mode(m, "high")
    assert {q.bits for q in qs} == {8} and all(q.step is q.dual_steps["high"] for q in qs)
    assert not torch.allclose(low, m(x))
    assert dual.mode_bits(m)["fc1"] == {"high": (8, 8), "low": (4, 4)}
    with pytest.raises(UserError):
        dual.set_mode(m, "medium")


def test_both_modes_reach_sensible_accuracy(trained):
    acc = trained.accuracy
    base = trained.baseline["val"]
    assert acc["high"]["val"] >= base - 0.05
    assert acc["low"]["val"] >= base - 0.08
    assert trained.loss_curves["phase1"] and trained.loss_curves["phase2"]
    # separate step sizes per mode, shared weights
    fc1 = trained.applied.model.fc1
    assert not torch.equal(fc1.wq.dual_steps["high"], fc1.wq.dual_steps["low"])
    assert sum(1 for n, _ in trained.applied.model.named_parameters() if n.endswith("weight")) == 3


def test_low_mode_codes_are_the_top_planes_of_high_codes(trained):
    wq = trained.applied.model.fc2.wq
    w = trained.applied.model.fc2.weight.detach()
    hi = wq.high_codes(w)
    lo = wq.low_codes(w).detach()
    assert torch.equal(lo - 0.5, torch.floor(hi / 16))
    assert lo.min() >= -7.5 and lo.max() <= 7.5


def test_one_packed_model_serves_both_modes(trained):
    d = load_dataset("digits")
    agree = dual.planes_agreement(trained.applied.model, d.x_test, d.y_test)
    for mode in ("high", "low"):
        assert agree[mode]["top1_agreement"] >= 0.99
        assert abs(agree[mode]["packed_accuracy"] - agree[mode]["fake_quant_accuracy"]) <= 0.01
    assert agree["low"]["max_abs_diff"] < 1e-3


def test_alternate_schedule_and_independent_low_weights():
    from engine.models.baselines import load_baseline
    d = load_dataset("digits")
    base = load_baseline("mlp", "digits", d)
    r = dual.dual_finetune("mlp", "digits", (8, 8), (4, 4), Settings(steps=20), schedule="alternate",
                           low_weights="independent", baseline=base, data=d)
    assert r.accuracy["low"]["val"] > 0.8
    with pytest.raises(UserError, match="top planes"):
        dual.planes_model(r.applied.model)


def test_bad_mode_pairs_are_refused():
    from engine.models.baselines import load_baseline
    d = load_dataset("digits")
    base = load_baseline("mlp", "digits", d)
    x = [d.x_train[:64]]
    with pytest.raises(UserError, match="low w_bits <= high"):
        dual.make_dual(base, d.input_shape, (4, 4), (8, 8), x)
    with pytest.raises(UserError, match="float in the other"):
        dual.make_dual(base, d.input_shape, (8, 8), (32, 32), x)
