"""A search launched from the dashboard: its settings, what it will run, its progress, the
hypervolume of its front over time, and cancel.

The sweep itself is ``engine.explore.sweep_job.SweepJob`` on the workspace's job runner and store; the
workspace's periodic ``poll()`` calls ``SearchState.poll()``, which hands the points that landed
since the last call to the workspace in one batch, so they stream onto the frontier.
"""
from __future__ import annotations

import pandas as pd
import param

from engine.explore.sweep import METHODS
from engine.explore.sweep_job import HV_COLUMNS, SweepJob, planned_runs, worker_seconds

STATUSES = ("idle", "running", "done", "cancelled", "failed")


class SearchState(param.Parameterized):
    """One workspace's search (one at a time)."""

    method = param.Selector(default="nsga2", objects=list(METHODS),
                            doc="nsga2: NSGA-II; random: random sampling; greedy: the sensitivity path")
    budget = param.Integer(default=24, bounds=(1, 2000),
                           doc="plans scored by the no-training estimate (greedy: points on its path)")
    finetune = param.Integer(default=2, bounds=(0, 200), doc="how many of the most promising are fine-tuned")
    steps = param.Integer(default=150, bounds=(1, 100_000), doc="fine-tuning steps per fine-tuned plan")
    profile = param.Selector(default="cpu", objects=["cpu"], doc="accelerator profile whose throughput is searched")
    seed = param.Integer(default=0, bounds=(0, None))

    status = param.Selector(default="idle", objects=list(STATUSES))
    running = param.Boolean(default=False)
    phase = param.String(default="")
    done = param.Integer(default=0, doc="evaluations landed")
    total = param.Integer(default=0, doc="evaluations planned")
    elapsed_s = param.Number(default=0.0)
    message = param.String(default="", doc="the search's last word: progress, result, or why it stopped")
    plan_text = param.String(default="", doc="what Start will run, and about how long it takes")
    hv_history = param.DataFrame(doc="hypervolume of the front after each point (see SweepJob.hv_history)")

    def __init__(self, workspace, **params):
        self.workspace = workspace
        self.job: SweepJob | None = None
        self._timings: dict[tuple[str, str], list] = {}
        self._timed = False    # judge the time from the store only once a view or a search needs it
        super().__init__(hv_history=pd.DataFrame(columns=HV_COLUMNS), **params)
        self.param.profile.objects = list(workspace.param.profile.objects)
        self.profile = workspace.profile
        workspace.param.watch(self._follow_profile, ["profile"])
        workspace.param.watch(self._describe, ["model", "dataset"])
        self._describe()

    def _follow_profile(self, event) -> None:
        if not self.running:
            self.profile = event.new

    def runs(self) -> tuple[int, int]:
        """(estimates, fine-tunes) that Start will run on the workspace's model."""
        return planned_runs(self.method, self.budget, self.finetune, len(self.workspace.topology.names))

    @param.depends("method", "budget", "finetune", "steps", "profile", watch=True)
    def _describe(self, *_) -> None:
        ws = self.workspace
        est, ft = self.runs()
        if self.method == "greedy":
            what = (f"{ft} points of the greedy path, each fine-tuned for {self.steps} steps" if ft
                    else f"{est} points of the greedy path, estimated (no training)")
        else:
            what = f"{est} estimates (no training), then {ft} fine-tune{'s' if ft != 1 else ''}"
            what += f" of {self.steps} steps" if ft else ""
        self.plan_text = f"{what} on {ws.model}/{ws.dataset}, throughput on {self.profile}{self._time_text(est, ft)}."

    def _time_text(self, est: int, ft: int) -> str:
        ws = self.workspace
        if not self._timed:
            return ""
        key = (ws.model, ws.dataset)
        if key not in self._timings:
            self._timings[key] = ws.store.evaluations(model=ws.model, dataset=ws.dataset)
        secs = worker_seconds(self._timings[key], est, ft, self.steps)
        if secs is None:
            return "; no past runs of this model to judge its time from"
        return (f"; about {_duration(secs)} of worker time, judged from {len(self._timings[key])} past "
                f"evaluations of this model")

    def describe_time(self) -> None:
        """Add to ``plan_text`` how long the search is likely to take (reads the store)."""
        self._timed = True
        self._describe()

    # ---- actions ------------------------------------------------------------------------------
    def start(self) -> bool:
        """Launch the search in the background; False (with the reason in ``message``) if it cannot."""
        ws = self.workspace
        if self.running:
            self.message = "a search is already running; cancel it first"
            return False
        if ws.read_only:
            self.message = "this session is read-only; save a copy to run a search"
            return False
        self._timed = True
        self.job = SweepJob(ws.model, ws.dataset, self.profile, self.budget, self.finetune, self.steps,
                            method=self.method, seed=self.seed, n_layers=len(ws.topology.names),
                            store=ws.store, runner=ws.runner, session=ws.ensure_session()).start()
        self.param.update(status="running", running=True, phase=self.job.phase, done=0, total=self.job.total,
                          elapsed_s=0.0, message=self.job.message, hv_history=pd.DataFrame(columns=HV_COLUMNS))
        return True

    def cancel(self) -> bool:
        """Stop the search: nothing more is submitted and its jobs in flight are cancelled."""
        if self.job is None or not self.running:
            self.message = "no search is running"
            return False
        self.job.cancel()
        self.message = self.job.message
        return True

    def poll(self) -> None:
        """Bring the search's state and its new points over (cheap when nothing changed)."""
        job = self.job
        if job is None or not self.running:
            return
        finished = job.finished           # read first: every point that landed before the end is taken below
        new = job.take_new()
        if new:
            self.workspace.add_evaluations(new)
        hv = job.hv_history()
        update = {"phase": job.phase, "done": job.done, "total": job.total, "message": job.message,
                  "elapsed_s": round(job.elapsed_s, 1)}
        if len(hv) != len(self.hv_history):
            update["hv_history"] = hv
        if finished:
            update.update(status=job.state, running=False)
            self._timings.pop((job.kw["model"], job.kw["dataset"]), None)
        self.param.update(**update)
        if finished:
            self._describe()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
