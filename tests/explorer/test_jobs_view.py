"""The job list without a browser: one row of widgets per job, updated in place, whose Cancel works."""
import time

import pytest

pn = pytest.importorskip("panel")

from .conftest import wait_jobs


def _poll_until(ws, pred, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        ws.poll()
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met; jobs: {ws.jobs}")


def _state(ws, jid):
    return ws.jobs.set_index("id").loc[jid, "state"]


@pytest.mark.slow
def test_cancel_button_of_a_running_job_cancels_it_and_rows_survive_polls(workspace):
    from explorer.views.jobs_view import JobsView
    ws = workspace
    view = JobsView(workspace=ws)
    ws.steps = 100_000
    running = ws.submit(label="long <b>one</b>")
    queued = ws.submit(label="waits")
    row = view.rows[running]
    widgets = (row.panel, row.text, row.bar, row.cancel)
    assert [p is r.panel for p, r in zip(view.list.objects, (view.rows[queued], row))] == [True, True]
    assert "&lt;b&gt;one&lt;/b&gt;" in row.text.object and "<b>one</b>" not in row.text.object
    _poll_until(ws, lambda: _state(ws, running) == "running" and ws.jobs.set_index("id").loc[running, "progress"] > 0.05)
    ws.poll()
    # the polls that moved the job along kept the same widgets: a click lands on the live button
    assert view.rows[running] is row and (row.panel, row.text, row.bar, row.cancel) == widgets
    assert view.list.objects[1] is row.panel and row.bar.value > 0 and row.cancel.visible
    view.rows[queued].cancel.clicks += 1      # a queued job never starts
    assert _state(ws, queued) == "cancelled"
    row.cancel.clicks += 1                    # the button's click, as the browser sends it
    _poll_until(ws, lambda: _state(ws, running) in ("cancelled", "done", "failed"), timeout=60)
    assert _state(ws, running) == "cancelled"
    assert "cancelled" in row.text.object and not row.cancel.visible and row.bar.bar_color == "warning"
    assert view.rows[running] is row and view.list.objects[1] is row.panel
    assert "cancelled" in view.rows[queued].text.object
    wait_jobs(ws)


@pytest.mark.slow
def test_new_jobs_add_rows_and_old_rows_are_kept(workspace):
    from explorer.views.jobs_view import JobsView
    ws = workspace
    view = JobsView(workspace=ws)
    assert "No jobs yet" in view.list.objects[0].object
    first = ws.submit(steps=0)
    row = view.rows[first]
    wait_jobs(ws)
    assert "done" in row.text.object and row.bar.value == 100 and not row.cancel.visible
    second = ws.submit(steps=0)
    assert view.rows[first] is row and [o for o in view.list.objects] == [view.rows[second].panel, row.panel]
    wait_jobs(ws)
    ws.read_only = True
    assert view.finetune.disabled and view.estimate.disabled
