"""A sweep's results: the on-disk layout of its rows and images, and `--merge` (tidy table, per-setting
summary, Pareto frontiers and the comparison with step reduction, report, figures), `--ship` and the
shipped results the app reads. The runner that produces the rows is analysis/eval/sweep.py.
"""
from __future__ import annotations

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

from analysis.jsonsafe import from_json_value, jsonable

SHIPPED_DIR = Path(__file__).resolve().parent.parent.parent / "assets" / "results"
TABLE_COLUMNS = ("prompt_id", "prompt", "held_out", "seed", "setting", "technique", "scheduler", "steps", "specs",
                 "latency_s", "baseline_latency_s", "speedup", "psnr_db", "ssim", "fidelity", "fidelity_correct",
                 "fidelity_total", "frechet", "counters")
SUMMARY_KEYS = ("latency_s", "speedup", "psnr_db", "ssim")


class UsageError(Exception):
    """A bad command line or --out for the eval subcommands: one 'error:' line, exit code 2."""


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


def _load_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


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
