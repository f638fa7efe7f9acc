"""A sweep's results: the on-disk layout of its rows and images, and `--merge` (tidy table, per-setting
summary, Pareto frontiers and the comparison with step reduction, report, figures), `--ship` and the
shipped results the app reads. The runner that produces the rows is analysis/eval/sweep.py.
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
from pathlib import Path
from typing import Any

import numpy as np

from analysis.eval import judge_sweep
from analysis.jsonsafe import from_json_value, jsonable

SHIPPED_DIR = Path(__file__).resolve().parent.parent.parent / "assets" / "results"
TABLE_COLUMNS = ("prompt_id", "prompt", "held_out", "seed", "setting", "technique", "scheduler", "steps", "specs",
                 "latency_s", "baseline_latency_s", "speedup", "psnr_db", "ssim", "fidelity", "fidelity_correct",
                 "fidelity_total", "clip_score", "counters")
SUMMARY_KEYS = ("latency_s", "speedup", "psnr_db", "ssim")


class UsageError(Exception):
    """A bad command line or --out for the eval subcommands: one 'error:' line, exit code 2."""


class UsageParser(argparse.ArgumentParser):
    """argparse that raises UsageError (one 'error:' line, exit code 2 through `sweep.cli_main`)."""

    def error(self, message):
        raise UsageError(message)


# ---- rows and images on disk ---------------------------------------------------------------------------------

def row_key(row: dict) -> tuple:
    return (int(row["prompt_id"]), int(row["seed"]), str(row["setting"]))


# A row's fields the merge reads, with their JSON types (a row missing one came from another tool or version).
ROW_FIELDS = {"prompt_id": int, "seed": int, "setting": str, "prompt": str, "technique": str,
              "latency_s": (int, float), "baseline_latency_s": (int, float)}


def _row_problem(row) -> str | None:
    """Why a decoded line is not a sweep row, or None."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    for name, kind in ROW_FIELDS.items():
        value = row.get(name)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            return f"field {name!r} missing or not a {getattr(kind, '__name__', 'number')}"
    return None


def read_rows(out: Path, warn=None) -> list[dict]:
    """Every complete row of every shard file. A torn last line (killed run) is skipped quietly; any other
    line that is not a row (not UTF-8, not JSON, another schema) is skipped with one warning naming the
    file and line (`warn`, default: a 'warning: ...' line on stderr). Later duplicates of a key (a resumed
    shard that redid a block) are dropped."""
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    rows, seen = [], set()
    for path in sorted(glob.glob(str(out / "rows" / "shard-*.jsonl"))):
        data = Path(path).read_bytes()
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
                problem = _row_problem(row)
            except UnicodeDecodeError:
                problem = "not UTF-8 text"
            except ValueError:
                problem = "not JSON"
            if problem is not None:
                if number < len(lines):  # the last piece has no newline after it: a torn write, not a bad row
                    warn(f"{path}:{number}: skipped a line that is not a sweep row ({problem})")
                continue
            row = {k: from_json_value(v) for k, v in row.items()}
            if row_key(row) not in seen:
                seen.add(row_key(row))
                rows.append(row)
    return rows


def image_path(out: Path, setting: str, prompt_id: int, seed: int) -> Path:
    return out / "images" / setting / f"p{prompt_id:03d}-s{seed}.png"


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)


def load_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


# ---- merge: table, summary, frontier, figures -------------------------------------------------------------

def _quartiles(values: list[float]) -> tuple[float | None, float | None, float | None]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, None
    # +inf PSNR (identical to full compute) is a value, not a gap: interpolate with a finite stand-in
    big = 1e12
    q = np.percentile(np.clip(np.array(vals), -big, big), [25, 50, 75])
    back = [math.inf if x >= big else -math.inf if x <= -big else float(x) for x in q]
    return back[1], back[0], back[2]


def summarise(rows: list[dict], judge_columns: dict[str, dict]) -> list[dict]:
    """One row per setting: medians and quartiles over prompts and seeds; pooled fidelity with the standard
    error over prompts; the judge's CLIP score, KID and FD with their intervals (analysis/eval/judge_sweep.py)."""
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
        row.update(judge_columns.get(name) or judge_sweep.EMPTY_COLUMNS)
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
    judged = judge_sweep.score_sweep(out, rows, meta.get("model", "default"))
    for r in rows:
        r["clip_score"] = judged.row_clip.get(row_key(r))
    summary = summarise(rows, judged.columns)
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
                                  for r in summary if r["technique"] == "peer"],
                "versus_steps_judge": judge_sweep.versus_steps(summary, judged), **judged.meta}
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
    from viz.numbers import number

    return number(x, spec)


def _ci(r: dict, key: str, spec: str, scale: float = 1.0) -> str:
    """A value with its interval (r[key], r[key_low], r[key_high]), times `scale` (KID is shown x 1000)."""
    def part(k):
        return None if r.get(k) is None else scale * r[k]

    if r.get(key) is None:
        return "n/a"
    return f"{_fmt(part(key), spec)} [{_fmt(part(key + '_low'), spec)}, {_fmt(part(key + '_high'), spec)}]"


def report_text(summary: list[dict], frontier: dict, meta: dict) -> str:
    lines = ["# Sweep report", ""]
    if meta:
        lines += [f"Model {meta.get('model')}, {meta.get('steps')} steps, {meta.get('scheduler')}, "
                  f"{meta.get('n_prompts')} prompts x seeds {meta.get('seeds')}, grid `{meta.get('grid')}`.", ""]
    lines += ["## Settings (medians over prompts and seeds; fidelity pooled)", "",
              "| setting | technique | n | latency s | rel. latency | speed-up | PSNR dB | SSIM | fidelity |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(summary, key=lambda r: (r["technique"], r["setting"])):
        lines.append(f"| {r['setting']} | {r['technique']} | {r['n']} | {_fmt(r['latency_s'], '.3f')} | "
                     f"{_fmt(r.get('relative_latency'), '.3f')} | {_fmt(r['speedup'])} | {_fmt(r['psnr_db'], '.1f')} | {_fmt(r['ssim'], '.3f')} | "
                     f"{_fmt(r['fidelity'], '.3f')} |")
    if frontier.get("judge", "").startswith("unavailable"):
        lines += ["", f"Judge (CLIP score, FD, KID): {frontier['judge']}."]
    else:
        lines += ["", "## The judge: CLIP score, KID and FD (shapes-CLIP embeddings; 95% bootstrap intervals over "
                  f"{frontier.get('judge_prompts')} prompts, {frontier.get('judge_bootstrap')} draws)", "",
                  "KID and FD against full compute of the same prompts and seeds (full) and against true renders of the "
                  "captions (renders); KID x 1000. dCLIP: CLIP score minus full compute's, paired by image. KID is "
                  "unbiased (its interval may hold 0); FD is biased upwards at this n, and more so in a resample (fewer "
                  "distinct prompts), so its interval can sit above its value: compare FDs at equal n, decide with KID.", "",
                  "| setting | CLIP score | dCLIP vs full | KID full | KID renders | FD full | FD renders |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(summary, key=lambda r: (r["technique"], r["setting"])):
            lines.append(f"| {r['setting']} | {_ci(r, 'clip_score', '.2f')} | {_ci(r, 'clip_score_vs_full', '+.2f')} | "
                         f"{_ci(r, 'kid_full', '.2f', 1000)} | {_ci(r, 'kid_renders', '.2f', 1000)} | {_ci(r, 'fd_full', '.3f')} | "
                         f"{_ci(r, 'fd_renders', '.3f')} |")
        lines += ["", "## Against step reduction at equal latency, with statistical support", "",
                  "Each setting against the step-reduction setting (or full compute) nearest in measured relative latency; paired "
                  "bootstrap over prompts (95%). A verdict other than 'no difference shown' means the interval "
                  "excludes 0.", "",
                  "| setting | rel. latency | steps setting (rel. latency) | dCLIP | verdict | dKID x1000 (to) | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for v in frontier.get("versus_steps_judge", []):
            lines.append(f"| {v['setting']} | {_fmt(v['relative_latency'], '.3f')} | {v['steps_setting']} "
                         f"({_fmt(v['steps_relative_latency'], '.3f')}) | {_ci(v, 'd_clip_score', '+.2f')} | "
                         f"{v['clip_score_verdict']} | {_ci(v, 'd_kid', '+.2f', 1000)} ({v['kid_reference']}) | {v['kid_verdict']} |")
    lines += ["", "## Against step reduction at equal measured latency (point estimates)", "",
              "Difference from the step-reduction ladder (ending at full compute) interpolated at the setting's "
              "latency relative to the interleaved full-compute timing (PSNR dB, fidelity points x100, CLIP score, "
              "KID renders x1000: negative = better); n/a = outside the ladder's range (slower than full compute).", "",
              "| setting | speed-up | dPSNR | dfidelity (pts) | dCLIP | dKID renders |", "|---|---|---|---|---|---|"]
    for r in frontier["versus_steps"]:
        dfid, dkid = r.get("fidelity_vs_steps"), r.get("kid_renders_vs_steps")
        lines.append(f"| {r['setting']} | {_fmt(r['speedup'])} | {_fmt(r.get('psnr_db_vs_steps'), '+.1f')} | "
                     f"{_fmt(None if dfid is None else 100 * dfid, '+.1f')} | {_fmt(r.get('clip_score_vs_steps'), '+.2f')} | "
                     f"{_fmt(None if dkid is None else 1000 * dkid, '+.2f')} |")
    ff = frontier["fast_and_faithful"]
    lines += ["", "## 1.5x with fidelity within 1 point of full compute", ""]
    if ff.get("available"):
        lines.append(f"Full-compute fidelity {_fmt(ff['baseline_fidelity'], '.3f')}. Settings: "
                     f"{', '.join(ff['settings']) or 'none'}. Best fidelity at >= 1.5x: {ff['best_fast']}.")
    else:
        lines.append("Prompt fidelity unavailable for this model.")
    if frontier.get("peers_matched"):
        lines += ["", "## Peers against our best setting at matched latency (within 10% relative latency)", "",
                  "| peer | rel. latency | PSNR | fidelity | CLIP score | ours: PSNR | ours: fidelity | ours: CLIP score |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in frontier["peers_matched"]:
            ours = p["ours"]
            cell = lambda a, spec: "n/a" if ours.get(a) is None else f"{ours[a][0]} {_fmt(ours[a][1], spec)}"  # noqa: E731
            lines.append(f"| {p['peer']} | {_fmt(p['relative_latency'], '.2f')} | {_fmt(p['psnr_db'], '.1f')} | "
                         f"{_fmt(p['fidelity'], '.3f')} | {_fmt(p.get('clip_score'), '.2f')} | {cell('psnr_db', '.1f')} | "
                         f"{cell('fidelity', '.3f')} | {cell('clip_score', '.2f')} |")
    lines += ["", "## Pareto frontiers", ""]
    lines += [f"- {axis}: {', '.join(names)}" for axis, names in frontier["pareto"].items()]
    lines += ["", "Frontiers are drawn on point estimates (medians; CLIP score and KID: the estimates above). A member "
              "is better than its neighbours only where the paired comparisons above support it."]
    if meta.get("units_merged") is not None:
        lines += ["", f"Units (prompt, seed) merged: {meta['units_merged']}; incomplete units left out: "
                      f"{meta.get('units_incomplete_dropped', 0)}."]
    if meta.get("overhead"):
        lines += ["", f"Overhead outside the pipeline: {meta['overhead']}."]
    return "\n".join(lines) + "\n"


# ---- shipped results ----------------------------------------------------------------------------------------

SHIPPED_FILES = ("summary.json", "summary.csv", "frontier.json", "report.md", "merge.json", "figures/tradeoff-psnr_db.png",
                 "figures/tradeoff-fidelity.png", "figures/tradeoff-clip_score.png", "figures/tradeoff-kid_renders.png")


def ship(out: Path, steps: int, directory: Path | None = None, name: str | None = None) -> Path:
    """Copy a merged sweep's small outputs (summary, frontier, report, gzipped tidy table, PNG figures) to
    assets/results/default-<steps>/ for the app (or assets/results/<name>/); the meta without the per-setting
    list."""
    import gzip
    import shutil

    dest = (directory or SHIPPED_DIR) / (name or f"default-{steps}")
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
    rows with at least setting, technique, latency_s, speedup, psnr_db, fidelity, clip_score, kid_renders (medians over
    prompts and seeds; fidelity pooled). [] when none is shipped for that step count."""
    path = (directory or SHIPPED_DIR) / f"default-{steps}" / "summary.json"
    if not path.exists():
        return []
    return [{k: from_json_value(v) for k, v in row.items()} for row in json.loads(path.read_text())]
