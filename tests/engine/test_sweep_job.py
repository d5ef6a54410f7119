"""The sweep's hooks for callers (each point as it lands, stop on request) and SweepJob's planning."""
import pytest

from engine.evaluation import Evaluation
from engine.explore.store import Store
from engine.explore.sweep import SweepCancelled, run_sweep
from engine.explore.sweep_job import planned_runs, worker_seconds
from tests.engine.test_jobs import shared_runner

KW = dict(budget=6, finetune=1, steps=10, seed=3, population=3)


def test_planned_runs():
    assert planned_runs("nsga2", 24, 2, 5) == (24, 2)
    assert planned_runs("random", 3, 5, 5) == (3, 3)
    assert planned_runs("greedy", 24, 2, 5) == (0, 11)     # the whole 8 -> 4 -> 2 path, each fine-tuned
    assert planned_runs("greedy", 3, 0, 5) == (3, 0)
    with pytest.raises(ValueError, match="unknown search method"):
        planned_runs("annealing", 3, 0, 5)


def _ev(steps, wall, status="estimated", seed=0):
    return Evaluation(plan={"layers": {}}, model="m", dataset="d", settings={"steps": steps, "seed": seed},
                      status=status, steps=steps, wall_s=wall)


def test_worker_seconds_from_past_wall_times():
    past = [_ev(0, 2.0, seed=1), _ev(0, 4.0, seed=2), _ev(0, 3.0, seed=3), _ev(100, 13.0, "fine-tuned"),
            _ev(0, 999.0, "failed")]
    # median estimate 3 s; fine-tunes (13 - 3) / 100 = 0.1 s a step
    assert worker_seconds(past, 10, 2, 50) == pytest.approx(10 * 3 + 2 * (3 + 50 * 0.1))
    assert worker_seconds(past[:3], 10, 0, 50) == pytest.approx(30)
    assert worker_seconds(past[:3], 10, 2, 50) is None       # no fine-tune to judge from
    assert worker_seconds([], 1, 0, 0) is None


@pytest.mark.slow
def test_each_point_reaches_on_evaluation_as_it_lands():
    store = Store(":memory:")
    seen = []
    res = run_sweep("mlp", "digits", "bismo", store=store, runner=shared_runner(store),
                    on_evaluation=lambda ev, row: seen.append((ev.key, row["phase"], row["status"])), **KW)
    # once each, in the order they finish (the table is in the order they were asked for)
    assert len(seen) == len(res.points) == 7
    assert {k: (p, s) for k, p, s in seen} == {r.key: (r.phase, r.status) for r in res.points.itertuples()}


@pytest.mark.slow
def test_should_stop_cancels_in_flight_jobs_and_submits_nothing_more():
    store = Store(":memory:")
    runner = shared_runner(store)
    sid = store.create_session("stopped", "mlp", "digits", "bismo")
    seen = []
    with pytest.raises(SweepCancelled, match="cancelled after"):
        run_sweep("mlp", "digits", "bismo", store=store, runner=runner, method="random", session=sid,
                  on_evaluation=lambda ev, row: seen.append(ev.key), should_stop=lambda: len(seen) >= 2,
                  **{**KW, "budget": 12, "population": 8})
    assert len(seen) >= 2
    mine = [j for j in runner.jobs() if j.session == sid]
    assert mine and all(j.done for j in mine)      # nothing of it left queued or running
    # every job either landed (and was reported) or was cancelled in flight; which of the two depends
    # on how fast the workers were, so a run where all had landed before the stop cancels none
    for j in mine:
        assert j.state == "cancelled" or (j.state == "done" and j.key in seen), (j.state, j.key)
    assert len(mine) < 12 and len(store.evaluations(session=sid)) == len(seen)
