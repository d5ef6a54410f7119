"""Jobs: one interface to evaluate plans in the background, locally or on a Dask cluster.

``JobRunner()`` runs jobs on a pool of long-lived local worker processes (spawn context, one
torch thread each; a worker that dies is replaced and only its job fails). With
``scheduler="tcp://HOST:PORT"`` jobs run on an existing Dask distributed cluster instead.
Either way the worker calls ``engine.explore.pipeline.evaluate_plan``; progress flows back to the
runner (a multiprocessing queue, or Dask worker events) and ``status()`` reads it without
blocking. Finished Evaluations (fine-tuned, estimated or failed with their reason) are
written to the Store by the runner, attached to the job's session; with a store file, the
worker also saves the network it evaluated beside it (engine.models.artifacts), for downloads.
``nice`` lowers the local workers' CPU priority (``bitscape serve`` uses SERVER_WORKER_NICE).
The two backends live in ``local_pool`` and ``dask_pool``; this module is the runner and the job.
"""
from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any

from engine.errors import USER_ERRORS, UserError
from engine.evaluation import Evaluation, Settings, code_version
from engine.plans.plan import Plan

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")
CANCEL_GRACE_S = 3.0
PROGRESS_EVERY_S = 0.2
# The niceness `bitscape serve` gives its local workers: the interactive server (and the user's
# browser) come first, so an edit is not queued behind two fine-tunes on a small machine, while
# the jobs still get a tenth of a core against a busy normal-priority process (at 19 they all but
# stop on a shared machine). Batch use (sweeps, tests) keeps the default 0.
SERVER_WORKER_NICE = 10


@dataclass
class JobInfo:
    id: str
    label: str | None
    model: str
    dataset: str
    state: str = "queued"
    progress: float = 0.0
    message: str = ""
    result: Evaluation | None = None
    error: str | None = None
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    key: str | None = None          # the Evaluation's cache key (known at submit time)
    session: str | None = None
    worker: str | None = None       # "pid 1234" or a Dask worker address

    @property
    def done(self) -> bool:
        return self.state in FINAL


# ---- the work itself (runs in a worker) ------------------------------------------------------
_CACHE: dict[tuple[str, str], tuple[Any, Any]] = {}
_CACHE_LOCK = threading.Lock()


def _baseline_and_data(model: str, dataset: str):
    with _CACHE_LOCK:
        hit = _CACHE.get((model, dataset))
        if hit is None:
            from engine.models.baselines import load_baseline
            from engine.models.data import load_dataset
            data = load_dataset(dataset)
            hit = (load_baseline(model, dataset, data), data)
            if len(_CACHE) >= 4:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[(model, dataset)] = hit
        return hit


def cost_summaries(topology, configs, profiles) -> dict[str, dict]:
    """{profile: throughput, latency_s, energy_j, size_bytes, bops, macs, batch} for a resolved plan."""
    from engine.cost import cost_topology
    out = {}
    for p in profiles:
        r = cost_topology(topology, configs, p)
        out[r.profile] = {"throughput": r.throughput, "latency_s": r.latency_s, "energy_j": r.energy_j,
                          "size_bytes": r.size_bytes, "bops": r.bops, "macs": r.macs, "batch": r.batch}
    return out


def execute(payload: dict, progress=None, should_stop=None) -> dict:
    """Evaluate one job's plan and return the Evaluation as a dict (plain data crosses processes)."""
    import torch
    torch.set_num_threads(1)
    from engine.explore.pipeline import evaluate_plan
    plan = Plan.from_dict(payload["plan"])
    settings = Settings.from_dict(payload["settings"])
    model, dataset = payload["model"], payload["dataset"]
    from engine.models.zoo import trusted_references
    with trusted_references(*payload.get("allow", ())):
        try:
            baseline, data = _baseline_and_data(model, dataset)
        except USER_ERRORS:   # no baseline or no data: evaluate_plan meets the same error and records a failed point
            baseline, data = None, None
        run = evaluate_plan(model, dataset, plan, settings, progress=progress, should_stop=should_stop,
                            baseline=baseline, data=data)
    ev = run.evaluation
    # the key is the one the submitter computed: same code version on both sides
    if payload.get("code_version") and ev.provenance.get("code_version") != payload["code_version"]:
        ev.provenance["worker_code_version"] = ev.provenance.get("code_version")
        ev.provenance["code_version"] = payload["code_version"]
    if payload.get("profiles") and ev.status != "failed" and run.applied is not None:
        try:
            ev.costs.update(cost_summaries(run.applied.topology, run.applied.configs, payload["profiles"]))
        except Exception as e:  # a cost failure does not lose the accuracy result
            ev.provenance["cost_error"] = f"{type(e).__name__}: {e}"
    if payload.get("artifacts") and ev.status != "failed" and run.applied is not None:
        _save_network(run, payload["artifacts"])
    return ev.to_dict()


def _allowed_refs(model: str, dataset: str) -> list[str]:
    """The code references of a job that the submitting process trusts, passed to its worker: a
    worker forks from a server started before a later ``allow_reference`` and would refuse them."""
    from engine.models.zoo import is_allowed, is_reference
    return [r for r in (model, dataset) if is_reference(r) and is_allowed(r)]


def _save_network(run, folder: str) -> None:
    """Save the evaluated network as ``<folder>/<key>.safetensors`` so downloads need no retraining;
    the file name goes into the provenance (a failure to save is recorded, not raised)."""
    from pathlib import Path

    from engine.models.checkpoint import save_planned
    ev = run.evaluation
    name = f"{ev.key}.safetensors"
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_planned(run, Path(folder) / name)
        ev.provenance["artifact"] = name
    except Exception as e:
        ev.provenance["artifact_error"] = f"{type(e).__name__}: {e}"


def _reason(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


# ---- the runner ------------------------------------------------------------------------------
class JobRunner:
    """Submit evaluations, watch status and progress, cancel, get results."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None, store=None, client=None,
                 profiles: list[str] | tuple[str, ...] | None = None, nice: int = 0):
        """``nice``: how much lower than this process the local workers run (0-19)."""
        if workers is not None and workers < 1:
            raise UserError("workers must be at least 1")
        if not 0 <= nice <= 19:
            raise UserError(f"nice must be between 0 and 19, got {nice}")
        self.nice = nice
        self.store = store
        self.profiles = list(profiles or [])
        self._jobs: dict[str, JobInfo] = {}
        self._payloads: dict[str, dict] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._seq = itertools.count(1)
        self._closed = False
        scheduler = scheduler or os.environ.get("BITSCAPE_SCHEDULER") or None
        if client is not None or scheduler:
            from engine.explore.dask_pool import DaskBackend
            self._backend = DaskBackend(self, scheduler, client)
        else:
            from engine.explore.local_pool import LocalBackend
            self._backend = LocalBackend(self, workers or os.cpu_count() or 1)

    @property
    def kind(self) -> str:
        return self._backend.kind

    # ---- public API ----------------------------------------------------------------------
    def submit(self, model: str, dataset: str, plan: Plan, settings: Settings, session: str | None = None,
               label: str | None = None, profiles: list[str] | None = None) -> str:
        if self._closed:
            raise RuntimeError("this JobRunner has been shut down")
        if isinstance(plan, dict):
            plan = Plan.from_dict(plan)
        if isinstance(settings, dict):
            settings = Settings.from_dict(settings)
        jid = secrets.token_hex(8)
        version = code_version()
        payload = {"id": jid, "seq": next(self._seq), "model": model, "dataset": dataset, "plan": plan.to_dict(),
                   "settings": settings.to_dict(), "code_version": version,
                   "profiles": list(profiles if profiles is not None else self.profiles),
                   "artifacts": self._artifacts_dir(), "allow": _allowed_refs(model, dataset)}
        from engine.evaluation import evaluation_key
        info = JobInfo(id=jid, label=label, model=model, dataset=dataset, session=session,
                       key=evaluation_key(payload["plan"], model, dataset, payload["settings"], version))
        with self._lock:
            self._jobs[jid] = info
            self._payloads[jid] = payload
            self._backend.submit(info, payload)
            self._changed.notify_all()
        return jid

    def _artifacts_dir(self) -> str | None:
        """Where workers save the networks they evaluate: beside the store file. None without a store,
        and on a Dask cluster, whose workers may not share this machine's disk."""
        from engine.models.artifacts import artifacts_dir
        if self.store is None or self.kind != "local":
            return None
        folder = artifacts_dir(getattr(self.store, "path", None))
        return str(folder) if folder is not None else None

    def status(self, job_id: str) -> JobInfo:
        with self._lock:
            info = self._jobs.get(job_id)
            if info is None:
                raise KeyError(f"no job {job_id!r}")
            return replace(info)

    def jobs(self) -> list[JobInfo]:
        with self._lock:
            return [replace(j) for j in self._jobs.values()]

    def cancel(self, job_id: str) -> bool:
        """Stop a job: a queued one never starts, a running one is stopped. False if already finished."""
        with self._lock:
            info = self._jobs.get(job_id)
            if info is None or info.done:
                return False
            return self._backend.cancel(info)

    def wait(self, job_id: str, timeout: float | None = None) -> JobInfo:
        end = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                info = self._jobs.get(job_id)
                if info is None:
                    raise KeyError(f"no job {job_id!r}")
                if info.done:
                    return replace(info)
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return replace(info)
                self._changed.wait(0.5 if left is None else min(left, 0.5))

    def wait_all(self, job_ids=None, timeout: float | None = None) -> list[JobInfo]:
        ids = list(job_ids) if job_ids is not None else [j.id for j in self.jobs()]
        end = None if timeout is None else time.monotonic() + timeout
        return [self.wait(j, None if end is None else max(0.0, end - time.monotonic())) for j in ids]

    def shutdown(self, cancel: bool = True) -> None:
        """Stop the workers (cancelling what is left unless cancel=False, which waits for it first)."""
        if self._closed:
            return
        if not cancel:
            self.wait_all()
        self._closed = True
        with self._lock:
            for info in self._jobs.values():
                if not info.done:
                    self._backend.cancel(info)
        self._backend.shutdown()
        with self._lock:
            for info in self._jobs.values():
                if not info.done:
                    self._finish(info, "cancelled", message="runner shut down")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    def __del__(self):
        try:
            self.shutdown()
        except Exception:
            pass

    # ---- called by the backends ----------------------------------------------------------
    def _started(self, jid: str, worker: str) -> None:
        with self._lock:
            info = self._jobs.get(jid)
            if info is None or info.done:
                return
            info.state, info.started, info.worker, info.message = "running", time.time(), worker, "started"
            self._changed.notify_all()

    def _progress(self, jid: str, frac: float, msg: str) -> None:
        with self._lock:
            info = self._jobs.get(jid)
            if info is None or info.done:
                return
            if info.state == "queued":
                info.state, info.started = "running", time.time()
            info.progress, info.message = max(0.0, min(1.0, frac)), msg

    def _finish(self, info: JobInfo, state: str, result: dict | None = None, error: str | None = None,
                message: str | None = None) -> None:
        """Record a job's end (first call wins); a finished Evaluation goes to the store."""
        with self._lock:
            if info.done:
                return
            ev = None
            if result is not None:
                try:
                    ev = Evaluation.from_dict(result)
                except Exception as e:
                    state, error = "failed", f"worker returned an unreadable result: {e}"
            if ev is not None and ev.status == "failed":
                state, error = "failed", ev.reason or "failed"
            info.result, info.error, info.state = ev, error, state
            info.finished = time.time()
            if state == "done":
                info.progress, info.message = 1.0, message or "done"
            else:
                info.message = message or error or state
            if ev is not None:
                info.key = ev.key
            store = self.store
        if ev is not None and store is not None:
            try:
                store.put(ev, session=info.session)
            except Exception as e:
                with self._lock:
                    info.message = f"{info.message}; not stored: {e}"
        with self._lock:
            self._payloads.pop(info.id, None)
            self._changed.notify_all()
