"""Tiers on the dashboard: confirm points (fine-tune them at the confirmed budget, as background
jobs), draw the frontier from confirmed points only, and say how well quick ranks agree with
confirmed. No Panel import: the Frontier tab binds to it and tests drive it directly.
"""
from __future__ import annotations

import param

from engine.errors import USER_ERRORS
from engine.evaluation import Settings, code_version, evaluation_key
from engine.explore.tiers import CONFIRMED_BUDGET, RankAgreement, confirmed_settings, rank_agreement
from engine.plans.plan import Plan, PlanError

from .sessions import READ_ONLY

ACTIVE = ("queued", "running")


class TierState(param.Parameterized):
    """One workspace's tiers: the confirmed budget it uses, the confirmed-only frontier switch, and
    the confirm actions."""

    only_confirmed = param.Boolean(default=False, doc="draw the frontier from confirmed points only")
    budget = param.Dict(default=dict(CONFIRMED_BUDGET),
                        doc="the confirmed tier's budget (settings replacing the quick ones; engine.explore.tiers)")
    message = param.String(default="", doc="what the last confirm did, or why it did nothing")

    def __init__(self, workspace, **params):
        self.workspace = workspace
        super().__init__(**params)

    def budget_text(self) -> str:
        steps = self.budget.get("steps", CONFIRMED_BUDGET["steps"])
        return f"confirmed tier: {steps} fine-tuning steps a point, run in the background"

    def settings_for(self, key: str) -> Settings | None:
        """The confirmed-tier settings of a point: its own recipe (seed, distillation...) at the confirmed budget."""
        ev = self.workspace.evaluation(key)
        if ev is None:
            return None
        return confirmed_settings(Settings.from_dict(ev.settings), self.budget)

    def confirm(self, keys: list[str]) -> list[str]:
        """Submit a confirmed-tier job for each point (background jobs; the points land as they finish).

        Skipped, and counted in ``message``: points already confirmed, whose confirmed twin exists
        or is running, and failed points; a confirmed result already in the store is reused."""
        ws = self.workspace
        if ws.read_only:
            self.message = ws.message = READ_ONLY
            return []
        if not keys:
            self.message = "select a point on the frontier (tap it or pick its row) to confirm it"
            return []
        running = {j.key for j in ws.runner.jobs() if j.state in ACTIVE}
        submitted, reused, skipped = [], 0, []
        for key in keys:
            ev = ws.evaluation(key)
            if ev is None:
                skipped.append("unknown point")
                continue
            if ev.status == "failed":
                skipped.append("failed (fix its plan first)")
                continue
            if ev.tier == "confirmed":
                skipped.append("already confirmed")
                continue
            try:
                settings = self.settings_for(key)
                plan = Plan.from_dict(ev.plan)
            except (*USER_ERRORS, PlanError) as e:
                self.message = f"confirm refused: {e}"
                return submitted
            ckey = evaluation_key(plan.to_dict(), ev.model, ev.dataset, settings.to_dict(), code_version())
            if ws.evaluation(ckey) is not None or ckey in running:
                skipped.append("already confirmed or confirming")
                continue
            stored = ws.store.computed(ckey)
            if stored is not None:
                ws.store.attach(ws.sessions.ensure(), ckey)
                ws.add_evaluation(stored)
                reused += 1
                continue
            name = ev.plan.get("name") or key[:6]
            jid = ws.runner.submit(ev.model, ev.dataset, plan, settings, session=ws.sessions.ensure(),
                                   label=f"confirm {name}")
            running.add(ckey)
            submitted.append(jid)
            ws.track(jid)
        self.message = _summary(len(submitted), reused, skipped, settings_steps(self.budget))
        return submitted

    def confirm_pareto(self) -> list[str]:
        """Confirm every Pareto point of the current axes (those not confirmed yet)."""
        if self.workspace.read_only:
            return self.confirm([])
        front = self.workspace.frontier()
        if front is None or front.empty:
            self.message = "no Pareto points to confirm yet"
            return []
        return self.confirm([k for k, t in zip(front["key"], front["tier"]) if t != "confirmed"]
                            or list(front["key"]))

    def agreement(self, y: str | None = None) -> RankAgreement:
        """Spearman's rank correlation of quick vs confirmed accuracy on the split of ``y``."""
        ws = self.workspace
        y = y or ws.y_axis
        return rank_agreement(ws.points, "val_accuracy" if y.startswith("val") else "test_accuracy")


def settings_steps(budget: dict) -> int:
    return int(budget.get("steps", CONFIRMED_BUDGET["steps"]))


def _summary(submitted: int, reused: int, skipped: list[str], steps: int) -> str:
    parts = []
    if submitted:
        parts.append(f"confirming {submitted} point{'s' if submitted != 1 else ''} ({steps} steps each, "
                     "in the background; see Jobs)")
    if reused:
        parts.append(f"{reused} confirmed result{'s' if reused != 1 else ''} taken from the store")
    for why in dict.fromkeys(skipped):
        n = skipped.count(why)
        parts.append(f"{n} skipped: {why}")
    return "; ".join(parts) or "nothing to confirm"
