"""Dashboard responsiveness: cost refresh after an edit, first render, and a bounded load test.

Cost refresh (p50/p95) is measured on the ResNet-20 plan through the same Workspace the
dashboard uses; first render and the load test drive Debian's chromium with Playwright
against the app served on loopback: N concurrent browser sessions editing plan cells for a
bounded time, counting errors and timing each edit until its new cost shows on the page.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def add_arguments(p) -> None:
    p.add_argument("--sessions", type=int, default=10, help="concurrent browser sessions in the load test")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--quick", action="store_true", help="3 sessions for 15 s, fewer edits")
    p.add_argument("--json", action="store_true")


def pct(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def cost_refresh(edits: int = 200, seed: int = 0) -> dict:
    """Milliseconds from an edit to a recosted table on ResNet-20 (the 22-layer plan)."""
    from explorer.state.workspace import Workspace
    ws = Workspace(model="resnet20")
    rng = random.Random(seed)
    times = []
    for _ in range(edits):
        row = rng.randrange(len(ws.rows))
        value = rng.choice([2, 3, 4, 8, 32])
        t0 = time.perf_counter()
        ws.set_cell(row, rng.choice(["w_bits", "a_bits"]), value)
        times.append(1000 * (time.perf_counter() - t0))
    return {"layers": len(ws.rows), "edits": edits, "p50_ms": statistics.median(times), "p95_ms": pct(times, 95)}


def _serve(store_path: str):
    import socket

    import panel as pn

    from engine.jobs import JobRunner
    from engine.store import Store
    from explorer.app import create_app
    store = Store(store_path)
    runner = JobRunner(workers=1, store=store)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = pn.serve({"/": lambda: create_app(store=store, runner=runner)}, port=port, address="127.0.0.1",
                      threaded=True, show=False, websocket_origin=[f"127.0.0.1:{port}"])
    time.sleep(1.0)
    return f"http://127.0.0.1:{port}/", server, runner


async def _session(browser, url: str, until: float, rng: random.Random, out: dict) -> None:
    page = await browser.new_page(viewport={"width": 1300, "height": 900})
    page.on("pageerror", lambda e: out["errors"].append(f"pageerror: {e}"))
    try:
        t0 = time.perf_counter()
        await page.goto(url)
        await page.wait_for_selector('.tabulator-cell[tabulator-field="layer"]', timeout=120_000)
        out["first_render_s"].append(time.perf_counter() - t0)
        while time.perf_counter() < until:
            metric = page.locator('[data-metric="model size"]').first
            before = await metric.inner_text()
            row = rng.randrange(5)
            cur = await page.locator('.tabulator-cell[tabulator-field="w_bits"]').nth(row).inner_text()
            value = rng.choice([v for v in ("2", "3", "4", "6", "8") if v != cur.strip()])
            t0 = time.perf_counter()
            await page.locator('.tabulator-cell[tabulator-field="w_bits"]').nth(row).click()
            await page.locator(".tabulator-edit-list-item", has_text=value).first.click()
            deadline = time.perf_counter() + 10
            while await metric.inner_text() == before:
                if time.perf_counter() > deadline:
                    out["errors"].append("timeout: cost did not update within 10 s")
                    break
                await asyncio.sleep(0.01)
            else:
                out["latency_ms"].append(1000 * (time.perf_counter() - t0))
            await asyncio.sleep(0.2)
    except Exception as e:  # noqa: BLE001 - every failure is counted, the run goes on
        out["errors"].append(f"{type(e).__name__}: {str(e).splitlines()[0]}")
    finally:
        await page.close()


async def _load(url: str, sessions: int, duration: float) -> dict:
    from playwright.async_api import async_playwright
    out = {"errors": [], "latency_ms": [], "first_render_s": []}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        until = time.perf_counter() + duration
        await asyncio.gather(*[_session(browser, url, until, random.Random(i), out) for i in range(sessions)])
        await browser.close()
    return out


def load_test(sessions: int, duration: float) -> dict:
    if not os.path.exists(CHROMIUM):
        return {"skipped": f"needs Debian's chromium at {CHROMIUM}"}
    with tempfile.TemporaryDirectory() as tmp:
        url, server, runner = _serve(os.path.join(tmp, "store.sqlite"))
        try:
            single = asyncio.run(_load(url, 1, 0.0))
            out = asyncio.run(_load(url, sessions, duration))
        finally:
            try:
                server.stop()
            except RuntimeError:
                pass
            runner.shutdown()
    lat = out["latency_ms"]
    return {"sessions": sessions, "duration_s": duration, "first_render_s": single["first_render_s"][:1],
            "first_render_under_load_p50_s": statistics.median(out["first_render_s"]) if out["first_render_s"] else None,
            "edits": len(lat), "errors": len(out["errors"]) + len(single["errors"]),
            "error_samples": (single["errors"] + out["errors"])[:5],
            "interaction_p50_ms": statistics.median(lat) if lat else None, "interaction_p95_ms": pct(lat, 95)}


def run(args) -> int:
    sessions, duration, edits = (3, 15.0, 50) if args.quick else (args.sessions, args.duration, 200)
    refresh = cost_refresh(edits)
    load = load_test(sessions, duration)
    result = {"cost_refresh": refresh, "load": load,
              "targets": {"cost refresh p95 <= 100 ms": refresh["p95_ms"] <= 100,
                          "no errors under load": load.get("errors", 1) == 0}}
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(f"dashboard benchmark (load average {os.getloadavg()[0]:.2f})")
    print(f"  cost refresh after an edit, ResNet-20 ({refresh['layers']} layers, {refresh['edits']} edits): "
          f"p50 {refresh['p50_ms']:.1f} ms, p95 {refresh['p95_ms']:.1f} ms (target <= 100 ms)")
    if "skipped" in load:
        print(f"  load test skipped: {load['skipped']}")
    else:
        print(f"  time to first render (one session): {load['first_render_s'][0]:.2f} s")
        print(f"  {load['sessions']} concurrent sessions for {load['duration_s']:.0f} s: {load['edits']} edits, "
              f"{load['errors']} errors, interaction p50 {load['interaction_p50_ms']:.0f} ms, "
              f"p95 {load['interaction_p95_ms']:.0f} ms; first render under load p50 "
              f"{load['first_render_under_load_p50_s']:.1f} s")
        for e in load["error_samples"]:
            print(f"    error: {e}")
    for k, v in result["targets"].items():
        print(f"  {'met ' if v else 'MISS'} {k}")
    return 0
