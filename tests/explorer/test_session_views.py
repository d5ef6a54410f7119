"""The session-facing views without a browser: read-only locks every control, user text is escaped,
the share link is absolute, and an empty upload is answered."""
import json

import pytest

pn = pytest.importorskip("panel")

from engine.evaluation import Settings
from engine.explore.pipeline import evaluate_plan
from engine.plans.plan import Plan

HOSTILE = '<img src=x onerror="window.__xss=1;alert(1)">'


@pytest.fixture
def shared(services):
    """A saved session with a hostile name and one point, opened read-only in a second app."""
    from explorer.app import create_app
    from explorer.state.workspace import Workspace
    store, runner = services
    a = Workspace(store=store, runner=runner)
    a.add_evaluation(evaluate_plan("lenet5", "digits", Plan.uniform(4, 4), Settings(steps=0)).evaluation)
    sid = a.save_session(HOSTILE)
    app = create_app(store=store, runner=runner)
    assert app.workspace.open_session(sid, read_only=True)
    return app, sid


def widgets_of(viewer):
    return viewer.__panel__().select(pn.widgets.Widget)


def test_read_only_disables_every_control_that_changes_state(services, shared):
    from explorer.app import build_pickers, lock_when_read_only
    from explorer.views.jobs_view import JobsView
    from explorer.views.plan_editor import PlanEditor
    from explorer.views.sensitivity_view import SensitivityView
    from explorer.views.session_view import SessionView
    app, _ = shared
    ws = app.workspace
    _, pickers = build_pickers(ws)
    jobs = JobsView(workspace=ws)
    lock_when_read_only(ws, pickers + [jobs.steps, jobs.distill])
    editor, sens, session = PlanEditor(workspace=ws), SensitivityView(workspace=ws), SessionView(workspace=ws)
    locked = (pickers + [jobs.steps, jobs.distill, jobs.finetune, jobs.estimate] + widgets_of(editor)
              + widgets_of(sens) + [session.import_file])
    names = [getattr(w, "name", type(w).__name__) for w in locked if not w.disabled
             and not isinstance(w, pn.widgets.FileDownload)]
    assert names == []
    assert editor.table.disabled and session.save.name == "Save a copy" and not session.save.disabled
    # saving a copy unlocks them all
    ws.save_session("mine")
    assert not any(w.disabled for w in pickers + [jobs.steps, editor.upload, editor.bulk_apply, session.import_file])


def test_hostile_session_name_is_escaped_everywhere(shared):
    from explorer.app import banner_html
    from explorer.views.session_view import SessionView
    app, _ = shared
    ws = app.workspace
    view = SessionView(workspace=ws)
    shown = [banner_html(ws), view.link.object, view.status.object]
    assert "&lt;img src=x onerror=" in banner_html(ws)
    for html_text in shown:
        assert "<img" not in html_text
    assert HOSTILE in ws.message  # the message itself keeps the text; only the view escapes it
    assert "&lt;img" in view.status.object
    labels = list(view.sessions.options)
    assert any(label.startswith(HOSTILE) for label in labels)  # a Select option is text, not markup


def test_plan_error_and_sensitivity_status_are_escaped(workspace):
    from explorer.views.plan_editor import PlanEditor
    from explorer.views.sensitivity_view import SensitivityView
    editor, sens = PlanEditor(workspace=workspace), SensitivityView(workspace=workspace)
    bad = json.dumps({"version": 1, "layers": {"<script>window.__xss=1</script>": {"w_bits": 4}}})
    assert not workspace.load_plan_json(bad)
    assert editor.error.visible and "&lt;script&gt;" in editor.error.object and "<script>" not in editor.error.object
    workspace.sens_status = "<b onmouseover=alert(1)>x</b>"
    assert "<b " not in sens.status.object and "&lt;b onmouseover" in sens.status.object


def test_share_link_is_absolute_and_copyable(services):
    from explorer.state.workspace import Workspace
    from explorer.views.session_view import SessionView
    store, runner = services
    ws = Workspace(store=store, runner=runner)
    view = SessionView(workspace=ws)
    view.base = "http://127.0.0.1:5006/"
    assert not view.link_input.visible and not view.copy.visible
    sid = ws.save_session("s")
    assert view.link_input.value == f"http://127.0.0.1:5006/?session={sid}" and view.link_input.visible
    assert f'href="http://127.0.0.1:5006/?session={sid}"' in view.link.object
    assert view.copy.visible and "clipboard" in view.copy_callback.code["event:button_click"]


def test_empty_upload_is_answered_not_ignored(services):
    from explorer.state.workspace import Workspace
    from explorer.views.plan_editor import PlanEditor
    from explorer.views.session_view import SessionView
    store, runner = services
    ws = Workspace(store=store, runner=runner)
    view = SessionView(workspace=ws)
    # what FileInput holds after an empty file: no value, but a file name
    view.import_file.param.update(value=None, filename="empty.json")
    assert "session file refused (empty.json): the file is empty" in ws.message
    assert "refused" in view.status.object and view.status.visible
    editor = PlanEditor(workspace=ws)
    editor.upload.param.update(value=None, filename="plan.json")
    assert "plan file 'plan.json' not loaded: the file is empty" in ws.edit_error
    assert editor.error.visible


def test_session_list_widget_follows_the_store(services):
    from explorer.state.workspace import Workspace
    from explorer.views.session_view import SessionView
    store, runner = services
    # two tabs of one browser (one owner), and a stranger whose sessions never show up
    a, b = (Workspace(store=store, runner=runner, owner="anon:me") for _ in range(2))
    view = SessionView(workspace=a)
    assert view.sessions.options == {}
    sid = b.save_session("elsewhere")
    Workspace(store=store, runner=runner, owner="anon:stranger").save_session("not yours")
    view.refresh_sessions()
    assert list(view.sessions.options.values()) == [sid]


def test_same_name_sessions_are_two_entries_in_the_list(services):
    from explorer.state.workspace import Workspace
    from explorer.views.session_view import SessionView
    store, runner = services
    ws = Workspace(store=store, runner=runner)
    view = SessionView(workspace=ws)
    first = ws.save_session("study")
    second = ws.save_session("study")
    view.refresh_sessions()
    assert sorted(view.sessions.options.values()) == sorted([first, second])


def test_opening_the_session_tab_rereads_the_list(services):
    from explorer.app import create_app
    from explorer.state.workspace import Workspace
    store, runner = services
    app = create_app(store=store, runner=runner)
    tabs = next(o for o in app.main[0].objects if isinstance(o, pn.Tabs))
    other = Workspace(store=store, runner=runner, owner=app.workspace.owner)  # another tab of this browser
    sid = other.save_session("made elsewhere")
    tabs.active = 2
    lists = [w for w in tabs[2].select(pn.widgets.Select) if w.name.startswith(("your sessions", "sessions"))]
    assert lists and sid in lists[0].options.values()
