"""Sessions in a real browser: a hostile session name runs no script anywhere it is shown, the
share link is absolute and read-only (every control locked), and a reload loses nothing."""
import json

import pytest

from tests.ui.conftest import shot, wait_until

pytest.importorskip("playwright")
pytestmark = pytest.mark.ui

HOSTILE = '<img src=x onerror="window.__xss=(window.__xss||0)+1;alert(1)">'
HOSTILE2 = '<svg onload="window.__xss=(window.__xss||0)+1">imp</svg>'
HOSTILE_LABEL = '<img src=y onerror="window.__xss=(window.__xss||0)+1">plan'


def open_app(page, url):
    page.goto(url)
    page.wait_for_selector('.tabulator-cell[tabulator-field="layer"]', timeout=120_000)
    page.wait_for_timeout(500)


def watch_dialogs(page) -> list:
    dialogs = []

    def on_dialog(d):
        dialogs.append(d.message)
        d.dismiss()
    page.on("dialog", on_dialog)
    return dialogs


def no_script_ran(page, dialogs):
    assert dialogs == []
    assert page.evaluate("() => window.__xss === undefined")


def test_hostile_names_are_text_and_the_share_view_is_locked(app_server, page, browser, tmp_path):
    url, _store, workspaces = app_server
    dialogs = watch_dialogs(page)
    open_app(page, url)
    ws = workspaces[-1]
    ws.steps = 0
    ws.apply_preset("w4a4")
    ws.submit()
    wait_until(lambda: (ws.poll() or True) and len(ws.points) == 1, page, timeout=180_000)

    page.get_by_text("Session & export", exact=True).click()
    page.get_by_placeholder("e.g. lenet5 4-bit study").fill(HOSTILE)
    page.get_by_role("button", name="Save session").click()
    wait_until(lambda: ws.session_name == HOSTILE, page)
    # the name shows as text in the status box, the share line and the session list
    wait_until(lambda: page.get_by_text(f"saved session '{HOSTILE}'").count() > 0, page)
    wait_until(lambda: page.locator("a.share-link").count() > 0, page)
    link = page.locator("a.share-link").get_attribute("href")
    assert link == f"{url}?session={ws.session_id}"
    assert page.locator("option", has_text=HOSTILE).count() >= 1
    no_script_ran(page, dialogs)

    # the copy button puts the absolute link on the clipboard
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy link").click()
    wait_until(lambda: page.evaluate("() => navigator.clipboard.readText()") == link, page)
    shot(page, "session-hostile-name")

    # the share link, in another browser: read-only, the name as text, every state control disabled
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    other = ctx.new_page()
    other_dialogs = watch_dialogs(other)
    other.goto(link)
    other.wait_for_selector('.tabulator-cell[tabulator-field="layer"]', timeout=120_000)
    viewer = workspaces[-1]
    wait_until(lambda: viewer.read_only and len(viewer.points) == 1, other)
    wait_until(lambda: other.get_by_text(f"Read-only view of session \u201c{HOSTILE}\u201d").count() > 0, other)
    selects = other.locator("select")
    wait_until(lambda: selects.count() >= 4, other)
    for label in ("model", "dataset", "accelerator profile", "preset", "sensitivity method"):
        field = other.locator(".bk-input-group", has=other.locator("label", has_text=label)).locator("select")
        assert field.first.is_disabled(), label
    for name in ("Fine-tune plan", "Estimate (no training)", "Apply preset", "Apply to selected",
                 "Compute sensitivity"):
        assert other.get_by_role("button", name=name).first.is_disabled(), name
    for inp in ("fine-tune steps", "batch size"):
        field = other.locator(".bk-input-group", has=other.locator("label", has_text=inp)).locator("input")
        assert field.first.is_disabled(), inp
    no_script_ran(other, other_dialogs)
    shot(other, "shared-hostile-read-only")
    ctx.close()

    # a session file carrying a hostile name: imported, listed and announced as text
    doc = json.loads(ws.export_session_file())
    from engine.explore.store import checksum
    doc["session"]["name"] = HOSTILE2
    doc["evaluations"][0]["plan"]["name"] = HOSTILE_LABEL  # a plan label: shown in the frontier's table
    # another seed: a new evaluation (an import never replaces one the store already holds)
    doc["evaluations"][0]["settings"]["seed"] = 4242
    doc["evaluations"][0].pop("key", None)
    doc["checksum"] = checksum(doc)
    f = tmp_path / "hostile-session.json"
    f.write_text(json.dumps(doc))
    page.locator('input[type="file"]').last.set_input_files(str(f))
    wait_until(lambda: ws.session_name == HOSTILE2, page)
    wait_until(lambda: page.get_by_text(f"imported session '{HOSTILE2}'").count() > 0, page)
    page.get_by_text("Frontier", exact=True).click()
    wait_until(lambda: page.get_by_text(HOSTILE_LABEL).count() > 0, page)
    page.wait_for_timeout(1000)
    no_script_ran(page, dialogs)
    page.get_by_text("Session & export", exact=True).click()

    # an empty session file is answered, not ignored
    empty = tmp_path / "empty.json"
    empty.write_text("")
    page.locator('input[type="file"]').last.set_input_files(str(empty))
    wait_until(lambda: page.get_by_text("the file is empty").count() > 0, page)


def test_reload_restores_the_workspace(app_server, page):
    url, _store, workspaces = app_server
    open_app(page, url)
    ws = workspaces[-1]
    ws.apply_preset("w2a2")
    ws.set_cell(1, "w_bits", 5)
    ws.steps = 77
    wait_until(lambda: "?ws=" in page.url, page, timeout=60_000)
    work_id = ws.work_id
    assert page.url.endswith(f"?ws={work_id}")
    page.reload()
    page.wait_for_selector('.tabulator-cell[tabulator-field="layer"]', timeout=120_000)
    restored = workspaces[-1]
    assert restored is not ws
    wait_until(lambda: restored.work_id == work_id, page)
    assert list(restored.rows["w_bits"]) == list(ws.rows["w_bits"]) and restored.rows.loc[1, "w_bits"] == 5
    assert restored.steps == 77 and not restored.read_only
    wait_until(lambda: page.locator('.tabulator-cell[tabulator-field="w_bits"]').nth(1).inner_text() == "5", page)
