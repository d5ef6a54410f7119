"""The dashboard benchmark's own machinery: the cost-refresh timer and a small real-browser load run."""
import pytest

from explorer.benchmarks import dashboard


def test_cost_refresh_times_every_edit_on_resnet20():
    out = dashboard.cost_refresh(edits=12)
    assert out["layers"] == 22 and out["edits"] == 12
    assert 0 < out["p50_ms"] <= out["p95_ms"]


@pytest.mark.ui
def test_load_run_edits_through_the_browser_and_counts_errors():
    pytest.importorskip("playwright")
    import panel as pn
    try:
        out = dashboard.load_test(sessions=2, duration=4.0, think=0.3)
    finally:
        pn.state.reset()
    assert out["errors"] == 0, out["error_samples"]
    assert out["sessions"] == 2 and len(out["first_render_s"]) == 1 and out["first_render_under_load_p50_s"] > 0
    assert out["edits"] >= 2 and 0 < out["interaction_p50_ms"] <= out["interaction_p95_ms"]


@pytest.mark.ui
def test_bench_prints_the_row_with_two_finetunes_running(capsys):
    """A tiny run of the whole benchmark: the under-load row is measured and printed (figures not judged)."""
    pytest.importorskip("playwright")
    import argparse

    import panel as pn
    args = argparse.Namespace(quick=False, sessions=1, duration=2.0, think=0.3, busy_duration=4.0, json=False)
    try:
        assert dashboard.run(args) == 0
    finally:
        pn.state.reset()
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if "edit -> cards with 2 fine-tunes running" in line]
    assert row and "p50" in row[0] and "p95" in row[0] and "2 of 2 fine-tunes still running" in row[0], out
