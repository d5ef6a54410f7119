"""`bitscape serve` exactly as a user starts it: a job launched from the page, then SIGTERM or Ctrl+C
stops the server, the job runner, its workers and the fork server; and the page loads nothing
from off the machine."""
import signal
import subprocess
import sys
import time

import pytest

from tests.ui.conftest import free_port, wait_until

pytest.importorskip("playwright")
psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.ui


@pytest.fixture
def served(tmp_path):
    """Start ``python -m explorer.cli serve`` with only its flags; yields (process, url)."""
    import socket
    procs = []

    def start():
        port = free_port()
        p = subprocess.Popen([sys.executable, "-m", "explorer.cli", "serve", "--port", str(port),
                              "--store", str(tmp_path / "store.sqlite"), "--workers", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(p)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return p, f"http://127.0.0.1:{port}/"
            except OSError:
                if p.poll() is not None:
                    raise AssertionError(p.stdout.read()) from None
                time.sleep(0.3)
        raise AssertionError("server did not start")

    start.seen = []  # descendants the test saw: a failed test must not leave them running either
    yield start
    for p in procs:
        if p.poll() is None:
            start.seen += psutil.Process(p.pid).children(recursive=True)
            p.kill()
            p.wait(30)
    for k in _alive(start.seen):
        try:
            k.kill()
        except psutil.NoSuchProcess:
            pass


def _alive(procs):
    out = []
    for k in procs:
        try:
            if k.is_running() and k.status() != psutil.STATUS_ZOMBIE:
                out.append(k)
        except psutil.NoSuchProcess:
            pass
    return out


def _start_a_finetune(page, url, proc):
    """Click *Fine-tune plan* and wait until a worker process trains it; returns the server's descendants."""
    page.goto(url)
    page.wait_for_selector('.tabulator-cell[tabulator-field="layer"]', timeout=120_000)
    steps = page.locator(".bk-input-group", has_text="fine-tune steps").locator("input")
    steps.fill("100000")  # long enough to be still training when the signal comes
    steps.press("Enter")
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Fine-tune plan").click()
    page.locator(".job-state", has_text="running").first.wait_for(timeout=180_000)
    server = psutil.Process(proc.pid)
    deadline = time.time() + 60
    while time.time() < deadline:
        kids = server.children(recursive=True)
        # the fork server (the server's child) and the worker it forked (its child)
        if len(kids) >= 2 and any(k.ppid() != proc.pid for k in kids):
            return kids
        time.sleep(0.2)
    raise AssertionError(f"no worker process under the server: {server.children(recursive=True)}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_server_workers_and_fork_server(served, page, sig):
    proc, url = served()
    kids = _start_a_finetune(page, url, proc)
    served.seen += kids
    cmdlines = [" ".join(k.cmdline()) for k in kids]
    assert any("forkserver" in c for c in cmdlines), cmdlines
    page.close()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server ignored {sig.name}") from None
    deadline = time.time() + 30
    while _alive(kids) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(kids), [(k.pid, " ".join(k.cmdline())) for k in _alive(kids)]
    assert proc.returncode == 0, proc.stdout.read()


def test_cancel_from_the_page_and_nothing_requested_off_loopback(served, page):
    """A running fine-tune is cancelled by its row's Cancel button; every request the page makes
    (scripts, styles, fonts, websocket) goes to the local server."""
    from urllib.parse import urlsplit
    proc, url = served()
    urls = []
    page.on("request", lambda r: urls.append(r.url))
    page.on("websocket", lambda ws: urls.append(ws.url))
    _start_a_finetune(page, url, proc)
    row = page.locator(".job-row").first
    button = row.get_by_role("button", name="Cancel").element_handle()
    detail = row.locator(".job-detail")
    shown = detail.inner_text()
    wait_until(lambda: detail.inner_text() != shown, page, timeout=120_000)  # polls moved the job along...
    assert button.evaluate("b => b.isConnected"), "the poll replaced the Cancel button under the user's pointer"
    button.click()                                                       # ...and the same button still works
    row.locator(".job-state", has_text="cancelled").wait_for(timeout=120_000)
    # a job row is built by the background poll, outside any request: its styles must be local too
    page.get_by_role("button", name="Estimate (no training)").click()
    page.locator(".job-state", has_text="done").first.wait_for(timeout=180_000)
    assert page.locator(".job-state", has_text="cancelled").count() == 1
    for tab in ("Frontier", "Session & export", "Plan & cost"):
        page.get_by_text(tab, exact=True).click()
        page.wait_for_timeout(1500)
    page.wait_for_load_state("networkidle", timeout=60_000)
    hosts = {urlsplit(u).hostname for u in urls if not u.startswith(("data:", "blob:", "about:"))}
    assert len(urls) > 5 and hosts == {"127.0.0.1"}, sorted(u for u in urls if urlsplit(u).hostname != "127.0.0.1")
