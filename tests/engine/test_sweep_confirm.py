"""A search ends by confirming its final Pareto points: the confirmed tier's frontier is reported,
the CSV carries the tier, and the summary gives the quick vs confirmed rank correlation."""
import pandas as pd
import pytest

from engine.explore.store import Store
from engine.explore.sweep import run_sweep
from explorer.cli import main
from tests.engine.test_jobs import shared_runner

pytestmark = pytest.mark.slow
KW = dict(budget=6, finetune=3, steps=6, seed=3, population=3)


def test_sweep_confirms_its_pareto_points(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    out = tmp_path / "front.csv"
    res = run_sweep("mlp", "digits", "bismo", store=store, runner=shared_runner(store), out=out, confirm=True,
                    confirm_budget={"steps": 9}, **KW)
    searched = res.extra["searched_frontier"]
    pts = res.points
    confirmed = pts[pts.tier == "confirmed"]
    assert len(confirmed) == len(searched) >= 1
    assert set(confirmed.plan_digest) == set(searched.plan_digest)
    assert (confirmed.steps == 9).all() and set(confirmed.phase) == {"confirm"}
    assert set(pts.tier) >= {"estimated", "quick", "confirmed"}
    assert (res.frontier.tier == "confirmed").all() and set(res.frontier.key) <= set(confirmed.key)
    assert pd.read_csv(out)["tier"].eq("confirmed").all()
    s = res.summary()
    assert s["confirmed"] == len(confirmed)
    both = set(confirmed.plan_digest) & set(pts[pts.tier == "quick"].plan_digest)
    assert s["rank_correlation"]["n"] == len(both) == res.agreement.n
    evs = {e.key: e for e in store.evaluations(session=res.session)}
    assert all(evs[k].settings["tier"] == "confirmed" for k in confirmed.key)
    # resumable: a rerun confirms nothing again
    again = run_sweep("mlp", "digits", "bismo", store=store, runner=shared_runner(store), confirm=True,
                      confirm_budget={"steps": 9}, **KW)
    assert again.submitted == 0 and set(again.frontier.key) == set(res.frontier.key)


def test_sweep_without_confirm_has_no_confirmed_points():
    store = Store(":memory:")
    res = run_sweep("mlp", "digits", "bismo", store=store, runner=shared_runner(store), **KW)
    assert "confirmed" not in set(res.points.tier) and res.summary()["confirmed"] == 0
    assert "searched_frontier" not in res.extra


def test_sweep_cli_prints_tiers_and_rank_correlation(tmp_path, capsys):
    db = tmp_path / "cli.sqlite"
    base = ["sweep", "--model", "mlp", "--profile", "bismo", "--budget", "4", "--finetune", "2", "--steps", "5",
            "--store", str(db), "--workers", "1"]
    assert main(base + ["--confirm-steps", "7", "--out", str(tmp_path / "f.csv")]) == 0
    text = capsys.readouterr().out
    assert "its points are the confirmed tier" in text and "quick vs confirmed" in text and " confirmed " in text
    assert "frontier (selected on validation, reported on test):" in text
    assert pd.read_csv(tmp_path / "f.csv")["tier"].eq("confirmed").all()
    assert main(base + ["--no-confirm"]) == 0
    text = capsys.readouterr().out
    assert "confirmed tier" not in text and "quick vs confirmed" not in text and " quick " in text
    assert main(base + ["--confirm-steps", "0"]) == 2
    assert "--confirm-steps must be 1 or more" in capsys.readouterr().err
