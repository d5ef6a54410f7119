import numpy as np
import pytest

from engine.evaluation import Settings
from engine.explore.frontier import pareto
from engine.explore.search import SearchSpace, greedy_plans, greedy_search, plan_label
from engine.explore.sweep import Sweep
from engine.plans.plan import Plan


@pytest.fixture(scope="module")
def lenet_topo():
    from engine.models.baselines import load_baseline
    from engine.models.data import load_dataset
    from engine.plans.graph import analyze
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


def test_greedy_path_plans_lower_one_layer_at_a_time():
    plans = greedy_plans(["a", "b", "c"], ["b", "a", "c"], ladder=(8, 4, 2))
    assert len(plans) == 7
    bits = [[p.resolve(["a", "b", "c"])[n].w_bits for n in "abc"] for p in plans]
    assert bits[0] == [8, 8, 8] and bits[1] == [8, 4, 8] and bits[2] == [4, 4, 8] and bits[-1] == [2, 2, 2]


def test_greedy_search_on_a_tiny_model_gives_a_monotone_frontier():
    from engine.training.sensitivity import eagl
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


def test_hv_gain_picks_greedy_and_predictor():
    from engine.explore.frontier import hypervolume
    from engine.explore.search import FinetunePredictor, hv_gain_picks
    cur = np.array([[0.9, 1.0]])
    pred = np.array([[0.85, 3.0], [0.84, 3.1], [0.7, 10.0], [0.5, 20.0], [0.95, 0.5]])
    ref = (0.6, 0.0)
    picks = hv_gain_picks(pred, cur, ref, 2)
    gains = [hypervolume(np.vstack([cur, p]), ref) - hypervolume(cur, ref) for p in pred]
    assert picks[0] == int(np.argmax(gains))
    # (0.7, 10) adds 0.9; then (0.85, 3) adds 0.3 and beats its near-twin (0.84, 3.1), 0.294
    assert picks == [2, 0]
    assert 3 not in hv_gain_picks(pred, cur, ref, 5)      # below the reference accuracy: adds nothing
    assert hv_gain_picks(np.array([[0.5, 5.0]]), cur, ref, 3) == []
    # what fine-tuning leaves of the loss against the reference is a line in the loss, fitted by
    # least squares: here every pair keeps a point plus 40% of its loss
    lost = np.array([0.4, 0.2, 0.05])
    p = FinetunePredictor(1.0 - lost, 1.0 - (0.01 + 0.4 * lost), reference=1.0, prior=0.0)
    assert p.fraction == pytest.approx(0.4) and p.offset == pytest.approx(0.01)
    assert float(p(0.7)) == pytest.approx(1.0 - 0.01 - 0.4 * 0.3)
    assert float(p(0.99)) == pytest.approx(0.97)        # capped at the best fine-tuned accuracy seen
    # the prior (two pairs on the identity line) pulls a single pair toward the estimate itself
    one = FinetunePredictor([0.80], [0.86], reference=0.92)
    assert 0.80 < float(one(0.80)) < 0.86 and float(one(0.70)) - 0.70 > float(one(0.80)) - 0.80
    # pairs that barely lost anything cannot swing it: a heavy plan stays near its estimate
    near = FinetunePredictor([0.918, 0.917], [0.910, 0.9172], reference=0.92)
    assert abs(float(near(0.70)) - 0.70) < 0.04
    assert float(FinetunePredictor([], [])(0.42)) == pytest.approx(0.42)    # nothing tuned: the estimate
    worse = FinetunePredictor([0.8, 0.7], [0.5, 0.2], reference=0.9, prior=0.0)
    assert worse.fraction == 1.5 and float(worse(0.0)) == 0.0   # fraction clipped, output in [0, cap]
    # Fashion-MNIST's CNN (FP32 val 92.7%) after two fine-tunes, W4A4 0.925 -> 0.9175 and a mixed
    # plan 0.873 -> 0.898: uniform W2A2 (estimate 0.735, fine-tuned 0.845 in the benchmark) is
    # predicted above the search's reference, FP32 - 10 points; without the offset it was not
    seen = FinetunePredictor([0.925, 0.873], [0.9175, 0.8983], reference=0.9272)
    assert float(seen(0.735)) > 0.9272 - 0.10


def _fake_search(sampler, budget=30, finetune=6, seed=0, seed_plans=(), population=6):
    """joint_search on a three-layer space whose 'accuracy' and cost come from the bits, no network."""
    from engine.evaluation import Evaluation
    from engine.explore.search import UNIFORM_SEEDS, joint_search
    space = SearchSpace(["a", "b", "c"], widen_spaces={1: ["a"]})
    calls = []

    def evaluate(plans, settings, labels):
        calls.append((settings.steps, [p.digest() for p in plans]))
        out = []
        for p in plans:
            c = p.resolve(space.names)
            bits = sum(min(c[n].w_bits, c[n].a_bits) for n in space.names) + 2 * (c["a"].widen - 1)
            acc = 0.5 + 0.4 * (1 - np.exp(-bits / 6)) + (0.05 if settings.steps else 0.0)
            out.append(Evaluation(plan=p.to_dict(), model="m", dataset="d", settings=settings.to_dict(),
                                  status="fine-tuned" if settings.steps else "estimated", val_accuracy=float(acc),
                                  baseline_val_accuracy=0.95))
        return out

    def objective(plan, ev):
        c = plan.resolve(space.names)
        return (1000.0 / sum(c[n].w_bits * c[n].a_bits * c[n].widen for n in space.names),)
    res = joint_search(evaluate, space, objective, Settings(steps=0), Settings(steps=10), budget, finetune,
                       sampler=sampler, seed=seed, population=population, seed_plans=seed_plans)
    return space, calls, res, UNIFORM_SEEDS


@pytest.mark.parametrize("sampler", ["nsga2", "random"])
def test_joint_search_budget_rounds_and_uniform_seeds_are_the_same_for_both_samplers(sampler):
    space, calls, (est_plans, est_evs, ft_plans, ft_evs), seeds = _fake_search(sampler)
    assert sum(len(d) for steps, d in calls if steps == 0) == len(est_plans) == 30
    assert sum(len(d) for steps, d in calls if steps > 0) == len(ft_plans) == 6
    # estimates go in batches of at most one generation
    assert max(len(d) for steps, d in calls if steps == 0) <= 6
    # three rounds of two fine-tunes, each after its own estimates
    assert [s > 0 for s, _ in calls].count(True) == 3 and calls[-1][0] > 0
    digests = [p.digest() for p in est_plans]
    assert len(set(digests)) == len(digests)                  # no plan is estimated twice
    # the uniform seeds are enqueued: the first plans estimated, in order
    assert digests[:len(seeds)] == [space.plan_from(space.uniform_params(w, a, k)).digest() for w, a, k in seeds]
    assert {p.digest() for p in ft_plans} <= set(digests) and len({p.digest() for p in ft_plans}) == 6
    # every point is marked: estimates 'estimated', fine-tunes 'fine-tuned'
    assert all(ev.status == "estimated" for ev in est_evs) and all(ev.status == "fine-tuned" for ev in ft_evs)
    # deterministic for a seed
    again = _fake_search(sampler)[2]
    assert [p.digest() for p in again[0]] == digests and [p.digest() for p in again[2]] == [p.digest() for p in ft_plans]


def test_joint_search_uses_optuna_nsga2_and_differs_from_random_and_by_seed():
    """NSGA-II's children come from the seeded population (crossover + mutation), so its proposals
    differ from random sampling's after generation 0; another seed proposes other plans."""
    n = _fake_search("nsga2", budget=30)[2][0]
    r = _fake_search("random", budget=30)[2][0]
    n1 = _fake_search("nsga2", budget=30, seed=1)[2][0]
    seeds = len(_fake_search("nsga2", budget=8)[3])
    assert [p.digest() for p in n[:seeds]] == [p.digest() for p in r[:seeds]]
    assert [p.digest() for p in n[seeds:]] != [p.digest() for p in r[seeds:]]
    assert [p.digest() for p in n] != [p.digest() for p in n1]


def test_joint_search_budget_is_respected_for_small_budgets_and_seed_plans_follow_uniform_ones():
    from engine.plans.plan import LayerConfig
    extra = [Plan.explicit({"a": LayerConfig(8, 8), "b": LayerConfig(2, 2), "c": LayerConfig(4, 4)}),
             Plan.uniform(4, 4)]      # the second duplicates a uniform seed: enqueued once
    for budget, finetune in ((1, 1), (3, 2), (7, 4), (12, 0)):
        space, calls, (est, _, ft, _), seeds = _fake_search("nsga2", budget=budget, finetune=finetune,
                                                             seed_plans=extra, population=4)
        assert len(est) == budget and len(ft) == min(finetune, budget)
    space, calls, (est, _, _, _), seeds = _fake_search("random", budget=10, seed_plans=extra)
    assert est[len(seeds)].digest() == space.plan_from(space.params_of(extra[0])).digest()
    assert sum(p.digest() == Plan.uniform(4, 4).digest() for p in est) <= 1


def test_joint_search_keeps_optuna_quiet():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        _fake_search("nsga2", budget=8, finetune=2)
        assert optuna.logging.get_verbosity() == optuna.logging.INFO       # restored afterwards
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_params_of_snaps_any_plan_into_the_space(lenet_topo):
    space = SearchSpace.from_topology(lenet_topo, sparsity=("none", "2:4"))
    plans = greedy_plans(lenet_topo.names, list(reversed(lenet_topo.names)), ladder=(4, 2))
    for p in plans:
        q = space.plan_from(space.params_of(p))
        assert plan_label(q, lenet_topo.names) == plan_label(p, lenet_topo.names)
    fp = space.plan_from(space.params_of(Plan.uniform(32, 32)))
    assert plan_label(fp, lenet_topo.names) == "|".join(["W8A8"] * 5)


@pytest.fixture
def captured_studies(monkeypatch):
    """Every Optuna study a search creates, for tests to inspect its trials."""
    import optuna
    studies = []
    create = optuna.create_study

    def capture(*a, **k):
        studies.append(create(*a, **k))
        return studies[-1]
    monkeypatch.setattr(optuna, "create_study", capture)
    return studies


def test_enqueued_seed_plans_form_nsga2_generation_zero(captured_studies):
    """Optuna's NSGA-II gives a trial its generation only when it samples; the search makes the
    enqueued seeds ask too, so they are generation 0 (the parents of generation 1)."""
    import optuna
    studies = captured_studies
    _, _, _, seeds = _fake_search("nsga2", budget=20, population=6)
    gens = [t.system_attrs.get("NSGAIISampler:generation") for t in studies[0].trials]
    assert gens[:len(seeds)] == [0] * len(seeds) and None not in gens and max(gens) >= 2
    assert studies[0].directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    assert isinstance(studies[0].sampler, optuna.samplers.NSGAIISampler)


def test_later_rounds_tell_the_study_the_fine_tuned_values(captured_studies):
    """From round 2 the fine-tuned plans are asked again (no budget) and told their fine-tuned
    accuracy (the fake fine-tune adds 0.05 to the estimate), so NSGA-II can keep them as parents."""
    studies = captured_studies
    space, calls, (est, est_evs, ft, ft_evs), _ = _fake_search("nsga2", budget=30, finetune=6)
    assert len(est) == 30
    tuned = {p.digest(): ev.val_accuracy for p, ev in zip(ft[:4], ft_evs[:4])}   # rounds 1 and 2
    told = {}
    for t in studies[0].trials:
        if t.values is not None:
            told.setdefault(space.plan_from(t.params).digest(), []).append(t.values[0])
    for d, acc in tuned.items():
        assert any(v == pytest.approx(acc) for v in told[d])
