"""A sweep in the background: ``run_sweep`` on a thread, with its progress, its points as they
land, the hypervolume of its front after each point, and cancel (for the dashboard; no Panel here).
"""
from __future__ import annotations

import logging
import statistics
import threading
import time

import pandas as pd

from engine.errors import USER_ERRORS
from engine.evaluation import Evaluation
from engine.explore.search import LADDER
from engine.explore.sweep import METHODS, SweepCancelled, frontier_of, hypervolume_of, points_frame, run_sweep

log = logging.getLogger(__name__)
FINAL = ("done", "cancelled", "failed")
HV_COLUMNS = ["evaluations", "elapsed_s", "phase", "hv", "hv_estimates", "hv_finetuned"]
ACC_MARGIN = 0.10   # the sweep's hypervolume reference: FP32 test accuracy - 0.10, throughput 0


def planned_runs(method: str, budget: int, finetune: int, n_layers: int) -> tuple[int, int]:
    """(estimates, fine-tunes) a sweep will run: nsga2/random estimate ``budget`` plans and fine-tune
    ``finetune`` of them; greedy walks at most ``budget`` points of its path (8 -> 4 -> 2 bits, one
    layer at a time), fine-tuning each when ``finetune`` > 0."""
    if method not in METHODS:
        raise ValueError(f"unknown search method {method!r}; methods are {', '.join(METHODS)}")
    if method == "greedy":
        n = min(max(1, budget), 1 + n_layers * (len(LADDER) - 1))
        return (0, n) if finetune else (n, 0)
    return budget, min(finetune, budget)


def worker_seconds(evaluations: list[Evaluation], estimates: int, finetunes: int, steps: int) -> float | None:
    """Worker time such a sweep is likely to take, from the wall times of past evaluations (median
    estimate, median seconds per fine-tuning step); None when there is nothing to go on."""
    ok = [e for e in evaluations if e.status != "failed" and e.wall_s and e.wall_s > 0]
    est = [e.wall_s for e in ok if not e.steps]
    est_s = statistics.median(est) if est else None
    per_step = [(e.wall_s - (est_s or 0.0)) / e.steps for e in ok if e.steps]
    step_s = max(0.0, statistics.median(per_step)) if per_step else None
    if (estimates and est_s is None) or (finetunes and step_s is None):
        return None
    return estimates * (est_s or 0.0) + finetunes * ((est_s or 0.0) + steps * (step_s or 0.0))


class SweepJob:
    """``run_sweep`` on a background thread, readable at any moment.

    ``take_new()`` hands over the Evaluations that landed since the last call; ``hv_history()``
    has one row per point: the hypervolume, as the sweep reports it (``hypervolume_of`` the
    ``frontier_of`` every point so far), of the estimated points alone, and of the fine-tuned
    points alone. ``cancel()`` stops it: nothing more is submitted, the jobs in flight are
    cancelled, and ``state`` ends "cancelled". A failure ends in "failed" with a one-line ``error``.
    """

    def __init__(self, model: str, dataset: str, profile: str, budget: int, finetune: int, steps: int,
                 method: str = "nsga2", n_layers: int | None = None, **sweep_kw):
        self.kw = dict(model=model, dataset=dataset, profile=profile, budget=budget, finetune=finetune,
                       steps=steps, method=method, **sweep_kw)
        est, ft = planned_runs(method, budget, finetune, n_layers) if n_layers else (budget, finetune)
        self.total = est + ft
        self.state = "running"
        self.phase = "preparing"
        self.message = "loading the baseline and the sensitivity order"
        self.error = ""
        self.result = None
        self.failed = 0
        self._t0 = time.monotonic()
        self._wall: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._new: list[Evaluation] = []
        self._rows: dict[str, dict] = {}
        self._hv: list[dict] = []
        self._ref: tuple[float, float] | None = None
        self._thread = threading.Thread(target=self._run, name="bitscape-sweep", daemon=True)

    # ---- the caller's side --------------------------------------------------------------------
    def start(self) -> "SweepJob":
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the sweep to stop; ``state`` turns "cancelled" once its jobs in flight have ended."""
        self._stop.set()
        if self.state == "running":
            self.message = "cancelling: stopping the jobs in flight"

    @property
    def finished(self) -> bool:
        return self.state in FINAL

    @property
    def done(self) -> int:
        return len(self._rows)

    @property
    def elapsed_s(self) -> float:
        return self._wall if self._wall is not None else time.monotonic() - self._t0

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.finished

    def take_new(self) -> list[Evaluation]:
        with self._lock:
            new, self._new = self._new, []
        return new

    def hv_history(self) -> pd.DataFrame:
        with self._lock:
            return pd.DataFrame(list(self._hv), columns=HV_COLUMNS)

    def points(self) -> pd.DataFrame:
        with self._lock:
            return points_frame(list(self._rows.values()))

    @property
    def ref(self) -> tuple[float, float] | None:
        return self._ref

    # ---- the sweep's side ---------------------------------------------------------------------
    def _on_evaluation(self, ev: Evaluation, row: dict) -> None:
        with self._lock:
            if ev.key in self._rows:
                return
            self._rows[ev.key] = row
            self._new.append(ev)
            self.failed += ev.status == "failed"
            if self._ref is None and ev.baseline_test_accuracy is not None:
                self._ref = (ev.baseline_test_accuracy - ACC_MARGIN, 0.0)
            if self._ref is not None:
                pts = points_frame(list(self._rows.values()))
                third = self.kw.get("third")
                self._hv.append({
                    "evaluations": len(self._rows), "elapsed_s": round(time.monotonic() - self._t0, 3),
                    "phase": row["phase"], "hv": self._front_hv(pts, third),
                    "hv_estimates": self._front_hv(pts[pts.status == "estimated"], third),
                    "hv_finetuned": self._front_hv(pts[pts.status == "fine-tuned"], third)})
        self.total = max(self.total, self.done)
        what = "failed: " + (ev.reason or "no reason given") if ev.status == "failed" else ev.status
        self.message = f"{row['phase']} {self.done}/{self.total}: {what} {row['label']}"

    def _front_hv(self, pts: pd.DataFrame, third: str | None) -> float:
        scored = pts.dropna(subset=["val_accuracy", "test_accuracy", "throughput"])
        return float(hypervolume_of(frontier_of(scored, third), self._ref)) if len(scored) else 0.0

    def _progress(self, done: int, total: int, msg: str) -> None:
        for phase in ("estimate", "fine-tune"):
            if msg.startswith(phase):
                self.phase = phase

    def _run(self) -> None:
        try:
            self.result = run_sweep(**self.kw, progress=self._progress, on_evaluation=self._on_evaluation,
                                    should_stop=self._stop.is_set)
            s = self.result.summary()
            self.state, self.phase = "done", "done"
            hv = "" if s["hypervolume"] is None else f", hypervolume {s['hypervolume']:.4g}"
            failed = ""
            if self.failed:
                reason = next((r["reason"] for r in self._rows.values() if r["status"] == "failed"), "")
                failed = f"; {self.failed} failed, e.g. {reason or 'no reason given'}"
            self.message = (f"done: {s['points']} points ({s['submitted']} run, {s['reused']} from the store), "
                            f"{s['frontier']} on the frontier{hv}{failed}")
        except (SweepCancelled, KeyboardInterrupt) as e:
            self.state, self.phase = "cancelled", "cancelled"
            self.message = str(e) if isinstance(e, SweepCancelled) else f"cancelled: {e}"
        except USER_ERRORS as e:
            self.state, self.phase, self.error = "failed", "failed", str(e)
            self.message = f"failed: {e}"
        except Exception as e:
            log.exception("sweep failed")
            self.state, self.phase = "failed", "failed"
            self.error = f"{type(e).__name__}: {e}".splitlines()[0]
            self.message = f"failed: {self.error}"
        finally:
            self._wall = time.monotonic() - self._t0
