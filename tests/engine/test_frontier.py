"""Frontier: Pareto sets, hypervolume (checked against brute force), knee, status filtering."""
import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.explore.frontier import frontier, hypervolume, knee, pareto, pareto_mask


def _dominates(p, q, maximize):
    s = np.where(maximize, 1, -1)
    p, q = np.asarray(p) * s, np.asarray(q) * s
    return bool(np.all(p >= q) and np.any(p > q))


points2 = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=0, max_size=40)
points3 = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6)), min_size=0, max_size=25)


@settings(max_examples=60, deadline=None)
@given(pts=st.one_of(points2, points3), flip=st.booleans())
def test_pareto_mask_keeps_exactly_the_nondominated(pts, flip):
    if not pts:
        assert pareto_mask(np.zeros((0, 2)), [True, True]).size == 0
        return
    v = np.array(pts, dtype=float)
    maximize = [True, not flip] + ([False] if v.shape[1] == 3 else [])
    mask = pareto_mask(v, maximize)
    for i in range(len(v)):
        dominated = any(_dominates(v[j], v[i], maximize) for j in range(len(v)))
        assert mask[i] == (not dominated)


def _grid_hv(pts, ref):
    """Brute force for integer points, maximisation, ref below every point: count unit cells."""
    pts = [p for p in pts if all(x > r for x, r in zip(p, ref))]
    if not pts:
        return 0
    hi = np.max(pts, axis=0)
    count = 0
    for cell in itertools.product(*[range(r, h) for r, h in zip(ref, hi)]):
        if any(all(c < x for c, x in zip(cell, p)) for p in pts):
            count += 1
    return count


@settings(max_examples=60, deadline=None)
@given(pts=st.one_of(points2, points3))
def test_hypervolume_exact_against_brute_force(pts):
    d = len(pts[0]) if pts else 2
    ref = (0,) * d
    v = np.array(pts, dtype=float).reshape(-1, d)
    hv = hypervolume(v, ref, [True] * d)
    assert hv == _grid_hv(pts, ref)
    if len(v):  # the front alone has the same hypervolume
        assert hypervolume(v[pareto_mask(v, [True] * d)], ref, [True] * d) == hv


def test_hypervolume_minimised_objectives_and_dataframe():
    assert hypervolume(np.array([[1, 3], [2, 1]]), (4, 4), (False, False)) == 7
    df = pd.DataFrame({"throughput": [1, 2, 3], "accuracy": [0.9, 0.85, 0.5], "size_bytes": [10, 20, 5]})
    assert hypervolume(df, (0, 0), columns=["throughput", "accuracy"]) == pytest.approx(2.25)
    # third objective minimised, sliced along size: [5, 10) only (3, .5); [10, 20) adds (1, .9); [20, 30) all
    hv3 = hypervolume(df, (0, 0, 30), columns=["throughput", "accuracy", "size_bytes"])
    assert hv3 == pytest.approx(1.5 * 5 + (0.9 + 2 * 0.5) * 10 + 2.25 * 10)


def _points():
    return [
        {"id": "a", "throughput": 100, "accuracy": 0.95, "size_bytes": 400, "status": "fine-tuned"},
        {"id": "b", "throughput": 400, "accuracy": 0.93, "size_bytes": 200, "status": "fine-tuned"},
        {"id": "c", "throughput": 900, "accuracy": 0.70, "size_bytes": 100, "status": "fine-tuned"},
        {"id": "d", "throughput": 500, "accuracy": 0.94, "size_bytes": 150, "status": "estimated"},
        {"id": "e", "throughput": 2000, "accuracy": 0.99, "size_bytes": 10, "status": "failed"},
        {"id": "f", "throughput": 300, "accuracy": 0.80, "size_bytes": 500, "status": "fine_tuned"},
        {"id": "g", "throughput": float("nan"), "accuracy": 0.9, "size_bytes": 1, "status": "estimated"},
    ]


def test_pareto_status_and_failed_points():
    front = pareto(_points())
    assert front["id"].tolist() == ["a", "d", "c"]            # failed 'e' never enters
    fine = pareto(pd.DataFrame(_points()), only_finetuned=True)
    assert fine["id"].tolist() == ["a", "b", "c"]
    assert list(fine.index) == [0, 1, 2]                       # rows map back to the points
    three = pareto(_points(), z="size_bytes")
    assert set(three["id"]) == {"a", "c", "d"}               # d beats b on all three


def test_knee_is_the_corner():
    front = pareto(_points(), only_finetuned=True)
    assert front.loc[knee(front), "id"] == "b"
    assert knee(pd.DataFrame(columns=["throughput", "accuracy"])) is None
    out = frontier(_points(), ref=(0, 0), only_finetuned=True)
    assert out["knee"] == knee(front)
    assert out["hypervolume"] == pytest.approx(100 * 0.95 + 300 * 0.93 + 500 * 0.70)
    tri = frontier(_points(), z="size_bytes", ref=(0, 0, 1000))
    assert tri["knee"] in tri["front"].index


def test_pareto_errors():
    with pytest.raises(ValueError, match="no column 'speed'"):
        pareto(_points(), x="speed")
    with pytest.raises(ValueError, match="maximise"):
        pareto([{"a": 1, "b": 2}], x="a", y="b")
    assert pareto([{"a": 1, "b": 2}], x="a", y="b", maximize=(True, True)).shape[0] == 1
