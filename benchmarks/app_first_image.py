"""The app on an SD-class model as a new user meets it (issue 20): start-up time, then the first image's wait
against one full-compute run, then the follow-up (the other timed baseline runs, the frontier point by point).

Launches `python app.py` with DIFFSCOPE_MODEL (default sd15-random: SD 1.5's UNet at 256 px, random weights) as
a subprocess and times it to its first HTTP 200; then, through gradio_client, one /run (Generate, no technique)
at --steps steps, timed from the client; the app's own numbers give the full-compute run's latency (one timed
run at that point); the ratio is the target (issue 20: within 1.3x). Then /frontier (the follow-up) and one /run
with T-GATE on (its path warmed on first use, untimed, then timed).

    python -m benchmarks.app_first_image --model sd15-random --steps 6

Run it on an idle machine (the server process uses both cores). Prints progress and one JSON object last.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def wait_for(url: str, timeout_s: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sd15-random")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from gradio_client import Client

    from analysis.jsonsafe import emit
    from ui.techniques import client_inputs

    env = {**os.environ, "DIFFSCOPE_MODEL": args.model, "GRADIO_SERVER_PORT": str(args.port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{args.port}/", 600)
        startup_s = time.perf_counter() - start
        print(f"app_first_image: start-up {startup_s:.1f} s", flush=True)
        client = Client(f"http://127.0.0.1:{args.port}/", verbose=False)
        t = time.perf_counter()
        out = client.predict(*client_inputs("a large red circle on the left", steps=args.steps, model=args.model),
                             api_name="/run")
        first_s = time.perf_counter() - t
        one_run_s = float(re.search(r"\| latency \| ([0-9.]+) s \(median of 1", out[3]).group(1))
        print(f"app_first_image: first image {first_s:.2f} s, one full-compute run {one_run_s:.2f} s", flush=True)
        t = time.perf_counter()
        _, numbers, _ = client.predict("psnr", api_name="/frontier")
        follow_up_s = time.perf_counter() - t
        baseline_s = float(re.search(r"\| latency \| ([0-9.]+) s \(median of 3", numbers).group(1))
        t = time.perf_counter()
        client.predict(*client_inputs("a large red circle on the left", steps=args.steps, model=args.model,
                                      on={"tgate": {}}), api_name="/run")
        first_technique_s = time.perf_counter() - t
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {"model": args.model, "steps": args.steps, "startup_s": startup_s, "first_image_s": first_s,
              "one_full_compute_run_s": one_run_s, "first_image_over_one_run": first_s / one_run_s,
              "follow_up_s": follow_up_s, "baseline_median_of_3_s": baseline_s,
              "first_tgate_run_s": first_technique_s,
              "targets": {"startup_s_max": 30, "first_image_over_one_run_max": 1.3}}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
