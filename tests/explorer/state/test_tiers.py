"""Tiers in the workspace, without a browser: the tier of each point, the confirmed-only frontier,
confirming points (real jobs, a tiny confirmed budget), CSV and session files with the tier, the
quick vs confirmed rank correlation, and a search that ends by confirming its Pareto points."""
import io
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from engine.evaluation import Evaluation, Settings
from engine.explore.store import Store
from engine.explore.tiers import confirmed_settings
from engine.plans.plan import Plan
from explorer.state import frontier as fr
from explorer.state.workspace import Workspace
from tests.explorer.conftest import wait_jobs
from tests.explorer.state.test_search import drive

TINY_CONFIRM = {"steps": 4}


def point(bits, settings: Settings, acc, status="fine-tuned", widen=1.0):
    plan = Plan.uniform(bits, bits, model="lenet5")
    if widen != 1.0:
        plan.layers["conv1"] = {"widen": widen}
    return Evaluation(plan=plan.to_dict(), model="lenet5", dataset="digits", settings=settings.to_dict(),
                      status=status, test_accuracy=acc, val_accuracy=acc, baseline_test_accuracy=0.97,
                      baseline_val_accuracy=0.96, steps=settings.steps, provenance={"plan_hash": plan.digest()},
                      reason="diverged" if status == "failed" else None)


QUICK, CONF = Settings(steps=20), confirmed_settings(Settings(steps=20), TINY_CONFIRM)


@pytest.fixture
def ws(tmp_path):
    w = Workspace(store=Store(tmp_path / "s.sqlite"), runner=None)
    w.add_evaluations([point(8, Settings(steps=0), 0.96, "estimated"), point(4, QUICK, 0.93), point(4, CONF, 0.95),
                       point(2, QUICK, 0.97), point(3, CONF, 0.5, "failed")])
    return w


def test_every_point_has_its_tier_and_is_drawn_by_it(ws):
    p = ws.points.set_index("label")
    assert p.loc["W8A8 ×5 · estimate", "tier"] == "estimated"
    assert p.loc["W4A4 ×5 · 20 steps", "tier"] == "quick"
    assert p.loc["W4A4 ×5 · 4 steps confirmed", "tier"] == "confirmed"
    drawn = fr.plot_frame(ws.points, "throughput", "test_accuracy").set_index("label")
    assert drawn.loc["W3A3 ×5 · failed", "kind"] == "failed"
    kinds = drawn.set_index("kind", append=True)["marker"].groupby(level="kind").first()
    assert len(set(kinds)) == 4 == len(set(fr.KIND_COLORS.values()))   # distinct marker and colour per tier
    table = fr.table_frame(ws.points, "test_accuracy")
    assert list(table.columns[:3]) == ["label", "status", "tier"]
    assert dict(zip(table["label"], table["tier"]))["W4A4 ×5 · 4 steps confirmed"] == "confirmed"


def test_the_frontier_can_be_drawn_from_confirmed_points_only(ws):
    everything = ws.frontier()
    assert "quick" in set(everything["tier"])       # the quick W2A2 point beats the confirmed W4A4 point
    ws.tiers.only_confirmed = True
    only = ws.frontier()
    assert set(only["tier"]) == {"confirmed"} and len(only) == 1
    ws.tiers.only_confirmed = False
    ws.points = ws.points[ws.points["tier"] != "confirmed"]
    ws.tiers.only_confirmed = True
    assert ws.frontier().empty


def test_csv_and_session_file_carry_the_tier(ws, tmp_path):
    csv = pd.read_csv(io.StringIO(ws.results_csv()))
    assert dict(zip(csv["label"], csv["tier"])) == dict(zip(ws.points["label"], ws.points["tier"]))
    ws.sessions.save("tiers")
    doc = json.loads(ws.sessions.export_file())
    assert sorted(d["tier"] for d in doc["evaluations"]) == sorted(ws.points["tier"])
    other = Workspace(store=Store(tmp_path / "other.sqlite"), runner=None)
    assert other.sessions.import_file(json.dumps(doc)), other.message
    got = other.points.set_index("key")["tier"].to_dict()
    assert got == ws.points.set_index("key")["tier"].to_dict()


def test_rank_correlation_of_quick_and_confirmed(tmp_path):
    w = Workspace(store=Store(tmp_path / "s.sqlite"), runner=None)
    rng = np.random.default_rng(1)
    quick = rng.uniform(0.6, 0.9, 5)
    conf = quick + rng.normal(0, 0.04, 5)
    widths = [1.0, 1.5, 2.0, 3.0, 4.0]
    w.add_evaluations([point(4, QUICK, q, widen=k) for q, k in zip(quick, widths)]
                      + [point(4, CONF, c, widen=k) for c, k in zip(conf, widths)])
    agr = w.tiers.agreement()
    assert agr.n == 5 and agr.rho == pytest.approx(spearmanr(quick, conf).statistic)
    assert f"Spearman ρ = {agr.rho:+.2f}" in agr.text() and "test accuracy" in agr.text()
    assert "validation accuracy" in w.tiers.agreement("val_accuracy").text()


@pytest.mark.slow
def test_confirm_a_point_runs_a_confirmed_job_and_marks_it(services, tmp_path):
    store, runner = services
    ws = Workspace(store=store, runner=runner)
    ws.tiers.budget = dict(TINY_CONFIRM)
    assert ws.tiers.confirm([]) == [] and "select a point" in ws.tiers.message
    ws.submit(steps=0)
    wait_jobs(ws)
    (est_key,) = ws.points["key"]
    jobs = ws.tiers.confirm([est_key])
    assert len(jobs) == 1 and "confirming 1 point (4 steps each" in ws.tiers.message
    assert ws.tiers.confirm([est_key]) == [] and "already confirmed or confirming" in ws.tiers.message
    wait_jobs(ws)
    pts = ws.points.set_index("key")
    conf = pts[pts["tier"] == "confirmed"]
    assert len(conf) == 1 and conf["steps"].iloc[0] == 4 and conf["status"].iloc[0] == "fine-tuned"
    assert conf["plan_digest"].iloc[0] == pts.loc[est_key, "plan_digest"]
    ev = ws.evaluation(conf.index[0])
    assert ev.settings["tier"] == "confirmed" and ev.settings["seed"] == ws.evaluation(est_key).settings["seed"]
    assert conf.index[0] in {e.key for e in store.evaluations(session=ws.sessions.ensure())}
    assert ws.tiers.confirm([conf.index[0]]) == [] and "already confirmed" in ws.tiers.message
    ws.tiers.only_confirmed = True
    assert list(ws.frontier()["key"]) == [conf.index[0]]
    # a second workspace on the same store reuses the stored confirmed result: no job
    again = Workspace(store=store, runner=runner)
    again.tiers.budget = dict(TINY_CONFIRM)
    again.add_evaluation(ws.evaluation(est_key))
    assert again.tiers.confirm_pareto() == [] and "1 confirmed result taken from the store" in again.tiers.message
    assert "confirmed" in set(again.points["tier"])


def test_confirm_is_refused_read_only_and_for_failed_points(ws):
    failed = ws.points.loc[ws.points["status"] == "failed", "key"].iloc[0]
    assert ws.tiers.confirm([failed]) == [] and "failed" in ws.tiers.message
    ws.read_only = True
    quick = ws.points.loc[ws.points["tier"] == "quick", "key"].iloc[0]
    assert ws.tiers.confirm([quick]) == [] and "read-only" in ws.tiers.message


@pytest.mark.slow
def test_search_ends_by_confirming_its_pareto_points(workspace):
    ws = workspace
    s = ws.search
    ws.tiers.budget = dict(TINY_CONFIRM)
    s.param.update(method="nsga2", budget=4, finetune=2, steps=5)
    assert s.confirm and "then its Pareto points confirmed (4 steps each)" in s.plan_text
    assert s.start()
    drive(ws, lambda: not s.running)
    assert s.status == "done", s.message
    res = s.job.result
    conf = ws.points[ws.points["tier"] == "confirmed"]
    assert len(conf) == len(res.extra["searched_frontier"]) >= 1 and (conf["steps"] == 4).all()
    assert set(res.frontier["key"]) <= set(conf["key"])
    assert f"{len(conf)} confirmed" in s.message and "quick vs confirmed" in s.message
