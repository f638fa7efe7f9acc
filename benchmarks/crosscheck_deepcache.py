"""Cross-check DiffScope's DeepCache plug-in (analysis/accel/deepcache.py) against the DeepCache 0.1.1 package on
the default model: the same images at the same settings, and the speed of both.

    python -m benchmarks.crosscheck_deepcache [--model default] [--prompts 6] [--rounds 3] [--steps 20]
        [--settings 3:0,5:0] [--json docs/results/crosscheck_deepcache.json]

The package is an optional peer (`pip install --no-deps -r requirements-peers.txt`); it is driven on our own
pipeline exactly as the sweep's `peer:deepcache` rows are (analysis/eval/peers.py: DeepCacheSDHelper with
skip_mode uniform, enabled around one pipeline call and removed after it). For every setting
(cache_interval:cache_branch_id) and prompt (the first --prompts of assets/prompts/shapes-30.txt, seed
--seed + prompt index, DDIM, --steps steps, guidance --guidance) three generations run with the same pipeline
arguments (analysis.run's): ours (`run_once` with DeepCacheConfig, no probes), the package's, and the
full-compute baseline.

Images: ours vs the package's uint8 images, identical or their PSNR (criterion: identical, or PSNR >= --min-psnr
dB for every prompt); the baseline's PSNR beside them shows the setting really changes the image.

Speed: one untimed warm-up of each, then --rounds rounds; in each round every prompt runs the three in a rotated
order (none always first). The wall clock of the pipeline call is timed (CUDA synchronised before and after on a
GPU; attaching and removing either implementation is outside the timed region). Per prompt: the median over
rounds of each; speed-up ours / package = median package seconds / median ours seconds (also each against the
baseline); the summary gives the median over prompts (target: ours / package >= 1.0). `--rounds 0` skips the
timing (images only).

Prints one JSON object on its last line (and writes it to --json). Exit code 1 if the images differ beyond the
criterion; the speed verdict is in the JSON (`speed_at_least_package`), not in the exit code.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KINDS = ("ours", "package", "baseline")


def _settings(text: str) -> list[tuple[int, int]]:
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        interval, _, branch = item.partition(":")
        out.append((int(interval), int(branch or 0)))
    if not out:
        raise argparse.ArgumentTypeError("--settings needs at least one cache_interval:cache_branch_id")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--prompts", type=int, default=6, help="the first N prompts of the prompt file")
    p.add_argument("--prompt-file", default=str(REPO / "assets" / "prompts" / "shapes-30.txt"))
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (0: images only)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", type=_settings, default=_settings("3:0,5:0"),
                   help="cache_interval:cache_branch_id pairs, comma-separated (uniform schedule)")
    p.add_argument("--min-psnr", type=float, default=40.0, help="accept PSNR >= this where images are not identical")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the summary here")
    args = p.parse_args(argv)

    sys.path.insert(0, str(REPO))
    import torch

    from analysis import metrics
    from analysis.accel.deepcache import DeepCacheConfig
    from analysis.eval import peers
    from analysis.eval.sweep import read_prompts
    from analysis.jsonsafe import emit, json_number
    from analysis.models import load_pipeline
    from analysis.run import RunConfig, _pipe_kwargs, _to_uint8, run_once

    if args.threads:
        torch.set_num_threads(args.threads)
    peers.parse_peer("peer:deepcache:cache_interval=3")  # a clear error if the package is not installed
    from importlib.metadata import version

    pipe = load_pipeline(args.model, scheduler="ddim")
    pipe.set_progress_bar_config(disable=True)
    prompts = read_prompts(args.prompt_file)[: args.prompts]
    cuda = torch.cuda.is_available() and pipe.device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def generate(kind: str, config: RunConfig, setting: tuple[int, int]):
        """(uint8 images, seconds of the pipeline call, our counters)."""
        if kind == "ours":
            ours = DeepCacheConfig(cache_interval=setting[0], cache_branch_id=setting[1])
            result = run_once(pipe, config, (ours,), config.steps)
            return result.images, result.seconds, result.counters.get("deepcache", {})
        if kind == "baseline":
            result = run_once(pipe, config, (), config.steps)
            return result.images, result.seconds, {}
        kwargs = {"cache_interval": setting[0], "cache_branch_id": setting[1]}
        with peers.attached(pipe, "deepcache", kwargs):
            sync()
            start = time.perf_counter()
            with torch.inference_mode():
                images = pipe(**_pipe_kwargs(pipe, config, config.steps)).images
            sync()
            seconds = time.perf_counter() - start
        return _to_uint8(images), seconds, {}

    configs = [RunConfig(prompt, seed=args.seed + i, steps=args.steps, guidance=args.guidance, scheduler="ddim")
               for i, prompt in enumerate(prompts)]
    rows = []
    for setting in args.settings:
        t0 = time.time()
        per_prompt = []
        for config in configs:  # the images (untimed; they double as the warm-up)
            got = {kind: generate(kind, config, setting) for kind in KINDS}
            ours, ref, base = got["ours"][0], got["package"][0], got["baseline"][0]
            per_prompt.append({
                "prompt": config.prompt, "seed": config.seed, "identical": bool((ours == ref).all()),
                "psnr_ours_vs_package_db": json_number(metrics.psnr(ref, ours)),
                "max_abs_diff_uint8": int(abs(ours.astype(int) - ref.astype(int)).max()),
                "psnr_baseline_vs_package_db": json_number(metrics.psnr(base, ref)),
                "full_steps": got["ours"][2].get("full_steps"), "cached_steps": got["ours"][2].get("cached_steps"),
                "seconds": {kind: [] for kind in KINDS},
            })
        for r in range(args.rounds):
            for i, config in enumerate(configs):
                order = KINDS[(r + i) % 3:] + KINDS[: (r + i) % 3]
                for kind in order:
                    per_prompt[i]["seconds"][kind].append(generate(kind, config, setting)[1])
        for row in per_prompt:
            med = {kind: statistics.median(v) for kind, v in row["seconds"].items() if v}
            row["median_s"] = med
            if len(med) == 3:
                row["speedup_ours_over_package"] = med["package"] / med["ours"]
                row["speedup_ours_over_baseline"] = med["baseline"] / med["ours"]
                row["speedup_package_over_baseline"] = med["baseline"] / med["package"]

        def median_of(key):
            values = [row[key] for row in per_prompt if key in row]
            return statistics.median(values) if values else None

        worst = min((float("inf") if row["identical"] else float(row["psnr_ours_vs_package_db"]))
                    for row in per_prompt)
        rows.append({
            "cache_interval": setting[0], "cache_branch_id": setting[1], "schedule": "uniform",
            "identical_prompts": sum(row["identical"] for row in per_prompt), "prompts": len(per_prompt),
            "min_psnr_ours_vs_package_db": json_number(worst),
            "images_pass": worst >= args.min_psnr,
            "median_speedup_ours_over_package": median_of("speedup_ours_over_package"),
            "median_speedup_ours_over_baseline": median_of("speedup_ours_over_baseline"),
            "median_speedup_package_over_baseline": median_of("speedup_package_over_baseline"),
            "per_prompt": per_prompt, "wall_s": round(time.time() - t0, 1),
        })
        print(f"crosscheck_deepcache: N={setting[0]} branch={setting[1]}: identical on "
              f"{rows[-1]['identical_prompts']}/{len(per_prompt)} prompts, min PSNR {worst:.2f} dB, median speed-up "
              f"ours/package {rows[-1]['median_speedup_ours_over_package']}", file=sys.stderr)

    speedups = [r["median_speedup_ours_over_package"] for r in rows]
    speedups = [x for x in speedups if x is not None]
    summary = {
        "model": args.model, "device": str(pipe.device), "dtype": str(pipe.unet.dtype),
        "torch_threads": torch.get_num_threads(), "steps": args.steps, "scheduler": "ddim", "guidance": args.guidance,
        "rounds": args.rounds, "prompts": prompts, "reference": f"DeepCache {version('DeepCache')}",
        "criterion": f"images identical, or PSNR >= {args.min_psnr} dB, on every prompt; speed: median over prompts "
                     "of (package s / ours s) >= 1.0 (medians over rounds per prompt)",
        "images_pass": all(r["images_pass"] for r in rows),
        "speed_at_least_package": all(s >= 1.0 for s in speedups) if speedups else None,
        "settings": rows,
    }
    emit(summary, args.json)
    return 0 if summary["images_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
