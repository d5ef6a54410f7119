"""Repeatability of mixed-plan timings (the ceiling of any prediction's rank correlation) and the
repeats' reduction (median or min) — bookkeeping on given numbers, no timing asserted."""
import time

import numpy as np
import pandas as pd
import pytest

from engine.benchmarks.cost import repeatability
from engine.cost.measure import MeasureError, calls_per_repeat, measure, time_rounds
from engine.plans.plan import Plan


def test_time_rounds_reduces_layer_times_by_the_chosen_stat():
    seq = iter([5.0, 1.0, 3.0, 9.0, 2.0, 7.0, 4.0])        # 2 warm-up runs, then 5 timed ones

    def point():
        return {"conv1": next(seq)}
    (layers, total, number), = time_rounds([point], repeats=5, warmup=2, stat="min")
    assert layers == {"conv1": 2.0} and total > 0 and number == 1
    seq = iter([5.0, 1.0, 3.0, 9.0, 2.0, 7.0, 4.0])
    (layers, _, _), = time_rounds([point], repeats=5, warmup=2, stat="median")
    assert layers == {"conv1": 4.0}


def test_min_time_averages_back_to_back_calls_after_an_untimed_one():
    calls = []

    def point():                   # 2 ms a call; its spans say which call it was
        calls.append(len(calls))
        time.sleep(0.002)
        return {"conv1": float(len(calls))}
    (layers, total, number), = time_rounds([point], repeats=2, warmup=1, stat="min", min_time=0.007)
    assert 2 <= number <= 4        # ceil(7 ms / a call of 2 ms or more)
    assert len(calls) == 1 + 3 + 2 * (1 + number)     # warm-up, autorange, per repeat one untimed + number
    first = 1 + 3 + 1              # the first repeat's timed calls are call numbers first+1 .. first+number
    assert layers["conv1"] == pytest.approx(first + (number + 1) / 2)      # mean of its spans, per call
    assert 0.002 <= total < 0.02   # seconds per call, not per repeat


def test_calls_per_repeat_is_one_without_min_time_and_capped():
    assert calls_per_repeat(lambda: {}, 0.0) == 1
    assert calls_per_repeat(lambda: {}, 5.0, cap=50) == 50


def test_measure_refuses_an_unknown_stat_and_a_bad_min_time():
    with pytest.raises(MeasureError, match="--stat"):
        measure("mlp", "digits", [Plan.uniform(8, 8)], ["packed"], random_weights=True, stat="mean")
    with pytest.raises(MeasureError, match="--min-time"):
        measure("mlp", "digits", [Plan.uniform(8, 8)], ["packed"], random_weights=True, min_time=-1)


def _frame(secs: dict, uniform=()):
    rows = [{"target": "packed", "plan_hash": h, "layer": "total", "seconds": s} for h, s in secs.items()]
    rows += [{"target": "packed", "plan_hash": h, "layer": "total", "seconds": 1.0} for h in uniform]
    rows += [{"target": "packed", "plan_hash": h, "layer": "fc1", "seconds": 9.0} for h in secs]
    return pd.DataFrame(rows)


class _Row:
    def __init__(self, h):
        self.plan_hash = h


def test_repeatability_ranks_the_two_runs_and_the_prediction():
    hs = [f"p{i}" for i in range(6)]
    run1 = dict(zip(hs, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    run2 = dict(zip(hs, [1.1, 1.9, 3.3, 3.9, 5.2, 6.1]))     # same order
    r = repeatability(_frame(run1, ["u"]), _frame(run2, ["u"]), "packed", {"u"},
                      [_Row(h) for h in reversed(hs)], np.arange(6.0))    # predicts the reverse order
    assert r["n"] == 6 and r["spearman"] == pytest.approx(1.0)
    assert r["prediction_vs_run2"] == pytest.approx(-1.0) and r["prediction_vs_mean"] == pytest.approx(-1.0)
    assert r["median_abs_diff"] == pytest.approx(np.median(np.abs(np.array(list(run1.values())) /
                                                                  np.array(list(run2.values())) - 1)))
    swapped = dict(run2, p0=6.5, p5=0.5)
    assert repeatability(_frame(run1), _frame(swapped), "packed", set())["spearman"] < 0.5
