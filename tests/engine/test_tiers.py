"""Tiers: estimated / quick / confirmed derived for every Evaluation (old records too), the confirmed
budget, the quick-vs-confirmed rank correlation, and session files that carry the tier."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from engine.errors import UserError
from engine.evaluation import Evaluation, Settings, evaluation_key
from engine.explore.store import Store, checksum
from engine.explore.tiers import CONFIRMED_BUDGET, MIN_PAIRS, confirmed_settings, rank_agreement, tier_of, tier_pairs
from engine.plans.plan import Plan


def ev_with(settings: Settings | dict, status="fine-tuned", bits=4, acc=0.9) -> Evaluation:
    s = settings.to_dict() if isinstance(settings, Settings) else settings
    return Evaluation(plan=Plan.uniform(bits, bits).to_dict(), model="lenet5", dataset="digits", settings=s,
                      status=status, val_accuracy=acc, test_accuracy=acc, steps=s.get("steps", 400),
                      provenance={"code_version": "test"})


def test_default_settings_keep_their_cache_key():
    """A quick (default) evaluation's settings and key are what they were before tiers existed."""
    d = Settings().to_dict()
    assert "tier" not in d
    assert Settings.from_dict(d).tier == "quick"      # a record written before tiers reads as quick
    conf = confirmed_settings(Settings()).to_dict()
    assert conf["tier"] == "confirmed"
    assert evaluation_key({}, "m", "d", conf, "v") != evaluation_key({}, "m", "d", {**conf, "tier": "quick"}, "v")


@pytest.mark.parametrize("settings,status,tier", [
    ({"steps": 0}, "estimated", "estimated"),
    ({"steps": 400}, "fine-tuned", "quick"),                    # an old record: no tier setting
    ({"steps": 400, "tier": "confirmed"}, "fine-tuned", "confirmed"),
    ({"steps": 0}, "failed", "estimated"),                      # a failed estimate
    ({"steps": 400, "tier": "confirmed"}, "failed", "confirmed"),
    ({}, "fine-tuned", "quick"),
])
def test_tier_is_derived_from_settings_and_status(settings, status, tier):
    assert tier_of(settings, status) == tier
    assert ev_with(settings, status).tier == tier


def test_stored_record_without_tier_reads_as_quick(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    ev = ev_with(Settings(steps=5))
    d = ev.to_dict()
    d.pop("tier")
    d["settings"].pop("tier", None)
    store.put(Evaluation.from_dict(d))
    got = store.get(ev.key)
    assert got.tier == "quick" and got.to_dict()["tier"] == "quick"


def test_tier_setting_is_checked():
    with pytest.raises(UserError, match="tier='estimated' is not one of quick, confirmed"):
        Settings(tier="estimated")
    with pytest.raises(UserError, match="tier=confirmed needs steps above 0"):
        Settings(steps=0, tier="confirmed")
    with pytest.raises(UserError, match="unknown setting"):
        Settings.from_dict({"tiers": "quick"})


def test_confirmed_settings_keep_the_recipe_and_take_the_budget():
    base = Settings(steps=50, seed=7, distill=True, lr=2e-3, eval_limit=100, score_test=False)
    c = confirmed_settings(base)
    assert (c.seed, c.distill, c.lr) == (7, True, 2e-3)
    assert c.steps == CONFIRMED_BUDGET["steps"] and c.steps > Settings().steps
    assert c.eval_limit is None and c.score_test is True and c.tier == "confirmed"
    assert confirmed_settings(base, {"steps": 3}).steps == 3
    assert confirmed_settings(None).tier == "confirmed"
    with pytest.raises(UserError, match="steps"):
        confirmed_settings(base, {"steps": -1})
    with pytest.raises(UserError, match="unknown setting"):
        confirmed_settings(base, {"stepz": 3})


def frame(rows):
    return pd.DataFrame(rows, columns=["plan_digest", "tier", "status", "test_accuracy"])


def test_pairs_average_seeds_and_skip_failed_and_estimates():
    pts = frame([("a", "quick", "fine-tuned", 0.80), ("a", "quick", "fine-tuned", 0.90),
                 ("a", "confirmed", "fine-tuned", 0.95), ("a", "estimated", "estimated", 0.10),
                 ("b", "quick", "fine-tuned", 0.70), ("b", "confirmed", "failed", np.nan),
                 ("c", "confirmed", "fine-tuned", 0.90)])
    pairs = tier_pairs(pts)
    assert pairs["plan_digest"].tolist() == ["a"]
    assert pairs["quick"].iloc[0] == pytest.approx(0.85) and pairs["confirmed"].iloc[0] == pytest.approx(0.95)


def test_rank_correlation_is_spearman_of_the_paired_plans():
    rng = np.random.default_rng(0)
    quick = rng.uniform(0.5, 0.9, 8)
    conf = quick + rng.normal(0, 0.05, 8)
    rows = [(f"p{i}", "quick", "fine-tuned", q) for i, q in enumerate(quick)]
    rows += [(f"p{i}", "confirmed", "fine-tuned", c) for i, c in enumerate(conf)]
    rows += [("lonely", "quick", "fine-tuned", 0.99)]           # no confirmed twin: not paired
    agr = rank_agreement(frame(rows))
    want = spearmanr(quick, conf)
    assert agr.n == 8 and agr.rho == pytest.approx(want.statistic) and agr.pvalue == pytest.approx(want.pvalue)
    assert f"{agr.rho:+.2f}" in agr.text() and "8 plans" in agr.text()
    flipped = frame([(f"p{i}", "quick", "fine-tuned", q) for i, q in enumerate(quick)]
                    + [(f"p{i}", "confirmed", "fine-tuned", 1 - q) for i, q in enumerate(quick)])
    assert rank_agreement(flipped).rho == pytest.approx(-1.0)


def test_rank_correlation_says_when_there_is_too_little():
    assert rank_agreement(frame([])).text() == "quick vs confirmed: no plan has both tiers yet"
    two = frame([("a", "quick", "fine-tuned", 0.8), ("a", "confirmed", "fine-tuned", 0.9),
                 ("b", "quick", "fine-tuned", 0.7), ("b", "confirmed", "fine-tuned", 0.6)])
    agr = rank_agreement(two)
    assert agr.n == 2 and agr.rho is None and f"needs at least {MIN_PAIRS} plans" in agr.text()
    flat = frame([(p, t, "fine-tuned", 0.5) for p in "abc" for t in ("quick", "confirmed")])
    assert rank_agreement(flat).rho is None and "all equal" in rank_agreement(flat).text()


def test_session_file_carries_the_tier_and_round_trips(tmp_path):
    a = Store(tmp_path / "a.sqlite")
    sid = a.create_session("tiers", "lenet5", "digits", "cpu")
    evs = [ev_with(Settings(steps=0), "estimated", 2), ev_with(Settings(steps=5), "fine-tuned", 3),
           ev_with(confirmed_settings(Settings(steps=5), {"steps": 9}), "fine-tuned", 4)]
    for ev in evs:
        a.put(ev, session=sid)
    doc = json.loads(a.export_session_json(sid))
    assert [d["tier"] for d in doc["evaluations"]] == ["estimated", "quick", "confirmed"]
    b = Store(tmp_path / "b.sqlite")
    sid_b = b.import_session(doc)
    assert [e.tier for e in b.evaluations(session=sid_b)] == ["estimated", "quick", "confirmed"]
    assert [e.key for e in b.evaluations(session=sid_b)] == [e.key for e in evs]


def test_session_file_whose_tier_contradicts_its_settings_is_refused(tmp_path):
    a = Store(tmp_path / "a.sqlite")
    sid = a.create_session("tiers", "lenet5", "digits", "cpu")
    a.put(ev_with(Settings(steps=5)), session=sid)
    doc = a.export_session(sid)
    doc["evaluations"][0]["tier"] = "confirmed"      # a quick point posing as confirmed
    doc["checksum"] = checksum(doc)
    with pytest.raises(UserError, match="tier 'confirmed' does not match its settings and status \\(quick\\)"):
        Store(tmp_path / "b.sqlite").import_session(doc)


def test_evaluation_key_unchanged_by_the_tier_field_in_to_dict():
    ev = ev_with(Settings(steps=5))
    d = ev.to_dict()
    assert d["tier"] == "quick" and Evaluation.from_dict(d).key == ev.key == d["key"]
    assert ev.key == evaluation_key(ev.plan, ev.model, ev.dataset, ev.settings, "test")
