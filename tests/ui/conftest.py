"""Real-browser tests: Playwright driving Debian's chromium against the dashboard on loopback."""
import os
import socket
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(os.environ.get("BITSCAPE_SCREENSHOTS", Path(__file__).resolve().parents[2] / "out" / "screenshots"))


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args, tmp_path_factory):
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1000}, "accept_downloads": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_server(tmp_path):
    """Serve the real app factory with a real store and job runner; yields (url, store, workspaces)."""
    import panel as pn

    from engine.explore.jobs import JobRunner
    from engine.explore.store import Store
    from explorer.app import create_app

    store = Store(tmp_path / "store.sqlite")
    runner = JobRunner(workers=1, store=store)
    workspaces = []

    def factory():
        app = create_app(store=store, runner=runner)
        workspaces.append(app.workspace)
        return app

    port = free_port()
    from explorer.identity import serve_options
    server = pn.serve({"/": factory}, port=port, address="127.0.0.1", threaded=True, show=False,
                      websocket_origin=[f"127.0.0.1:{port}"], **serve_options(None, login=False))
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}/", store, workspaces
    try:
        server.stop()
    except RuntimeError:  # Panel's thread may already be stopping
        pass
    runner.shutdown()
    try:
        pn.state.kill_all_servers()
    except RuntimeError:
        pass
    try:
        pn.state.reset()
    except RuntimeError:  # reset stops the servers again: "Thread already stopping"
        pass


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def wait_until(fn, page, timeout=60_000, interval=200):
    end = time.time() + timeout / 1000
    while time.time() < end:
        try:
            if fn():
                return
        except AssertionError:
            pass
        page.wait_for_timeout(interval)
    assert fn(), "condition not met in time"


# Every view of the page's Bokeh documents, depth first (Bokeh renders in shadow DOM, so tests
# find figures and glyphs through the views); the snippet that uses it declares ``seen``.
BOKEH_WALK_JS = """  function* walk(v) {
    if (!v || seen.has(v)) return;
    seen.add(v);
    yield v;
    for (const c of (v.child_views || [])) yield* walk(c);
    if (v.renderer_views) for (const c of v.renderer_views.values()) yield* walk(c);
  }"""
