"""`python -m analysis sweep`: every setting of a grid on every prompt and seed, against full compute.

Per (prompt, seed) unit, in one process: the full-compute baseline (image and timing), then every pending
setting of the grid, each timed once after a one-time warm-up per setting and process. A baseline timing is
taken again after every `--baseline-every` settings, and a row's speed-up is the mean of the two baseline
timings that bracket it divided by its latency: interleaved, so that the shared machine's drift cancels.
Settings with their own scheduler (ablations) get their own baseline on that scheduler.

Rows (one per prompt, seed, setting; plus a "baseline" row per unit) are appended to
DIR/rows/shard-I-of-N.jsonl as each block of settings finishes, and every image is kept as
DIR/images/<setting>/pNNN-sS.png. A rerun skips every row already in any DIR/rows/*.jsonl (resume; a
half-written last line of a killed run is ignored). `--shard I/N` (0-based I; `--shard auto` reads
RANK/WORLD_SIZE as set by `accelerate launch` or torchrun) runs units I, I+N, ...; `--merge` (or the end of an
unsharded run) reads all rows and images and writes:

- table.csv / table.json: the tidy table, with the per-setting Fréchet distance on every row;
- summary.csv / summary.json: one row per setting, medians (and quartiles) over prompts and seeds;
  fidelity is the pooled attribute accuracy (a mean: the median of per-image fractions is degenerate);
- frontier.json and report.md: Pareto frontiers per quality axis, each technique against the step-reduction
  ladder at equal latency, the 1.5x check;
- figures/ (plotly HTML and matplotlib PNG/SVG/PDF, viz/sweep_figs.py) unless --no-figures.
The merge, the shipped results and the on-disk layout live in analysis/eval/sweep_results.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from analysis.eval.grid import Setting, parse_grid
from analysis.jsonsafe import jsonable
from analysis.eval.sweep_results import (
    UsageError, UsageParser, save_png, image_path, merge, read_rows, row_key, ship,
)
from analysis.run_folder import check_out_dir

DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent.parent / "assets" / "prompts" / "shapes-30.txt"


# ---- small swappable pieces (the lead may replace these with analysis/eval's registry and sanitiser) --------

def reference_free_scorers(model: str) -> dict[str, bool]:
    """Which per-image reference-free measures the runner computes for `model`: prompt fidelity needs the shapes
    world (the default model); elsewhere it is reported as unavailable (None), never faked. The judge's
    measures (CLIP score, FD, KID) are computed by the merge, from the saved images."""
    from analysis.eval.quality import scorers_for

    return {"fidelity": any(s.name == "fidelity" for s in scorers_for(model))}


def score_fidelity(image: np.ndarray, prompt: str) -> tuple[float | None, int, int]:
    from analysis.toy.fidelity import attribute_accuracy

    acc = attribute_accuracy([image], [prompt])
    total = sum(acc["n_attributes"].values())
    if acc["overall"] is None or total == 0:
        return None, 0, 0
    return acc["overall"], int(round(acc["overall"] * total)), total


# ---- prompts, units, rows --------------------------------------------------------------------------------

def read_prompts(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--prompts {p} is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--prompts {p.name} is not UTF-8 text (one prompt per line)") from None
    prompts = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    prompts = [x for x in prompts if x]
    if not prompts:
        raise UsageError(f"--prompts {p} has no prompt")
    return prompts


def is_held_out(prompt: str) -> bool:
    from analysis.toy.scenes import HELD_OUT_PAIRS, parse_caption

    return any((o.get("colour"), o.get("shape")) in HELD_OUT_PAIRS for o in parse_caption(prompt))


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    if text == "auto":
        return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))), int(os.environ.get("WORLD_SIZE", 1))
    i, slash, n = text.partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        raise UsageError(f"--shard must be I/N (0-based I) or auto, got {text!r}") from None
    if not slash or n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard must be I/N with 0 <= I < N, got {text!r}")
    return i, n


# ---- the runner ------------------------------------------------------------------------------------------

class SweepRunner:
    """Runs units (prompt, seed) of one sweep in this process; see the module docstring."""

    def __init__(self, pipe, args, settings: list[Setting], prompts: list[str], out: Path, rows_file: Path):
        self.pipe, self.args, self.settings, self.prompts, self.out = pipe, args, settings, prompts, out
        self.rows_file = rows_file
        if rows_file.exists() and rows_file.stat().st_size:
            with rows_file.open("rb+") as f:  # a killed run may have left a torn last line: end it
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        from analysis.models import model_name

        self.model = model_name(pipe)
        self.scorers = reference_free_scorers(self.model)
        self.warmed: set[tuple] = set()
        self.pipeline_s = 0.0  # seconds inside the pipeline (timed runs and warm-ups)
        self.wall_s = 0.0  # seconds of the unit loop, everything included
        self.n_runs = 0

    def config(self, prompt: str, seed: int, scheduler: str, specs_setting: Setting | None):
        from analysis.run import RunConfig

        accel = specs_setting.configs() if specs_setting is not None and not specs_setting.is_peer else ()
        return RunConfig(prompt=prompt, seed=seed, steps=self.args.steps, guidance=self.args.guidance,
                         scheduler=scheduler, accel=accel, warmup=False)

    def _run(self, config, setting: Setting | None) -> tuple[np.ndarray, float, dict]:
        from analysis.run import run_once

        if setting is not None and setting.is_peer:
            from analysis.eval.peers import run_peer

            image, seconds, counters = run_peer(self.pipe, config, setting.specs)
        else:
            result = run_once(self.pipe, config, config.hooked_accel(), config.accel_steps)
            image, seconds, counters = result.images, result.seconds, result.counters
        self.pipeline_s += seconds
        self.n_runs += 1
        return image[0], seconds, counters

    def _warm(self, config, setting: Setting | None, key: tuple) -> None:
        if key not in self.warmed:
            self._run(config, setting)
            self.warmed.add(key)

    def run_unit(self, pid: int, seed: int, done: set, bar) -> None:
        from analysis import metrics
        from analysis.models import set_scheduler

        start = time.perf_counter()
        prompt = self.prompts[pid]
        pending = [s for s in self.settings if (pid, seed, s.name) not in done]
        by_scheduler: dict[str, list[Setting]] = {}
        for s in pending:
            by_scheduler.setdefault(s.scheduler or self.args.scheduler, []).append(s)
        if (pid, seed, "baseline") not in done:
            by_scheduler.setdefault(self.args.scheduler, [])
        for scheduler, group in by_scheduler.items():
            set_scheduler(self.pipe, scheduler)
            base_cfg = self.config(prompt, seed, scheduler, None)
            self._warm(base_cfg, None, ("baseline", scheduler))
            base_img, base_t, _ = self._run(base_cfg, None)
            base_times = [base_t]
            base_fid = score_fidelity(base_img, prompt) if self.scorers["fidelity"] else (None, 0, 0)
            base_name = "baseline" if scheduler == self.args.scheduler else f"baseline-{scheduler}"
            block: list[dict] = []
            if (pid, seed, base_name) not in done:
                save_png(image_path(self.out, base_name, pid, seed), base_img)
                block.append(self._row(pid, seed, Setting(base_name, "baseline", (), scheduler), base_t, None,
                                       math.inf, 1.0, base_fid, {}))
            for j, setting in enumerate(group):
                cfg = self.config(prompt, seed, scheduler, setting)
                self._warm(cfg, setting, (setting.name, scheduler))
                img, t, counters = self._run(cfg, setting)
                save_png(image_path(self.out, setting.name, pid, seed), img)
                fid = score_fidelity(img, prompt) if self.scorers["fidelity"] else (None, 0, 0)
                block.append(self._row(pid, seed, setting, t, None, metrics.psnr(base_img, img),
                                       metrics.ssim(base_img, img), fid, counters))
                bar.update(1)
                if (j + 1) % self.args.baseline_every == 0 or j == len(group) - 1:
                    _, t_base, _ = self._run(base_cfg, None)
                    base_times.append(t_base)
                    self._flush(block, base_times[-2], base_times[-1])
                    block = []
            if block:  # a unit whose only pending row was its baseline
                self._flush(block, base_t, base_t)
        self.wall_s += time.perf_counter() - start

    def _row(self, pid, seed, setting: Setting, latency, _base, psnr, ssim, fid, counters) -> dict:
        return {"prompt_id": pid, "prompt": self.prompts[pid], "held_out": is_held_out(self.prompts[pid]),
                "seed": seed, "setting": setting.name, "technique": setting.technique,
                "scheduler": setting.scheduler or self.args.scheduler,
                "steps": self._steps_of(setting), "specs": " & ".join(setting.specs),
                "latency_s": latency, "psnr_db": psnr, "ssim": ssim, "fidelity": fid[0],
                "fidelity_correct": fid[1], "fidelity_total": fid[2], "counters": _compact(counters)}

    def _steps_of(self, setting: Setting) -> int:
        if setting.is_peer:
            return self.args.steps
        from analysis.run import RunConfig

        return RunConfig(prompt="x", steps=self.args.steps, accel=setting.configs()).accel_steps

    def _flush(self, block: list[dict], before: float, after: float) -> None:
        base = (before + after) / 2
        with self.rows_file.open("a") as f:
            for row in block:
                row["baseline_latency_s"] = base
                row["speedup"] = 1.0 if row["technique"] == "baseline" else base / row["latency_s"]
                if row["technique"] == "baseline":
                    row["latency_s"] = base
                f.write(json.dumps(jsonable(row)) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _compact(counters: dict) -> dict:
    """Counters without per-step lists (they live in the images' runs, not in a tidy table)."""
    out = {}
    for name, c in counters.items():
        if isinstance(c, dict):
            small = {k: v for k, v in c.items() if not isinstance(v, (list, dict))}
            if small:
                out[name] = small
    return out


# ---- CLI ----------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="python -m analysis sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", default=str(DEFAULT_PROMPTS), metavar="FILE", help="one prompt per line")
    p.add_argument("--limit-prompts", type=int, default=None, metavar="N", help="only the first N prompts")
    p.add_argument("--seeds", default="0,1", metavar="S,S,...")
    p.add_argument("--grid", default="default", metavar="SPEC", help="see analysis/eval/grid.py")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--scheduler", choices=("ddim", "dpm", "euler"), default="ddim")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--baseline-every", type=int, default=4, metavar="K", help="a baseline timing every K settings")
    p.add_argument("--shard", default=None, metavar="I/N", help="run units I, I+N, ... (0-based) or 'auto'")
    p.add_argument("--merge", action="store_true", help="only merge the rows under --out and write the outputs")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--ship", action="store_true", help="with --merge: copy the results to assets/results/default-STEPS")
    p.add_argument("--ship-as", default=None, metavar="NAME",
                   help="with --merge --ship: to assets/results/NAME instead (e.g. ablations-20); letters, digits, - and _")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be integers separated by commas, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds must be distinct non-negative integers, got {text!r}")
    return seeds


def _write_meta(meta_path: Path, meta: dict) -> None:
    """Write the sweep's meta, merged with a previous one in the same folder (resume), which must be the same
    model (name and weights), steps, scheduler, guidance and prompts."""
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        for key in ("model", "model_fingerprint", "steps", "scheduler", "guidance", "prompts"):
            if old.get(key) != meta[key]:  # a sweep from before the fingerprint cannot show its weights: refused
                what = "weights under that name" if key == "model_fingerprint" else f"{key} ({old.get(key)!r})"
                raise UsageError(f"{meta_path.parent} holds a sweep with other {what}; use a new --out")
        known = {s["setting"]: s for s in old.get("settings", [])}
        known.update({s["setting"]: s for s in meta["settings"]})
        meta["settings"] = list(known.values())
        meta["seeds"] = sorted(set(old.get("seeds", [])) | set(meta["seeds"]))
    meta_path.write_text(json.dumps(meta, indent=1))


def run(args) -> dict:
    # analysis.run_folder's one policy; a folder is a previous sweep when its meta.json names these keys
    out = check_out_dir(args.out, "meta.json", ("model", "steps", "prompts"), kind="sweep", in_place=True,
                        error=UsageError)
    if args.merge:
        result = merge(out, figures=not args.no_figures)
        if args.ship_as is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", args.ship_as):
            raise UsageError(f"--ship-as must be a folder name of letters, digits, - and _, got {args.ship_as!r}")
        if args.ship:
            steps = json.loads((out / "meta.json").read_text())["steps"]
            result["shipped"] = str(ship(out, steps, name=args.ship_as))
        return result
    if args.baseline_every < 1:
        raise UsageError("--baseline-every must be at least 1")
    prompts = read_prompts(args.prompts)
    if args.limit_prompts is not None:
        if args.limit_prompts < 1:
            raise UsageError("--limit-prompts must be at least 1")
        prompts = prompts[: args.limit_prompts]
    seeds = _parse_seeds(args.seeds)
    shard, n_shards = parse_shard(args.shard)
    try:
        settings = parse_grid(args.grid, args.steps)
    except ValueError as err:
        raise UsageError(err) from None
    out.mkdir(parents=True, exist_ok=True)
    from analysis.models import model_fingerprint

    meta = {"model": args.model, "model_fingerprint": model_fingerprint(args.model), "steps": args.steps,
            "scheduler": args.scheduler, "guidance": args.guidance,
            "seeds": seeds, "n_prompts": len(prompts), "prompts": prompts, "grid": args.grid,
            "settings": [{"setting": s.name, "technique": s.technique, "specs": list(s.specs),
                          "scheduler": s.scheduler} for s in settings]}
    _write_meta(out / "meta.json", meta)

    import torch
    from tqdm import tqdm

    from analysis.models import ModelLoadError, load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        pipe = load_pipeline(args.model, scheduler=args.scheduler)
    except (ModelLoadError, ValueError, OSError) as err:
        raise UsageError(err) from None
    pipe.set_progress_bar_config(disable=True)
    (out / "rows").mkdir(exist_ok=True)
    rows_file = out / "rows" / f"shard-{shard}-of-{n_shards}.jsonl"
    done = {row_key(r) for r in read_rows(out)}
    units = [(pid, seed) for pid in range(len(prompts)) for seed in seeds][shard::n_shards]
    todo = sum(1 for pid, seed in units for s in settings if (pid, seed, s.name) not in done)
    runner = SweepRunner(pipe, args, settings, prompts, out, rows_file)
    start = time.perf_counter()
    with tqdm(total=todo, desc=f"sweep shard {shard}/{n_shards}", unit="run", file=sys.stderr,
              dynamic_ncols=True) as bar:
        for pid, seed in units:
            if any((pid, seed, s.name) not in done for s in settings) or (pid, seed, "baseline") not in done:
                before = (runner.pipeline_s, runner.wall_s, runner.n_runs, bar.n, time.perf_counter())
                runner.run_unit(pid, seed, done, bar)
                # per unit, so that a killed sweep keeps its overhead record
                with (out / "rows" / f"stats-{shard}-of-{n_shards}.jsonl").open("a") as f:
                    f.write(json.dumps({"unit": [pid, seed], "pipeline_s": runner.pipeline_s - before[0],
                                        "unit_wall_s": runner.wall_s - before[1], "pipeline_runs": runner.n_runs - before[2],
                                        "rows_run": bar.n - before[3], "elapsed_s": time.perf_counter() - before[4]}) + "\n")
    elapsed = time.perf_counter() - start
    stats = {"shard": f"{shard}/{n_shards}", "units": len(units), "rows_run": todo, "elapsed_s": round(elapsed, 2),
             "pipeline_s": round(runner.pipeline_s, 2), "unit_wall_s": round(runner.wall_s, 2),
             "pipeline_runs": runner.n_runs,
             "overhead_fraction": round(1 - runner.pipeline_s / runner.wall_s, 4) if runner.wall_s else None}
    if n_shards == 1:
        return {**merge(out, figures=not args.no_figures), **stats}
    return stats


def cli_main(build, run_args, argv=None) -> int:
    """Run a JSON-printing subcommand: parse with `build()`, print `run_args(args)` as one JSON line; a
    UsageError is one 'error:' line on stderr and exit code 2 (sweep and sensitivity share this)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            args = build().parse_args(argv)
        except SystemExit as done:
            return int(done.code or 0) if not isinstance(done.code, str) else 2
        print(json.dumps(run_args(args)))
        return 0
    except UsageError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    return cli_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
