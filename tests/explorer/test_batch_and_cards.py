"""The batch-size box refuses bad sizes out loud; the cost cards say what they measure."""
import pytest

pn = pytest.importorskip("panel")


@pytest.mark.parametrize("bad", [0, 100_000, -3])
def test_bad_batch_size_is_refused_with_a_visible_message(workspace, bad):
    from explorer.views.batch_input import BatchInput
    ws = workspace
    box = BatchInput(workspace=ws)
    box.input.value = 64
    assert ws.batch == 64 and ws.totals["batch"] == 64 and not box.error.visible
    box.input.value = bad
    assert ws.batch == 64 and ws.totals["batch"] == 64       # the plan is still costed at 64
    assert box.error.visible and f"batch size {bad} refused" in box.error.object and "1 to 4096" in box.error.object
    assert box.input.value == 64                              # the box shows the size in use again
    box.input.value = 8
    assert ws.batch == 8 and not box.error.visible


@pytest.mark.slow
def test_batch_box_is_in_the_app_and_follows_the_workspace(workspace):
    from explorer.app import build_layout
    ws = workspace
    layout = build_layout(ws)
    box = [w for w in layout.sidebar[0].select(pn.widgets.IntInput) if w.name == "batch size"]
    error = [a for a in layout.sidebar[0].select(pn.pane.Alert) if a.name == "batch-error"]
    assert len(box) == 1 and len(error) == 1
    ws.batch = 32
    assert box[0].value == 32
    box[0].value = 0
    assert ws.batch == 32 and error[0].visible and "batch size 0 refused" in error[0].object


def test_cost_cards_say_what_they_measure(workspace):
    from explorer.views.cost_view import CostView
    ws = workspace
    view = CostView(workspace=ws)
    ws.batch = 16
    html = view.totals.object
    assert "latency (batch 1, one inference)" in html
    assert "throughput (batch 16)" in html and "energy (per inference, batch 16)" in html
    assert 'data-metric="latency"' in html and 'data-metric="throughput"' in html


@pytest.mark.slow
def test_session_models_load_their_stylesheets_from_this_server(services):
    """Models built when a session starts (before its page is rendered) name no CDN URL."""
    from bokeh.document import Document
    from bokeh.models import ImportedStyleSheet
    from panel.io.state import set_curdoc

    from explorer.app import create_app
    store, runner = services
    doc = Document()
    with set_curdoc(doc):
        app = create_app(store=store, runner=runner)
        app.server_doc(doc)
    urls = {m.url for r in doc.roots for m in r.references() if isinstance(m, ImportedStyleSheet)}
    assert urls and any("loading.css" in u for u in urls)
    assert not [u for u in urls if "://" in u], sorted(urls)
