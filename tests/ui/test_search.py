"""A search launched from the dashboard in a real browser: points stream onto the frontier, the
hypervolume chart draws, and a second search is cancelled."""
import pytest

from tests.ui.conftest import BOKEH_WALK_JS, shot, wait_until

pytest.importorskip("playwright")
pytestmark = pytest.mark.ui

# rows in the data sources of a figure's glyphs of one type, the figure found by its title (Bokeh
# renders in shadow DOM)
GLYPH_ROWS_JS = """
([title, glyph]) => {
  const seen = new Set();
""" + BOKEH_WALK_JS + """
  let rows = null;
  for (const root of Object.values(window.Bokeh.index)) {
    for (const v of walk(root)) {
      const t = v.model && v.model.type === "Figure" && v.model.title;
      if (t && t.text && t.text.startsWith(title) && v.renderer_views) {
        rows = 0;
        for (const r of v.renderer_views.values()) {
          const src = r.model.data_source;
          if (src && r.model.glyph && r.model.glyph.type === glyph) rows += src.get_length() || 0;
        }
      }
    }
  }
  return rows;
}
"""


def glyph_rows(page, title: str, glyph: str):
    return page.evaluate(GLYPH_ROWS_JS, [title, glyph])


def set_number(page, label: str, value: int):
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")


def test_search_streams_points_draws_hypervolume_and_cancels(app_server, page):
    url, store, workspaces = app_server
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    off = []   # requests that leave the machine (the page must make none)
    page.on("request", lambda r: off.append(r.url) if not r.url.startswith(("http://127.0.0.1", "ws://127.0.0.1",
                                                                           "data:", "blob:")) else None)
    page.goto(url)
    page.wait_for_selector('.tabulator-cell[tabulator-field="layer"]', timeout=120_000)
    ws = workspaces[-1]
    s = ws.search

    # a tiny search, set through the card's inputs
    set_number(page, "estimates", 6)
    set_number(page, "fine-tunes", 1)
    set_number(page, "steps each", 20)
    page.locator(".bk-Checkbox", has_text="confirm the Pareto points at the end").locator("input").uncheck()   # confirming: tests/ui/test_tiers.py
    wait_until(lambda: (s.budget, s.finetune, s.steps, s.confirm) == (6, 1, 20, False), page)
    wait_until(lambda: page.get_by_text("6 estimates (no training), then 1 fine-tune of 20 steps").count() == 1,
               page)
    page.get_by_text("Frontier", exact=True).click()
    page.get_by_role("button", name="Start search").click()
    wait_until(lambda: s.running, page)

    # points stream onto the frontier while the search runs
    streamed = []

    def some_points_while_running():
        n = glyph_rows(page, "Accuracy vs", "Scatter") or 0
        if s.running and 0 < n:
            streamed.append(n)
        return bool(streamed)
    wait_until(some_points_while_running, page, timeout=300_000)
    wait_until(lambda: s.status != "running", page, timeout=300_000)
    assert s.status == "done", s.message
    wait_until(lambda: glyph_rows(page, "Accuracy vs", "Scatter") == len(ws.points) == 7, page, timeout=60_000)
    assert min(streamed) < 7
    # the hypervolume chart has drawn both series
    wait_until(lambda: (glyph_rows(page, "Hypervolume", "Line") or 0) >= 7, page, timeout=60_000)
    wait_until(lambda: page.locator(".search-state").first.inner_text() == "done", page)
    page.wait_for_timeout(1000)
    shot(page, "search-done")

    # a second search, cancelled while it runs
    page.get_by_label("method", exact=True).select_option("random")
    set_number(page, "estimates", 12)
    set_number(page, "fine-tunes", 2)
    set_number(page, "steps each", 3000)     # long fine-tunes: the search cannot end before the click lands
    wait_until(lambda: (s.method, s.budget, s.finetune, s.steps) == ("random", 12, 2, 3000), page)
    page.get_by_role("button", name="Start search").click()
    wait_until(lambda: s.running and s.done >= 8, page, timeout=300_000)
    page.get_by_role("button", name="Cancel search").click()
    wait_until(lambda: not s.running, page, timeout=120_000)
    assert s.status == "cancelled", (s.status, s.message, s.done, s.job.state)
    wait_until(lambda: page.locator(".search-state").first.inner_text() == "cancelled", page)
    assert not [j for j in ws.runner.jobs() if j.state in ("queued", "running")]
    assert s.done < 14
    page.wait_for_timeout(1000)
    shot(page, "search-cancelled")
    assert not off, off
    assert not errors, errors
