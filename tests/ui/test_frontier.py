"""The Frontier tab in a real browser: reference line, legend outside, tap -> loss curve, brush ->
table, heat map rendered. Screenshots go to out/screenshots/frontier-*.png."""
import pytest

from tests.ui.conftest import BOKEH_WALK_JS, shot, wait_until

pytest.importorskip("playwright")
pytestmark = pytest.mark.ui

# the pixel position of data point (x, y) on the first figure holding a Scatter (the frontier)
PIXEL_JS = """
([x, y]) => {
  const seen = new Set();
""" + BOKEH_WALK_JS + """
  for (const root of Object.values(window.Bokeh.index)) {
    for (const v of walk(root)) {
      if (v.frame && v.model && v.model.type === "Figure" && v.renderer_views) {
        const glyphs = [...v.renderer_views.values()].filter(r => r.model.glyph && r.model.glyph.type === "Scatter");
        if (!glyphs.length) continue;
        const rect = v.el.getBoundingClientRect();
        return [rect.left + v.frame.x_scale.compute(x), rect.top + v.frame.y_scale.compute(y)];
      }
    }
  }
  return null;
}
"""

# what the browser drew: legend labels, where the frontier figure's legends sit, every glyph type
DRAWN_JS = """
() => {
  const out = {legend: [], places: [], glyphs: []};
  for (const doc of window.Bokeh.documents) {
    for (const m of doc.all_models) {
      if (m.type === "LegendItem") out.legend.push(m.label && (m.label.value || m.label.field) || "");
      if (m.type === "Figure" && m.title && String(m.title.text).startsWith("Accuracy vs")) {
        for (const l of m.right) if (l.type === "Legend") out.places.push("right");
        for (const l of m.center) if (l.type === "Legend") out.places.push("center");
      }
      if (m.type === "GlyphRenderer") out.glyphs.push(m.glyph.type);
    }
  }
  return out;
}
"""


def preset(page, name: str) -> None:
    page.locator(".bk-input-group", has_text="preset").locator("select").first.select_option(name)
    page.get_by_role("button", name="Apply preset").click()
    page.wait_for_timeout(500)


def test_frontier_reads_well(app_server, page):
    url, _store, workspaces = app_server
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    page.wait_for_selector('.tabulator-cell[tabulator-field="layer"]', timeout=120_000)
    ws = workspaces[-1]
    # through the page, as a person does (a test thread calling the workspace races Panel's session state)
    preset(page, "w4a4")
    page.get_by_role("button", name="Estimate (no training)").click()
    wait_until(lambda: ws.jobs is not None and len(ws.jobs) == 1, page)
    preset(page, "w2a2")
    page.get_by_role("button", name="Estimate (no training)").click()
    wait_until(lambda: ws.jobs is not None and len(ws.jobs) == 2, page)
    steps = page.locator(".bk-input-group", has_text="fine-tune steps").locator("input").first
    steps.fill("20")
    steps.press("Enter")
    wait_until(lambda: ws.steps == 20, page)
    page.get_by_role("button", name="Fine-tune plan").click()  # the same W2A2 plan: linked to its estimate
    wait_until(lambda: (ws.poll() or True) and len(ws.points) == 3 and not ws.busy, page, timeout=300_000)

    page.get_by_text("Frontier", exact=True).click()
    page.wait_for_selector("text=FP32 reference (lenet5 on digits)", timeout=120_000)
    wait_until(lambda: page.locator('[tabulator-field="label"].tabulator-cell').count() == 3, page, timeout=120_000)
    wait_until(lambda: page.evaluate(PIXEL_JS, [1.0, 0.5]) is not None, page, timeout=120_000)

    drawn = page.evaluate(DRAWN_JS)
    assert any(label.startswith("FP32 reference") for label in drawn["legend"]), drawn["legend"]
    assert "Pareto frontier" in drawn["legend"] and "estimate → fine-tuned" in drawn["legend"]
    assert "right" in drawn["places"] and "center" not in drawn["places"]  # no legend over the points
    assert "Rect" in drawn["glyphs"]  # the per-layer heat map was drawn
    assert "Segment" in drawn["glyphs"]  # the estimate -> fine-tune link
    labels = page.locator('[tabulator-field="label"].tabulator-cell').all_inner_texts()
    # the presets feed the network input (conv1) at 8 bits
    assert "W2A8, W2A2 ×4 · 20 steps" in labels and "W4A8, W4A4 ×4 · estimate" in labels
    shot(page, "frontier-tab")

    # tap the fine-tuned point: its plan loads and its loss curve opens
    tuned = ws.points[ws.points["status"] == "fine-tuned"].iloc[0]
    xy = page.evaluate(PIXEL_JS, [float(tuned["throughput"]), float(tuned["test_accuracy"])])
    page.mouse.click(xy[0], xy[1])
    wait_until(lambda: ws.selected == tuned["key"], page, timeout=60_000)
    page.wait_for_selector("text=Training loss of W2A8, W2A2 ×4 · 20 steps", timeout=60_000)
    shot(page, "frontier-tapped")
    page.get_by_text("Bits per layer of").scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    shot(page, "frontier-heatmap-profiles")
    page.get_by_text("FP32 reference (lenet5 on digits)").scroll_into_view_if_needed()
    page.wait_for_timeout(500)

    # brush the two estimates of the most accurate plan only: the table lists just those points
    best = ws.points.sort_values("test_accuracy").iloc[-1]
    page.locator(".bk-tool-icon-box-select").first.click()
    lo = page.evaluate(PIXEL_JS, [float(best["throughput"]) - 0.5, float(best["test_accuracy"]) - 0.002])
    hi = page.evaluate(PIXEL_JS, [float(best["throughput"]) + 0.5, float(best["test_accuracy"]) + 0.002])
    page.mouse.move(lo[0] - 15, lo[1] + 15)
    page.mouse.down()
    page.mouse.move((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, steps=5)
    page.mouse.move(hi[0] + 15, hi[1] - 15, steps=5)
    page.mouse.up()
    wait_until(lambda: ws.frontier_state.brushed == [best["key"]], page, timeout=60_000)
    wait_until(lambda: page.locator('[tabulator-field="label"].tabulator-cell').count() == 1, page, timeout=60_000)
    page.wait_for_selector("text=1 of 3", timeout=30_000)
    page.get_by_role("button", name="Show all points").click()
    wait_until(lambda: ws.frontier_state.brushed is None and page.get_by_text("1 of 3").count() == 0, page,
               timeout=60_000)
    wait_until(lambda: page.locator('[tabulator-field="label"].tabulator-cell').count() == 3, page, timeout=60_000)
    assert not page.get_by_role("button", name="Show all points").is_visible()
    # Panel's loading.css comes from a CDN: a page-wide defect of issue 13 fixed in the app layout,
    # not by this tab; anything else off loopback, or any other console error, is this tab's
    known = "/dist/css/loading.css"
    off = [u for u in requests if not u.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:"))]
    assert [u for u in off if known not in u] == []
    assert [e for e in errors if "ERR_NAME_NOT_RESOLVED" not in e or not any(known in u for u in off)] == []
