"""Tiers in a real browser: tap an estimated point, confirm it, see it drawn and listed as confirmed,
and draw the frontier from confirmed points only. The confirmed budget is made tiny for this test
(the class default of the workspace's TierState, before the page is opened)."""
import pytest

from tests.ui.conftest import BOKEH_WALK_JS, shot, wait_until
from tests.ui.test_frontier import PIXEL_JS, preset

pytest.importorskip("playwright")
pytestmark = pytest.mark.ui

# the values of one column of the frontier scatter's data source, as the browser holds them
SCATTER_COLUMN_JS = """
(column) => {
  for (const doc of window.Bokeh.documents) {
    for (const m of doc.all_models) {
      if (m.type === "Figure" && m.title && String(m.title.text).startsWith("Accuracy vs")) {
        for (const r of m.renderers) {
          if (r.glyph && r.glyph.type === "Scatter") {
            const d = r.data_source.data;
            return Array.from((d instanceof Map ? d.get(column) : d[column]) || []);
          }
        }
      }
    }
  }
  return null;
}
"""


# the markers the browser draws the frontier's points with, per glyph view (normal, not selected, selected):
# each a list of one marker per point, or one fixed marker
DRAWN_MARKERS_JS = """
() => {
  const seen = new Set();
""" + BOKEH_WALK_JS + """
  for (const root of Object.values(window.Bokeh.index)) {
    for (const v of walk(root)) {
      const t = v.model && v.model.type === "Figure" && v.model.title;
      if (!(t && t.text && t.text.startsWith("Accuracy vs") && v.renderer_views)) continue;
      for (const r of v.renderer_views.values()) {
        if (!(r.model.glyph && r.model.glyph.type === "Scatter")) continue;
        return [r.glyph, r.nonselection_glyph, r.selection_glyph].map(g =>
          g.marker.array ? Array.from(g.marker.array) : String(g.marker.value));
      }
    }
  }
  return null;
}
"""


def test_confirm_a_tapped_point_and_see_it_confirmed(app_server, page, monkeypatch):
    from explorer.state.tiers import TierState
    monkeypatch.setattr(TierState, "budget", {"steps": 4})
    url, store, workspaces = app_server
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    page.wait_for_selector('.tabulator-cell[tabulator-field="layer"]', timeout=120_000)
    ws = workspaces[-1]
    assert ws.tiers.budget == {"steps": 4}
    preset(page, "w4a4")
    page.get_by_role("button", name="Estimate (no training)").click()
    wait_until(lambda: len(ws.points) == 1 and not ws.busy, page, timeout=300_000)

    page.get_by_text("Frontier", exact=True).click()
    page.wait_for_selector("text=FP32 reference (lenet5 on digits)", timeout=120_000)
    est = ws.points.iloc[0]
    wait_until(lambda: page.evaluate(PIXEL_JS, [float(est["throughput"]), float(est["test_accuracy"])]) is not None,
               page, timeout=120_000)
    assert page.evaluate(SCATTER_COLUMN_JS, "kind") == ["estimated"]
    confirm = page.get_by_role("button", name="Confirm selected point")
    assert confirm.is_disabled()                    # nothing selected yet

    xy = page.evaluate(PIXEL_JS, [float(est["throughput"]), float(est["test_accuracy"])])
    page.mouse.click(xy[0], xy[1])
    wait_until(lambda: ws.selected == est["key"], page, timeout=60_000)
    wait_until(lambda: confirm.is_enabled(), page, timeout=60_000)
    confirm.click()
    page.wait_for_selector("text=confirming 1 point (4 steps each", timeout=60_000)
    wait_until(lambda: "confirmed" in set(ws.points["tier"]) and not ws.busy, page, timeout=300_000)

    # marked confirmed: in the table's Tier column, in the plot's points, and the rank line is shown
    wait_until(lambda: "confirmed" in page.locator('[tabulator-field="tier"].tabulator-cell').all_inner_texts(),
               page, timeout=120_000)
    wait_until(lambda: sorted(page.evaluate(SCATTER_COLUMN_JS, "kind") or []) == ["confirmed", "estimated"], page,
               timeout=120_000)
    assert page.get_by_text("4 steps confirmed").count() >= 1
    # each point drawn with its tier's marker (the glyph reads the marker column, not one fixed marker)
    assert sorted(page.evaluate(SCATTER_COLUMN_JS, "marker")) == ["circle", "diamond"]
    order = page.evaluate(SCATTER_COLUMN_JS, "kind")
    want = [{"estimated": "circle", "confirmed": "diamond"}[k] for k in order]
    wait_until(lambda: page.evaluate(DRAWN_MARKERS_JS) == [want, want, want], page, timeout=60_000)
    page.wait_for_selector("text=quick vs confirmed", timeout=60_000)
    confirmed = ws.points[ws.points["tier"] == "confirmed"].iloc[0]
    assert confirmed["plan_digest"] == est["plan_digest"] and confirmed["steps"] == 4

    # the frontier from confirmed points only
    page.locator(".bk-Checkbox", has_text="frontier from confirmed points only").locator("input").check()
    wait_until(lambda: ws.tiers.only_confirmed, page, timeout=60_000)
    assert list(ws.frontier()["key"]) == [confirmed["key"]]
    page.wait_for_timeout(1000)
    shot(page, "frontier-confirmed")
    assert [e for e in errors if "ERR_NAME_NOT_RESOLVED" not in e] == []
