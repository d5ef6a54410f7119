"""Frontier exports: the PNG keeps its legend outside the axes; the HTML page is truly standalone
and uses the app's axis types."""
import re

import pandas as pd
import pytest

from explorer.views.figures import (
    frontier_figure,
    frontier_html,
    frontier_page,
    frontier_png,
)
from tests.explorer.test_frontier_state import evaluation


def loaded_resources(page: str) -> list[str]:
    """Every src/href on the page's elements (a URL, or a relative path such as static/...).

    Parsed as HTML, so text inside inline scripts (BokehJS's own source mentions URLs in strings,
    e.g. its lazy MathJax provider, used only for TeX labels) is not mistaken for an element."""
    from html.parser import HTMLParser

    found = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(f"<{tag} {k}={v}>" for k, v in attrs if k in ("src", "href") and v and
                         not v.startswith(("#", "data:")))

        handle_startendtag = handle_starttag

    Parser().feed(page)
    return found


def points():
    return pd.DataFrame({"status": ["fine-tuned", "estimated", "failed"], "throughput": [100.0, 300.0, 50.0],
                         "test_accuracy": [0.95, 0.90, None], "size_bytes": [1e4, 5e3, 2e4],
                         "baseline_test_accuracy": [0.97, 0.97, 0.97], "label": ["a", "b", "c"],
                         "reason": ["", "", "diverged"], "key": ["k1", "k2", "k3"]})


@pytest.fixture
def ws():
    from explorer.state.workspace import Workspace
    w = Workspace()
    for ev in (evaluation(8, test=0.965, val=0.955, est_val=0.955), evaluation(4, test=0.90, val=0.91, est_val=0.91),
               evaluation(4, "fine-tuned", 200, test=0.95, val=0.945, est_val=0.91),
               evaluation(3, "failed", 200, reason="RuntimeError: loss diverged")):
        w.add_evaluation(ev)
    return w


def test_frontier_png_is_a_png():
    data = frontier_png(points(), points().iloc[:2], "throughput", "test_accuracy", "t")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_png_legend_is_outside_the_axes(ws):
    """Regression: the legend sat inside the axes (lower left) over the points."""
    import matplotlib.pyplot as plt
    fig = frontier_figure(ws.points, ws.frontier(), "throughput", "test_accuracy", "t")
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent()
        assert legend.x0 >= ax.get_window_extent().x1  # entirely right of the axes
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "Pareto frontier" in texts and "FP32 reference 97.00 %" in texts and "failed" in texts
        assert ax.get_xscale() == "linear"
    finally:
        plt.close(fig)


def test_frontier_html_is_standalone_with_panel_loaded(ws):
    """Regression: with Panel's extensions registered, Bokeh's INLINE bundle also listed their
    relative ``static/`` scripts and a CDN MathJax: the page did not open offline."""
    import panel as pn
    pn.extension("tabulator")
    from explorer.views.frontier_view import frontier_elements
    scatter, rest = frontier_elements(ws, ws.points)  # what the Session tab's download does
    page = frontier_html(scatter * rest)
    assert page.lstrip().lower().startswith("<!doctype html") and "Bokeh" in page
    assert loaded_resources(page) == []
    assert "static/extensions" not in page and "<link" not in page.lower()
    assert "FP32 reference 97.00 %" in page and "Pareto frontier" in page


def test_html_export_uses_the_apps_axis_types(ws):
    """Regression: the export drew a log x axis while the app's was linear."""
    import holoviews as hv

    from explorer.views.frontier_view import FrontierView, frontier_elements
    app_plot = hv.render(FrontierView(workspace=ws).plot.object, backend="bokeh")
    app_x, app_y = type(app_plot.xaxis[0]).__name__, type(app_plot.yaxis[0]).__name__
    page = frontier_page(ws.points, ws.frontier(), ws.x_axis, ws.y_axis, "t")
    assert (app_x, app_y) == ("LinearAxis", "LinearAxis")
    assert re.findall(r'"name":"(\w+Axis)"', page) and set(re.findall(r'"name":"(\w+Axis)"', page)) == {app_x}
    assert loaded_resources(page) == []
    scatter, rest = frontier_elements(ws, ws.points)  # the Session tab's download
    download = frontier_html(scatter * rest)
    assert set(re.findall(r'"name":"(\w+Axis)"', download)) == {app_x}
