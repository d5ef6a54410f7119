"""The fine-tune's budgets (steps, epochs, patience), its validation-best result, its optimiser
groups and its learning-rate range test (issue 14)."""
import math
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.errors import UserError
from engine.evaluation import DEFAULT_LR, Settings
from engine.explore.pipeline import evaluate_plan, validation_subset
from engine.models.data import Dataset
from engine.plans.apply import apply_plan
from engine.plans.plan import Plan
from engine.training import rates
from engine.training.finetune import accuracy, optimise, param_groups


def blobs(n_train=200, n_val=60, seed=0) -> Dataset:
    """Four separable Gaussian clusters on 1x4x4 inputs."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 16, generator=g) * 3

    def split(n):
        y = torch.randint(0, 4, (n,), generator=g)
        return (centres[y] + torch.randn(n, 16, generator=g)).reshape(n, 1, 4, 4), y
    (xt, yt), (xv, yv), (xs, ys) = split(n_train), split(n_val), split(n_val)
    return Dataset("blobs", xt, yt, xv, yv, xs, ys, 4)


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64, 4))


def trained(data, steps=60):
    net = small_net()
    optimise(net, data, Settings(steps=steps, lr=1e-2), lambda m, x, y, i: F.cross_entropy(m(x), y))
    return net


# ---- the validation-best state --------------------------------------------------------------------------

def test_sabotaged_training_returns_the_start_not_a_worse_network():
    """Gradient ascent on the loss makes every step worse; the network handed back is the start."""
    data = blobs()
    net = trained(data)
    score = lambda: accuracy(net, data.x_val, data.y_val)   # noqa: E731
    start = score()
    assert start > 0.6
    ascent = lambda m, x, y, i: -F.cross_entropy(m(x), y)   # noqa: E731
    r = optimise(net, data, Settings(steps=30, lr=0.5, val_every=5), ascent, validate=score)
    assert r.steps == 30 and r.best.start == start
    assert score() >= start and r.best.best_step == 0
    assert [s for s, _ in r.best.checks] == [0, 5, 10, 15, 20, 25, 30]
    assert min(v for _, v in r.best.checks[1:]) < start   # the sabotage did harm the training state


def test_without_a_score_the_last_state_is_kept_as_before():
    data = blobs()
    net = trained(data)
    before = [p.detach().clone() for p in net.parameters()]
    optimise(net, data, Settings(steps=3, lr=0.5), lambda m, x, y, i: -F.cross_entropy(m(x), y))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_fine_tune_with_a_huge_rate_ends_no_worse_than_its_estimate():
    """lenet5 W4A4 at the largest allowed rates: the network and the recorded validation score
    are the kept state's, never below the calibrated estimate."""
    run = evaluate_plan("lenet5", "digits", Plan.uniform(4, 4), Settings(steps=12, lr=1.0, lr_step=1.0, val_every=4))
    ev = run.evaluation
    ft = ev.provenance["finetune"]
    assert ev.val_accuracy >= ev.estimate_val_accuracy
    assert ft["start_val"] == pytest.approx(ev.estimate_val_accuracy) and ft["best_val"] >= ft["start_val"]
    assert ft["kept_step"] in (0, 4, 8, 12) and ft["steps_run"] == 12 and ft["lr_source"] == "settings"
    from engine.models.data import load_dataset
    x, y = validation_subset(load_dataset("digits"), Settings())
    assert accuracy(run.applied.model, x, y) == pytest.approx(ev.val_accuracy)


def test_provenance_of_a_default_fine_tune():
    ev = evaluate_plan("mlp", "digits", Plan.uniform(8, 8), Settings(steps=6, val_every=3)).evaluation
    ft = ev.provenance["finetune"]
    assert ev.status == "fine-tuned" and ev.provenance["device"] == "cpu"
    assert ft["budget_steps"] == 6 and ft["validations"] == 3 and ft["stopped"] == "budget"
    assert (ft["lr"], ft["lr_step"], ft["lr_source"]) == (DEFAULT_LR, DEFAULT_LR, "default")   # none stored for mlp
    assert len(ev.loss_curve) == 6 and ev.steps == 6


def test_rates_stored_per_baseline_are_used_and_recorded_unless_the_settings_give_them():
    stored = rates.stored("lenet5", "digits")
    assert stored and stored["lr"] != DEFAULT_LR          # data/baselines/rates.json
    ev = evaluate_plan("lenet5", "digits", Plan.uniform(8, 8), Settings(steps=4, val_every=2)).evaluation
    ft = ev.provenance["finetune"]
    assert (ft["lr"], ft["lr_step"], ft["lr_source"]) == (stored["lr"], stored["lr_step"], "stored for lenet5/digits")
    assert ev.settings["lr"] is None                      # the record keeps what was asked; provenance what ran
    ev = evaluate_plan("lenet5", "digits", Plan.uniform(8, 8), Settings(steps=4, lr=2e-3, lr_step=5e-4)).evaluation
    assert (ev.provenance["finetune"]["lr"], ev.provenance["finetune"]["lr_source"]) == (2e-3, "settings")
    s, source = rates.resolve(Settings(lr=2e-3), "lenet5", "digits")
    assert (s.lr, s.lr_step, source) == (2e-3, stored["lr_step"], "settings and stored for lenet5/digits")


# ---- optimiser groups -----------------------------------------------------------------------------------

def test_param_groups_separate_weights_step_sizes_and_batch_norm():
    net = apply_plan(small_net(), Plan.uniform(4, 4), (1, 4, 4)).model
    s = Settings(lr=2e-3, lr_step=5e-4, weight_decay=1e-3)
    groups = {g["name"]: g for g in param_groups(net, s)}
    assert set(groups) == {"weights", "steps", "norm"}
    assert (groups["weights"]["lr"], groups["weights"]["weight_decay"]) == (2e-3, 1e-3)
    assert (groups["steps"]["lr"], groups["steps"]["weight_decay"]) == (5e-4, 0.0)
    assert (groups["norm"]["lr"], groups["norm"]["weight_decay"]) == (2e-3, 0.0)
    names = {id(p): n for n, p in net.named_parameters()}
    of = {g: sorted(names[id(p)] for p in groups[g]["params"]) for g in groups}
    assert of["steps"] and all(n.rsplit(".", 1)[-1] == "step" for n in of["steps"])
    assert all(n.endswith(".weight") and not n.startswith("1.") for n in of["weights"])
    bn = [n for n in names.values() if n.startswith("1.")]
    assert set(bn) <= set(of["norm"]) and all(n.startswith("1.") or n.endswith("bias") for n in of["norm"])
    every = sorted(n for g in of.values() for n in g)
    assert every == sorted(n for n, p in net.named_parameters() if p.requires_grad)   # each exactly once


# ---- budgets ---------------------------------------------------------------------------------------------

def ce(m, x, y, i):
    return F.cross_entropy(m(x), y)


def test_epochs_budget_stops_after_that_many_passes():
    data = blobs(n_train=200)
    r = optimise(small_net(), data, Settings(steps=1000, epochs=1.5, batch_size=50), ce)
    assert r.steps == r.budget == 6       # 1.5 x 200 / 50


def test_steps_cap_an_epoch_budget():
    r = optimise(small_net(), blobs(n_train=200), Settings(steps=3, epochs=10.0, batch_size=50), ce)
    assert r.steps == 3


def test_patience_stops_after_that_many_validations_without_a_better_score():
    data = blobs()
    scores = iter([0.5, 0.6, 0.55, 0.6, 0.4] + [0.1] * 100)
    r = optimise(small_net(), data, Settings(steps=100, val_every=2, patience=3), ce, validate=lambda: next(scores))
    # checks at steps 0 (0.5), 2 (0.6 best), 4, 6 (0.6 tie: kept, not better), 8 -> three without improvement
    assert r.stopped == "patience" and r.steps == 8
    assert r.best.best_step == 6 and r.best.best == 0.6


def test_patience_is_not_triggered_while_scores_improve():
    data = blobs()
    scores = iter(i / 100 for i in range(100))
    r = optimise(small_net(), data, Settings(steps=10, val_every=2, patience=1), ce, validate=lambda: next(scores))
    assert r.stopped == "budget" and r.steps == 10 and r.best.best_step == 10


def test_too_many_epochs_for_the_step_limit_is_a_user_error():
    with pytest.raises(UserError, match="at most 1,000,000"):
        optimise(small_net(), blobs(n_train=200), Settings(steps=1_000_000, epochs=9000.0, batch_size=1), ce)


@pytest.mark.parametrize("name,value", [
    ("epochs", 0), ("epochs", -1.0), ("epochs", math.nan), ("epochs", math.inf), ("epochs", 1e9), ("epochs", "1"),
    ("patience", 0), ("patience", 1.5), ("patience", True), ("val_every", 0), ("val_every", -3),
    ("lr_find", "yes"), ("lr_find", 1), ("device", "tpu"), ("device", None), ("device", "CUDA"),
])
def test_bad_budget_values_are_refused(name, value):
    with pytest.raises(UserError, match=f"setting {name}"):
        Settings(**{name: value})
    with pytest.raises(UserError, match=f"setting {name}"):
        Settings.from_dict({name: value})


def test_new_settings_keep_default_cache_keys():
    d = Settings().to_dict()
    assert not {"epochs", "patience", "val_every", "lr_find", "device"} & set(d)
    s = Settings(epochs=0.5, patience=3, val_every=10, lr_find=True, device="auto")
    assert Settings.from_dict(s.to_dict()) == s and s.to_dict()["epochs"] == 0.5


# ---- learning-rate range test ---------------------------------------------------------------------------

def test_lr_range_test_chooses_and_records_the_rates():
    ev = evaluate_plan("mlp", "digits", Plan.uniform(8, 8), Settings(steps=4, lr_find=True, lr_step=2e-3)).evaluation
    ft = ev.provenance["finetune"]
    assert ev.status == "fine-tuned" and ft["lr_source"] == "range test" and ft["range_steps"] > 5
    assert 0 < ft["lr"] <= 10 and ft["lr_step"] == pytest.approx(2 * ft["lr"])   # the ratio is kept
    assert ev.settings["lr_find"] is True   # the record's settings still say how the rate was chosen


# ---- devices ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_auto_device_runs_on_the_cpu_here():
    ev = evaluate_plan("mlp", "digits", Plan.uniform(8, 8), Settings(steps=2, device="auto")).evaluation
    assert ev.status == "fine-tuned" and ev.provenance["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_failed_record_with_the_reason():
    ev = evaluate_plan("mlp", "digits", Plan.uniform(8, 8), Settings(steps=2, device="cuda")).evaluation
    assert ev.status == "failed" and "no CUDA device" in ev.reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.slow
def test_cli_device_cuda_without_a_gpu_is_a_one_line_error(tmp_path):
    plan = tmp_path / "p.json"
    plan.write_text('{"version": 1}')
    p = subprocess.run([sys.executable, "-m", "explorer.cli", "finetune", "--model", "mlp", "--dataset", "digits",
                        "--plan", str(plan), "--steps", "1", "--device", "cuda"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no CUDA device" in lines[0], p.stderr


def test_cli_epochs_and_patience_reach_the_record(tmp_path, capsys):
    import json

    from explorer.cli import main
    plan = tmp_path / "p.json"
    plan.write_text('{"version": 1}')
    assert main(["finetune", "--model", "mlp", "--dataset", "digits", "--plan", str(plan), "--epochs", "0.1",
                 "--patience", "2", "--val-every", "1", "--device", "auto", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    ft = ev["provenance"]["finetune"]
    assert ev["settings"]["epochs"] == 0.1 and ev["settings"]["patience"] == 2
    assert ft["budget_steps"] == math.ceil(0.1 * 1294 / 64) and ft["steps_run"] <= ft["budget_steps"]


def test_a_job_carries_its_device_and_budget_through_settings():
    from engine.explore.jobs import execute
    payload = {"plan": Plan.uniform(8, 8).to_dict(), "model": "mlp", "dataset": "digits",
               "settings": Settings(steps=50, epochs=0.05, device="cpu", patience=5).to_dict()}
    ev = execute(payload)
    assert ev["status"] == "fine-tuned" and ev["provenance"]["device"] == "cpu"
    assert ev["provenance"]["finetune"]["budget_steps"] == math.ceil(0.05 * 1294 / 64)
    assert ev["settings"]["epochs"] == 0.05 and ev["settings"]["patience"] == 5


def test_lr_range_test_takes_a_tenth_of_the_edge_and_leaves_the_network_alone():
    from engine.training.lr_range import HIGH, LOW, STEPS, lr_range_test
    data = blobs()
    net = trained(data)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    s = Settings(lr=1e-3, lr_step=4e-3)
    # flat for 30 steps, then the loss jumps: the edge is the factor of step 30
    jump = lambda m, x, y, i: F.cross_entropy(m(x), y) * 0 + (1.0 if i < 30 else 5.0)   # noqa: E731
    r = lr_range_test(net, data, s, jump, lambda m: param_groups(m, s))
    edge = LOW * (HIGH / LOW) ** (30 / (STEPS - 1))
    assert r["edge_factor"] == pytest.approx(edge, rel=1e-5) and r["factor"] == pytest.approx(edge / 10, rel=1e-5)
    assert r["lr"] == pytest.approx(1e-3 * edge / 10, rel=1e-5) and r["lr_step"] == pytest.approx(4 * r["lr"])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
