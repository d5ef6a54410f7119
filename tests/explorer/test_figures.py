import pandas as pd

from explorer.views.figures import frontier_html, frontier_png


def points():
    return pd.DataFrame({"status": ["fine-tuned", "estimated", "failed"], "throughput": [100.0, 300.0, 50.0],
                         "test_accuracy": [0.95, 0.90, None], "size_bytes": [1e4, 5e3, 2e4]})


def test_frontier_png_is_a_png():
    data = frontier_png(points(), points().iloc[:2], "throughput", "test_accuracy", "t")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_frontier_html_is_standalone():
    import holoviews as hv
    hv.extension("bokeh")
    html = frontier_html(hv.Scatter(points(), "throughput", "test_accuracy"))
    assert html.lstrip().lower().startswith("<!doctype html") and "Bokeh" in html
    assert "cdn.bokeh.org" not in html  # resources inlined: opens offline
