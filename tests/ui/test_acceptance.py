"""Acceptance: one analyst's whole session against `bitscape serve` exactly as the README starts it.

The server is a subprocess started with nothing but its command-line flags (a port and a
store in a temporary directory): no injected store, runner or workspace. Everything is
checked through the page, as a person sees it, and the page must make no request off
loopback and log no console error.
"""
import json
import signal
import subprocess
import sys
import time

import pytest

from tests.ui.conftest import BOKEH_WALK_JS, free_port, wait_until

pytest.importorskip("playwright")
pytestmark = [pytest.mark.ui, pytest.mark.slow]

# data coordinates -> page pixels of the frontier's scatter points, read from the browser's own
# Bokeh models (the server is another process: the test only knows what the page knows)
POINTS_JS = """
() => {
  const seen = new Set(), out = [];
""" + BOKEH_WALK_JS + """
  for (const root of Object.values(window.Bokeh.index)) {
    for (const v of walk(root)) {
      const title = v.model && v.model.title && v.model.title.text;
      if (!(v.frame && v.renderer_views && title && title.startsWith("Accuracy vs"))) continue;  // the frontier plot
      for (const r of v.renderer_views.values()) {
        const g = r.model.glyph;
        if (!g || g.type !== "Scatter" || !r.model.data_source) continue;
        const d = r.model.data_source.data, rect = v.el.getBoundingClientRect();
        const xs = d[g.x.field] || [], ys = d[g.y.field] || [];
        for (let i = 0; i < xs.length; i++) {
          out.push({x: rect.left + v.frame.x_scale.compute(xs[i]), y: rect.top + v.frame.y_scale.compute(ys[i]),
                    visible: v.el.offsetParent !== null});
        }
      }
    }
  }
  return out;
}
"""


def is_loopback(url: str) -> bool:
    return url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:", "blob:http://127.0.0.1:", "data:",
                           "about:blank"))


class Watch:
    """Every request and console error a page makes."""

    def __init__(self, page):
        self.requests, self.errors = [], []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def check(self):
        off = [u for u in self.requests if not is_loopback(u)]
        assert not off, f"requests off loopback: {off[:5]}"
        assert not self.errors, f"console errors: {self.errors[:5]}"


@pytest.fixture
def served(tmp_path):
    """`bitscape serve --port P --store S`, as a user starts it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "explorer.cli", "serve", "--port", str(port),
                             "--store", str(tmp_path / "store.sqlite")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import socket
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read()) from None
            time.sleep(0.3)
    yield f"http://127.0.0.1:{port}/"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def open_app(page, url):
    page.goto(url)
    page.wait_for_selector('.tabulator-cell[tabulator-field="layer"]', timeout=120_000)
    page.wait_for_timeout(500)


def cell(page, field, row):
    return page.locator(f'.tabulator-row:has(.tabulator-cell[tabulator-field="layer"]) '
                        f'.tabulator-cell[tabulator-field="{field}"]').nth(row)


def edit_cell(page, field: str, row: int, value: str, tries: int = 3):
    for attempt in range(tries):
        try:
            page.locator(f'.tabulator-cell[tabulator-field="{field}"]').nth(row).click()
            page.locator(".tabulator-edit-list-item", has_text=value).first.click(timeout=5_000)
            return
        except Exception:
            if attempt == tries - 1:
                raise
            page.keyboard.press("Escape")


def plan_bits(page) -> list[str]:
    return [c.strip() for c in page.locator('.tabulator-cell[tabulator-field="w_bits"]').all_inner_texts()][:5]


def metric(page, name: str) -> str:
    return page.locator(f'[data-metric="{name}"]').first.inner_text()


def set_steps(page, n: int):
    box = page.locator(".bk-input-group", has_text="fine-tune steps").locator("input").first
    box.fill(str(n))
    box.press("Enter")
    page.wait_for_timeout(300)


def job_rows(page):
    return page.locator(".job-row")


def state_of(row) -> str:
    """A job row's state as the page shows it (Panel renders the row's parts in shadow roots)."""
    return row.locator(".job-state").first.inner_text()


def tab(page, name):
    page.get_by_text(name, exact=True).first.click()
    page.wait_for_timeout(300)


def test_an_analysts_session(served, page, browser, tmp_path):
    url = served
    watch = Watch(page)
    open_app(page, url)

    # edit cells: the cost cards follow
    size0 = metric(page, "model size")
    edit_cell(page, "w_bits", 1, "4")
    wait_until(lambda: metric(page, "model size") != size0, page)
    assert plan_bits(page)[1] == "4"

    # fine-tune the plan: its point reaches the frontier
    set_steps(page, 60)
    page.get_by_role("button", name="Fine-tune plan").click()
    wait_until(lambda: job_rows(page).count() >= 1, page)

    # a second, long job: cancel it while it runs
    set_steps(page, 50_000)
    page.get_by_role("button", name="Fine-tune plan").click()
    wait_until(lambda: job_rows(page).count() >= 2, page)
    second = job_rows(page).first  # newest first
    wait_until(lambda: state_of(second) == "running", page, timeout=180_000)
    second.get_by_role("button", name="Cancel").click()
    wait_until(lambda: state_of(second) == "cancelled", page, timeout=60_000)

    first = job_rows(page).nth(1)
    wait_until(lambda: state_of(first) == "done", page, timeout=300_000)
    tab(page, "Frontier")
    wait_until(lambda: page.locator(".tabulator-row", has_text="fine-tuned").count() >= 1, page)
    wait_until(lambda: any(p["visible"] for p in page.evaluate(POINTS_JS)), page, timeout=60_000)

    # another plan in the editor, then tap the point: its plan comes back
    tab(page, "Plan & cost")
    page.locator(".bk-input-group", has_text="preset").locator("select").first.select_option("fp32")
    page.get_by_role("button", name="Apply preset").click()
    wait_until(lambda: plan_bits(page) == ["32"] * 5, page)
    tab(page, "Frontier")
    wait_until(lambda: any(p["visible"] for p in page.evaluate(POINTS_JS)), page, timeout=60_000)
    pt = next(p for p in page.evaluate(POINTS_JS) if p["visible"])
    page.mouse.click(pt["x"], pt["y"])
    tab(page, "Plan & cost")
    wait_until(lambda: plan_bits(page) == ["32", "4", "32", "32", "32"], page)

    # export the plan
    with page.expect_download() as dl:
        page.get_by_text("Download plan (JSON)").click()
    plan = json.loads(open(dl.value.path()).read())
    assert plan["version"] == 1 and plan["model"] == "lenet5"
    assert plan["layers"]["conv2"]["w_bits"] == 4 and plan["layers"]["conv1"]["w_bits"] == 32

    # export the tapped point's network as ONNX and run it
    tab(page, "Session & export")
    with page.expect_download(timeout=300_000) as dl:
        page.get_by_text("Selected point: ONNX").click()
    import numpy as np
    import onnx
    import onnxruntime as ort
    model = onnx.load(dl.value.path())
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(dl.value.path(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    out = sess.run(None, {inp.name: np.zeros((1, 1, 8, 8), dtype=np.float32)})[0]
    assert out.shape == (1, 10)
    with page.expect_download(timeout=300_000) as dl:      # the integer form, as integer runtimes fuse it
        page.get_by_text("ONNX, integer form").click()
    integer = onnx.load(dl.value.path())
    assert {p.key: p.value for p in integer.metadata_props}["bitscape.form"] == "integer"
    sess = ort.InferenceSession(dl.value.path(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {inp.name: np.zeros((1, 1, 8, 8), dtype=np.float32)})[0].shape == (1, 10)

    # save the session and open its share link in a second browser context: read-only
    page.get_by_placeholder("e.g. lenet5 4-bit study").fill("acceptance study")
    page.get_by_role("button", name="Save session").click()
    link = page.locator("a.share-link")
    wait_until(lambda: link.count() == 1, page)
    href = link.get_attribute("href")
    share = href if href.startswith("http") else url.rstrip("/") + "/" + href.lstrip("/")
    other_ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    other = other_ctx.new_page()
    other_watch = Watch(other)
    open_app(other, share)
    wait_until(lambda: other.get_by_text("Read-only view of session").count() > 0, other)
    assert other.get_by_role("button", name="Fine-tune plan").is_disabled()
    assert other.get_by_role("button", name="Apply preset").is_disabled()
    tab(other, "Frontier")
    wait_until(lambda: other.locator(".tabulator-row", has_text="fine-tuned").count() >= 1, other)
    other_ctx.close()

    watch.check()
    other_watch.check()
