"""Process-wide services shared by every browser session: the results store and the job runner."""
from __future__ import annotations

import threading

_lock = threading.Lock()
_store = None
_runner = None
_settings: dict = {}


def configure(store_path: str | None = None, workers: int | None = None, scheduler: str | None = None) -> None:
    """Set before the first session starts (``bitscape serve`` does this from its options)."""
    _settings.update(store_path=store_path, workers=workers, scheduler=scheduler)


def get_store():
    global _store
    with _lock:
        if _store is None:
            from engine.explore.store import Store
            _store = Store(_settings.get("store_path"))
        return _store


def get_runner():
    global _runner
    store = get_store()  # before taking the lock: get_store takes it too, and it is not reentrant
    with _lock:
        if _runner is None:
            from engine.explore.jobs import SERVER_WORKER_NICE, JobRunner
            _runner = JobRunner(workers=_settings.get("workers"), scheduler=_settings.get("scheduler"),
                                store=store, nice=SERVER_WORKER_NICE)
        return _runner


def shutdown() -> None:
    """Stop the job runner, its worker processes and the fork server they came from."""
    global _runner
    with _lock:
        if _runner is not None:
            _runner.shutdown()
            _runner = None
    from engine.explore.local_pool import stop_forkserver
    stop_forkserver()
