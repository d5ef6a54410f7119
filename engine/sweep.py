"""Sweeps: run a search (joint NSGA-II with Optuna, random, or the greedy sensitivity path) through the job
runner, write every Evaluation to the store, and report the frontier.

Resumable: each plan's cache key (plan, model, dataset, settings incl. seed, code version) is
looked up in the store first and a stored Evaluation is reused instead of recomputed; with a
seeded sampler the search proposes the same plans again, so a rerun after an interruption
only computes what is missing. The search selects on validation accuracy; the frontier is
reported with test accuracy.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from engine.errors import UserError
from engine.evaluation import Evaluation, Settings, code_version, evaluation_key
from engine.explore.search import SearchSpace, greedy_search, joint_search, plan_label
from engine.plans.plan import Plan

METHODS = ("nsga2", "random", "greedy")
THIRD = (None, "size_bytes", "energy_j")
POINT_COLUMNS = ["key", "phase", "status", "reason", "val_accuracy", "test_accuracy", "estimate_val_accuracy",
                 "throughput", "latency_s", "energy_j", "size_bytes", "bops", "steps", "seed", "profile", "label",
                 "plan"]
NUMERIC = ("val_accuracy", "test_accuracy", "estimate_val_accuracy", "throughput", "latency_s", "energy_j",
           "size_bytes", "bops")


class SweepCancelled(Exception):
    """The sweep was asked to stop (its ``should_stop`` said so); its in-flight jobs were cancelled."""


def points_frame(rows: list[dict]) -> pd.DataFrame:
    """A sweep's points table from ``Sweep.row`` dicts (numeric columns as floats)."""
    df = pd.DataFrame(rows, columns=POINT_COLUMNS)
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


@dataclass
class SweepResult:
    points: pd.DataFrame
    frontier: pd.DataFrame
    session: str | None
    submitted: int
    reused: int
    wall_s: float
    hypervolume: float | None = None
    ref: tuple | None = None
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"session": self.session, "points": len(self.points), "frontier": len(self.frontier),
                "submitted": self.submitted, "reused": self.reused, "wall_s": round(self.wall_s, 2),
                "hypervolume": self.hypervolume, "ref": list(self.ref) if self.ref else None}


class Sweep:
    """One model x dataset x profile: costs plans, evaluates them (store cache first, then jobs)."""

    def __init__(self, model: str, dataset: str, profile: str, runner=None, store=None, session: str | None = None,
                 progress: Callable | None = None, baseline=None, data=None, on_evaluation: Callable | None = None,
                 should_stop: Callable | None = None):
        from engine.cost import load_profile
        from engine.models.baselines import load_baseline
        from engine.models.data import load_dataset
        from engine.plans.graph import analyze
        self.model, self.dataset = model, dataset
        self.profile = load_profile(profile).name
        self.store, self.runner, self.session = store, runner, session
        self.progress = progress or (lambda done, total, msg: None)
        self.on_evaluation = on_evaluation or (lambda ev, row: None)   # each Evaluation as it lands
        self.should_stop = should_stop or (lambda: False)
        data = data or load_dataset(dataset)
        base = baseline if baseline is not None else load_baseline(model, dataset, data)
        self.topo = analyze(base, data.input_shape)
        self.names = self.topo.names
        self.submitted = 0
        self.reused = 0
        self.done = 0
        self.planned = 0
        self.records: list[tuple[str, Plan, Evaluation]] = []   # (phase, plan, evaluation)
        self._memo: dict[str, Evaluation] = {}

    def costs(self, plan: Plan) -> dict:
        from engine.explore.jobs import cost_summaries
        return cost_summaries(self.topo, plan.resolve(self.names), [self.profile])[self.profile]

    def key(self, plan: Plan, settings: Settings) -> str:
        return evaluation_key(plan.to_dict(), self.model, self.dataset, settings.to_dict(), code_version())

    def evaluate(self, plans: list[Plan], settings: Settings, labels: list[str] | None = None) -> list[Evaluation]:
        """Evaluations of ``plans`` in order: reused from the store where present, else run as jobs.

        Each one goes to ``on_evaluation(ev, row)`` as it lands; once ``should_stop()`` is true no
        job is submitted, the batch's jobs in flight are cancelled, and ``SweepCancelled`` is raised."""
        from engine.explore.jobs import JobRunner
        labels = labels or [None] * len(plans)
        phase = "estimate" if settings.steps == 0 else "fine-tune"
        self.planned += len(plans)
        out: list[Evaluation | None] = [None] * len(plans)
        pending: dict[int, str] = {}
        for i, plan in enumerate(plans):
            if self.should_stop():
                self._stop(pending, plans, phase)
            self.topo.check(plan.resolve(self.names))
            k = self.key(plan, settings)
            ev = self._memo.get(k)
            if ev is None and self.store is not None:
                ev = self.store.computed(k)  # never a result imported from a session file
                if ev is not None and self.profile not in ev.costs and ev.status != "failed":
                    ev.costs[self.profile] = self.costs(plan)
                    self.store.put(ev)
            if ev is not None:
                if self.store is not None and self.session is not None:
                    self.store.attach(self.session, k)
                out[i] = ev
                self.reused += 1
                self.done += 1
                self.on_evaluation(ev, self.row(phase, plan, ev))
                continue
            if self.runner is None:
                self.runner = JobRunner(store=self.store)
            pending[i] = self.runner.submit(self.model, self.dataset, plan, settings, session=self.session,
                                            label=labels[i], profiles=[self.profile])
            self.submitted += 1
        self.progress(self.done, self.planned, f"{phase}: {len(pending)} to run, {len(plans) - len(pending)} cached")
        while pending:
            for i, jid in list(pending.items()):
                if self.should_stop():
                    self._stop(pending, plans, phase)
                info = self.runner.wait(jid, 0.05)
                if not info.done:
                    continue
                del pending[i]
                ev = info.result
                if ev is None:    # raised, crashed or cancelled: a failed record with the reason
                    if info.state == "cancelled":
                        if self.should_stop():
                            self._stop(pending, plans, phase)
                        raise KeyboardInterrupt(f"job {jid} was cancelled")
                    ev = Evaluation(plan=plans[i].to_dict(), model=self.model, dataset=self.dataset,
                                    settings=settings.to_dict(), status="failed", reason=info.error,
                                    provenance={"code_version": code_version()})
                out[i] = ev
                self.done += 1
                self.on_evaluation(ev, self.row(phase, plans[i], ev))
                acc = "-" if ev.val_accuracy is None else f"{100 * ev.val_accuracy:.1f}%"
                self.progress(self.done, self.planned,
                              f"{phase} {labels[i] or ''}: {ev.status} val {acc} {plan_label(plans[i], self.names)}")
        for plan, ev in zip(plans, out):
            self._memo[ev.key] = ev
            self.records.append((phase, plan, ev))
        return out

    def _stop(self, pending: dict[int, str], plans: list[Plan], phase: str) -> None:
        """Cancel the jobs in flight and wait until each has ended (one that finished meanwhile still
        goes to ``on_evaluation``: it is in the store), then raise ``SweepCancelled``."""
        from engine.explore.jobs import CANCEL_GRACE_S
        for jid in pending.values():
            self.runner.cancel(jid)
        for i, jid in pending.items():
            ev = self.runner.wait(jid, CANCEL_GRACE_S + 10).result
            if ev is not None:
                self.done += 1
                self.on_evaluation(ev, self.row(phase, plans[i], ev))
        cancelled = sum(self.runner.status(j).state == "cancelled" for j in pending.values())
        raise SweepCancelled(f"sweep cancelled after {self.done} evaluations; "
                             f"{cancelled} job(s) in flight were cancelled")

    def row(self, phase: str, plan: Plan, ev: Evaluation) -> dict:
        """One point of the sweep's table (costs on the sweep's profile)."""
        c = ev.costs.get(self.profile) or (self.costs(plan) if ev.status != "failed" else {})
        return {"key": ev.key, "phase": phase, "status": ev.status, "reason": ev.reason,
                "val_accuracy": ev.val_accuracy, "test_accuracy": ev.test_accuracy,
                "estimate_val_accuracy": ev.estimate_val_accuracy,
                "throughput": c.get("throughput"), "latency_s": c.get("latency_s"),
                "energy_j": c.get("energy_j"), "size_bytes": c.get("size_bytes"), "bops": c.get("bops"),
                "steps": ev.steps, "seed": ev.settings.get("seed"), "profile": self.profile,
                "label": plan_label(plan, self.names), "plan": json.dumps(plan.to_dict(), sort_keys=True)}

    def frame(self) -> pd.DataFrame:
        rows, seen = [], set()
        for phase, plan, ev in self.records:
            if ev.key in seen:
                continue
            seen.add(ev.key)
            rows.append(self.row(phase, plan, ev))
        return points_frame(rows)


def frontier_of(points: pd.DataFrame, third: str | None = None) -> pd.DataFrame:
    """Frontier selected on validation accuracy x throughput (fine-tuned points when there are any),
    reported with its test accuracy."""
    from engine.explore.frontier import pareto
    if len(points) == 0:
        return points
    tuned = (points["status"] == "fine-tuned").any()
    front = pareto(points, x="throughput", y="val_accuracy", z=third, only_finetuned=bool(tuned))
    return front.assign(selected_on="val_accuracy")


def hypervolume_of(front: pd.DataFrame, ref: tuple[float, float], acc: str = "test_accuracy") -> float:
    from engine.explore.frontier import hypervolume
    if len(front) == 0:
        return 0.0
    return hypervolume(front[[acc, "throughput"]].to_numpy(dtype=float), ref=ref, maximize=(True, True))


def check_out(path: str | Path) -> None:
    if Path(path).suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise UserError(f"--out {str(path)!r}: give a .csv or .parquet file")


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    p = Path(path)
    check_out(p)
    if p.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("writing Parquet needs pyarrow (pip install pyarrow); or give a .csv file") from None
        df.to_parquet(p, index=False)
    elif p.suffix.lower() == ".csv":
        from engine.fileio import atomic_write_text
        atomic_write_text(p, df.to_csv(index=False))
    else:
        raise UserError(f"--out {str(p)!r}: give a .csv or .parquet file")


def run_sweep(model: str, dataset: str, profile: str, budget: int, finetune: int | None = None, steps: int = 200,
              method: str = "nsga2", seed: int = 0, distill: bool = False, third: str | None = None,
              store=None, runner=None, session: str | None = None, session_name: str | None = None,
              out: str | Path | None = None, progress: Callable | None = None, order: str = "eagl",
              sparsity: tuple[str, ...] | None = None, population: int | None = None, baseline=None, data=None,
              settings: Settings | None = None, eval_limit: int | None = None,
              rounds: int | None = None, path_seeds: bool = True, on_evaluation: Callable | None = None,
              should_stop: Callable | None = None) -> SweepResult:
    """Run one sweep; every Evaluation goes to the store (and the session), the frontier to ``out``.

    budget: candidates scored by the no-training estimate (nsga2/random) or points on the greedy path;
    finetune: how many of the most promising are fine-tuned (default budget // 4, at least 2);
    eval_limit: score estimates on that many validation examples and not on test (the search
    selects on validation); fine-tunes are always scored on the full validation and test splits,
    and estimated points that reach the frontier are scored again on both in full before it is
    reported; rounds: estimate/fine-tune rounds of the joint search (see ``joint_search``);
    order: the sensitivity order of the greedy path, and of the greedy seed plans (uniform 4 bits
    lowered to 2 one layer at a time) that nsga2 and random both start from with the uniform seeds
    (``path_seeds=False``: the uniform seeds alone, e.g. for plain random search).
    on_evaluation(ev, row): called with each Evaluation (and its row of the points table) as it
    lands; should_stop(): polled while jobs run; once true the sweep submits nothing more, cancels
    its jobs in flight and raises ``SweepCancelled`` (see ``SweepJob`` to run a sweep in the background).

    The reported hypervolume is of (test accuracy, throughput) with the reference point
    (FP32 test accuracy - 0.10, throughput 0).
    """
    if method not in METHODS:
        raise UserError(f"unknown search method {method!r}; methods are {', '.join(METHODS)}")
    if third not in THIRD:
        raise UserError(f"third objective {third!r} is not one of size_bytes, energy_j")
    if budget < 1:
        raise UserError("--budget must be at least 1")
    if finetune is None:
        finetune = max(2, budget // 4)
    if finetune < 0:
        raise UserError("--finetune must be 0 or more")
    if out is not None:
        check_out(out)
    from engine.cost import load_profile
    profile = load_profile(profile).name      # an unknown profile fails before anything is written
    t0 = time.perf_counter()
    from engine.explore.jobs import JobRunner
    own_runner = runner is None
    if store is not None and session is None:
        session = store.create_session(session_name or f"sweep {model}/{dataset}/{profile} {method}", model, dataset,
                                       profile, meta={"method": method, "budget": budget, "finetune": finetune,
                                                      "steps": steps, "seed": seed, "distill": distill})
    runner = runner or JobRunner(store=store)
    try:
        sw = Sweep(model, dataset, profile, runner=runner, store=store, session=session, progress=progress,
                   baseline=baseline, data=data, on_evaluation=on_evaluation, should_stop=should_stop)
        base = settings or Settings()
        ft = Settings(**{**base.to_dict(), "steps": steps, "seed": seed, "distill": distill, "eval_limit": None,
                         "score_test": True})
        est = Settings(**{**ft.to_dict(), "steps": 0, "eval_limit": eval_limit, "score_test": eval_limit is None})
        if method == "greedy":
            from engine.training.sensitivity import sensitivity
            sens = sensitivity(order, model, dataset, baseline=baseline, data=data,
                               **({"runner": runner, "store": store} if order == "alps" else {}))
            greedy_search(sw.evaluate, sw.names, sens.order(), ft if finetune else est, budget=budget)
        else:
            from engine.cost import load_profile
            from engine.explore.search import greedy_plans
            from engine.training.sensitivity import sensitivity
            if sparsity is None:
                sparsity = ("none", "2:4") if load_profile(profile).nm_patterns or third == "size_bytes" else ("none",)
            space = SearchSpace.from_topology(sw.topo, sparsity=sparsity)

            def objective(plan, ev):
                c = (ev.costs.get(sw.profile) if ev is not None else None) or sw.costs(plan)
                return (c["throughput"],) + ((-c[third],) if third else ())
            # seed plans (both samplers): the greedy path from uniform 4 bits to 2 bits in the
            # ``order`` sensitivity order, least sensitive layer first (the ends are uniform seeds)
            path = []
            if path_seeds:
                sens = sensitivity(order, model, dataset, baseline=baseline, data=data,
                                   **({"runner": runner, "store": store} if order == "alps" else {}))
                path = greedy_plans(sw.names, sens.order(), ladder=(4, 2))[1:-1]
            joint_search(sw.evaluate, space, objective, est, ft, budget, finetune, sampler=method, seed=seed,
                         population=population, rounds=rounds, seed_plans=path)
        points = sw.frame()
        front = frontier_of(points, third)
        if len(front) and front["test_accuracy"].isna().any():
            # estimates scored on a validation subset only: score the frontier's plans in full, and
            # report the frontier of those (selected on full validation, reported on test)
            full = Settings(**{**est.to_dict(), "eval_limit": None, "score_test": True})
            plans = [Plan.from_dict(json.loads(p)) for p in front["plan"]]
            evs = sw.evaluate(plans, full, [f"report {lab}" for lab in front["label"]])
            points = sw.frame()
            front = frontier_of(points[points.key.isin({ev.key for ev in evs})], third)
        if out is not None:
            write_table(front, out)
        ref = None
        hv = None
        tuned = points[points.status == "fine-tuned"]
        base_acc = next((ev.baseline_test_accuracy for _, _, ev in sw.records if ev.baseline_test_accuracy), None)
        if base_acc is not None and len(points):
            ref = (base_acc - 0.10, 0.0)
            hv = hypervolume_of(front, ref)
        res = SweepResult(points, front, session, sw.submitted, sw.reused, time.perf_counter() - t0, hv, ref,
                          {"fine_tuned": len(tuned)})
        if store is not None and session is not None:
            meta = (store.session(session) or {}).get("meta", {})
            meta.update({"frontier": front["key"].tolist(), "hypervolume": hv})
            store.update_session_meta(session, meta)
        return res
    finally:
        if own_runner:
            runner.shutdown()
