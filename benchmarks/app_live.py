"""The live app's targets, measured through gradio_client against a launched server on the default model:

- change one technique knob -> both images, numbers and the updated plot back: median of `--changes`
  (baseline cached); and the first run of a new prompt (baseline not cached);
- Stop/cancel in mid-run `--cancels` times, each followed by a request that must be bit-identical to the same
  request made alone;
- `--sessions` concurrent sessions: each gets its own results; peak server memory (RSS of this process,
  which runs the server).

    python -m benchmarks.app_live --steps 20 --changes 5 --cancels 10 --sessions 4

Prints progress lines and one JSON object on its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402

from ui.techniques import client_inputs  # noqa: E402
from benchmarks.model_pool_rss import rss_mb  # noqa: E402

def run_args(prompt, seed, n_steps, **on) -> list:
    return client_inputs(prompt, seed=str(seed), steps=n_steps, on=on)


def _img(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--cancels", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=4)
    args = parser.parse_args(argv)

    import app
    from gradio_client import Client

    from analysis import live
    from analysis.models import load_pipeline

    pipe = load_pipeline("default")
    pipe.set_progress_bar_config(disable=True)
    warm = live.warm_up(pipe, live.Request(model="default", prompt=app.EXAMPLES[0][0], steps=args.steps))
    demo = app.build_demo(pipe)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    out: dict = {"steps": args.steps, "warm_up_s": warm, "threads": __import__("torch").get_num_threads()}
    try:
        c = Client(url, verbose=False)
        # first run of new prompts: baseline timed 3x after one untimed run, plus T-GATE
        firsts = []
        for k in range(3):
            t = time.perf_counter()
            c.predict(*run_args(f"a large red circle on the left", 1000 + k, args.steps, tgate={}), api_name="/run")
            firsts.append(time.perf_counter() - t)
        out["first_run_s"] = firsts
        print(f"first run of a new prompt + seed (baseline + tgate): {[round(x, 2) for x in firsts]}", file=sys.stderr)
        # knob changes against the cached baseline (gate step 4..8, then the other techniques)
        changes = []
        variants = [dict(tgate={1: g}) for g in range(4, 4 + args.changes)]
        variants += [dict(fastdiff={}), dict(reuse={}), dict(atedm={}), dict(steps={1: 12})]
        for v in variants:
            t = time.perf_counter()
            c.predict(*run_args("a large red circle on the left", 1002, args.steps, **v), api_name="/run")
            changes.append(time.perf_counter() - t)
        out["change_s"] = changes
        out["change_median_s"] = statistics.median(changes)
        print(f"knob/toggle changes: {[round(x, 2) for x in changes]}, median {out['change_median_s']:.2f}s",
              file=sys.stderr)
        c.close()

        # Stop / cancel mid-run, then a follow-up that must equal the same request made alone
        follow = run_args("a small blue square at the top", 7, args.steps, atedm={})
        solo = Client(url, verbose=False)
        expected = [_img(p) for p in solo.predict(*follow, api_name="/run")[:2]]
        solo.close()
        identical = 0
        for k in range(args.cancels):
            c = Client(url, verbose=False)
            job = c.submit(*run_args("a large green triangle", 2000 + k, 100, atedm={}), api_name="/run")
            while job.status().code.name not in ("PROCESSING", "FINISHED"):
                time.sleep(0.02)
            time.sleep(0.3)
            job.cancel()
            if k % 2 == 0:
                c.predict(api_name="/stop")  # Stop button; odd rounds: a plain cancel (tab closed)
            other = Client(url, verbose=False)
            got = [_img(p) for p in other.predict(*follow, api_name="/run")[:2]]
            identical += all(np.array_equal(a, b) for a, b in zip(got, expected))
            other.close()
            c.close()
        out["cancel_followups_identical"] = f"{identical}/{args.cancels}"
        print(f"cancel/stop then follow-up: {identical}/{args.cancels} bit-identical", file=sys.stderr)

        # concurrent sessions
        requests = [run_args(f"a {size} {colour} square at the top", 30 + i, args.steps, tgate={})
                    for i, (size, colour) in enumerate([("small", "red"), ("large", "blue"), ("small", "green"),
                                                        ("large", "yellow"), ("small", "purple"), ("large", "orange")]
                                                       [:args.sessions])]
        clients = [Client(url, verbose=False) for _ in requests]
        results: list = [None] * len(requests)
        peak = [rss_mb()]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak.append(rss_mb())
                time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t = time.perf_counter()
        jobs = [cl.submit(*r, api_name="/run") for cl, r in zip(clients, requests)]
        for i, job in enumerate(jobs):
            results[i] = job.result(timeout=600)
        # and each session's probe views (the heaviest cached data)
        for cl in clients:
            cl.predict("both", args.steps - 1, "mean of all layers", "mean of heads", "per-token", True, 0.55, False,
                       True, False, api_name="/inside")
        out["sessions_wall_s"] = time.perf_counter() - t
        stop.set()
        sampler.join()
        own = 0
        for r, req, cl in zip(results, requests, clients):
            alone = Client(url, verbose=False)
            ref = alone.predict(*req, api_name="/run")
            own += np.array_equal(_img(r[1]), _img(ref[1])) and len(r[5]["data"]) == 1
            alone.close()
            cl.close()
        out["sessions_own_results"] = f"{own}/{len(requests)}"
        out["peak_rss_mb"] = max(peak)
        out["max_rss_mb_lifetime"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["sessions_kept"] = len(app.STORE)
        print(f"{len(requests)} sessions: own results {out['sessions_own_results']}, peak RSS {max(peak):.0f} MB",
              file=sys.stderr)
    finally:
        demo.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
