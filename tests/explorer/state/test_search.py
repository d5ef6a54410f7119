"""A search launched from the workspace: points stream in, the hypervolume history, cancel."""
import time

import numpy as np
import pytest

from engine.explore.sweep import frontier_of, hypervolume_of

TINY = dict(method="nsga2", budget=6, finetune=1, steps=20)


def drive(ws, until, timeout=600.0, log=None):
    """Poll the workspace as the dashboard does until ``until()``; record what the workspace holds."""
    end = time.time() + timeout
    while time.time() < end:
        ws.poll()
        if log is not None:
            log.append((len(ws.points), ws.search.job.finished, ws.search.job.done))
        if until():
            return
        time.sleep(0.2)
    raise AssertionError(f"search did not get there in time: {ws.search.status} {ws.search.message}")


def test_points_stream_in_and_the_hypervolume_history_matches_the_sweep(workspace, services):
    store, runner = services
    ws = workspace
    s = ws.search
    s.param.update(**TINY)
    assert "6 estimates (no training), then 1 fine-tune of 20 steps on lenet5/digits" in s.plan_text
    seen = []       # what the workspace held each time its points changed, and whether the sweep had ended
    ws.param.watch(lambda e: seen.append((len(e.new), s.job.finished)), ["points"])
    assert s.start()
    assert s.running and s.status == "running" and s.total == 7
    assert not s.start() and "already running" in s.message
    drive(ws, lambda: not s.running)
    assert s.status == "done", s.message
    res = s.job.result
    assert len(res.points) == 7 and s.done == 7
    # streamed: the workspace showed points while the sweep was still running, a few at a time
    during = [n for n, finished in seen if not finished]
    assert during and 0 < min(during) < 7 and len(set(during)) >= 3, seen
    assert set(res.points.key) <= set(ws.points.key)
    # the points went to the workspace's session
    assert set(res.points.key) <= {e.key for e in store.evaluations(session=ws.ensure_session())}

    hist = s.hv_history
    assert list(hist.evaluations) == list(range(1, 8))
    # each front's hypervolume only grows as points land
    for col in ("hv_estimates", "hv_finetuned"):
        assert (np.diff(hist[col].to_numpy(dtype=float)) >= -1e-9).all(), hist
    # the last value is the sweep's own figure: hypervolume_of its final front
    assert res.hypervolume is not None and res.hypervolume > 0
    assert hist.hv.iloc[-1] == pytest.approx(hypervolume_of(frontier_of(res.points), res.ref))
    assert hist.hv.iloc[-1] == pytest.approx(res.hypervolume)
    assert hist.hv_finetuned.iloc[-1] == pytest.approx(res.hypervolume)
    assert "done: 7 points" in s.message and all(j.done for j in runner.jobs())
    # the next search's time is judged from these 7
    assert "of worker time, judged from 7 past evaluations of this model" in s.plan_text


def test_cancel_mid_run_stops_the_search_and_leaves_no_jobs(workspace, services):
    store, runner = services
    ws = workspace
    s = ws.search
    s.param.update(method="random", budget=12, finetune=2, steps=20)
    assert s.start()
    drive(ws, lambda: s.done >= 2)
    assert s.cancel()
    drive(ws, lambda: not s.running, timeout=120)
    assert s.status == "cancelled", s.message
    assert "cancelled" in s.message
    mine = [j for j in runner.jobs() if j.session == ws.ensure_session()]
    assert mine and all(j.state in ("done", "failed", "cancelled") for j in mine)
    assert not [j for j in runner.jobs() if j.state in ("queued", "running")]
    assert s.done < 14 and len(ws.points) == s.done
    # nothing more lands after the cancel
    n = len(store.evaluations(session=ws.ensure_session()))
    time.sleep(1.0)
    ws.poll()
    assert len(store.evaluations(session=ws.ensure_session())) == n and not s.running
    assert not s.cancel() and "no search is running" in s.message
    # and a new search can start afterwards
    s.param.update(method="greedy", budget=2, finetune=0)
    assert "2 points of the greedy path, estimated" in s.plan_text
    assert s.start()
    drive(ws, lambda: not s.running)
    assert s.status == "done", s.message


def test_a_search_that_cannot_run_says_why_in_one_line(workspace, monkeypatch):
    ws = workspace
    s = ws.search
    ws.read_only = True
    assert not s.start() and "read-only" in s.message
    ws.read_only = False
    import engine.models.baselines

    def missing(*a, **k):
        raise engine.models.baselines.UserError("no trained baseline for lenet5 on digits: run train-baseline")
    monkeypatch.setattr(engine.models.baselines, "load_baseline", missing)
    s.param.update(**TINY)
    assert s.start()
    drive(ws, lambda: not s.running, timeout=120)
    assert s.status == "failed"
    assert s.message == "failed: no trained baseline for lenet5 on digits: run train-baseline"
    assert "Traceback" not in s.message and "\n" not in s.message


def test_a_workspace_opens_no_store_until_a_view_or_a_search_needs_it(monkeypatch):
    """``Workspace()`` alone (the dashboard benchmark's) must not open the user's default store."""
    from explorer.state import services
    from explorer.state.workspace import Workspace

    def no(*a, **k):
        raise AssertionError("the default store was opened")
    monkeypatch.setattr(services, "get_store", no)
    ws = Workspace()
    ws.search.param.update(budget=10, finetune=3)
    assert ws.search.plan_text.startswith("10 estimates (no training), then 3 fine-tunes of 150 steps")
    assert "worker time" not in ws.search.plan_text
