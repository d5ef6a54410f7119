"""The Dask backend behind ``JobRunner(scheduler="tcp://HOST:PORT")``: jobs on an existing
distributed cluster, progress as worker events, cancellation through a Dask Event."""
from __future__ import annotations

import time
from typing import Any

from engine.errors import UserError
from engine.explore.jobs import PROGRESS_EVERY_S, JobInfo, JobRunner, _reason, execute

_TOPIC = "bitscape-jobs"


def _dask_task(payload: dict) -> dict:
    """Runs on a Dask worker: progress as worker events, cancellation through a Dask Event."""
    from distributed import Event, get_worker

    from engine.training.finetune import Cancelled
    worker = get_worker()
    jid = payload["id"]
    worker.log_event(_TOPIC, {"id": jid, "kind": "started", "worker": worker.address})
    last = [0.0]

    def progress(frac, msg):
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or frac >= 1.0:
            last[0] = now
            worker.log_event(_TOPIC, {"id": jid, "kind": "progress", "frac": float(frac), "msg": str(msg)})

    checked = [0.0, False]
    stop_event = Event(f"bitscape-cancel-{jid}")

    def should_stop():
        now = time.monotonic()
        if now - checked[0] >= 0.5:
            checked[0] = now
            try:
                checked[1] = stop_event.is_set()
            except Exception:
                pass
        return checked[1]
    if should_stop():
        raise Cancelled("cancelled")
    return execute(payload, progress, should_stop)


class DaskBackend:
    kind = "dask"

    def __init__(self, runner: JobRunner, address: str | None, client=None):
        try:
            from distributed import Client
        except ImportError:
            raise UserError("jobs on a Dask cluster need Dask: pip install 'bitscape[cluster]'") from None
        self.r = runner
        self.own = client is None
        if client is None:
            if not address.startswith(("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")):
                raise UserError(f"scheduler {address!r} must be an address such as tcp://HOST:PORT")
            try:
                client = Client(address, timeout=10, set_as_default=False)
            except (OSError, TimeoutError) as e:
                raise UserError(f"cannot reach the Dask scheduler at {address}: {e}") from None
        self.client = client
        self.futures: dict[str, Any] = {}
        self.client.subscribe_topic(_TOPIC, self._on_event)

    def _on_event(self, event) -> None:
        _, msg = event
        if not isinstance(msg, dict):
            return
        if msg.get("kind") == "started":
            self.r._started(msg["id"], msg.get("worker", "dask"))
        elif msg.get("kind") == "progress":
            self.r._progress(msg["id"], msg.get("frac", 0.0), msg.get("msg", ""))

    def submit(self, info: JobInfo, payload: dict) -> None:
        fut = self.client.submit(_dask_task, payload, key=f"bitscape-{info.id}", pure=False, retries=0)
        self.futures[info.id] = fut
        fut.add_done_callback(lambda f, jid=info.id: self._done(jid, f))

    def _done(self, jid: str, fut) -> None:
        info = self.r._jobs.get(jid)
        if info is None:
            return
        try:
            if fut.status == "cancelled":
                self.r._finish(info, "cancelled", message="cancelled")
            elif fut.status == "error":
                exc = fut.exception()
                if type(exc).__name__ == "Cancelled":
                    self.r._finish(info, "cancelled", message="cancelled while running")
                else:
                    self.r._finish(info, "failed", error=_reason(exc) if exc else "failed")
            else:
                self.r._finish(info, "done", result=fut.result())
        except Exception as e:
            self.r._finish(info, "failed", error=f"{type(e).__name__}: {e}")
        finally:
            self.futures.pop(jid, None)

    def cancel(self, info: JobInfo) -> bool:
        from distributed import Event
        fut = self.futures.get(info.id)
        try:
            Event(f"bitscape-cancel-{info.id}", client=self.client).set()
        except Exception:
            pass
        if info.state == "queued" and fut is not None:
            fut.cancel()
            self.r._finish(info, "cancelled", message="cancelled before it started")
            return True
        info.message = "cancelling"
        return True

    def shutdown(self) -> None:
        for fut in list(self.futures.values()):
            try:
                fut.cancel()
            except Exception:
                pass
        try:
            self.client.unsubscribe_topic(_TOPIC)
        except Exception:
            pass
        if self.own:
            self.client.close()
