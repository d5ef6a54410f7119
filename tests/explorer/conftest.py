import pytest


@pytest.fixture
def services(tmp_path):
    """A real SQLite store and a real local job runner (one worker process)."""
    from engine.explore.jobs import JobRunner
    from engine.explore.store import Store
    store = Store(tmp_path / "store.sqlite")
    runner = JobRunner(workers=1, store=store)
    yield store, runner
    runner.shutdown()


@pytest.fixture
def workspace(services):
    from explorer.state.workspace import Workspace
    store, runner = services
    return Workspace(store=store, runner=runner)


def wait_jobs(ws, timeout=240.0):
    import time
    end = time.time() + timeout
    while time.time() < end:
        ws.poll()
        if not ws.busy:
            return
        time.sleep(0.2)
    raise AssertionError(f"jobs still running: {ws.jobs}")
