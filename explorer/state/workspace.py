"""The analyst's workspace: the plan being edited, its live cost, jobs, points and session.

A param.Parameterized class with no Panel import: the dashboard's views bind to it and
tests drive it directly. Every number comes from engine functions.
"""
from __future__ import annotations

import functools

import pandas as pd
import param

from engine.cost import cost_topology, list_profiles, load_profile
from engine.errors import USER_ERRORS
from engine.evaluation import Evaluation, Settings
from engine.models.data import dataset_spec
from engine.models.zoo import build_model
from engine.plans.graph import analyze
from engine.plans.plan import LayerConfig, Plan, PlanError
from engine.plans.presets import PRESETS, preset_plan

from . import catalog
from .plan_table import coerce, configs_from_rows, plan_rows, summary
from .search import SearchState
from .sensitivity import SensitivityState
from .sessions import AUTOSAVED, READ_ONLY, SessionKeeper, SessionList

X_AXES = {"throughput": "throughput (inferences/s)", "latency_s": "latency (s)", "energy_j": "energy (J/inference)",
          "size_bytes": "model size (bytes)"}
Y_AXES = {"test_accuracy": "test accuracy (%)", "val_accuracy": "validation accuracy (%)",
          "test_vs_fp32": "test accuracy drop vs FP32 (points)",
          "val_vs_fp32": "validation accuracy drop vs FP32 (points)"}
POINT_COLUMNS = ["key", "label", "status", "reason", "test_accuracy", "val_accuracy", "estimate_val_accuracy",
                 "baseline_test_accuracy", "baseline_val_accuracy", "test_vs_fp32", "val_vs_fp32",
                 "throughput", "latency_s", "energy_j", "size_bytes", "steps", "distill", "wall_s", "summary",
                 "plan_digest", "tier"]
_NUMERIC_POINT_COLUMNS = ["test_accuracy", "val_accuracy", "estimate_val_accuracy", "baseline_test_accuracy",
                          "baseline_val_accuracy", "test_vs_fp32", "val_vs_fp32", "throughput", "latency_s",
                          "energy_j", "size_bytes", "wall_s"]
JOB_COLUMNS = ["id", "label", "state", "progress", "message", "error"]
# settings a read-only view may not change (axes and the like stay free: they only change the view)
LOCKED = ("model", "dataset", "profile", "batch", "steps", "distill", "seed", "preset")


@functools.lru_cache(maxsize=16)
def _topology(model: str, dataset: str):
    """The layer topology of a zoo model on a dataset; read-only, so shared by every session."""
    spec = dataset_spec(dataset)
    return analyze(build_model(model, spec.input_shape, spec.num_classes), spec.input_shape)


def _plan_digest(plan: dict) -> str:
    try:
        return Plan.from_dict(plan).digest()
    except PlanError:
        return ""


def _empty(columns) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("progress",) else "object") for c in columns})


class Workspace(param.Parameterized):
    """One browser session's state."""

    model = param.Selector(default="lenet5", objects=catalog.model_names())
    dataset = param.Selector(default="digits", objects=catalog.dataset_names())
    profile = param.Selector(default="cpu", objects=["cpu"])
    batch = param.Integer(default=1, bounds=(1, 4096))
    preset = param.Selector(default="w4a4", objects=list(PRESETS))

    rows = param.DataFrame(doc="the plan being edited, one row per layer, with shapes and live cost")
    totals = param.Dict(default={}, doc="live cost totals of the plan being edited")
    edit_error = param.String(default="", doc="why the last edit was refused")
    message = param.String(default="", doc="the last thing the workspace wants to tell the analyst")

    steps = param.Integer(default=400, bounds=(0, 100_000), doc="fine-tuning steps (0 = no-training estimate)")
    distill = param.Boolean(default=False, doc="distil from the FP32 teacher (Apprentice)")
    seed = param.Integer(default=0, bounds=(0, None))
    jobs = param.DataFrame(doc="this session's jobs")

    points = param.DataFrame(doc="every evaluated point of this model and dataset, costed on the profile")
    selected = param.String(default="", doc="key of the selected point")
    x_axis = param.Selector(default="throughput", objects=list(X_AXES))
    y_axis = param.Selector(default="test_accuracy", objects=list(Y_AXES))
    only_finetuned = param.Boolean(default=False, doc="draw the frontier from fine-tuned points only")
    compare_a = param.String(default="")
    compare_b = param.String(default="")


    session_id = param.String(default="", doc="the named session last saved or opened (what the share link opens)")
    session_name = param.String(default="")
    read_only = param.Boolean(default=False)
    work_id = param.String(default="", doc="this workspace's autosaved working copy (``?ws=<id>``)")

    def __init__(self, store=None, runner=None, owner: str | None = None, **params):
        self._store, self._runner = store, runner
        self._evals: dict[str, Evaluation] = {}
        self._job_ids: list[str] = []
        self._cost_memo: dict[tuple, dict] = {}
        self._profiles: dict[str, object] = {}
        self._topo = None
        self._configs: dict[str, LayerConfig] = {}
        self._quiet = 0                    # > 0 while a session is being loaded or a refused change undone
        names = [p["name"] for p in list_profiles()]
        self.param.profile.objects = names
        self.param.model.objects = catalog.model_names()
        self.param.dataset.objects = catalog.dataset_names()
        super().__init__(**params)
        self.sessions = SessionKeeper(self, owner)  # owner None: an owner for this workspace only
        self.session_list = SessionList(lambda: self.store, self.sessions.owner)
        self.sens = SensitivityState(self)
        self._load_model()
        self.param.watch(self._guard, list(LOCKED))
        self.param.watch(self._touch, ["rows", "points", *AUTOSAVED])
        self.search = SearchState(self)  # a sweep launched from the dashboard; its points land here

    # ---- services (injected in tests, shared per process when served) ----------------------
    @property
    def store(self):
        if self._store is None:
            from .services import get_store
            self._store = get_store()
        return self._store

    @property
    def runner(self):
        if self._runner is None:
            from .services import get_runner
            self._runner = get_runner()
        return self._runner

    # ---- model and plan -------------------------------------------------------------------
    @param.depends("model", watch=True)
    def _model_changed(self):
        if self._quiet or self.read_only:  # a read-only view: _guard puts the old value back
            return
        default = catalog.default_dataset(self.model)
        if default != self.dataset:
            self.dataset = default  # triggers _load_model
        else:
            self._load_model()

    @param.depends("dataset", watch=True)
    def _dataset_changed(self):
        if self._quiet or self.read_only:  # a read-only view: _guard puts the old value back
            return
        self._load_model()

    def _undo_pick(self, why: str) -> None:
        """Put the model and dataset pickers back to what the editor holds, saying why."""
        self._quiet += 1
        try:
            self.model, self.dataset = self._loaded
        finally:
            self._quiet -= 1
        self.message = why

    def _guard(self, *events) -> None:
        """A read-only view refuses setting changes: the old value is put back, with the reason."""
        if self._quiet or not self.read_only:
            return
        self._quiet += 1
        try:
            self.param.update({e.name: e.old for e in events})
        finally:
            self._quiet -= 1
        self.message = READ_ONLY

    def _touch(self, *_) -> None:
        if not self._quiet and not self.read_only:
            self.sessions.dirty = True

    @property
    def model_options(self) -> dict[str, str]:
        """The model picker's labelled options (each says what is missing to use it)."""
        return catalog.model_options(self.dataset)

    @property
    def dataset_options(self) -> dict[str, str]:
        return catalog.dataset_options(self.model)

    def _load_model(self) -> None:
        try:
            topo = _topology(self.model, self.dataset)
        except Exception as e:  # a user model (serve --model) may fail in any way
            if self._topo is None:
                raise
            self._undo_pick(f"{self.model} on {self.dataset} cannot be used: "
                            f"{(str(e).splitlines() or [type(e).__name__])[0][:300]}")
            return
        self._topo, self._loaded = topo, (self.model, self.dataset)
        self._set_configs({n: LayerConfig() for n in self._topo.names})
        self.edit_error = ""
        self.sens.reset()
        self._refresh_points()
        why = catalog.usable(self.model, self.dataset)
        if why:
            self.message = f"No FP32 baseline for {self.model} on {self.dataset} can be used: {why}."

    @property
    def topology(self):
        return self._topo

    @property
    def configs(self) -> dict[str, LayerConfig]:
        return dict(self._configs)

    def _set_configs(self, configs: dict[str, LayerConfig]) -> None:
        self._topo.check(configs)
        self._configs = dict(configs)
        rows = plan_rows(self._topo, configs)
        self._fill_cost(rows)
        self.rows = rows

    def _profile(self):
        if self.profile not in self._profiles:
            self._profiles[self.profile] = load_profile(self.profile)
        return self._profiles[self.profile]

    def _fill_cost(self, rows: pd.DataFrame) -> None:
        rep = cost_topology(self._topo, self._configs, self._profile(), self.batch)
        rows["time_us"] = [round(x.time_s * 1e6, 3) for x in rep.layers]
        rows["share"] = [round(100 * s, 1) for s in rep.shares]
        rows["runs_as"] = [x.exec for x in rep.layers]
        rows["note"] = [x.note for x in rep.layers]
        self.totals = {"throughput": rep.throughput, "latency_s": rep.latency_s, "energy_j": rep.energy_j,
                       "size_bytes": rep.size_bytes, "bops": rep.bops, "macs": rep.macs, "profile": rep.profile,
                       "batch": rep.batch, "title": rep.title}

    @param.depends("profile", "batch", watch=True)
    def recost(self) -> None:
        if self._quiet or self.read_only:  # a read-only view: _guard puts the old value back
            return
        rows = self.rows.copy()
        self._fill_cost(rows)
        self.rows = rows
        self._refresh_points()

    def _refuse(self, why: str) -> bool:
        self.edit_error = why
        self.param.trigger("rows")  # views re-render the unchanged table, undoing the edit
        return False

    def set_cell(self, row: int, column: str, value) -> bool:
        """Apply one edit; an invalid one is refused with the reason in ``edit_error``."""
        return self.bulk_edit([row], column, value)

    def bulk_edit(self, rows: list[int], column: str, value) -> bool:
        """Set ``column`` to ``value`` on every listed row, all or nothing."""
        if self.read_only:
            return self._refuse(READ_ONLY)
        if not rows:
            return self._refuse("select one or more layers first")
        try:
            v = coerce(column, value)
            df = self.rows.copy()
            for r in rows:
                if not 0 <= int(r) < len(df):
                    raise PlanError(f"row {r} does not exist")
                df.at[int(r), column] = v
                if column == "sparsity" and v != "unstructured":
                    df.at[int(r), "sparsity_fraction"] = 0.0
                if column == "sparsity_fraction" and v > 0 and df.at[int(r), "sparsity"] == "none":
                    df.at[int(r), "sparsity"] = "unstructured"
                if column == "quantizer" and v == "binary":
                    df.at[int(r), "w_bits"] = 1
                if column == "quantizer" and v == "ternary":
                    df.at[int(r), "w_bits"] = 2
            configs = configs_from_rows(df)
            self._set_configs(configs)
        except PlanError as e:
            return self._refuse(str(e))
        self.edit_error = ""
        return True

    def apply_preset(self, name: str | None = None) -> bool:
        if self.read_only:
            return self._refuse(READ_ONLY)
        try:
            plan = preset_plan(name or self.preset, self._topo, self.model)
            self._set_configs(plan.resolve(self._topo.names))
        except PlanError as e:
            return self._refuse(f"preset not applied: {e}")
        self.edit_error = ""
        return True

    def load_plan(self, plan: Plan) -> None:
        """Put a plan into the editor (e.g. from a tapped point or an uploaded file).

        Raises PlanError when the plan is for another model or does not fit this one's layers.
        """
        if self.read_only:
            raise PlanError(READ_ONLY)
        if plan.model is not None and plan.model != self.model:
            raise PlanError(f"the plan is for model {plan.model!r}, but the editor holds {self.model!r}; "
                            f"choose {plan.model!r} in the model picker first")
        self._set_configs(plan.resolve(self._topo.names))
        self.edit_error = ""

    def load_plan_json(self, text: str | bytes) -> bool:
        """Load an uploaded plan file; a bad one is refused with the reason in ``edit_error``."""
        if self.read_only:
            return self._refuse(READ_ONLY)
        if not text:
            return self._refuse("plan not loaded: the file is empty")
        try:
            self.load_plan(Plan.from_json(text.decode() if isinstance(text, bytes) else text))
        except (PlanError, UnicodeDecodeError) as e:
            return self._refuse(f"plan not loaded: {e}")
        except RecursionError:
            return self._refuse("plan not loaded: it is nested too deeply to be a plan")
        return True

    def current_plan(self, name: str | None = None) -> Plan:
        return Plan.explicit(self._configs, model=self.model, name=name)

    # ---- jobs -----------------------------------------------------------------------------
    def submit(self, steps: int | None = None, label: str | None = None) -> str | None:
        """Queue an evaluation of the current plan (fine-tune, or estimate with steps=0)."""
        if self.read_only:
            self.message = READ_ONLY
            return None
        s = Settings(steps=self.steps if steps is None else steps, distill=self.distill, seed=self.seed)
        plan = self.current_plan(name=label or summary(self._configs))
        sid = self.sessions.ensure()
        jid = self.runner.submit(self.model, self.dataset, plan, s, session=sid,
                                 label=(label or summary(self._configs)) + (" (estimate)" if s.steps == 0 else ""))
        self._job_ids.append(jid)
        self.poll()
        return jid

    def track(self, job_id: str) -> None:
        """Follow a job submitted elsewhere (e.g. a confirm): it joins Jobs, its result the points."""
        self._job_ids.append(job_id)
        self.poll()

    def cancel(self, job_id: str) -> bool:
        if self.read_only:
            self.message = READ_ONLY
            return False
        ok = self.runner.cancel(job_id)
        self.poll()
        return ok

    def poll(self) -> None:
        """Refresh job states; finished evaluations become points."""
        self.search.poll()
        if not self._job_ids:
            return
        rows, changed = [], False
        for jid in self._job_ids:
            info = self.runner.status(jid)
            rows.append({"id": info.id, "label": info.label, "state": info.state,
                         "progress": float(info.progress), "message": info.message, "error": info.error or ""})
            ev = info.result
            if ev is not None and ev.key not in self._evals:
                self._evals[ev.key] = ev
                changed = True
        df = pd.DataFrame(rows, columns=JOB_COLUMNS) if rows else _empty(JOB_COLUMNS)
        if self.jobs is None or not df.equals(self.jobs):
            self.jobs = df
        if changed:
            self._refresh_points()

    @property
    def busy(self) -> bool:
        return self.jobs is not None and bool((self.jobs["state"].isin(["queued", "running"])).any())

    # ---- points ---------------------------------------------------------------------------
    def add_evaluation(self, ev: Evaluation) -> None:
        self.add_evaluations([ev])

    def add_evaluations(self, evs: list[Evaluation]) -> None:
        """Several points at once: the points table (and every view on it) is rebuilt once."""
        for ev in evs:
            self._evals[ev.key] = ev
        self._refresh_points()

    def evaluations(self) -> list[Evaluation]:
        return [e for e in self._evals.values() if e.model == self.model and e.dataset == self.dataset]

    def evaluation(self, key: str) -> Evaluation | None:
        """The evaluation behind a point (None for an unknown key)."""
        return self._evals.get(key)

    @property
    def frontier_state(self):
        """The Frontier tab's state (brush, heat map scope, second profile); made on first use."""
        fs = getattr(self, "_frontier_state", None)
        if fs is None:
            from .frontier import FrontierState
            fs = self._frontier_state = FrontierState(list(self.param.profile.objects), self.profile)
        return fs

    @property
    def tiers(self):
        """Confirm actions, the confirmed budget and the confirmed-only switch; made on first use."""
        ts = getattr(self, "_tiers", None)
        if ts is None:
            from .tiers import TierState
            ts = self._tiers = TierState(self)
        return ts

    def _point_cost(self, ev: Evaluation, profile: str | None = None) -> dict:
        """A point's plan costed on ``profile`` (the workspace's by default) at the current batch."""
        profile = profile or self.profile
        key = (ev.key, profile, self.batch)
        if key not in self._cost_memo:
            try:
                configs = Plan.from_dict(ev.plan).resolve(self._topo.names)
            except PlanError as e:
                self._cost_memo[key] = {"summary": f"(plan does not fit: {e})"}
                return self._cost_memo[key]
            try:
                if profile not in self._profiles:
                    self._profiles[profile] = load_profile(profile)
                rep = cost_topology(self._topo, configs, self._profiles[profile], self.batch)
                self._cost_memo[key] = {"throughput": rep.throughput, "latency_s": rep.latency_s,
                                        "energy_j": rep.energy_j, "size_bytes": rep.size_bytes,
                                        "summary": summary(configs)}
            except PlanError:  # a plan the network cannot run (its point failed, with the reason)
                self._cost_memo[key] = {"summary": summary(configs)}
        return self._cost_memo[key]

    def costs_on(self, profile: str) -> dict[str, dict]:
        """Every point's cost on another accelerator profile, by key (for the profile comparison)."""
        return {ev.key: self._point_cost(ev, profile) for ev in self.evaluations()}

    def _refresh_points(self) -> None:
        from .frontier import point_label
        rows = []
        for ev in self.evaluations():
            c = self._point_cost(ev)
            name = ev.plan.get("name") or c.get("summary", "")
            bt, bv = ev.baseline_test_accuracy, ev.baseline_val_accuracy
            rows.append({"key": ev.key, "label": point_label(name, ev.status, ev.steps, ev.tier), "status": ev.status,
                         "reason": ev.reason or "", "test_accuracy": ev.test_accuracy, "val_accuracy": ev.val_accuracy,
                         "estimate_val_accuracy": ev.estimate_val_accuracy,
                         "baseline_test_accuracy": bt, "baseline_val_accuracy": bv,
                         "test_vs_fp32": None if ev.test_accuracy is None or bt is None else ev.test_accuracy - bt,
                         "val_vs_fp32": None if ev.val_accuracy is None or bv is None else ev.val_accuracy - bv,
                         "throughput": c.get("throughput"), "latency_s": c.get("latency_s"),
                         "energy_j": c.get("energy_j"), "size_bytes": c.get("size_bytes"), "steps": ev.steps,
                         "distill": bool(ev.settings.get("distill")), "wall_s": ev.wall_s,
                         "summary": c.get("summary", ""),
                         "plan_digest": ev.provenance.get("plan_hash") or _plan_digest(ev.plan), "tier": ev.tier})
        df = pd.DataFrame(rows, columns=POINT_COLUMNS) if rows else _empty(POINT_COLUMNS)
        for col in _NUMERIC_POINT_COLUMNS:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        self.points = df

    def frontier(self) -> pd.DataFrame:
        """The Pareto points on the current axes (accuracy up; throughput up, the others down)."""
        from .frontier import pareto_points
        return pareto_points(self.points, self.x_axis, self.y_axis, self.only_finetuned, self.tiers.only_confirmed)

    def select(self, key: str, load: bool = True) -> None:
        """Select a point; its plan goes into the editor (unless read-only)."""
        ev = self._evals.get(key)
        if ev is None:
            self.message = f"no point {key!r} in this session"
            return
        self.selected = key
        if load and not self.read_only:
            try:
                self.load_plan(Plan.from_dict(ev.plan))
                self.message = f"loaded the plan of {ev.plan.get('name') or key}"
            except PlanError as e:
                self.message = f"that point's plan does not fit {self.model}: {e}"

    def compare(self) -> pd.DataFrame:
        """Two points' plans side by side, layer by layer, with their accuracy and cost."""
        cols = ["layer"] + [f"{f}_{s}" for s in ("a", "b") for f in ("w_bits", "a_bits", "widen", "sparsity")] + ["differs"]
        a, b = self._evals.get(self.compare_a), self._evals.get(self.compare_b)
        if a is None or b is None:
            return pd.DataFrame(columns=cols)
        ca = Plan.from_dict(a.plan).resolve(self._topo.names)
        cb = Plan.from_dict(b.plan).resolve(self._topo.names)
        rows = []
        for n in self._topo.names:
            x, y = ca[n], cb[n]
            rows.append({"layer": n, "w_bits_a": x.w_bits, "a_bits_a": x.a_bits, "widen_a": x.widen,
                         "sparsity_a": x.sparsity, "w_bits_b": y.w_bits, "a_bits_b": y.a_bits, "widen_b": y.widen,
                         "sparsity_b": y.sparsity, "differs": x != y})
        return pd.DataFrame(rows, columns=cols)

    # ---- exports --------------------------------------------------------------------------
    def plan_json(self) -> str:
        return self.current_plan().to_json() + "\n"

    def results_csv(self) -> str:
        return self.points.to_csv(index=False)

    def export_selected(self, kind: str) -> bytes | None:
        """The selected point's network as ONNX (``onnx``, or ``onnx-integer``: the form integer
        runtimes fuse) or a packed file (``packed``).

        The network is the one its job saved beside the store (nothing is retrained here).
        Returns None, with the reason in ``message``, on failure.
        """
        from engine.explore.pipeline import export_network
        from engine.models.artifacts import saved_network
        ev = self._evals.get(self.selected)
        if ev is None:
            self.message = "select a point on the frontier first"
            return None
        try:
            name, blob, note = export_network(ev, kind, saved_network(getattr(self.store, "path", None), ev.key))
        except USER_ERRORS as e:
            self.message = f"export refused: {e}"
            return None
        except RuntimeError as e:  # ExportError / DeployError name the layer that cannot run
            self.message = f"export refused: {e}"
            return None
        self.message = f"exported {name}: {note}"
        return blob

