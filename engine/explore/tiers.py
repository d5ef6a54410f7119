"""The three tiers of an evaluation: estimated (no training), quick (the interactive budget) and
confirmed (a convergent budget, run in the background), and how far quick ranks agree with confirmed.

The confirmed budget is defined here and nowhere else (``CONFIRMED_BUDGET``); the dashboard, the
search and ``bitscape sweep`` all build their confirmed-tier settings with ``confirmed_settings``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pandas as pd

from engine.errors import UserError
from engine.evaluation import Settings

TIERS = ("estimated", "quick", "confirmed")
# The confirmed budget: settings fields that replace the quick ones. 2000 steps of batch 64 is about
# two epochs of Fashion-MNIST and many of digits. Hook: once the fine-tune can stop when validation
# stops improving (a ``patience`` setting), add it here, keeping ``steps`` as the cap.
CONFIRMED_BUDGET: dict = {"steps": 2000}
MIN_PAIRS = 3   # fewer plans with both tiers give no rank correlation worth printing


def tier_of(settings: dict | None, status: str | None = None) -> str:
    """The tier of an evaluation run with ``settings`` (a dict, as stored): estimated when it trained
    nothing (0 steps, or an 'estimated' status), else the settings' tier; records from before tiers
    existed carry no tier and read as quick."""
    settings = settings or {}
    if status == "estimated" or not settings.get("steps", 1):
        return "estimated"
    tier = settings.get("tier", "quick")
    return tier if tier in TIERS else "quick"


def confirmed_settings(base: Settings | dict | None = None, budget: dict | None = None) -> Settings:
    """The confirmed-tier settings of a plan evaluated with ``base`` (its seed, learning rates,
    distillation...): ``budget`` (default ``CONFIRMED_BUDGET``) replaces the training budget, and
    validation and test are scored in full."""
    if isinstance(base, Settings):
        base = base.to_dict()
    budget = CONFIRMED_BUDGET if budget is None else budget
    if not isinstance(budget, dict):
        raise UserError(f"the confirmed budget must be an object of settings, got {type(budget).__name__}")
    return Settings.from_dict({**(base or {}), "eval_limit": None, "score_test": True, **budget,
                               "tier": "confirmed"})


# ---- quick vs confirmed -----------------------------------------------------------------------------
@dataclass
class RankAgreement:
    """Spearman's rank correlation between the quick and confirmed accuracy of the same plans."""

    n: int                      # plans with both a quick and a confirmed accuracy
    rho: float | None = None    # None when n < MIN_PAIRS or every accuracy of a tier is equal
    pvalue: float | None = None
    metric: str = "test_accuracy"

    def text(self) -> str:
        split = "validation" if self.metric.startswith("val") else "test"
        if self.n == 0:
            return "quick vs confirmed: no plan has both tiers yet"
        if self.rho is None:
            why = (f"needs at least {MIN_PAIRS} plans with both" if self.n < MIN_PAIRS
                   else "undefined, the accuracies of one tier are all equal")
            plans = f"{self.n} plan" + ("s" if self.n != 1 else "")
            return f"quick vs confirmed rank correlation ({split} accuracy, {plans}): {why}"
        return (f"quick vs confirmed rank correlation ({split} accuracy, {self.n} plans): "
                f"Spearman ρ = {self.rho:+.2f} (p = {self.pvalue:.2g})")

    def to_dict(self) -> dict:
        return {"n": self.n, "rho": self.rho, "pvalue": self.pvalue, "metric": self.metric}


def tier_pairs(points: pd.DataFrame, metric: str = "test_accuracy", plan_col: str = "plan_digest") -> pd.DataFrame:
    """One row per plan scored at both the quick and the confirmed tier: its mean ``metric`` at each
    (several seeds of one tier are averaged). ``points`` needs ``plan_col``, ``tier``, ``status`` and ``metric``."""
    cols = [plan_col, "quick", "confirmed"]
    if points is None or len(points) == 0:
        return pd.DataFrame(columns=cols)
    df = points[(points["status"] != "failed") & points["tier"].isin(["quick", "confirmed"])].copy()
    df[metric] = pd.to_numeric(df[metric], errors="coerce")
    df = df.dropna(subset=[metric])
    df = df[df[plan_col].astype(str) != ""]
    if df.empty:
        return pd.DataFrame(columns=cols)
    wide = df.pivot_table(index=plan_col, columns="tier", values=metric, aggfunc="mean")
    if not {"quick", "confirmed"} <= set(wide.columns):
        return pd.DataFrame(columns=cols)
    return wide[["quick", "confirmed"]].dropna().reset_index()[cols]


def rank_agreement(points: pd.DataFrame, metric: str = "test_accuracy", plan_col: str = "plan_digest") -> RankAgreement:
    """How well the quick tier ranks plans as the confirmed tier does (Spearman, scipy.stats)."""
    from scipy.stats import spearmanr
    pairs = tier_pairs(points, metric, plan_col)
    n = len(pairs)
    if n < MIN_PAIRS:
        return RankAgreement(n, metric=metric)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # constant input: scipy warns and returns NaN
        res = spearmanr(pairs["quick"].to_numpy(float), pairs["confirmed"].to_numpy(float))
    rho, p = float(res.statistic), float(res.pvalue)
    if not math.isfinite(rho):
        return RankAgreement(n, metric=metric)
    return RankAgreement(n, rho, p, metric)
