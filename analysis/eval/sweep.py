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
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from analysis.jsonsafe import from_json_value, jsonable

from analysis.eval.grid import Setting, parse_grid

SHIPPED_DIR = Path(__file__).resolve().parent.parent.parent / "assets" / "results"
DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent.parent / "assets" / "prompts" / "shapes-30.txt"
TABLE_COLUMNS = ("prompt_id", "prompt", "held_out", "seed", "setting", "technique", "scheduler", "steps", "specs",
                 "latency_s", "baseline_latency_s", "speedup", "psnr_db", "ssim", "fidelity", "fidelity_correct",
                 "fidelity_total", "frechet", "counters")
SUMMARY_KEYS = ("latency_s", "speedup", "psnr_db", "ssim")


class UsageError(Exception):
    pass


# ---- small swappable pieces (the lead may replace these with analysis/eval's registry and sanitiser) --------

def reference_free_scorers(model: str) -> dict[str, bool]:
    """Which reference-free quality measures exist for `model`: prompt fidelity and the Fréchet distance need
    the shapes world (the default model). Elsewhere they are reported as unavailable (None), never faked."""
    from analysis.eval.quality import scorers_for

    return {"fidelity": any(s.name == "fidelity" for s in scorers_for(model)),
            "frechet": model == "default"}  # true renders of the captions exist only in the shapes world


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
    prompts = [line.split("#", 1)[0].strip() for line in p.read_text().splitlines()]
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


def row_key(row: dict) -> tuple:
    return (int(row["prompt_id"]), int(row["seed"]), str(row["setting"]))


def read_rows(out: Path) -> list[dict]:
    """Every complete row of every shard file; a torn last line (killed run) is skipped. Later duplicates of a
    key (a resumed shard that redid a block) are dropped."""
    rows, seen = [], set()
    for path in sorted(glob.glob(str(out / "rows" / "shard-*.jsonl"))):
        for line in Path(path).read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            row = {k: from_json_value(v) for k, v in row.items()}
            if row_key(row) not in seen:
                seen.add(row_key(row))
                rows.append(row)
    return rows


def image_path(out: Path, setting: str, prompt_id: int, seed: int) -> Path:
    return out / "images" / setting / f"p{prompt_id:03d}-s{seed}.png"


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)


def _load_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


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
        self.model = getattr(pipe, "diffscope_name", "custom")
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
            image, seconds, counters, _, _ = run_once(self.pipe, config, config.hooked_accel(), config.accel_steps)
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
                _save_png(image_path(self.out, base_name, pid, seed), base_img)
                block.append(self._row(pid, seed, Setting(base_name, "baseline", (), scheduler), base_t, None,
                                       math.inf, 1.0, base_fid, {}))
            for j, setting in enumerate(group):
                cfg = self.config(prompt, seed, scheduler, setting)
                self._warm(cfg, setting, (setting.name, scheduler))
                img, t, counters = self._run(cfg, setting)
                _save_png(image_path(self.out, setting.name, pid, seed), img)
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
        steps = [c.steps for c in setting.configs() if type(c).name == "steps"] if not setting.is_peer else []
        return steps[0] if steps else self.args.steps

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


# ---- merge: table, summary, frontier, figures -------------------------------------------------------------

def frechet_per_setting(out: Path, rows: list[dict], per_caption: int = 4) -> tuple[dict[str, float], dict]:
    """Fréchet distance of every setting's images (all prompts and seeds) to true renders of the same
    captions; plus the measure's floor: fresh true renders of the same captions against the reference."""
    import warnings

    from analysis.eval import frechet

    captions = sorted({r["prompt"] for r in rows})
    try:
        ref_captions = [c for c in captions for _ in range(per_caption)]
        reference = frechet.features(frechet.true_renders(captions, per_caption, seed=0), ref_captions)
    except ValueError:
        return {}, {"frechet": "unavailable: the prompts are not shapes-world captions"}
    by_setting: dict[str, list[dict]] = {}
    for r in rows:
        by_setting.setdefault(r["setting"], []).append(r)
    result = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on the rank-deficient covariances of small sets
        for name, rs in by_setting.items():
            rs = sorted(rs, key=row_key)
            paths = [image_path(out, name, int(r["prompt_id"]), int(r["seed"])) for r in rs]
            if len(rs) < 2 or not all(p.exists() for p in paths):
                continue
            feats = frechet.features([_load_png(p) for p in paths], [r["prompt"] for r in rs])
            result[name] = frechet.frechet_distance(feats, reference)
        n = max((len(v) for v in by_setting.values()), default=0)
        per = max(1, math.ceil(n / max(len(captions), 1)))
        fresh = frechet.true_renders(captions, per, seed=1)
        floor = frechet.frechet_distance(frechet.features(fresh, [c for c in captions for _ in range(per)]), reference)
    return result, {"frechet_true_renders_floor": floor, "frechet_reference_images": len(reference),
                    "frechet_features": list(frechet.FEATURE_NAMES) + list(frechet.CAPTION_FEATURE_NAMES)}


def _quartiles(values: list[float]) -> tuple[float | None, float | None, float | None]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, None
    # +inf PSNR (identical to full compute) is a value, not a gap: interpolate with a finite stand-in
    big = 1e12
    q = np.percentile(np.clip(np.array(vals), -big, big), [25, 50, 75])
    back = [math.inf if x >= big else -math.inf if x <= -big else float(x) for x in q]
    return back[1], back[0], back[2]


def summarise(rows: list[dict], frechet: dict[str, float]) -> list[dict]:
    """One row per setting: medians and quartiles over prompts and seeds; pooled fidelity with the standard
    error over prompts; the setting's Fréchet distance."""
    by_setting: dict[str, list[dict]] = {}
    for r in rows:
        by_setting.setdefault(r["setting"], []).append(r)
    out = []
    for name, rs in by_setting.items():
        row: dict[str, Any] = {"setting": name, "technique": rs[0]["technique"], "specs": rs[0]["specs"],
                               "scheduler": rs[0]["scheduler"], "steps": rs[0]["steps"], "n": len(rs)}
        for key in SUMMARY_KEYS:
            row[key], row[f"{key}_q25"], row[f"{key}_q75"] = _quartiles([r.get(key) for r in rs])
        rel = [r["latency_s"] / r["baseline_latency_s"] for r in rs if r.get("latency_s") and r.get("baseline_latency_s")]
        row["relative_latency"], row["relative_latency_q25"], row["relative_latency_q75"] = _quartiles(rel)
        total = sum(int(r.get("fidelity_total") or 0) for r in rs)
        row["fidelity"] = sum(int(r.get("fidelity_correct") or 0) for r in rs) / total if total else None
        per_prompt: dict[int, list[float]] = {}
        for r in rs:
            if r.get("fidelity") is not None:
                per_prompt.setdefault(int(r["prompt_id"]), []).append(float(r["fidelity"]))
        means = [statistics.fmean(v) for v in per_prompt.values()]
        row["fidelity_se"] = statistics.stdev(means) / math.sqrt(len(means)) if len(means) > 1 else None
        row["frechet"] = frechet.get(name)
        out.append(row)
    return out


def write_table(path_csv: Path, rows: list[dict], columns) -> None:
    with path_csv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(r[k]) if isinstance(r.get(k), (dict, list)) else r.get(k)) for k in columns})


def merge(out: Path, figures: bool = True) -> dict:
    """Read every shard's rows and images under `out`; write table, summary, frontier, report and figures."""
    from analysis.eval import pareto

    rows = sorted(read_rows(out), key=row_key)
    if not rows:
        raise UsageError(f"{out} has no sweep rows (rows/*.jsonl)")
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    rows, dropped = complete_units(rows)
    meta = {**meta, "units_merged": len({row_key(r)[:2] for r in rows}), "units_incomplete_dropped": dropped,
            "overhead": overhead(out)}
    frechet, frechet_meta = frechet_per_setting(out, rows)
    for r in rows:
        r["frechet"] = frechet.get(r["setting"])
    summary = summarise(rows, frechet)
    (out / "table.json").write_text(json.dumps(jsonable(rows), indent=1))
    write_table(out / "table.csv", rows, TABLE_COLUMNS)
    (out / "summary.json").write_text(json.dumps(jsonable(summary), indent=1))
    write_table(out / "summary.csv", summary, list(summary[0]))
    frontier = {"pareto": {axis: [r["setting"] for r in pareto.pareto_front(summary, axis, "relative_latency")]
                           for axis in pareto.AXES},
                "versus_steps": pareto.versus_ladder(summary),
                "fast_and_faithful": fast_and_faithful(summary),
                "peers_matched": [{"peer": r["setting"], "relative_latency": r.get("relative_latency"),
                                   **{a: r.get(a) for a in pareto.AXES},
                                   "ours": pareto.best_at_matched_latency(summary, r)}
                                  for r in summary if r["technique"] == "peer"], **frechet_meta}
    (out / "frontier.json").write_text(json.dumps(jsonable(frontier), indent=1))
    (out / "report.md").write_text(report_text(summary, frontier, meta))
    (out / "merge.json").write_text(json.dumps(jsonable({k: v for k, v in meta.items() if k != "settings"}), indent=1))
    if figures:
        from viz import sweep_figs

        sweep_figs.write_all(summary, rows, out / "figures")
    return {"rows": len(rows), "settings": len(summary), "out": str(out)}


def overhead(out: Path) -> dict | None:
    """Time outside the pipeline over all runs of all shards (rows/stats-*.jsonl): quality scoring, PNG writes,
    hook set-up are in the unit loop's wall time but not in the pipeline's."""
    stats = []
    for path in glob.glob(str(out / "rows" / "stats-*.jsonl")):
        stats += [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    stats = [s for s in stats if s.get("unit_wall_s")]
    if not stats:
        return None
    wall, pipe = sum(s["unit_wall_s"] for s in stats), sum(s["pipeline_s"] for s in stats)
    return {"units": len(stats), "unit_wall_s": round(wall, 1), "pipeline_s": round(pipe, 1),
            "pipeline_runs": sum(s["pipeline_runs"] for s in stats), "rows_run": sum(s["rows_run"] for s in stats),
            "elapsed_s": round(sum(s["elapsed_s"] for s in stats), 1), "overhead_fraction": round(1 - pipe / wall, 4)}


def complete_units(rows: list[dict]) -> tuple[list[dict], int]:
    """Only the (prompt, seed) units that have every setting seen in the sweep, so that every setting is
    summarised over the same images (an interrupted sweep leaves its last unit half done)."""
    settings = {r["setting"] for r in rows}
    units: dict[tuple, set] = {}
    for r in rows:
        units.setdefault(row_key(r)[:2], set()).add(r["setting"])
    complete = {u for u, have in units.items() if have == settings}
    if not complete:
        return rows, 0
    return [r for r in rows if row_key(r)[:2] in complete], len(units) - len(complete)


def fast_and_faithful(summary: list[dict], speedup: float = 1.5, points: float = 0.01) -> dict:
    """Settings at >= `speedup` x whose pooled fidelity is within `points` (fraction; 0.01 = 1 point) of full
    compute; and the best fidelity reached at that speed-up, for the note when none is."""
    base = next((r for r in summary if r["technique"] == "baseline"), None)
    if base is None or base.get("fidelity") is None:
        return {"available": False}
    fast = [r for r in summary if r["technique"] != "baseline" and (r.get("speedup") or 0) >= speedup
            and r.get("fidelity") is not None]
    ok = [r["setting"] for r in fast if r["fidelity"] >= base["fidelity"] - points]
    best = max(fast, key=lambda r: r["fidelity"], default=None)
    return {"available": True, "speedup": speedup, "baseline_fidelity": base["fidelity"], "settings": ok,
            "best_fast": None if best is None else {k: best.get(k) for k in ("setting", "speedup", "fidelity")}}


def _fmt(x, spec=".2f") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, spec)


def report_text(summary: list[dict], frontier: dict, meta: dict) -> str:
    lines = ["# Sweep report", ""]
    if meta:
        lines += [f"Model {meta.get('model')}, {meta.get('steps')} steps, {meta.get('scheduler')}, "
                  f"{meta.get('n_prompts')} prompts x seeds {meta.get('seeds')}, grid `{meta.get('grid')}`.", ""]
    lines += ["## Settings (medians over prompts and seeds; fidelity pooled)", "",
              "| setting | technique | n | latency s | rel. latency | speed-up | PSNR dB | SSIM | fidelity | Fréchet |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(summary, key=lambda r: (r["technique"], r["setting"])):
        lines.append(f"| {r['setting']} | {r['technique']} | {r['n']} | {_fmt(r['latency_s'], '.3f')} | "
                     f"{_fmt(r.get('relative_latency'), '.3f')} | {_fmt(r['speedup'])} | {_fmt(r['psnr_db'], '.1f')} | {_fmt(r['ssim'], '.3f')} | "
                     f"{_fmt(r['fidelity'], '.3f')} | {_fmt(r['frechet'], '.1f')} |")
    lines += ["", "## Against step reduction at equal measured latency", "",
              "Difference from the step-reduction ladder (ending at full compute) interpolated at the setting's "
              "latency relative to the interleaved full-compute timing (PSNR dB, fidelity points x100, Fréchet: "
              "negative = better); n/a = outside the ladder's range (slower than full compute).", "",
              "| setting | speed-up | dPSNR | dfidelity (pts) | dFréchet |", "|---|---|---|---|---|"]
    for r in frontier["versus_steps"]:
        dfid = r.get("fidelity_vs_steps")
        lines.append(f"| {r['setting']} | {_fmt(r['speedup'])} | {_fmt(r.get('psnr_db_vs_steps'), '+.1f')} | "
                     f"{_fmt(None if dfid is None else 100 * dfid, '+.1f')} | {_fmt(r.get('frechet_vs_steps'), '+.1f')} |")
    ff = frontier["fast_and_faithful"]
    lines += ["", "## 1.5x with fidelity within 1 point of full compute", ""]
    if ff.get("available"):
        lines.append(f"Full-compute fidelity {_fmt(ff['baseline_fidelity'], '.3f')}. Settings: "
                     f"{', '.join(ff['settings']) or 'none'}. Best fidelity at >= 1.5x: {ff['best_fast']}.")
    else:
        lines.append("Prompt fidelity unavailable for this model.")
    if frontier.get("peers_matched"):
        lines += ["", "## Peers against our best setting at matched latency (within 10% relative latency)", "",
                  "| peer | rel. latency | PSNR | fidelity | Fréchet | ours: PSNR | ours: fidelity | ours: Fréchet |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in frontier["peers_matched"]:
            ours = p["ours"]
            cell = lambda a, spec: "n/a" if ours.get(a) is None else f"{ours[a][0]} {_fmt(ours[a][1], spec)}"  # noqa: E731
            lines.append(f"| {p['peer']} | {_fmt(p['relative_latency'], '.2f')} | {_fmt(p['psnr_db'], '.1f')} | "
                         f"{_fmt(p['fidelity'], '.3f')} | {_fmt(p['frechet'], '.1f')} | {cell('psnr_db', '.1f')} | "
                         f"{cell('fidelity', '.3f')} | {cell('frechet', '.1f')} |")
    lines += ["", "## Pareto frontiers", ""]
    lines += [f"- {axis}: {', '.join(names)}" for axis, names in frontier["pareto"].items()]
    if "frechet_true_renders_floor" in frontier:
        lines += ["", f"Fréchet floor (fresh true renders vs the reference): "
                      f"{_fmt(frontier['frechet_true_renders_floor'], '.2f')}."]
    if meta.get("units_merged") is not None:
        lines += ["", f"Units (prompt, seed) merged: {meta['units_merged']}; incomplete units left out: "
                      f"{meta.get('units_incomplete_dropped', 0)}."]
    if meta.get("overhead"):
        lines += ["", f"Overhead outside the pipeline: {meta['overhead']}."]
    return "\n".join(lines) + "\n"


# ---- shipped results ----------------------------------------------------------------------------------------

SHIPPED_FILES = ("summary.json", "summary.csv", "frontier.json", "report.md", "merge.json", "figures/tradeoff-psnr_db.png",
                 "figures/tradeoff-fidelity.png", "figures/tradeoff-frechet.png")


def ship(out: Path, steps: int, directory: Path | None = None) -> Path:
    """Copy a merged sweep's small outputs (summary, frontier, report, gzipped tidy table, PNG figures) to
    assets/results/default-<steps>/ for the app; the meta without the per-setting list."""
    import gzip
    import shutil

    dest = (directory or SHIPPED_DIR) / f"default-{steps}"
    (dest / "figures").mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        if (out / name).exists():
            shutil.copyfile(out / name, dest / name)
    if (out / "table.csv").exists():
        (dest / "table.csv.gz").write_bytes(gzip.compress((out / "table.csv").read_bytes(), mtime=0))
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    meta.pop("settings", None)
    (dest / "meta.json").write_text(json.dumps(meta, indent=1))
    return dest


def load_shipped(steps: int = 20, directory: Path | None = None) -> list[dict]:
    """The default model's shipped sweep summary (assets/results/default-<steps>/summary.json): per-setting
    rows with at least setting, technique, latency_s, speedup, psnr_db, fidelity, frechet (medians over
    prompts and seeds; fidelity pooled). [] when none is shipped for that step count."""
    path = (directory or SHIPPED_DIR) / f"default-{steps}" / "summary.json"
    if not path.exists():
        return []
    return [{k: from_json_value(v) for k, v in row.items()} for row in json.loads(path.read_text())]


# ---- CLI ----------------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m analysis sweep", description=__doc__.split("\n\n")[0])
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


def run(args) -> dict:
    out = Path(args.out)
    if args.merge:
        result = merge(out, figures=not args.no_figures)
        if args.ship:
            result["shipped"] = str(ship(out, json.loads((out / "meta.json").read_text())["steps"]))
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
    meta = {"model": args.model, "steps": args.steps, "scheduler": args.scheduler, "guidance": args.guidance,
            "seeds": seeds, "n_prompts": len(prompts), "prompts": prompts, "grid": args.grid,
            "settings": [{"setting": s.name, "technique": s.technique, "specs": list(s.specs),
                          "scheduler": s.scheduler} for s in settings]}
    meta_path = out / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        for key in ("model", "steps", "scheduler", "guidance", "prompts"):
            if old.get(key) != meta[key]:
                raise UsageError(f"{out} holds a sweep with another {key} ({old.get(key)!r}); use a new --out")
        known = {s["setting"]: s for s in old.get("settings", [])}
        known.update({s["setting"]: s for s in meta["settings"]})
        meta["settings"] = list(known.values())
        meta["seeds"] = sorted(set(old.get("seeds", [])) | set(seeds))
    meta_path.write_text(json.dumps(meta, indent=1))

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
