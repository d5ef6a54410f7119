"""Regenerate the README's screenshots from the product as a user runs it.

Starts `bitscape serve` (a temporary store), drives Debian's chromium: applies a preset, then
launches a search from the dashboard's Search card on a bit-serial profile and waits for it to
finish; screenshots the plan editor and the frontier (Pareto line, FP32 reference) beside the
search card with its hypervolume chart.

    .venv/bin/python docs/make_screenshots.py [--estimates 24] [--finetunes 3] [--profile bismo]
"""
from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "screenshots"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                sys.exit(proc.stdout.read())
            time.sleep(0.3)
    sys.exit("bitscape serve did not start")


def select(page, label: str, value: str) -> None:
    page.locator(".bk-input-group", has_text=label).locator("select").first.select_option(value)
    page.wait_for_timeout(800)


def number(page, label: str, value: int) -> None:
    box = page.locator(".bk-input-group", has_text=label).locator("input").first
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(300)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--estimates", type=int, default=24)
    ap.add_argument("--finetunes", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--profile", default="bismo")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds to wait for the search")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "explorer.cli", "serve", "--port", str(port),
                                 "--store", str(Path(tmp) / "store.sqlite")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_port(port, proc)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector('.tabulator-cell[tabulator-field="layer"]', timeout=120_000)
                select(page, "accelerator profile", args.profile)
                select(page, "preset", "w4a4")
                page.get_by_role("button", name="Apply preset").click()
                page.wait_for_timeout(1500)
                page.screenshot(path=str(OUT / "plan.png"), full_page=True)

                select(page, "profile (throughput)", args.profile)
                number(page, "estimates", args.estimates)
                number(page, "fine-tunes", args.finetunes)
                number(page, "steps each", args.steps)
                page.get_by_role("button", name="Start search").click()
                page.get_by_text("Frontier", exact=True).first.click()
                end = time.time() + args.timeout
                while time.time() < end and not any(page.get_by_text(word).count() for word in
                                                    ("done:", "search failed", "cancelled")):
                    page.wait_for_timeout(2000)
                page.wait_for_timeout(3000)
                page.screenshot(path=str(OUT / "frontier.png"))
                browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print(f"wrote {OUT}/plan.png and frontier.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
