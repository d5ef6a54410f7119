"""Two browser identities (two contexts: two cookie jars) against ONE real `bitscape serve`
subprocess, nothing injected: B reaches A's session by the share link, by the list and by A's
``?ws=`` URL, tries every mutating path (forcing disabled controls, so the server must refuse),
and A's session in the store stays as it was; A can still change and delete it."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.ui.conftest import free_port, shot, wait_until

pytest.importorskip("playwright")
pytestmark = pytest.mark.ui

READ_ONLY = "read-only; save a copy to change it"


@pytest.fixture
def served(tmp_path):
    """`python -m explorer.cli serve --port P --store S` in its own process group; yields (url, store path)."""
    import socket
    store = tmp_path / "store.sqlite"
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "explorer.cli", "serve", "--port", str(port), "--store", str(store),
                             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    yield f"http://127.0.0.1:{port}/", store
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
            break
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue
    log.close()


def open_app(page, url):
    page.goto(url)
    page.wait_for_selector('.tabulator-cell[tabulator-field="layer"]', timeout=180_000)
    page.wait_for_timeout(500)


def owned_by(store, owner) -> str:
    """Everything of one owner's in the store: their sessions, with meta and member evaluations."""
    from engine.explore.store import Store
    with Store(store) as s:
        mine = [x for x in s.sessions() if x["owner"] == owner]
        return json.dumps([(x, [(e.key, e.to_dict()) for e in s.evaluations(session=x["id"])]) for x in mine],
                          sort_keys=True, default=str)


def session_row(store, name):
    from engine.explore.store import Store
    with Store(store) as s:
        return next((x for x in s.sessions() if x["name"] == name), None)


def n_evaluations(store) -> int:
    from engine.explore.store import Store
    with Store(store) as s:
        return len(s.keys())


def select_in(page, label, option):
    page.locator(".bk-input-group", has=page.locator("label", has_text=label)).locator("select").first \
        .select_option(option)


def force_click(page, name):
    """Click a button even when it is disabled: the page's lock is lifted, so only the server can refuse."""
    btn = page.get_by_role("button", name=name).first
    btn.wait_for(state="attached", timeout=60_000)
    btn.evaluate("el => { el.disabled = false; el.removeAttribute('disabled'); el.click(); }")


def force_file(page, path, which):
    """Send a file through a file input, disabled or not."""
    inp = getattr(page.locator('input[type="file"]'), which)
    inp.evaluate("el => { el.disabled = false; el.removeAttribute('disabled'); }")
    inp.set_input_files(str(path))


READY = {"Plan & cost": "Apply preset", "Session & export": "Refresh list"}


def tab(page, name):
    """Switch tabs and wait until the tab's own controls are on the page (tabs render on demand)."""
    page.get_by_text(name, exact=True).click()
    page.get_by_role("button", name=READY[name]).first.wait_for(state="visible", timeout=60_000)
    page.wait_for_timeout(300)


def fresh_copy(path):
    """The file under a new name: sending the same file again to the same input changes no value."""
    copy = path.with_name(f"try-{len(list(path.parent.glob('try-*')))}-{path.name}")
    copy.write_bytes(path.read_bytes())
    return copy


def try_everything(page, store, owner, tmp_path, n_evals, plan_file, session_file):
    """B forces every mutating control on the page; A's sessions and the evaluations stay as they were."""
    before = owned_by(store, owner)
    plan_file, session_file = fresh_copy(plan_file), fresh_copy(session_file)
    tab(page, "Plan & cost")
    force_click(page, "Apply preset")
    wait_until(lambda: page.get_by_text(READ_ONLY).count() > 0, page, timeout=60_000)  # the server said no
    for name in ("Apply to selected", "Estimate (no training)", "Fine-tune plan"):
        force_click(page, name)
    # a table cell: no editor opens in a read-only view
    cell = page.locator('.tabulator-cell[tabulator-field="w_bits"]').nth(1)
    old = cell.inner_text()
    cell.dblclick()
    page.keyboard.type("2")
    page.keyboard.press("Enter")
    force_file(page, plan_file, "first")  # the plan upload
    tab(page, "Session & export")
    force_file(page, session_file, "last")  # the session import
    wait_until(lambda: page.get_by_text("session file refused").count() > 0, page)  # the server said no
    page.wait_for_timeout(3000)  # let an autosave tick (1.5 s) pass: nothing may be written
    assert owned_by(store, owner) == before
    assert n_evaluations(store) == n_evals
    tab(page, "Plan & cost")
    assert page.locator('.tabulator-cell[tabulator-field="w_bits"]').nth(1).inner_text() == old


def test_two_browsers_one_server_b_cannot_change_as_session(served, browser, tmp_path):
    url, store = served
    ctx_a = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx_b = browser.new_context(viewport={"width": 1400, "height": 1000})
    a, b = ctx_a.new_page(), ctx_b.new_page()
    try:
        # ---- A: a plan, a saved session, a working copy -------------------------------------------
        open_app(a, url)
        select_in(a, "preset", "w2a2")
        a.get_by_role("button", name="Apply preset").click()
        wait_until(lambda: "?ws=" in a.url, a, timeout=60_000)
        work_url = a.url
        tab(a, "Session & export")
        a.get_by_placeholder("e.g. lenet5 4-bit study").fill("alice study")
        a.get_by_role("button", name="Save session").click()
        wait_until(lambda: a.locator("a.share-link").count() > 0, a)
        link = a.locator("a.share-link").get_attribute("href")
        saved = session_row(store, "alice study")
        owner = saved["owner"]
        assert owner and owner.startswith("anon:")
        work_id = work_url.split("?ws=", 1)[1]
        wait_until(lambda: (session_row(store, "working copy") or {}).get("meta", {}).get("named", {}).get("id")
                   == saved["id"], a)
        from engine.explore.store import Store
        with Store(store) as s:
            assert s.session(work_id)["owner"] == owner
        # export A's session: B will try to import it back over A's
        with a.expect_download() as dl:
            a.get_by_role("button", name="Export session file").click()
        session_file = tmp_path / "alice.json"
        dl.value.save_as(session_file)
        plan_file = tmp_path / "plan.json"
        plan_file.write_text(json.dumps({"version": 1, "model": "lenet5", "default": {"w_bits": 3, "a_bits": 3}}))
        n_evals = n_evaluations(store)

        # ---- B, fresh browser: A's session is not in B's list ------------------------------------
        open_app(b, url)
        tab(b, "Session & export")
        b.get_by_role("button", name="Refresh list").click()
        b.wait_for_timeout(1500)
        assert b.locator("option", has_text="alice study").count() == 0

        # ---- B by the share link: read-only, every mutation refused -----------------------------
        open_app(b, link)
        wait_until(lambda: b.get_by_text("Read-only view of session \u201calice study\u201d").count() > 0, b)
        try_everything(b, store, owner, tmp_path, n_evals, plan_file, session_file)
        shot(b, "owners-b-share-link")

        # ---- B by the list: the session opened by link is listed, read-only; Open and Delete fail --
        tab(b, "Session & export")
        b.get_by_role("button", name="Refresh list").click()
        option = b.locator("option", has_text="alice study")
        wait_until(lambda: option.count() == 1, b)
        label = option.first.inner_text()
        assert "(read-only)" in label
        b.locator("select", has=option).first.select_option(label=label)
        b.get_by_role("button", name="Delete").click()
        wait_until(lambda: b.get_by_text("belongs to someone else").count() > 0, b)
        assert session_row(store, "alice study") is not None
        b.get_by_role("button", name="Open").click()
        wait_until(lambda: b.get_by_text("save a copy to change it)").count() > 0, b)
        try_everything(b, store, owner, tmp_path, n_evals, plan_file, session_file)

        # ---- B with A's ?ws= URL: a read-only view, never written --------------------------------
        open_app(b, work_url)
        wait_until(lambda: b.get_by_text("Read-only view of session").count() > 0, b)
        try_everything(b, store, owner, tmp_path, n_evals, plan_file, session_file)
        assert b.url == work_url  # B's view writes no working copy of its own to the address bar
        shot(b, "owners-b-working-copy")

        # "Save a copy" makes B's own session, writable
        tab(b, "Session & export")
        b.get_by_placeholder("e.g. lenet5 4-bit study").fill("bob copy")
        b.get_by_role("button", name="Save a copy").click()
        wait_until(lambda: session_row(store, "bob copy") is not None, b)
        assert session_row(store, "bob copy")["owner"] not in (None, owner)
        wait_until(lambda: "?ws=" in b.url and not b.url.endswith(work_id), b)  # B's own working copy
        wait_until(lambda: b.get_by_text("Read-only view of session").count() == 0, b)

        # ---- A can still change its working copy and delete its session --------------------------
        before = owned_by(store, owner)
        tab(a, "Plan & cost")
        select_in(a, "preset", "w8a8")
        a.get_by_role("button", name="Apply preset").click()
        wait_until(lambda: owned_by(store, owner) != before, a, timeout=60_000)
        tab(a, "Session & export")
        a.get_by_role("button", name="Refresh list").click()
        opt = a.locator("option", has_text="alice study")
        wait_until(lambda: opt.count() == 1, a)
        assert a.locator("option", has_text="bob copy").count() == 0
        a.locator("select", has=opt).first.select_option(label=opt.first.inner_text())
        a.get_by_role("button", name="Delete").click()
        wait_until(lambda: session_row(store, "alice study") is None, a)
    finally:
        ctx_a.close()
        ctx_b.close()
