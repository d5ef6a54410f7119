import json

import pandas as pd
import pytest

from engine.explore.jobs import JobRunner
from engine.explore.search import greedy_plans
from engine.explore.store import Store
from engine.explore.sweep import run_sweep
from engine.models.baselines import load_baseline
from engine.models.data import load_dataset
from engine.plans.graph import analyze
from engine.plans.plan import Plan
from engine.training.sensitivity import eagl
from explorer.cli import main
from tests.engine.test_jobs import shared_runner

KW = dict(budget=6, finetune=2, steps=10, seed=3, population=3)


def test_sweep_writes_store_and_frontier_and_resumes(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    out = tmp_path / "front.csv"
    runner = shared_runner(store)
    # interrupt after a few points: what finished is stored
    seen = []

    def stop_early(done, total, msg):
        seen.append(done)
        if done >= 4 and "cached" not in msg:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_sweep("mlp", "digits", "bismo", store=store, runner=runner, progress=stop_early, **KW)
    partial = {e.key for e in store.evaluations()}
    assert len(partial) >= 3
    res = run_sweep("mlp", "digits", "bismo", store=store, runner=runner, out=out, **KW)
    assert res.reused >= len(partial) and res.submitted == len(res.points) - res.reused
    keys = [e.key for e in store.evaluations(session=res.session)]
    assert set(res.points.key) == set(keys) and len(res.points) == 8
    assert set(res.points.phase) == {"estimate", "fine-tune"}
    assert (res.points.status == "fine-tuned").sum() == 2
    assert all("bismo" in e.costs and e.costs["bismo"]["throughput"] > 0 for e in store.evaluations())
    front = pd.read_csv(out)
    assert set(front.status) == {"fine-tuned"} and {"test_accuracy", "throughput", "plan", "key"} <= set(front.columns)
    assert res.hypervolume > 0
    # a complete rerun does no work at all
    again = run_sweep("mlp", "digits", "bismo", store=store, runner=runner, **KW)
    assert again.submitted == 0 and again.reused == 8
    assert list(again.frontier.key) == list(res.frontier.key)


def test_same_sweep_on_dask_local_cluster_matches_local_pool(tmp_path):
    distributed = pytest.importorskip("distributed")
    local = Store(":memory:")
    runner = shared_runner(local)
    a = run_sweep("mlp", "digits", "bops", store=local, runner=runner, **KW)
    remote = Store(":memory:")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        with JobRunner(scheduler=cluster.scheduler_address, store=remote) as runner:
            b = run_sweep("mlp", "digits", "bops", store=remote, runner=runner, **KW)
    cols = ["key", "status", "val_accuracy", "test_accuracy", "throughput"]
    pd.testing.assert_frame_equal(a.points[cols].reset_index(drop=True), b.points[cols].reset_index(drop=True))
    ea = {e.key: e.loss_curve for e in local.evaluations()}
    eb = {e.key: e.loss_curve for e in remote.evaluations()}
    assert ea == eb


def test_sweep_cli(tmp_path, capsys):
    db = tmp_path / "cli.sqlite"
    args = ["sweep", "--model", "mlp", "--profile", "bismo", "--budget", "4", "--finetune", "1", "--steps", "5",
            "--store", str(db), "--workers", "1", "--out", str(tmp_path / "f.csv")]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "frontier (selected on validation, reported on test)" in text
    assert (tmp_path / "f.csv").exists()
    assert main(args + ["--json"]) == 0
    assert '"submitted": 0' in capsys.readouterr().out
    assert main(["sweep", "--model", "mlp", "--profile", "bismo", "--budget", "0", "--store", str(db)]) == 2
    assert main(["sweep", "--model", "mlp", "--profile", "nosuch", "--budget", "2", "--store", str(db)]) == 2
    assert main(["sweep", "--model", "mlp", "--profile", "bismo", "--budget", "2", "--store", str(db),
                 "--out", str(tmp_path / "f.txt")]) == 2


def test_sweep_scores_estimates_on_a_validation_subset_and_reports_the_frontier_on_full_test():
    sizes = load_dataset("digits").sizes()
    store = Store(":memory:")
    runner = shared_runner(store)
    res = run_sweep("mlp", "digits", "bismo", store=store, runner=runner, eval_limit=40,
                    **{**KW, "seed": 5})
    evs = {e.key: e for e in store.evaluations()}
    est = res.points[res.points.phase == "estimate"]
    tuned = res.points[res.points.status == "fine-tuned"]
    assert len(est) == 6 and len(tuned) == 2 and est.test_accuracy.isna().all()
    for k in est.key:
        assert evs[k].provenance["val_examples"] == 40 and evs[k].provenance["test_examples"] == 0
        assert evs[k].settings["eval_limit"] == 40 and evs[k].settings["score_test"] is False
    for k in tuned.key:   # fine-tunes: full validation and test, whatever the estimates used
        assert evs[k].provenance["val_examples"] == sizes["val"] and evs[k].provenance["test_examples"] == sizes["test"]
        assert "eval_limit" not in evs[k].settings
    assert len(res.frontier) and set(res.frontier.key) <= set(tuned.key)
    assert res.frontier.test_accuracy.notna().all() and res.hypervolume > 0
    # nothing fine-tuned: the frontier's plans are scored again in full before it is reported
    res0 = run_sweep("mlp", "digits", "bismo", store=store, runner=runner, eval_limit=40,
                     **{**KW, "seed": 6, "finetune": 0})
    assert len(res0.frontier) and res0.frontier.test_accuracy.notna().all()
    for k in res0.frontier.key:
        ev = store.get(k)
        assert ev.status == "estimated" and ev.provenance["val_examples"] == sizes["val"]
        assert ev.provenance["test_examples"] == sizes["test"]


def test_path_seeds_off_starts_from_the_uniform_plans_alone():
    """Random search from the uniform plans alone (the plain baseline) never meets the greedy path;
    from the default start it estimates all of the path."""
    data = load_dataset("digits")
    topo = analyze(load_baseline("mlp", "digits", data), data.input_shape)
    path = {p.digest() for p in greedy_plans(topo.names, eagl("mlp", "digits", data=data).order(), ladder=(4, 2))[1:-1]}
    store = Store(":memory:")
    runner = shared_runner(store)
    kw = {**KW, "budget": 12, "finetune": 0, "population": 12}
    digests = lambda res: {Plan.from_dict(json.loads(p)).digest() for p in res.points.plan}  # noqa: E731
    with_path = run_sweep("mlp", "digits", "bismo", store=store, runner=runner, method="random", **kw)
    alone = run_sweep("mlp", "digits", "bismo", store=store, runner=runner, method="random", path_seeds=False, **kw)
    assert len(path) == 2 and path <= digests(with_path)
    assert not path & digests(alone) and len(digests(alone)) == 12


def test_a_sweep_never_reuses_results_imported_from_a_file(tmp_path):
    """A session file's evaluations are claims: a sweep over the same plans runs them again
    instead of taking a (possibly forged) accuracy from the store as done."""
    from engine.explore.store import checksum
    kw = dict(budget=3, finetune=0, steps=10, seed=3, population=3)
    source = Store(tmp_path / "a.sqlite")
    first = run_sweep("mlp", "digits", "bismo", store=source, runner=shared_runner(source), **kw)
    doc = source.export_session(first.session)
    for ev in doc["evaluations"]:
        ev["test_accuracy"] = ev["val_accuracy"] = 0.999  # forged
    del doc["checksum"]
    doc["checksum"] = checksum(doc)
    target = Store(tmp_path / "b.sqlite")
    target.import_session(doc)
    assert all(target.get(e.key) is not None and target.computed(e.key) is None for e in target.evaluations())
    again = run_sweep("mlp", "digits", "bismo", store=target, runner=shared_runner(target), **kw)
    assert again.reused == 0 and again.submitted == len(again.points) == len(first.points)
    assert 0.999 not in set(again.points.test_accuracy)
    assert sorted(again.points.test_accuracy) == sorted(first.points.test_accuracy)
