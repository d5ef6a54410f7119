"""The Panel views without a browser: they build, and their widgets drive the workspace."""
import pandas as pd
import pytest

pn = pytest.importorskip("panel")


@pytest.fixture
def app(services):
    from explorer.app import create_app
    store, runner = services
    return create_app(store=store, runner=runner)


def test_app_builds_with_every_view(app):
    from explorer.views.cost_view import CostView
    from explorer.views.frontier_view import FrontierView
    from explorer.views.plan_editor import PlanEditor
    ws = app.workspace
    editor = PlanEditor(workspace=ws)
    editor.__panel__()
    assert editor.table.value.equals(ws.rows)
    cost = CostView(workspace=ws)
    assert "throughput" in cost.totals.object
    frontier = FrontierView(workspace=ws)
    frontier.__panel__()
    assert list(frontier.table.value.columns)[:2] == ["label", "status"]


def test_editor_widgets_edit_the_plan(services):
    from explorer.state.workspace import Workspace
    from explorer.views.plan_editor import PlanEditor
    store, runner = services
    ws = Workspace(store=store, runner=runner)
    editor = PlanEditor(workspace=ws)

    class Edit:
        row, column, value = 1, "w_bits", 4

    editor._on_edit(Edit)
    assert ws.rows.loc[1, "w_bits"] == 4 and editor.table.value.loc[1, "w_bits"] == 4
    Edit.column, Edit.value = "sparsity", "2:4"
    Edit.row = 0
    editor._on_edit(Edit)
    assert editor.error.visible and "divisible by 4" in editor.error.object
    editor.table.selection = [2, 3]
    editor.bulk_column.value, editor.bulk_value.value = "a_bits", "8"
    editor._on_bulk(None)
    assert list(ws.rows["a_bits"]) == [32, 32, 8, 8, 32]
    ws.read_only = True
    assert editor.table.disabled and editor.apply_preset.disabled


def test_frontier_tap_selects_and_loads(services):
    from engine.evaluation import Settings
    from engine.explore.pipeline import evaluate_plan
    from engine.plans.plan import Plan
    from explorer.state.workspace import Workspace
    from explorer.views.frontier_view import FrontierView
    store, runner = services
    ws = Workspace(store=store, runner=runner)
    view = FrontierView(workspace=ws)
    for bits in (4, 2):
        ws.add_evaluation(evaluate_plan("lenet5", "digits", Plan.uniform(bits, bits), Settings(steps=0)).evaluation)
    assert len(view.table.value) == 2
    view.selection.event(index=[1])
    assert ws.selected == ws.points.iloc[1]["key"]
    assert set(ws.rows["w_bits"]) == {2}
    assert view.table.selection == [1]
    assert isinstance(ws.frontier(), pd.DataFrame)
