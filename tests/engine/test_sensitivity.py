import math

import numpy as np
import pytest

from engine.errors import UserError
from engine.training.sensitivity import (
    LayerScore,
    Sensitivity,
    alps,
    alps_plans,
    correlations,
    eagl,
    hessian,
    rank_correlation,
    sensitivity,
)
from explorer.cli import main


def test_rank_correlation_is_spearman():
    a = {"x": 1.0, "y": 2.0, "z": 3.0, "w": 4.0}
    assert rank_correlation(a, {"x": 10, "y": 20, "z": 30, "w": 40}) == pytest.approx(1.0)
    assert rank_correlation(a, {"x": 4, "y": 3, "z": 2, "w": 1}) == pytest.approx(-1.0)
    from scipy.stats import spearmanr
    rng = np.random.default_rng(0)
    for _ in range(5):
        u, v = rng.normal(size=7), rng.integers(0, 3, size=7).astype(float)
        got = rank_correlation(dict(enumerate(u)), dict(enumerate(v)))
        assert got == pytest.approx(spearmanr(u, v).statistic)
    assert math.isnan(rank_correlation({"x": 1}, {"x": 2}))


def test_eagl_and_hessian_give_one_row_per_layer():
    e = eagl("lenet5", "digits", bits=4)
    assert [r.layer for r in e.rows] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert all(0 < r.score <= 4 for r in e.rows)
    # fewer bits -> no more entropy
    e2 = eagl("lenet5", "digits", bits=2)
    assert all(a.score <= b.score + 1e-9 for a, b in zip(e2.rows, e.rows))
    h = hessian("mlp", "digits", bits=4, batches=1, probes=4)
    assert [r.layer for r in h.rows] == ["fc1", "fc2", "fc3"]
    assert all(r.detail["trace"] > 0 and r.score > 0 for r in h.rows)
    assert sorted(h.ranks().values()) == [1, 2, 3]
    with pytest.raises(UserError, match="unknown sensitivity method"):
        sensitivity("magic", "mlp", "digits")


def test_alps_plans_lower_one_layer_each():
    from engine.models.baselines import load_baseline
    from engine.models.data import load_dataset
    from engine.plans.graph import analyze
    d = load_dataset("digits")
    topo = analyze(load_baseline("mlp", "digits", d), d.input_shape)
    plans = alps_plans(topo, bits=2, base_bits=8)
    assert set(plans) == {None, "fc1", "fc2", "fc3"}
    cfg = plans["fc2"].resolve(topo.names)
    assert (cfg["fc2"].w_bits, cfg["fc1"].w_bits, cfg["fc3"].a_bits) == (2, 8, 8)


@pytest.mark.slow
def test_alps_through_jobs_and_cli(capsys):
    from engine.explore.store import Store
    store = Store(":memory:")
    from tests.engine.test_jobs import shared_runner
    runner = shared_runner(store)
    s = alps("mlp", "digits", bits=2, steps=10, runner=runner, store=store)
    assert [r.layer for r in s.rows] == ["fc1", "fc2", "fc3"]
    assert all(r.detail["reference_val_accuracy"] - r.detail["val_accuracy"] == pytest.approx(r.score) for r in s.rows)
    assert len(store.evaluations()) == 4
    assert len(correlations([s, eagl("mlp", "digits")])) == 1
    assert main(["sensitivity", "--model", "mlp", "--method", "eagl"]) == 0
    text = capsys.readouterr().out
    assert "fc1" in text and "fc3" in text and "rank correlation (Spearman) eagl vs hessian" in text
    assert main(["sensitivity", "--model", "mlp", "--method", "eagl", "--bits", "12"]) == 2


def test_order_and_ranks():
    s = Sensitivity("x", "m", "d", [LayerScore("a", "linear", 1, 0.5), LayerScore("b", "linear", 1, 0.1),
                                    LayerScore("c", "linear", 1, 0.9)])
    assert s.order() == ["b", "a", "c"] and s.ranks() == {"c": 1, "a": 2, "b": 3}


@pytest.mark.slow
def test_hessian_trace_matches_the_exact_trace_on_a_tiny_network():
    """Hutchinson's estimate of each layer's Hessian trace converges to the exact trace, computed
    here by differentiating twice (torch.func.hessian) with respect to that layer's weights."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.func import functional_call
    from torch.func import hessian as exact_hessian

    from engine.models.data import Dataset

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x.flatten(1))))

    torch.manual_seed(0)
    net = Tiny()
    x, y = torch.randn(16, 1, 2, 2), torch.randint(0, 2, (16,))
    data = Dataset("tiny", x, y, x[:4], y[:4], x[:4], y[:4], 2)
    got = hessian("tiny", "tiny", bits=4, batches=1, batch_size=16, probes=3000, baseline=net, data=data)

    params = dict(net.named_parameters())
    for row in got.rows:
        name = f"{row.layer}.weight"

        def loss(w, name=name):
            return F.cross_entropy(functional_call(net, {**params, name: w}, (x,)), y)
        h = exact_hessian(loss)(params[name].detach())
        exact = float(torch.diagonal(h.detach().reshape(params[name].numel(), -1)).sum())
        assert row.detail["trace"] == pytest.approx(exact, rel=0.08), (row.layer, row.detail["trace"], exact)
        assert abs(exact) > 1e-3  # a real curvature, not a vanishing one the estimate trivially matches


@pytest.mark.parametrize("model", ["gru", "lstm"])
@pytest.mark.slow
def test_recurrent_layers_are_scored_by_every_method(model):
    """GRU and LSTM layers have no ``.weight``: every method scores their two weight matrices
    (a GRU's EAGL used to die with AttributeError: 'GRU' object has no attribute 'weight')."""
    from engine.explore.store import Store
    from tests.engine.test_jobs import shared_runner
    e = eagl(model, "digits", bits=4)
    assert [r.layer for r in e.rows] == [model, "fc"]
    gates = 3 if model == "gru" else 4
    assert e.rows[0].params == gates * 64 * (8 + 64)      # weight_ih (G*H, 8) + weight_hh (G*H, H)
    assert 0 < e.rows[0].score <= 4
    h = hessian(model, "digits", bits=4, batches=1, batch_size=64, probes=2)
    assert [r.layer for r in h.rows] == [model, "fc"] and h.rows[0].detail["quant_perturbation"] > 0
    store = Store(":memory:")
    a = alps(model, "digits", bits=2, steps=2, runner=shared_runner(store), store=store)
    assert [r.layer for r in a.rows] == [model, "fc"] and a.rows[0].params == e.rows[0].params


def test_alps_refuses_an_unscorable_layer_before_any_fine_tune(monkeypatch):
    """A layer whose weights cannot be read stops ALPS before a single job is submitted."""
    import engine.training.sensitivity as S

    class Runner:
        submitted = 0

        def submit(self, *a, **k):
            Runner.submitted += 1
            raise AssertionError("a fine-tune was submitted")

        def shutdown(self):
            pass

    real = S._weights

    def weights(mod):
        if type(mod).__name__ == "GRU":
            raise UserError("layer of type GRU has no weight tensor to score")
        return real(mod)

    monkeypatch.setattr(S, "_weights", weights)
    with pytest.raises(UserError, match="GRU has no weight"):
        alps("gru", "digits", bits=2, steps=2, runner=Runner())
    assert Runner.submitted == 0


def test_greedy_sweep_on_the_gru():
    """`bitscape sweep --model gru` died in the EAGL order of its seed plans (no ``GRU.weight``)."""
    from engine.explore.store import Store
    from engine.explore.sweep import run_sweep
    from tests.engine.test_jobs import shared_runner
    store = Store(":memory:")
    res = run_sweep("gru", "digits", "bops", budget=2, finetune=0, steps=2, method="greedy", store=store,
                    runner=shared_runner(store))
    assert len(res.points) >= 2 and set(res.points["status"]) <= {"estimated", "fine-tuned"}
