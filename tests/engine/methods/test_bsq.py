"""BSQ: relaxed bit-planes reproduce the weights, the regulariser removes planes, the result is a Plan."""
import json

import pytest
import torch

from engine.errors import UserError
from engine.models.baselines import load_baseline
from engine.models.data import load_dataset
from engine.plans.apply import apply_plan
from engine.plans.graph import analyze
from engine.plans.plan import Plan
from engine.training.methods import bsq


def test_bit_weight_represents_the_weight_and_requantizes_exactly():
    torch.manual_seed(0)
    w = torch.randn(6, 5)
    bw = bsq.BitWeight(w, 7)
    rebuilt = bw(w)
    assert (rebuilt - w).abs().max() <= float(w.abs().max()) / 127 / 2 + 1e-6
    with torch.no_grad():
        bw.wp.add_(0.3 * torch.rand_like(bw.wp))
        bw.clamp_()
    before = torch.round(bw.integer_value())
    bw.requantize_()
    assert torch.equal(torch.round(bw.integer_value()), before.clamp(-127, 127))
    assert set(bw.wp.unique().tolist()) <= {0.0, 1.0} and set(bw.wn.unique().tolist()) <= {0.0, 1.0}


def test_zero_planes_are_dropped_from_the_top_and_bottom():
    w = torch.tensor([[4.0, -8.0, 12.0, 0.0]])     # multiples of 4, at most 12 -> planes 2..3 live
    bw = bsq.BitWeight(w * (127 / 12) / (127 / 12), 7)
    with torch.no_grad():
        bw.scale.fill_(127.0)
        v = torch.tensor([[4, -8, 12, 0]])
        b = torch.arange(7).reshape(-1, 1, 1)
        bits = ((v.abs().unsqueeze(0) >> b) & 1).float()
        bw.wp.copy_(bits * (v > 0).float())
        bw.wn.copy_(bits * (v < 0).float())
    bw.requantize_()
    assert bw.live_planes() == [2, 3] and bw.magnitude_bits() == 2
    assert bw.active.tolist() == [0, 0, 1, 1, 0, 0, 0]


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)
    d = load_dataset("digits")
    return d, load_baseline("mlp", "digits", d)


@pytest.mark.slow
def test_stronger_regulariser_removes_more_planes_and_returns_a_valid_plan(digits):
    d, base = digits
    weak = bsq.run_bsq(base, d, 0.0, 60, requant_every=20, model_id="mlp")
    strong = bsq.run_bsq(base, d, 40.0, 60, requant_every=20, model_id="mlp")
    planes = lambda r: r.history[-1]["planes"]  # noqa: E731
    assert planes(strong) < planes(weak)
    assert sum(strong.layer_bits.values()) < sum(weak.layer_bits.values())
    assert weak.layer_bits == {"fc1": 8, "fc2": 8, "fc3": 8}
    for r in (weak, strong):
        plan = Plan.from_json(r.plan.to_json())
        topo = analyze(base, d.input_shape)
        cfgs = plan.resolve(topo.names)
        topo.check(cfgs)
        assert {n: c.w_bits for n, c in cfgs.items()} == r.layer_bits
        assert all(c.a_bits == 8 and 2 <= c.w_bits <= 8 for c in cfgs.values())
        apply_plan(base, plan, d.input_shape)
    json.dumps(strong.to_dict())


@pytest.mark.slow
def test_bsq_search_and_cli(digits, tmp_path, capsys):
    plan = bsq.bsq_search("lenet5", "digits", strength=20.0, steps=20, requant_every=10)
    assert isinstance(plan, Plan) and plan.model == "lenet5"
    assert set(plan.layers) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    with pytest.raises(UserError):
        bsq.bsq_search("mlp", "digits", strength=-1.0, steps=5)
    from explorer.cli import main
    out = tmp_path / "plan.json"
    assert main(["bsq", "--model", "mlp", "--dataset", "digits", "--steps", "10", "--strength", "5",
                 "--out", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert Plan.load(out).to_dict() == got["plan"]
    assert main(["bsq", "--model", "mlp", "--strength", "-2"]) == 2
