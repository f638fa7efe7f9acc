"""The app as a visitor sees it, in Chromium: the README's screenshot and the cost of a toggle.

`python -m benchmarks.app_browser [--screenshot docs/figures/app.png] [--toggles 5]` starts `python app.py`
(the embedded default model) on a free port, generates "a large red circle on the left and a small blue
square at the top" (seed 0, 20 DDIM steps), waits for the step-reduction frontier, then switches T-GATE on
and off `--toggles` times. For every switch-on it times the click to the new point on the trade-off plot
(wall clock in this process) and reads the accelerated run's own latency from the numbers table: the
difference is what the app adds around the run (request, scoring, figures, transfer, drawing).
With --screenshot it saves the page after the first toggle (1500 x 1450 viewport, top of the page).
Drives Chromium (the `chromium` on PATH, else Debian's `/usr/bin/chromium`). Prints one JSON object on its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PROMPT = "a large red circle on the left and a small blue square at the top"
POINTS_OF = """(name) => {
  const plot = document.querySelector('#diffscope-tradeoff .js-plotly-plot');
  if (!plot || !plot.data) return 0;
  return plot.data.filter(t => t.name === name).reduce((n, t) => n + (t.x ? t.x.length : 0), 0);
}"""
# The numbers table's latency row: "latency | <full compute> | 0.432 s (1 run, 20 steps)".
LAST_RUN_LATENCY = """() => {
  for (const row of document.querySelectorAll('table tr')) {
    const cells = [...row.querySelectorAll('td')].map(c => c.innerText.trim());
    if (cells.length === 3 && cells[0] === 'latency') return parseFloat(cells[2]);
  }
  return null;
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "app.py"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError("the app did not answer within 120 s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--toggles", type=int, default=5)
    parser.add_argument("--screenshot", default=None, help="save the page after the first toggle here (PNG)")
    args = parser.parse_args(argv)
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    app = start_app(port)
    elapsed, run_latency = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1500, "height": 1450})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_label("Prompt", exact=True).fill(PROMPT)
            page.get_by_role("button", name="Generate", exact=True).click()
            expect(page.locator('img[src*="gradio_api/file="]').first).to_be_visible(timeout=180_000)
            page.wait_for_function(f"() => ({POINTS_OF})('full compute') >= 1", timeout=180_000)
            toggle = page.locator("#toggle-tgate input[type=checkbox]")
            for i in range(args.toggles):
                before = page.evaluate(f"() => ({POINTS_OF})('tgate')")
                start = time.perf_counter()
                toggle.check()
                page.wait_for_function(f"() => ({POINTS_OF})('tgate') > {before}", timeout=120_000, polling=20)
                elapsed.append(time.perf_counter() - start)
                page.wait_for_timeout(500)  # the numbers table lands with the plot; let it render
                run_latency.append(page.evaluate(LAST_RUN_LATENCY))
                if i == 0 and args.screenshot:
                    page.evaluate("() => window.scrollTo(0, 0)")  # the click scrolled to the panel
                    page.wait_for_timeout(1500)
                    Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=args.screenshot)
                toggle.uncheck()
                page.wait_for_timeout(3000)  # the switch-off reruns full compute from the cache; let it settle
            browser.close()
    finally:
        app.terminate()
        app.wait(timeout=30)
    overhead = [e - r for e, r in zip(elapsed, run_latency) if r is not None]
    report = {"toggles": args.toggles, "click_to_point_s": elapsed, "run_latency_s": run_latency,
              "overhead_s": overhead, "overhead_median_s": statistics.median(overhead) if overhead else None,
              "click_to_point_median_s": statistics.median(elapsed), "screenshot": args.screenshot}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
