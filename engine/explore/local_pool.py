"""The local pool behind ``JobRunner()``: long-lived worker processes forked from a fork server,
one torch thread each; a worker that dies is replaced and only its job fails."""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time

from engine.explore.jobs import CANCEL_GRACE_S, PROGRESS_EVERY_S, JobInfo, JobRunner, _reason, execute


def _lower_priority(increment: int) -> None:
    """Raise this process's niceness by ``increment`` (best effort: some platforms refuse)."""
    if increment > 0 and hasattr(os, "nice"):
        try:
            os.nice(increment)
        except OSError:
            pass


def _worker_main(tasks, events, cancel_seq, nice: int = 0) -> None:
    """A local worker process: run tasks until told to stop (None)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole group: the runner stops us
    _lower_priority(nice)
    import torch
    torch.set_num_threads(1)
    try:
        import engine.explore.pipeline  # noqa: F401  (import torch and the engine before the first job)
    except Exception:
        pass
    events.put(("ready", None, os.getpid()))
    from engine.training.finetune import Cancelled
    while True:
        payload = tasks.get()
        if payload is None:
            return
        jid, seq = payload["id"], payload["seq"]
        events.put(("started", jid, os.getpid()))
        last = [0.0]

        def progress(frac, msg, jid=jid, last=last):
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S or frac >= 1.0:
                last[0] = now
                events.put(("progress", jid, (float(frac), str(msg))))

        def should_stop(seq=seq):
            return cancel_seq.value == seq
        try:
            if cancel_seq.value == seq:
                raise Cancelled("cancelled")
            events.put(("done", jid, execute(payload, progress, should_stop)))
        except Cancelled:
            events.put(("cancelled", jid, None))
        except BaseException as e:
            events.put(("error", jid, _reason(e)))


class _Slot:
    def __init__(self, ctx, events, nice: int = 0):
        self.tasks = ctx.Queue()
        self.cancel = ctx.Value("q", 0, lock=False)
        self.proc = ctx.Process(target=_worker_main, args=(self.tasks, events, self.cancel, nice), daemon=True)
        self.proc.start()
        self.job: str | None = None
        self.cancel_at: float | None = None


def _context():
    """forkserver (the server imports torch and the engine once; each worker forks from it) where
    available, else spawn. Never plain fork: the parent may hold threads and torch state."""
    try:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["engine.explore.pipeline"])
        return ctx
    except ValueError:
        return mp.get_context("spawn")


def stop_forkserver() -> None:
    """Stop multiprocessing's fork server if this process started one (after every runner has shut
    down): it would otherwise live until this process exits, and a server stopping by signal must
    leave no process behind. The standard library has no public call for this. Left running while
    any worker of this process is alive: a worker outlives its fork server but reads as dead then."""
    from multiprocessing import forkserver
    if mp.active_children():
        return
    server = getattr(forkserver, "_forkserver", None)
    stop = getattr(server, "_stop", None)
    if stop is not None:
        try:
            stop()
        except OSError:
            pass


class LocalBackend:
    kind = "local"

    def __init__(self, runner: JobRunner, workers: int):
        self.r = runner
        self.n = workers
        self.ctx = _context()
        self.events = None
        self.slots: list[_Slot] = []
        self.pending: list[str] = []
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _ensure_started(self) -> None:
        if self.thread is None:
            self.events = self.ctx.Queue()
            self.thread = threading.Thread(target=self._loop, name="bitscape-jobs", daemon=True)
            self.thread.start()

    def submit(self, info: JobInfo, payload: dict) -> None:
        self._ensure_started()
        self.pending.append(info.id)

    def cancel(self, info: JobInfo) -> bool:
        if info.id in self.pending:
            self.pending.remove(info.id)
            self.r._finish(info, "cancelled", message="cancelled before it started")
            return True
        for slot in self.slots:
            if slot.job == info.id:
                slot.cancel.value = self.r._payloads[info.id]["seq"]
                slot.cancel_at = time.monotonic()
                info.message = "cancelling"
                return True
        return False

    def _loop(self) -> None:
        while not self.stop.is_set():
            self._drain(0.05)
            with self.r._lock:
                self._reap()
                self._assign()

    def _drain(self, timeout: float) -> None:
        try:
            ev = self.events.get(timeout=timeout)
        except (queue.Empty, OSError, EOFError):
            return
        while True:
            self._handle(ev)
            try:
                ev = self.events.get_nowait()
            except (queue.Empty, OSError, EOFError):
                return

    def _slot_of(self, jid):
        for s in self.slots:
            if s.job == jid:
                return s
        return None

    def _handle(self, event) -> None:
        kind, jid, data = event
        if kind == "ready":
            return
        if kind == "started":
            self.r._started(jid, f"pid {data}")
            return
        if kind == "progress":
            self.r._progress(jid, *data)
            return
        with self.r._lock:
            info = self.r._jobs.get(jid)
            slot = self._slot_of(jid)
            if slot is not None:
                slot.job, slot.cancel_at = None, None
            if info is None:
                return
            if kind == "done":
                self.r._finish(info, "done", result=data)
            elif kind == "cancelled":
                self.r._finish(info, "cancelled", message="cancelled while running")
            else:
                self.r._finish(info, "failed", error=data)

    def _reap(self) -> None:
        for i, slot in enumerate(self.slots):
            dead = not slot.proc.is_alive()
            overdue = slot.job is not None and slot.cancel_at is not None and \
                time.monotonic() - slot.cancel_at > CANCEL_GRACE_S
            if not dead and not overdue:
                continue
            if dead:
                self._drain(0.2)   # the worker may have reported before it exited
                if slot.job is None and self.r._closed:
                    continue
            else:
                slot.proc.terminate()
            slot.proc.join(5)
            if slot.proc.is_alive():
                slot.proc.kill()
                slot.proc.join(5)
            jid, code = slot.job, slot.proc.exitcode
            if jid is not None:
                info = self.r._jobs.get(jid)
                if info is not None:
                    if overdue and not dead:
                        self.r._finish(info, "cancelled", message="cancelled (worker stopped)")
                    else:
                        self.r._finish(info, "failed", error=f"worker process died (exit code {code})")
            _close_queue(slot.tasks)
            self.slots[i] = None
        self.slots = [s for s in self.slots if s is not None]

    def _assign(self) -> None:
        while self.pending and not self.r._closed:
            slot = next((s for s in self.slots if s.job is None), None)
            if slot is None:
                if len(self.slots) >= self.n:
                    return
                slot = _Slot(self.ctx, self.events, self.r.nice)
                self.slots.append(slot)
            jid = self.pending.pop(0)
            slot.job, slot.cancel_at = jid, None
            slot.tasks.put(self.r._payloads[jid])

    def shutdown(self) -> None:
        if self.thread is None:
            return
        with self.r._lock:
            self.pending.clear()
            for slot in self.slots:
                if slot.job is not None:
                    slot.cancel.value = self.r._payloads.get(slot.job, {}).get("seq", -1)
                try:
                    slot.tasks.put(None)
                except (OSError, ValueError):
                    pass
        end = time.monotonic() + CANCEL_GRACE_S
        for slot in list(self.slots):
            slot.proc.join(max(0.1, end - time.monotonic()))
        self.stop.set()
        self.thread.join(5)
        self._drain(0.05)
        for slot in self.slots:
            if slot.proc.is_alive():
                slot.proc.terminate()
                slot.proc.join(5)
            if slot.proc.is_alive():
                slot.proc.kill()
                slot.proc.join(5)
            with self.r._lock:
                if slot.job is not None and slot.job in self.r._jobs:
                    self.r._finish(self.r._jobs[slot.job], "cancelled", message="runner shut down")
            _close_queue(slot.tasks)
        self.slots = []
        _close_queue(self.events)


def _close_queue(q) -> None:
    try:
        q.close()
        q.join_thread()
    except Exception:
        pass
