import numpy as np
import pytest

from engine.evaluation import Settings
from engine.frontier import pareto
from engine.plan import Plan
from engine.search import (SearchSpace, greedy_plans, greedy_search, nondominated_ranks, plan_label,
                           select_promising)
from engine.sweep import Sweep


@pytest.fixture(scope="module")
def lenet_topo():
    from engine.baselines import load_baseline
    from engine.data import load_dataset
    from engine.graph import analyze
    d = load_dataset("digits")
    return analyze(load_baseline("lenet5", "digits", d), d.input_shape)


def test_search_space_plans_are_valid_for_the_network(lenet_topo):
    space = SearchSpace.from_topology(lenet_topo, sparsity=("none", "2:4"))
    assert space.widen_spaces and "fc3" not in {p for ps in space.widen_spaces.values() for p in ps}
    rng = np.random.default_rng(0)
    for _ in range(30):
        plan = space.plan_from(space.random_params(rng))
        lenet_topo.check(plan.resolve(lenet_topo.names))
        Plan.from_dict(plan.to_dict())
    u = space.plan_from(space.uniform_params(4, 4))
    assert plan_label(u, lenet_topo.names) == "|".join(["W4A4"] * 5)


def test_nondominated_ranks_and_selection():
    v = np.array([[1, 1], [2, 2], [3, 1], [1, 3], [0, 0], [np.nan, 1]], dtype=float)
    r = nondominated_ranks(v)
    assert list(r[:5]) == [1, 0, 0, 0, 2] and r[5] > 100
    assert set(select_promising(v, 3)) == {1, 2, 3}
    assert len(select_promising(v, 4)) == 4 and 0 in select_promising(v, 4)
    assert len(select_promising(v, 2)) == 2


def test_greedy_path_plans_lower_one_layer_at_a_time():
    plans = greedy_plans(["a", "b", "c"], ["b", "a", "c"], ladder=(8, 4, 2))
    assert len(plans) == 7
    bits = [[p.resolve(["a", "b", "c"])[n].w_bits for n in "abc"] for p in plans]
    assert bits[0] == [8, 8, 8] and bits[1] == [8, 4, 8] and bits[2] == [4, 4, 8] and bits[-1] == [2, 2, 2]


def test_greedy_search_on_a_tiny_model_gives_a_monotone_frontier():
    from engine.jobs import JobRunner
    from engine.sensitivity import eagl
    from tests.engine.test_jobs import shared_runner
    runner = shared_runner()
    sw = Sweep("mlp", "digits", "bops", runner=runner)
    order = eagl("mlp", "digits").order()
    plans, evs = greedy_search(sw.evaluate, sw.names, order, Settings(steps=0))
    assert len(evs) == 7 and all(ev.status == "estimated" for ev in evs)
    df = sw.frame()
    # every step of the path lowers precision: throughput strictly increases along the path
    thr = [sw.costs(p)["throughput"] for p in plans]
    assert all(b > a for a, b in zip(thr, thr[1:]))
    front = pareto(df, x="throughput", y="val_accuracy")
    assert len(front) >= 2
    assert np.all(np.diff(front.throughput.to_numpy()) > 0)
    assert np.all(np.diff(front.val_accuracy.to_numpy()) < 0)
    assert front.val_accuracy.max() == df.val_accuracy.max()
