import os
import signal
import time

import pytest

from engine.evaluation import Evaluation, Settings
from engine.explore.jobs import JobInfo, JobRunner
from engine.explore.store import Store
from engine.plans.plan import Plan

_SHARED = None


def shared_runner(store=None) -> JobRunner:
    """One warm two-worker local pool for the whole test session (cold workers cost seconds)."""
    global _SHARED
    if _SHARED is None:
        import atexit
        _SHARED = JobRunner(workers=2)
        atexit.register(_SHARED.shutdown)
    _SHARED.store = store
    return _SHARED


def _wait_running(runner, jid, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = runner.status(jid)
        if info.state == "running" and info.progress > 0.05:
            return info
        time.sleep(0.05)
    raise AssertionError(f"job never ran: {runner.status(jid)}")


@pytest.mark.slow
def test_local_pool_failures_do_not_stop_other_jobs(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    sid = store.create_session("t", "mlp", "digits", "bismo")
    with JobRunner(workers=2, store=store, profiles=["bismo"]) as runner:
        long = runner.submit("lenet5", "digits", Plan.uniform(4, 4), Settings(steps=5000), session=sid, label="long")
        bad = runner.submit("nosuchmodel", "digits", Plan.uniform(4, 4), Settings(steps=0), session=sid)
        info = _wait_running(runner, long)
        assert info.worker.startswith("pid ") and 0 < info.progress < 1 and "step" in info.message
        ok = runner.submit("mlp", "digits", Plan.uniform(4, 4), Settings(steps=10), session=sid, label="ok")
        os.kill(int(info.worker.split()[1]), signal.SIGKILL)
        killed = runner.wait(long, 60)
        assert killed.state == "failed" and "worker process died" in killed.error
        bad_info = runner.wait(bad, 60)
        # a job that cannot build its network ends as a failed point carrying the reason
        assert bad_info.state == "failed" and "nosuchmodel" in bad_info.error
        assert bad_info.result is not None and bad_info.result.status == "failed"
        done = runner.wait(ok, 60)
        assert done.state == "done", done
        ev = done.result
        assert isinstance(ev, Evaluation) and ev.status == "fine-tuned" and ev.key == done.key
        assert set(ev.costs["bismo"]) >= {"throughput", "latency_s", "energy_j", "size_bytes"}
        # a job after the crash runs on a replacement worker
        again = runner.wait(runner.submit("mlp", "digits", Plan.uniform(8, 8), Settings(steps=0), session=sid), 60)
        assert again.state == "done" and again.result.status == "estimated"
        assert {j.label for j in runner.jobs()} >= {"long", "ok"}
    assert {e.key for e in store.evaluations(session=sid)} == {bad_info.result.key, ev.key, again.result.key}


@pytest.mark.slow
def test_cancel_queued_and_running_jobs():
    with JobRunner(workers=1) as runner:
        a = runner.submit("lenet5", "digits", Plan.uniform(2, 2), Settings(steps=5000))
        b = runner.submit("mlp", "digits", Plan.uniform(2, 2), Settings(steps=10))
        assert runner.status(b).state == "queued"
        assert runner.cancel(b)
        assert runner.status(b).state == "cancelled"
        _wait_running(runner, a)
        t0 = time.monotonic()
        assert runner.cancel(a)
        info = runner.wait(a, 30)
        assert info.state == "cancelled" and time.monotonic() - t0 < 10
        assert not runner.cancel(a)
        # the worker survived the cooperative cancel and takes the next job
        c = runner.wait(runner.submit("mlp", "digits", Plan.uniform(2, 2), Settings(steps=0)), 60)
        assert c.state == "done"
        assert runner.status(b).state == "cancelled" and runner.status(b).started is None


def test_diverged_evaluation_marks_the_job_failed_and_is_stored():
    store = Store(":memory:")
    runner = JobRunner(workers=1, store=store)
    info = JobInfo(id="x", label=None, model="m", dataset="d")
    runner._jobs["x"] = info
    ev = Evaluation(plan=Plan.uniform(4, 4).to_dict(), model="m", dataset="d", settings=Settings().to_dict(),
                    status="failed", reason="Diverged: loss became nan at step 3")
    runner._finish(info, "done", result=ev.to_dict())
    got = runner.status("x")
    assert got.state == "failed" and "nan" in got.error and store.has(ev.key)
    runner.shutdown()


@pytest.mark.slow
def test_dask_cluster_runs_jobs_with_progress_and_cancel():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        store = Store(":memory:")
        with JobRunner(scheduler=cluster.scheduler_address, store=store) as runner:
            assert runner.kind == "dask"
            long = runner.submit("lenet5", "digits", Plan.uniform(4, 4), Settings(steps=5000))
            ok = runner.submit("mlp", "digits", Plan.uniform(4, 4), Settings(steps=10))
            bad = runner.submit("nosuchmodel", "digits", Plan.uniform(4, 4), Settings(steps=0))
            info = _wait_running(runner, long)
            assert info.worker.startswith("tcp://") and "step" in info.message
            assert runner.wait(ok, 60).state == "done"
            assert runner.wait(bad, 60).state == "failed"
            runner.cancel(long)
            assert runner.wait(long, 30).state == "cancelled"
            stored = {e.model: e.status for e in store.evaluations()}
            assert stored == {"mlp": "fine-tuned", "nosuchmodel": "failed"}


@pytest.mark.slow
def test_workers_run_at_the_asked_niceness_and_save_their_networks(tmp_path):
    import psutil

    from engine.models.artifacts import artifact_path
    from engine.models.checkpoint import load_planned
    with pytest.raises(Exception, match="nice must be between 0 and 19"):
        JobRunner(workers=1, nice=25)
    store = Store(tmp_path / "s.sqlite")
    with JobRunner(workers=1, store=store, nice=5) as runner:
        done = runner.wait(runner.submit("mlp", "digits", Plan.uniform(4, 4), Settings(steps=5)), 120)
        assert done.state == "done", done
        worker = psutil.Process(int(done.worker.split()[1]))
        assert worker.nice() == min(19, os.nice(0) + 5)
    saved = artifact_path(store.path, done.key)
    assert saved == tmp_path / "s.sqlite.artifacts" / f"{done.key}.safetensors"
    assert done.result.provenance["artifact"] == saved.name and store.get(done.key).provenance["artifact"] == saved.name
    _, meta = load_planned(saved)
    assert meta["evaluation"]["key"] == done.key and meta["model"] == "mlp"


@pytest.mark.slow
def test_stop_forkserver_waits_for_every_runner():
    import multiprocessing
    from multiprocessing import forkserver

    from engine.explore.local_pool import stop_forkserver
    with JobRunner(workers=1) as other:
        assert other.wait(other.submit("mlp", "digits", Plan.uniform(4, 4), Settings(steps=0)), 120).state == "done"
        pid = forkserver._forkserver._forkserver_pid
        stop_forkserver()          # another runner's worker still needs it: left running
        assert pid is not None and forkserver._forkserver._forkserver_pid == pid
        assert other.wait(other.submit("mlp", "digits", Plan.uniform(8, 8), Settings(steps=0)), 120).state == "done"
    stop_forkserver()
    # stopped, unless a runner of another test in this process still has live workers
    assert forkserver._forkserver._forkserver_pid is None or multiprocessing.active_children()


def test_a_scheduler_without_dask_installed_is_a_clear_refusal(monkeypatch):
    """Dask is the 'cluster' extra: without it, --scheduler says what to install."""
    import sys

    from engine.errors import UserError
    from engine.explore.jobs import JobRunner
    monkeypatch.setitem(sys.modules, "distributed", None)  # what an install without the extra looks like
    with pytest.raises(UserError, match=r"bitscape\[cluster\]"):
        JobRunner(scheduler="tcp://127.0.0.1:1")
